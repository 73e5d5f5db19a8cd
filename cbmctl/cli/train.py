"""`cbmctl train`: a Concept Bottleneck Model (or a baseline, or a comparison) on a dataset's cache."""
from __future__ import annotations

from pathlib import Path

import click

from cbmctl.cli.common import print_json

LOSS_CHOICES = ["gumbel", "contrastive", "l1", "cos3", "none", "linear-probe", "zero-shot"]
ALL_METHODS = "gumbel,contrastive,l1,cos3,none,linear-probe,zero-shot"


def _ints(text):
    try:
        return [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers") from None


@click.command()
@click.argument("data", required=False)
@click.option("--loss", "-l", type=click.Choice(LOSS_CHOICES), default="gumbel", show_default=True,
              help="CBL objective, or a baseline (linear-probe, zero-shot).")
@click.option("--gumbel-form", type=click.Choice(["paper", "reference"]), default="paper", show_default=True,
              help="Sparse-CBM loss as the paper states it, or as its public code computes it.")
@click.option("--tau", type=float, default=1.0, show_default=True, help="Gumbel-Softmax temperature.")
@click.option("--hard", is_flag=True, help="Straight-through hard Gumbel samples (paper form only).")
@click.option("--l1-lambda", type=float, default=1e-3, show_default=True, help="Strength of the l1 objective.")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Learning rate of the head.")
@click.option("--cbl-lr", type=float, default=1e-4, show_default=True, help="Learning rate of the CBL.")
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "sgd"]), default="adam", show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=200, show_default=True, help="At most this many.")
@click.option("--patience", type=click.IntRange(1), default=20, show_default=True,
              help="Stop after this many epochs without a better validation top-1.")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--seeds", default=None, help="Several seeds, e.g. 0,1,2: reports mean ± std.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda > mps > cpu), cpu, cuda, ...")
@click.option("--cbl-init", type=click.Choice(["identity", "random"]), default="identity", show_default=True)
@click.option("--nec", type=click.IntRange(1), default=None, help="Also report accuracy with the head truncated "
              "to this many concepts per class.")
@click.option("--precision-k", type=click.IntRange(1), default=5, show_default=True,
              help="k of concept precision@k (where ground truth exists).")
@click.option("--concept-map", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML concept -> attribute name(s), for concept precision on CUB attributes.")
@click.option("--compare", default=None, help=f"Train several methods on the same split: e.g. {ALL_METHODS} "
              "(or 'all').")
@click.option("--random-concepts", is_flag=True, help="Control: replace the concepts by as many random words.")
@click.option("--model", "-m", default=None, help="Backbone (default: the dataset's cbmctl.yaml, else ViT-L-14).")
@click.option("--pretrained", "-p", default=None)
@click.option("--concepts", "-c", default=None, help="Concept set NAME or PATH (default: the dataset's cbmctl.yaml, "
              "else the built-in set named like the dataset).")
@click.option("--cache", "cache_path", default=None, type=click.Path(dir_okay=False), help="Cache file to use/make.")
@click.option("--data-root", default=None, envvar="CBMCTL_DATA")
@click.option("--out", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Where run directories go.")
@click.option("--config", "config_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A run's config.yaml (or your own): every option; the command line wins.")
@click.option("--resume", default=None, type=click.Path(exists=True, file_okay=False),
              help="Continue an interrupted run directory.")
@click.option("--evaluate", "evaluate_run_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="Only score a saved run's model (e.g. from `explain --save-edited`) on its cache.")
@click.option("--fast-path", type=click.Choice(["auto", "on", "off"]), default="auto", hidden=True)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No per-epoch lines.")
@click.pass_context
def train(ctx, **options):
    """Train a Concept Bottleneck Model on DATA (a dataset folder or name, embedded first if needed) or on a
    CACHE (.h5). Validation top-1 picks the epoch; the test split is evaluated once, at the end."""
    from cbmctl.runs import read_yaml
    if options["evaluate_run_dir"]:
        return _evaluate(options)
    if options["resume"]:
        spec = read_yaml(Path(options["resume"]) / "config.yaml")
        _apply_file(ctx, options, spec)
    elif options["config_file"]:
        _apply_file(ctx, options, read_yaml(options["config_file"]))
    from cbmctl.pipeline import run_train
    result, rows = run_train(options, log=None if options["quiet"] or options["as_json"] else _echo_err)
    if options["as_json"]:
        import json
        return print_json(json.loads((result.run_dir / "metrics.json").read_text()))
    _render(result, rows)


def _evaluate(options):
    from cbmctl.pipeline import evaluate_run
    metrics = evaluate_run(options["evaluate_run_dir"], options["device"], options["precision_k"], options["nec"])
    if options["as_json"]:
        return print_json(metrics)
    test = metrics["test"]
    click.echo(f"{options['evaluate_run_dir']}: test top-1 {100 * test['top1']:.2f}, top-5 {100 * test['top5']:.2f}, "
               f"mean/class {100 * test['mean_per_class']:.2f}, NEC {test['nec']:.1f}")


def _echo_err(line):
    click.echo(line, err=True)


def _apply_file(ctx, options, spec):
    """Values from a config file fill every option the command line left at its default."""
    from click.core import ParameterSource
    names = {p.name for p in ctx.command.params}
    for key, value in spec.items():
        name = key.replace("-", "_")
        if name not in names:
            raise click.UsageError(f"unknown option {key!r} in the config file")
        if name not in ("evaluate_run_dir", "config_file", "resume") and \
                ctx.get_parameter_source(name) == ParameterSource.DEFAULT:
            options[name] = value


def _render(result, rows):
    from cbmctl.cli.common import console
    from rich.table import Table
    out = console()
    table = Table(title=f"test split — {result.run_dir}")
    keys = [("top1", "top-1"), ("top5", "top-5"), ("mean_per_class", "mean/class"), ("l0_mean", "L0"),
            ("nec", "NEC"), ("coverage90_mean", "cover@90")]
    extra = sorted({k for row in rows for k in row if k.startswith(("concept_precision", "nec")) and k != "nec"})
    table.add_column("method")
    for _, label in keys + [(k, k.replace("concept_precision", "concept prec")) for k in extra]:
        table.add_column(label, justify="right")
    for row in rows:
        cells = [row["method"]]
        for key in [k for k, _ in keys] + extra:
            if key not in row:
                cells.append("-")
                continue
            mean, std = row[key]["mean"], row[key]["std"]
            percent = key in ("top1", "top5", "mean_per_class") or key.startswith(("concept_precision", "nec"))\
                and key != "nec"
            text = f"{100 * mean:.2f}" if percent else f"{mean:.1f}"
            if len(row["seeds"]) > 1:
                text += f" ± {100 * std:.2f}" if percent else f" ± {std:.1f}"
            cells.append(text)
        table.add_row(*cells)
    out.print(table)
    out.print(f"run: {result.run_dir}  (config.yaml, metrics.json, model.safetensors, curves.png, train.log)")
