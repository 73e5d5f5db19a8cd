"""The newcomer's tour, offline on 2 CPU cores: demo world -> embed -> train a Sparse-CBM -> CMS ->
explain one image, each stage reusing what a previous run left."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cbmctl.errors import CbmctlError

# What a newcomer sees first is the world calibrated to CLIP on CUB (issue 18), not the easy default one.
QUICKSTART_PRESET = "cub-like"


@dataclass
class Quickstart:
    root: Path
    world: Path = None
    cache: Path = None
    run: Path = None

    def __post_init__(self):
        self.world = self.world or self.root / "data" / "demo"
        self.runs = self.root / "runs"
        self.run = self.run or self.runs / "quickstart-gumbel"


def run_quickstart(root: Path, say=None, progress: bool = True) -> dict:
    """The five stages, each a line on `say` (and the result of each reused when a previous run left it)."""
    from cbmctl.logs import sayer
    say = sayer(say)
    plan = Quickstart(Path(root))
    say("[1/5] demo world")
    _make_world(plan, say)
    say("[2/5] embed with the shipped demo CLIP")
    backbone = _embed(plan, say, progress)
    say("[3/5] train a Sparse-CBM (gumbel loss)")
    test = _train(plan, say, progress)
    say("[4/5] Concept Matrix Search (training-free)")
    cache, cms = _cms(plan, say)
    say("[5/5] explain one test image")
    image, explanation = _explain_one(plan, cache, backbone, say)
    return {"world": str(plan.world), "cache": str(plan.cache), "run": str(plan.run), "image": image,
            "test": test, "cms": cms["rows"], "explanation": explanation.as_dict()}


def _make_world(plan: Quickstart, say) -> None:
    from cbmctl.demo.world import make_world
    if (plan.world / "images.txt").is_file():
        say(f"      reusing {plan.world}")
        return
    make_world(plan.world, seed=0, preset=QUICKSTART_PRESET)
    from cbmctl.demo.presets import resolve_spec
    from cbmctl.demo.species import world_species
    spec = resolve_spec(QUICKSTART_PRESET)
    say(f"      made {plan.world} ({QUICKSTART_PRESET} preset: {len(world_species(0, spec.species)[0])} species × "
        f"{spec.train_per_class + spec.test_per_class} images, CUB layout, ground-truth attributes, "
        f"an LLM-like concept set)")


def _embed(plan: Quickstart, say, progress: bool):
    """The world's cache, made with the demo CLIP; the CLIP, which explains an image later."""
    from cbmctl.backbones import load_backbone
    from cbmctl.datasets import load_dataset
    from cbmctl.demo.backbone import DEMO_MODEL
    from cbmctl.embed import default_cache_path, embed_dataset
    dataset = load_dataset(plan.world)
    backbone = load_backbone(DEMO_MODEL, None, "cpu")
    # the same file `cbmctl embed/train data/demo` use when run from the quickstart directory
    plan.cache = default_cache_path(dataset, DEMO_MODEL, None, plan.root / "cache")
    report = embed_dataset(dataset, backbone, plan.cache, workers=0, progress=progress)
    say(f"      {report.status}: {plan.cache} ({', '.join(f'{k} {v}' for k, v in report.counts.items())})")
    return backbone


def _train(plan: Quickstart, say, progress: bool = True) -> dict:
    """The trained run's test metrics."""
    from cbmctl import runs
    from cbmctl.pipeline import run_train
    from cbmctl.spec import ExperimentSpec
    if runs.is_finished(plan.run) and (plan.run / runs.WEIGHTS_FILE).is_file():
        say(f"      reusing {plan.run}")
        metrics = runs.read_metrics(plan.run)
    else:
        if plan.run.exists():
            raise CbmctlError(f"{plan.run} is an unfinished run; remove it or resume it with "
                              f"`cbmctl train --resume {plan.run}`")
        # `cbmctl train`'s defaults, from the one specification both use
        spec = ExperimentSpec.from_mapping({"data": str(plan.world), "cache_path": str(plan.cache),
                                            "out": str(plan.runs), "device": "cpu"})
        # per-epoch lines stay in the run's train.log; the tour shows the outcome, and a line now and then
        # while it trains (indented less than the tour's own lines)
        from cbmctl.logs import throttled
        result = run_train(spec, throttled(say, prefix="   · ") if progress else None, run_dir=plan.run, warn=say)
        metrics = runs.read_metrics(result.run_dir)
    runs.point_latest(plan.runs, plan.run)
    test = metrics["test"]
    say(f"      test top-1 {100 * test['top1']:.2f} % with the sparse head (NEC {test['nec']:g} concepts per class; "
        f"dense head {100 * test['dense_top1']:.2f} %), concept precision@5 "
        f"{100 * test.get('concept_precision@5', float('nan')):.1f} %")
    return test


def _cms(plan: Quickstart, say):
    """(the cache, CMS's report on its test split)."""
    from cbmctl.cache import open_cache
    from cbmctl.cms import cms_report
    from cbmctl.datasets import load_config
    from cbmctl.preflight import resolve_concepts
    cache = open_cache(plan.cache)
    concept_set = resolve_concepts(None, load_config(plan.world), cache)
    cms = cms_report(cache, concept_set, "test", random_control=True)
    best = {row["method"]: row["top1"] for row in cms["rows"]}
    say(f"      CMS cos {100 * best['CMS cos']:.2f} %, centred CMS (ours) {100 * best['CMS cos, centred']:.2f} %, "
        f"zero-shot CLIP {100 * best['zero-shot CLIP']:.2f} %")
    return cache, cms


def _explain_one(plan: Quickstart, cache, backbone, say):
    """(an image's path, its explanation): the first test image the run classifies correctly (else the first)."""
    from cbmctl.explain import Explainer, embed_images
    from cbmctl.render import is_absence
    explainer = Explainer.from_run(plan.run)
    test_split = cache.split("test")
    _, _, logits = explainer.forward(__import__("torch").from_numpy(test_split.embeddings.astype("float32")))
    correct = (logits.argmax(dim=1).numpy() == test_split.labels).nonzero()[0]
    image = str(plan.world / test_split.paths[int(correct[0]) if len(correct) else 0])
    features, names, _ = embed_images(backbone, [image])
    explanation = explainer.explain(features, names, top_k=5)[0]
    say(f"      {Path(image).name}: predicted {explanation.predicted} (p={explanation.probability:.2f}); top concepts: "
        + ", ".join(f"{row.concept}{' (absent)' if is_absence(explanation, row) else ''} ({row.contribution:+.2f})"
                    for row in explanation.concepts))
    return image, explanation
