"""`cbmctl train`: a Concept Bottleneck Model (or a baseline, or a comparison) on a dataset's cache.

Every option defaults to "not given"; the values that count are merged as defaults < --config file <
command line and checked by cbmctl.experiment.ExperimentSpec, which also shows the defaults in --help."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from cbmctl.cli.common import Choice, echo_warning, print_json
from cbmctl.spec import CBL_INITS, DEFAULT_MIN_EPOCHS, GUMBEL_FORMS, HEADS, METHODS, OPTIMIZERS, SCHEDULES, TrainConfig

DEFAULTS = {name: str(value) for name, value in asdict(TrainConfig()).items()}


def _option(*flags, name=None, show_default=None, **kwargs):
    """A click option that defaults to None (not given) and shows TrainConfig's default in --help."""
    key = name or flags[0].lstrip("-").replace("-", "_")
    default = show_default or DEFAULTS.get(key)
    if default is not None:
        kwargs["help"] = (kwargs.get("help", "") + f"  [default: {default}]").strip()
    return click.option(*flags, key, default=None, **kwargs)


@click.command()
@click.argument("data", required=False)
@_option("--loss", "-l", type=Choice(METHODS),
         help="CBL objective (gumbel = Sparse-CBM), or a baseline (linear-probe, zero-shot).")
@_option("--gumbel-form", type=Choice(GUMBEL_FORMS),
         help="Sparse-CBM loss as the paper states it, or as its public code computes it.")
@_option("--tau", type=float, help="Gumbel-Softmax temperature.")
@_option("--hard", type=bool, is_flag=True, flag_value=True, help="Straight-through hard Gumbel samples (paper form).")
@_option("--l1-lambda", type=float, help="Strength λ of the l1 objective (λ/C)·Σ|W|.")
@_option("--head", type=Choice(HEADS),
         help="The run's final layer: sparse (elastic-net path, NEC per class, LF-CBM/VLG-CBM) or dense (the paper).")
@_option("--nec", type=click.IntRange(1), help="Sparse head: non-zero weights per class (exactly NEC × classes).")
@_option("--lr", type=float, help="Learning rate of the dense head (the paper: 1e-4).")
@_option("--cbl-lr", type=float, help="Learning rate of the CBL (the paper: 1e-4).")
@_option("--optimizer", type=Choice(OPTIMIZERS), help="Optimizer of both layers.")
@_option("--weight-decay", type=float, help="Weight decay of both optimizers.")
@_option("--schedule", type=Choice(SCHEDULES), help="Learning-rate schedule over --epochs.")
@_option("--epochs", type=click.IntRange(1), help="At most this many epochs.")
@_option("--min-epochs", type=click.IntRange(0), show_default=f"{DEFAULT_MIN_EPOCHS}, or --epochs when fewer",
         help="Never stop before this many epochs.")
@_option("--patience", type=click.IntRange(1), help="Stop after this many epochs without a lower validation loss.")
@_option("--batch-size", type=click.IntRange(1), help="Images per step.")
@_option("--seed", type=int, help="Seed of initialisation, batch order and Gumbel noise.")
@_option("--seeds", help="Several seeds: '0,1,2', or a count ('10' = seeds 0..9); reports mean, 95 % interval "
         "and paired differences.")
@_option("--device", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N.")
@_option("--threads", type=click.IntRange(0), show_default="0: the CPUs this process may use, or $OMP_NUM_THREADS",
         help="torch's CPU threads while training (restored afterwards).")
@_option("--cbl-init", type=Choice(CBL_INITS),
         help="identity: unit j starts as concept j (ours); random: as the reference code.")
@_option("--precision-k", type=click.IntRange(1), help="k of concept precision@k (where ground truth exists).")
@_option("--sparse-alpha", type=float, help="Share of l1 in the sparse head's elastic net.")
@_option("--faithfulness-cutoff", type=float,
         help="The sparse head may only use CBL units whose activation correlates at least this much with their "
              "concept's CLIP score on the train split (LF-CBM's interpretability cutoff); -1 keeps every unit.")
@_option("--concept-map", type=click.Path(exists=True, dir_okay=False),
         help="YAML concept -> attribute name(s), for concept precision on CUB attributes.")
@_option("--compare", help="Train several methods on the same split and seeds: e.g. gumbel,none,linear-probe, or "
         "'all'.")
@_option("--random-concepts", type=bool, is_flag=True, flag_value=True,
         help="Control: replace the concepts by as many random words.")
@_option("--model", "-m", help="Backbone (default: the dataset's cbmctl.yaml, else ViT-L-14).")
@_option("--pretrained", "-p", help="Zoo tag, local weights file, or 'none' (default: the model's first tag).")
@_option("--concepts", "-c", help="Concept set NAME or PATH (default: the dataset's cbmctl.yaml, else the built-in "
         "set named like the dataset).")
@_option("--cache", name="cache_path", type=click.Path(dir_okay=False), help="Cache file to use or make.")
@_option("--data-root", envvar="CBMCTL_DATA", help="Where dataset names (cifar10, cub, ...) live [default: ./data].")
@_option("--out", type=click.Path(file_okay=False), show_default="runs", help="Where run directories go.")
@_option("--allow-outside-root", type=bool, is_flag=True, flag_value=True,
         help="Read images that a manifest or index lists outside the dataset folder (absolute or ../ paths).")
@click.option("--config", "config_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A run's config.yaml (or your own): every option; the command line wins.")
@click.option("--resume", default=None, type=click.Path(exists=True, file_okay=False),
              help="Continue an interrupted run directory with its own options.")
@click.option("--evaluate", "evaluate_run_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="Only score a saved run's model (e.g. from `explain --save-edited`) on its cache.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No per-epoch lines.")
def train(data, config_file, resume, evaluate_run_dir, as_json, quiet, **options):
    """Train a Concept Bottleneck Model on DATA (a dataset folder or name, embedded first if needed) or on a
    CACHE (.h5). Validation loss picks the epoch; then the sparse head is fitted on the frozen CBL; the test
    split is evaluated once, at the end."""
    from cbmctl.runs import read_metrics, read_yaml
    from cbmctl.spec import ExperimentSpec
    given = {k: v for k, v in options.items() if v is not None}
    if data is not None:
        given["data"] = data
    if evaluate_run_dir:
        return _evaluate(_run_dir(evaluate_run_dir), given, as_json)
    if resume:
        resume = _run_dir(resume, interrupted=True)
        allowed = {"device", "threads"}
        changed = sorted(set(given) - allowed)
        if changed:
            raise click.UsageError(f"--resume continues a run with its own options; drop "
                                   f"{', '.join('--' + c.replace('_', '-') for c in changed)}")
        spec = ExperimentSpec.from_mapping({**read_yaml(Path(resume) / "config.yaml"), **given},
                                           str(Path(resume) / "config.yaml"))
    elif config_file:
        from_file = ExperimentSpec.from_mapping(read_yaml(config_file), config_file).as_mapping()
        spec = ExperimentSpec.from_mapping({**from_file, **_command_line_wins(given)})
    else:
        spec = ExperimentSpec.from_mapping(given)
    from cbmctl.pipeline import plan_train
    plan = plan_train(spec)  # every mistake in the arguments is found before torch loads (seconds)
    from cbmctl.preflight import check_concepts
    from cbmctl.runs import check_writable
    check_writable(Path(resume) if resume else Path(spec.out), "the resumed run" if resume else "runs")
    check_concepts(spec.concepts, plan)
    if not resume:
        _mention_interrupted_run(Path(spec.out))
    from cbmctl.cli.common import on_interrupt
    from cbmctl.pipeline import run_train
    from cbmctl.sanitize import safe_text
    on_interrupt("rerun the same command to continue (an embedding resumes from its last finished shard)"
                 if plan.state == "missing" else "no run had started; rerun the same command")
    result = run_train(spec, log=None if quiet or as_json else _echo_err, resume=Path(resume) if resume else None,
                       plan=plan, warn=echo_warning,
                       started=lambda run: on_interrupt(f"`cbmctl train --resume {safe_text(run)}` continues it"))
    if as_json:
        return print_json(read_metrics(result.run_dir))
    _render(result, spec)


def _run_dir(path: str, interrupted: bool = False) -> Path:
    """A run directory, or a folder of runs standing for its latest run (as explain and inspect read it) or,
    to resume, its newest interrupted run; said when a folder was resolved."""
    from cbmctl.runs import resolve_interrupted_run, resolve_run
    from cbmctl.sanitize import safe_text
    run_dir = resolve_interrupted_run(path) if interrupted else resolve_run(path)
    if run_dir != Path(path).resolve():
        which = "newest interrupted" if interrupted else "latest"
        _echo_err(f"{safe_text(path)}: its {which} run, {safe_text(run_dir)}")
    return run_dir


def _mention_interrupted_run(out: Path) -> None:
    """A new run next to an interrupted one: say how to continue that one instead (one line)."""
    from cbmctl.errors import CbmctlError
    from cbmctl.runs import resolve_interrupted_run
    from cbmctl.sanitize import safe_text
    if not out.is_dir():
        return
    try:
        interrupted = resolve_interrupted_run(str(out))
    except (CbmctlError, OSError):
        return
    if interrupted.parent == out.resolve():
        _echo_err(f"note: {safe_text(interrupted)} was interrupted; this starts a new run "
                  f"(`cbmctl train --resume {safe_text(out)}` continues that one)")


def _command_line_wins(given: dict) -> dict:
    """A method or seed flag replaces the file's methods or seeds whichever spelling either used."""
    wins = dict(given)
    if "loss" in wins and "compare" not in wins:
        wins["methods"] = [wins.pop("loss")]
    if "seed" in wins and "seeds" not in wins:
        wins["seeds"] = [wins["seed"]]
    return wins


def _nec_text(spec, rows: list[dict]) -> str:
    """The asked NEC, and what the heads really hold when that differs (fewer units passed the cutoff)."""
    real = [row["nec"]["mean"] for row in rows if "nec" in row]
    if real and abs(min(real) - spec.train.nec) > 1e-6:
        return f"{spec.train.nec} asked, {min(real):.1f} held"
    return str(spec.train.nec)


def _evaluate(run_dir, given, as_json):
    from cbmctl.experiment import evaluate_run
    unknown = sorted(set(given) - {"device", "precision_k"})
    if unknown:
        raise click.UsageError(f"--evaluate scores a saved model; it takes only --device and --precision-k, not "
                               f"{', '.join('--' + u.replace('_', '-') for u in unknown)}")
    from cbmctl.sanitize import safe_text
    metrics = evaluate_run(run_dir, given.get("device", "auto"), int(given.get("precision_k", 5)), warn=echo_warning)
    if as_json:
        return print_json(metrics)
    test = metrics["test"]
    click.echo(f"{safe_text(run_dir)}: test top-1 {100 * test['top1']:.2f}, top-5 {100 * test['top5']:.2f}, "
               f"mean/class {100 * test['mean_per_class']:.2f}, ECE {test['ece']:.3f}, NEC {test['nec']:.1f}")


def _echo_err(line):
    click.echo(line, err=True)


def _render(result, spec):
    from cbmctl.cli.common import console
    from cbmctl.render import compare_table
    from cbmctl.runs import RECORD_FILE, read_json
    from cbmctl.sanitize import safe_text
    out = console()
    from rich.text import Text  # a Text title: names such as "[red]x" are not rich markup
    title = Text(_title(read_json(result.run_dir / RECORD_FILE, "record"), spec, result.rows))
    out.print(compare_table(result.rows, title))
    if any("vs_none" in row for row in result.rows):
        from cbmctl.render import significance_sentence
        out.print("± = half-width of the 95 % interval over seeds. Δ vs none: paired difference in test top-1 (same "
                  "seeds and split); * = significant after Holm's correction over the methods compared.", markup=False)
        for key, what in (("top1", f"test top-1 of the run's head ({spec.train.head})"),
                          ("dense_top1", "test top-1 of the dense head")):
            sentence = significance_sentence(result.rows, key, what)
            if sentence and not (key == "dense_top1" and spec.train.head == "dense"):
                out.print(sentence, markup=False)
    written = sorted(p.name for p in result.run_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    out.print(f"run: {safe_text(result.run_dir)}  ({safe_text(', '.join(written))})", markup=False)


def _title(record: dict, spec, rows: list[dict]) -> str:
    """The table's title; its names come from the cache and the concept file, hence safe_text."""
    from cbmctl.sanitize import safe_text
    backbone = record.get("backbone", {})
    concept_set = record.get("concept_set", {})
    return safe_text(f"test split — {record.get('dataset', {}).get('dataset_name', '')}, backbone "
                     f"{backbone.get('backbone_model')} ({backbone.get('backbone_pretrained')}), concepts "
                     f"{concept_set.get('name')} ({concept_set.get('size')}), head {spec.train.head}"
                     + (f" NEC {_nec_text(spec, rows)}" if spec.train.head == "sparse" else "")
                     + f", seeds {','.join(map(str, spec.seeds))}")
