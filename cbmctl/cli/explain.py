"""`cbmctl explain`: why a trained CBM (or CMS) classifies an image as it does; interventions."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import click

from cbmctl.cli.common import console, print_json


def _assignment(text):
    concept, sep, value = text.rpartition("=")
    if not sep or not concept.strip():
        raise click.BadParameter(f"{text!r}: expected CONCEPT=VALUE")
    try:
        return concept.strip(), float(value)
    except ValueError:
        raise click.BadParameter(f"{text!r}: {value!r} is not a number") from None


@click.command()
@click.argument("images", nargs=-1)
@click.option("--run", "run_spec", default=None, help="Run directory (default: runs/latest).")
@click.option("--runs-root", default="runs", show_default=True, type=click.Path(file_okay=False))
@click.option("--cms", "use_cms", is_flag=True, help="Explain with Concept Matrix Search instead of a trained model.")
@click.option("--top-k", default=10, show_default=True, type=click.IntRange(1))
@click.option("--class", "class_name", default=None, help="Explain this class instead of the predicted one.")
@click.option("--set", "set_values", multiple=True, help="Intervention: CONCEPT=VALUE sets that activation.")
@click.option("--zero", "zero", multiple=True, help="Intervention: zero this concept's activation.")
@click.option("--save-edited", default=None, type=click.Path(file_okay=False),
              help="Write a copy of the run whose head no longer uses the --zero concepts.")
@click.option("--model", "-m", default=None, help="Backbone for --cms without a run (default: demo).")
@click.option("--pretrained", "-p", default=None)
@click.option("--concepts", "-c", default=None, help="Concept set for --cms without a run (default: demo).")
@click.option("--classes", default=None, help="Class list for --cms without a run (default: the set's own).")
@click.option("--device", default="auto", show_default=True)
@click.option("--png", default=None, type=click.Path(dir_okay=False), help="Also draw the explanations to a PNG.")
@click.option("--json", "as_json", is_flag=True)
def explain(images, run_spec, runs_root, use_cms, top_k, class_name, set_values, zero, save_edited, model,
            pretrained, concepts, classes, device, png, as_json):
    """Explain IMAGES: the predicted class, the top classes, and the concepts that contributed most
    (activation × head weight), with each concept's raw CLIP score. Without a run (or with --cms) the
    explanation is Concept Matrix Search's. Unreadable images are reported and skipped."""
    from cbmctl.errors import CbmctlError
    from cbmctl.runs import resolve_run
    assignments = dict(_assignment(t) for t in set_values)
    run_dir = None
    if not use_cms or not (model or concepts):
        # --cms alone borrows the run's backbone and concepts when there is one
        try:
            run_dir = resolve_run(run_spec, Path(runs_root))
        except CbmctlError:
            if run_spec:
                raise
            use_cms = True  # no run yet: CMS needs no training
    if save_edited:
        if run_dir is None or not zero:
            raise click.UsageError("--save-edited needs a run and at least one --zero CONCEPT")
        return _save_edited(run_dir, list(zero), Path(save_edited))
    if not images:
        raise click.UsageError("give at least one IMAGE")
    if (assignments or zero) and use_cms:
        raise click.UsageError("interventions (--set/--zero) need a trained run, not --cms")
    explainer, interventions = None, None
    if use_cms:
        results, errors = _cms(images, run_dir, model, pretrained, concepts, classes, device, top_k, class_name)
    else:
        results, errors, explainer, interventions = _cbm(images, run_dir, device, top_k, class_name, assignments,
                                                         list(zero))
    if as_json:
        print_json({"run": str(run_dir) if run_dir and not use_cms else None, "method": "cms" if use_cms else "cbm",
                    "explanations": [r.as_dict() for r in results],
                    "errors": [{"image": k, "error": v} for k, v in errors.items()]})
    else:
        _render(results, errors, None if use_cms else interventions, explainer)
    if png and results:
        from cbmctl.render import explanation_figure
        explanation_figure(results, Path(png))
        if not as_json:
            click.echo(f"wrote {png}")
    if errors:
        raise SystemExit(1)


def _cbm(images, run_dir, device, top_k, class_name, assignments, zero):
    from cbmctl.backbones import load_recorded_backbone
    from cbmctl.explain import Explainer, embed_images
    explainer = Explainer.from_run(run_dir)
    backbone = load_recorded_backbone(explainer.metadata["backbone"], run_dir, device)
    features, names, errors = embed_images(backbone, list(images))
    if not names:
        return [], errors, explainer, None
    results = explainer.explain(features, names, top_k, class_name)
    interventions = None
    if assignments or zero:
        before_a, before_logits, after_a, after_logits = explainer.intervene(features, assignments, zero)
        after = explainer.explain(features, names, top_k, class_name, activations_override=after_a)
        for result, edited in zip(results, after):
            result.intervention = {"set": assignments, "zero": zero, "predicted_after": edited.predicted,
                                   "probability_after": edited.probability,
                                   "explained_logit_after": edited.logit}
        interventions = (before_logits, after_logits)
    return results, errors, explainer, interventions


def _cms(images, run_dir, model, pretrained, concepts, classes, device, top_k, class_name):
    from cbmctl.backbones import load_backbone, load_recorded_backbone
    from cbmctl.concepts import builtin_classes, load_class_list, load_concept_set
    from cbmctl.explain import cms_explain, embed_images
    if run_dir is not None:
        meta = json.loads((run_dir / "model.json").read_text())
        backbone = load_recorded_backbone(meta["backbone"], run_dir, device)
        concept_list, class_list = meta["concepts"], meta["classes"]
    else:
        concept_set = load_concept_set(concepts or "demo")
        concept_list = concept_set.concepts
        class_list = load_class_list(classes) if classes else builtin_classes(concept_set.name)
        if not class_list:
            raise click.UsageError(f"--classes is needed: no built-in class list goes with {concept_set.name!r}")
        backbone = load_backbone(model or "demo", pretrained, device)
    features, names, errors = embed_images(backbone, list(images))
    if not names:
        return [], errors
    concept_vectors = backbone.encode_texts(concept_list)
    class_vectors = backbone.encode_prompts(class_list, ["a photo of a {}."])
    return cms_explain(features, names, concept_list, class_list, concept_vectors, class_vectors,
                       backbone.logit_scale, top_k, class_name), errors


def _render(results, errors, interventions, explainer):
    from cbmctl.render import explanation_table, intervention_table, top_classes_line
    out = console()
    for i, result in enumerate(results):
        out.print(explanation_table(result))
        out.print(top_classes_line(result), markup=False)
        if interventions is not None:
            before, after = interventions
            out.print(intervention_table(explainer.classes, before[i], after[i]))
        out.print()
    for image, error in errors.items():
        click.echo(f"Error: {image}: {error}", err=True)


def _save_edited(run_dir: Path, concepts: list[str], target: Path):
    from cbmctl.explain import Explainer
    from cbmctl.model import save_model
    if target.exists():
        raise click.ClickException(f"{target} exists; choose a new directory")
    explainer = Explainer.from_run(run_dir)
    edited = explainer.without_concepts(concepts)
    target.mkdir(parents=True)
    for name in ("config.yaml", "record.json"):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, target / name)
    metadata = {**explainer.metadata, "edited": {"from": str(run_dir), "removed_concepts": concepts}}
    metadata.pop("metrics", None)
    save_model(target, edited, metadata, {"concept_vectors": explainer.concept_vectors,
                                          "class_vectors": explainer.class_vectors})
    click.echo(f"wrote {target}: {run_dir.name} without {', '.join(concepts)}; score it with "
               f"`cbmctl train --evaluate {target}`")
