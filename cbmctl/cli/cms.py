"""`cbmctl cms`: training-free Concept Matrix Search against zero-shot and the baselines."""
from __future__ import annotations

import click

from cbmctl.cli.common import Choice, allow_outside_root_option, backbone_options, console, echo_warning, print_json
from cbmctl.sanitize import safe_text as _shown


@click.command()
@click.argument("data", required=False)
@click.option("--dataset", "dataset_option", default=None, help="Same as DATA: a dataset folder or name, or a cache.")
@backbone_options
@click.option("--concepts", "-c", default=None, help="Concept set NAME or PATH (default as in train).")
@click.option("--cache", "cache_path", default=None, type=click.Path(dir_okay=False),
              help="Cache file to read (made by embedding DATA when it does not exist yet).")
@click.option("--data-root", default=None, envvar="CBMCTL_DATA",
              help="Where known dataset names (cifar10, cub, ...) live. [env CBMCTL_DATA; default ./data]")
@click.option("--split", default="test", show_default=True, type=Choice(["train", "val", "test"]),
              help="Split to evaluate (the centred variant always centres with train).")
@click.option("--per-class", is_flag=True, help="Add per-class accuracy.")
@click.option("--no-random-control", is_flag=True, help="Skip the random-word control (it needs the backbone).")
@click.option("--json", "as_json", is_flag=True, help="Print the report (every row, notes, device) as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@allow_outside_root_option
def cms(data, dataset_option, model, pretrained, device, concepts, cache_path, data_root, split, per_class,
        no_random_control, as_json, quiet, allow_outside_root):
    """Concept Matrix Search: predict argmax_c sim(V_i, T_c) from V = cos(image, concepts) and
    T = cos(class names, concepts), in the paper's variants and cbmctl's centred one (V centred with the
    train split's mean), next to zero-shot CLIP, a description baseline and a random-concept control, on
    one split (test by default). No training."""
    from cbmctl.preflight import plan_cache
    log = None if as_json or quiet else (lambda line: click.echo(line, err=True))
    # every mistake in the arguments is found before torch loads (seconds)
    plan = plan_cache(data or dataset_option, model=model, pretrained=pretrained, cache_path=cache_path,
                      data_root=data_root, allow_outside_root=bool(allow_outside_root))
    from cbmctl.preflight import check_concepts
    check_concepts(concepts, plan)
    from cbmctl.backbones import resolve_device
    from cbmctl.cms import cms_report
    from cbmctl.pipeline import resolve_cache
    from cbmctl.preflight import resolve_concepts
    resolved = resolve_device(device)
    cache, config = resolve_cache(data or dataset_option, device=resolved, log=log, plan=plan,
                                  warn=echo_warning)
    concept_set = resolve_concepts(concepts, config, cache)
    if log and device.lower() == "auto":
        log(f"device: {resolved} (--device auto)")
    report = cms_report(cache, concept_set, split, per_class, not no_random_control, device=resolved, log=log)
    for warning in report["warnings"]:
        echo_warning(f"warning: {warning}")
    if as_json:
        return print_json(report)
    from rich.table import Table
    from rich.text import Text
    backbone = report["backbone"]
    table = Table(title=Text(f"{split} split: {report['images']} images, {report['classes']} classes, "
                             f"{len(concept_set.concepts)} concepts ({_shown(concept_set.name)}), backbone "
                             f"{_shown(backbone['model'])} ({_shown(backbone['pretrained'])})"))
    table.add_column("method", no_wrap=True)
    table.add_column("top-1", justify="right")
    table.add_column("mean/class", justify="right")
    for row in report["rows"]:
        name = row["method"] + (" (transductive)" if row["transductive"] else "")
        table.add_row(name, f"{100 * row['top1']:.2f}", f"{100 * row['mean_per_class']:.2f}")
    out = console()
    out.print(table)
    for note in report["notes"]:
        out.print(f"note: {_shown(note)}", markup=False)
    if per_class:
        detail = Table("class", *[r["method"] for r in report["rows"]], title="per-class top-1")
        for k, name in enumerate(cache.classes):
            detail.add_row(Text(_shown(name)), *[("-" if r["per_class"][k] is None else f"{100 * r['per_class'][k]:.1f}")
                                                 for r in report["rows"]])
        out.print(detail)
