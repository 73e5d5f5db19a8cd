"""`cbmctl explain`: why a trained CBM (or CMS) classifies an image as it does; interventions."""
from __future__ import annotations

import math
from pathlib import Path

import click

from cbmctl.cli.common import Choice, console, print_json


def _assignment(text):
    concept, sep, value = text.rpartition("=")
    if not sep or not concept.strip():
        raise click.BadParameter(f"{text!r}: expected CONCEPT=VALUE")
    try:
        number = float(value)
    except ValueError:
        raise click.BadParameter(f"{text!r}: {value!r} is not a number") from None
    if not math.isfinite(number):  # 1e400 reads as inf: say what was typed, not what float made of it
        raise click.BadParameter(f"{text!r}: {value!r} is not a finite number")
    return concept.strip(), number


def _assignments(texts) -> dict[str, float]:
    """--set values by concept; a concept set twice is refused (which value was meant is not ours to guess)."""
    from cbmctl.errors import CbmctlError
    from cbmctl.sanitize import safe_text
    assignments, seen = {}, {}
    for text in texts:
        concept, value = _assignment(text)
        key = concept.lower()
        if key in seen:
            raise CbmctlError(f"--set {safe_text(seen[key])} and --set {safe_text(concept)} set the same concept twice; "
                              "give one value per concept")
        seen[key] = concept
        assignments[concept] = value
    return assignments


@click.command()
@click.argument("images", nargs=-1)
@click.option("--run", "run_spec", default=None, help="Run directory (default: runs/latest).")
@click.option("--runs-root", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Where runs live (its `latest` is the default run).")
@click.option("--cms", "use_cms", is_flag=True, help="Explain with Concept Matrix Search instead of a trained model.")
@click.option("--top-k", default=10, show_default=True, type=click.IntRange(1),
              help="List at most this many concepts (the rest is summed in the header).")
@click.option("--class", "class_name", default=None, help="Explain this class instead of the predicted one.")
@click.option("--set", "set_values", multiple=True, help="Intervention: CONCEPT=VALUE sets that activation.")
@click.option("--zero", "zero", multiple=True,
              help="Intervention: remove this concept's contribution (its activation set to the mean the head is "
                   "centred on; 0 for a dense head).")
@click.option("--save-edited", default=None, type=click.Path(file_okay=False),
              help="Write a copy of the run whose head no longer uses the --zero concepts.")
@click.option("--model", "-m", default=None, help="Backbone for --cms without a run (default: demo).")
@click.option("--pretrained", "-p", default=None, help="Weights for --model with --cms (a zoo tag or a file).")
@click.option("--concepts", "-c", default=None, help="Concept set for --cms without a run (default: demo).")
@click.option("--classes", default=None, help="Class list for --cms without a run (default: the set's own).")
@click.option("--device", default="auto", show_default=True, help="auto (cuda > mps > cpu), cpu, cuda, cuda:N.")
@click.option("--unit", "units", multiple=True, metavar="CONCEPT",
              help="Instead of images, show the run's unit for CONCEPT: its --top-k most activating images of "
                   "--split, its faithfulness and, with ground truth, the share of them that show it. "
                   "'all' tabulates every unit.")
@click.option("--split", default="test", show_default=True, type=Choice(["train", "val", "test"]),
              help="With --unit: the split whose images are ranked.")
@click.option("--png", default=None, type=click.Path(dir_okay=False),
              help="Also draw the explanations (with --unit: the units' top images) to a PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print the explanations (and errors) as JSON.")
def explain(images, run_spec, runs_root, use_cms, top_k, class_name, set_values, zero, save_edited, model,
            pretrained, concepts, classes, device, units, split, png, as_json):
    """Explain IMAGES: the predicted class, the top classes, and the concepts that contributed most
    (activation × head weight), with each concept's raw CLIP score. Without a run (or with --cms) the
    explanation is Concept Matrix Search's. Unreadable images are reported and skipped.

    With --unit CONCEPT, explain a concept unit instead: the images of the run's cache that activate it most."""
    own_cms = [flag for flag, value in (("--model", model), ("--pretrained", pretrained), ("--concepts", concepts),
                                        ("--classes", classes)) if value]
    if units:
        unused = [flag for flag, value in (("--cms", use_cms), *((flag, True) for flag in own_cms),
                                           ("--class", class_name is not None), ("--set", set_values),
                                           ("--zero", zero), ("--save-edited", save_edited)) if value]
        if unused:  # they choose how images are explained: with --unit they would change nothing, silently
            raise click.UsageError(f"--unit shows the concept units of a run; drop {', '.join(unused)}")
        return _explain_units(list(units), images, run_spec, runs_root, split, top_k, png, as_json)
    assignments = _assignments(set_values)
    if not images and not save_edited:
        raise click.UsageError("give at least one IMAGE")
    run_dir, use_cms = _choose_run(run_spec, runs_root, use_cms, own_cms)
    if save_edited:
        if run_dir is None or not zero:
            raise click.UsageError("--save-edited needs a run and at least one --zero CONCEPT")
        from cbmctl.explain import save_edited_run
        target = save_edited_run(run_dir, list(zero), Path(save_edited))
        click.echo(f"wrote {target}: {run_dir.name} without {', '.join(zero)}; score it with "
                   f"`cbmctl train --evaluate {target}`")
        return
    if not images:
        raise click.UsageError("give at least one IMAGE")
    if (assignments or zero) and use_cms:
        raise click.UsageError("interventions (--set/--zero) need a trained run, not --cms")
    _check_first(images, run_dir if not use_cms else None, [*zero, *assignments], class_name, png)
    from cbmctl.explain import explain_with_cms, explain_with_run
    if use_cms:
        explained = explain_with_cms(list(images), run_dir, model, pretrained, concepts, classes, device, top_k,
                                     class_name, log=lambda line: click.echo(line, err=True))
    else:
        explained = explain_with_run(run_dir, list(images), device, top_k, class_name, assignments, list(zero))
    if as_json:
        print_json({"run": str(run_dir) if run_dir and not use_cms else None, "method": "cms" if use_cms else "cbm",
                    "explanations": [r.as_dict() for r in explained.results],
                    "errors": [{"image": k, "error": v} for k, v in explained.errors.items()]}, strict=True)
    else:
        _render(explained)
    if png and explained.results:
        from cbmctl.render import explanation_figure
        explanation_figure(explained.results, Path(png))
        if not as_json:
            click.echo(f"wrote {png}")
    if explained.errors:
        raise SystemExit(1)


def _choose_run(run_spec, runs_root, use_cms: bool, own_cms: list[str]):
    """(the run to explain with or borrow for --cms, or None; whether CMS explains): the CMS options given
    (`own_cms`, as flags) never silently lose to a run, and falling back to CMS for want of a run is said."""
    from cbmctl.errors import CbmctlError
    from cbmctl.runs import resolve_run
    if use_cms and own_cms and run_spec:
        raise click.UsageError(f"--cms on --run uses the run's backbone, concepts and classes: drop "
                               f"{', '.join(own_cms)}, or --run for a CMS of your own")
    if use_cms and own_cms:
        return None, True
    try:  # --cms alone borrows the run's backbone, concepts and classes when there is one
        run_dir = resolve_run(run_spec, Path(runs_root))
    except CbmctlError:
        if run_spec:
            raise
        # falling back to CMS is said here; which backbone, concepts and classes, by the library that picks them
        click.echo(f"note: no run under {runs_root}: explaining with Concept Matrix Search"
                   + ("" if own_cms else " (pass --run, or --model/--concepts/--classes for your own)"), err=True)
        return None, True  # no run yet: CMS needs no training
    if not use_cms and own_cms:
        several = len(own_cms) > 1
        raise click.UsageError(f"{', '.join(own_cms)} {'choose' if several else 'chooses'} what --cms explains with: "
                               f"add --cms, or drop {'them' if several else 'it'} to explain with the run")
    return run_dir, use_cms


def _check_first(images, run_dir, concepts, class_name, png) -> None:
    """Every mistake findable without torch, found before it loads (seconds): an empty --class, a --png that
    cannot be written, images none of which exists, concept and class names the run does not have."""
    from cbmctl.preflight import check_images_exist, check_run_names
    if class_name is not None and not class_name.strip():
        raise click.UsageError("--class needs a class name (without it the predicted class is explained)")
    if png:
        from cbmctl.render import check_figure_path
        check_figure_path(png)
    check_images_exist(images)
    if run_dir is not None:
        check_run_names(run_dir, concepts, [class_name] if class_name else [])


def _render(explained):
    from cbmctl.render import explanation_table, intervention_table, top_classes_line
    out = console()
    for i, result in enumerate(explained.results):
        out.print(explanation_table(result))
        # untrusted names: neither markup nor rich's highlighter (whose regexes take seconds on a long name)
        out.print(top_classes_line(result), markup=False, highlight=False)
        if explained.interventions is not None:
            before, after = explained.interventions
            out.print(intervention_table(explained.classes, before[i], after[i]))
        out.print()
    from cbmctl.sanitize import safe_text
    for image, error in explained.errors.items():
        click.echo(safe_text(f"Error: {image}: {error}"), err=True)


def _explain_units(names, images, run_spec, runs_root, split, top_k, png, as_json):
    """`explain --unit`: concept units of a run, as text, JSON and a PNG grid."""
    from cbmctl.preflight import check_run_names
    from cbmctl.runs import resolve_run
    if images:
        raise click.UsageError("--unit shows concept units of a run; give no IMAGES with it")
    run_dir = resolve_run(run_spec, Path(runs_root))
    named = [name for name in names if name.strip().lower() != "all"]
    check_run_names(run_dir, named)
    if png:
        from cbmctl.render import check_figure_path
        check_figure_path(png)
    from cbmctl.units import concept_units, order_by_use
    report = concept_units(run_dir, split, top_k, log=None if as_json else lambda line: click.echo(line, err=True))
    every = len(named) < len(names)
    chosen = order_by_use(report.units) if every else [report.unit(name) for name in named]
    if as_json:
        print_json({**report.as_dict(), "units": [unit.as_dict() for unit in chosen]}, strict=True)
    else:
        _render_units(report, chosen, every)
    if png:
        from cbmctl.render_units import PNG_UNITS, units_figure
        drawn = [unit for unit in chosen if unit.classes_using] or chosen if every else chosen
        if len(drawn) > PNG_UNITS:
            click.echo(f"note: the PNG shows the {PNG_UNITS} most used of {len(drawn)} units", err=True)
        units_figure(report, drawn, Path(png))
        if not as_json:
            click.echo(f"wrote {png}")


def _render_units(report, chosen, every: bool) -> None:
    from cbmctl.render_units import unit_images_table, units_summary_table
    from cbmctl.sanitize import safe_text
    out = console()
    if every:
        out.print(units_summary_table(report, chosen))
    else:
        for unit in chosen:
            out.print(unit_images_table(report, unit))
            out.print()
    for note in report.notes:
        click.echo(safe_text(f"note: {note}"), err=True)
