"""What the TUI shows, computed from a run directory (model + its cache) or from a cache alone (CMS)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cbmctl.errors import CbmctlError

UNIT_IMAGES = 12  # the top images the concepts screen lists per unit


@dataclass
class InspectData:
    title: str
    source: Path
    mode: str                              # "run" or "cache"
    concepts: list[str]
    classes: list[str]
    matrices: dict[str, np.ndarray]        # name -> (K, C) class × concept
    split: str = "test"
    paths: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None       # (N,)
    predicted: np.ndarray | None = None    # (N,)
    confidence: np.ndarray | None = None   # (N,)
    activations: np.ndarray | None = None  # (N, C): CBL activations (run) or V = cos (cache)
    scores: np.ndarray | None = None       # (N, C): raw CLIP concept scores ψ
    head: np.ndarray | None = None         # (K, C) weights turning the head's inputs into logits
    inputs: np.ndarray | None = None       # (N, C): what the head weighs (standardised activations for a sparse head)
    head_kind: str = "dense"               # "sparse", "dense", or "cms"
    biases: dict[str, np.ndarray] = field(default_factory=dict)  # matrix name -> (K,) bias added to its logits
    summary: dict = field(default_factory=dict)
    dataset_root: Path | None = None
    units: object = None                   # cbmctl.units.UnitsReport (a run with its cache)

    def contributions(self, image: int, class_index: int) -> np.ndarray:
        inputs = self.inputs if self.inputs is not None else self.activations
        return inputs[image] * self.head[class_index]

    def active_concepts(self, image: int, classes: tuple[int, ...] = (), relative: float = 1e-3) -> list[int]:
        """The concepts worth listing for an image, largest first: with a sparse head those with a non-zero
        weight in any of `classes` (the ones that contribute), else the non-zero activations
        (|a_j| > relative · max |a|)."""
        if self.head_kind == "sparse" and classes:
            used = np.flatnonzero((self.head[list(classes)] != 0).any(axis=0))
            size = np.abs(sum(self.contributions(image, k) for k in classes))
            return used[np.argsort(-size[used], kind="stable")].tolist()
        magnitude = np.abs(self.activations[image])
        active = np.flatnonzero(magnitude > relative * magnitude.max())
        return active[np.argsort(-magnitude[active], kind="stable")].tolist()

    def image_path(self, image: int) -> Path | None:
        return self.image_path_of(self.paths[image])

    def image_path_of(self, relative: str) -> Path | None:
        """The file of an image the cache lists by its path under the dataset root (None: not a file)."""
        if self.dataset_root is None or "#" in relative:
            return None
        return self.dataset_root / relative


def load(source: str | Path | None, runs_root: Path = Path("runs"), split: str = "test") -> InspectData:
    """A run directory (default runs/latest) or a cache file."""
    from cbmctl.runs import resolve_run
    if source is not None and str(source).endswith((".h5", ".hdf5")):
        return load_cache(Path(source), split)
    run = resolve_run(str(source) if source else None, runs_root)
    if run.is_file():
        raise CbmctlError(f"{run}: expected a run directory or a .h5 cache")
    return load_run(run, split)


def load_run(run: Path, split: str = "test") -> InspectData:
    from cbmctl import runs
    from cbmctl.explain import Explainer, open_run_cache
    from cbmctl.units import split_outputs, units_of_run
    explainer = Explainer.from_run(run)
    meta = explainer.metadata
    model = explainer.model
    head = model.class_concept_weights().numpy()
    metrics = _read_json(run / runs.METRICS_FILE)
    metrics.pop("history", None)  # per-epoch curves: plotted in curves.png, not tabulated
    if isinstance(meta.get("metrics"), dict):  # a comparison's root: the shown model's own metrics
        metrics = {**meta["metrics"], **metrics}
    config = meta.get("train_config") if isinstance(meta.get("train_config"), dict) else {}
    summary = {"run": str(run), "method": meta.get("method"), "metrics": metrics,
               "train_config": config, "backbone": meta.get("backbone"),
               "concept_set": meta.get("concept_set"), "dataset": meta.get("dataset"), "rows": metrics.get("rows")}
    if isinstance(metrics.get("rows"), list) and len(metrics["rows"]) > 1:
        summary["note"] = (f"a comparison of {len(metrics['rows'])} methods; model shown: {meta.get('method')}, "
                           f"seed {config.get('seed')}")
    kind = f"{model.head_kind} head" + (f", NEC {config.get('nec')}" if model.head_kind == "sparse" else "")
    bias = model.head.bias.detach()
    # z = F (W ψ − μ)/σ + b = (F/σ) W ψ + (b − (F/σ) μ): the bias of the map on ψ
    bias_on_scores = bias - (model.class_concept_weights() / model.activation_std) @ model.activation_mean
    data = InspectData(f"{run.name} — {meta.get('method')}, {kind}", run, "run", explainer.concepts,
                       explainer.classes, {"head": head, "head × CBL (on ψ)": model.effective_weights().numpy()},
                       split=split, head=head, head_kind=model.head_kind, summary=summary,
                       biases={"head": bias.numpy(), "head × CBL (on ψ)": bias_on_scores.numpy()})
    try:
        cache = open_run_cache(meta, run)
    except CbmctlError as error:
        summary["note"] = str(error)
        return data
    images = cache.split(split)
    scores, activations, logits = split_outputs(explainer, images.embeddings)
    probabilities = torch.from_numpy(logits).softmax(dim=1)
    with torch.no_grad():
        data.inputs = model.head_inputs(torch.from_numpy(activations)).numpy()
    data.paths, data.labels = images.paths, images.labels
    data.predicted = logits.argmax(axis=1)
    data.confidence = probabilities.max(dim=1).values.numpy()
    data.activations, data.scores = activations, scores
    data.units = units_of_run(run, explainer, cache, split, images, scores, activations, UNIT_IMAGES)
    data.dataset_root = Path(cache.attrs["dataset_root"])
    return data


def load_cache(path: Path, split: str = "test", concepts: str | None = None) -> InspectData:
    """A cache without a run: the CMS view (T = cos(class, concept); per image V = cos(image, concept))."""
    from cbmctl.cache import open_cache
    from cbmctl.datasets import load_config
    from cbmctl.preflight import resolve_concepts
    cache = open_cache(path)
    root = Path(cache.attrs["dataset_root"])
    config = load_config(root) if root.is_dir() else None
    from cbmctl.datasets import DatasetConfig
    concept_set = resolve_concepts(concepts, config or DatasetConfig(), cache)
    from cbmctl.identity import BACKBONE_RECORD, DATA_RECORD, text_key
    stored = cache.text(text_key(cache.attrs, concept_set.concepts))
    if stored is None:
        raise CbmctlError(f"{path} has no text embeddings for concept set {concept_set.name!r}; run "
                          f"`cbmctl concepts embed {concept_set.name} --cache {path}` first")
    from cbmctl.cms import ConceptMatrixSearch
    images = cache.split(split)
    if len(images.labels) == 0:  # as `cbmctl cms`: no accuracy (nor mean) over no image
        raise CbmctlError(f"{path}: the {split} split is empty; open another `split`")
    cms = ConceptMatrixSearch(np.asarray(stored[1], np.float32), cache.class_embeddings()).score(
        images.embeddings.astype(np.float32))  # the default CMS rule (cos), as `cbmctl cms` and `explain --cms`
    t, v, similarity = cms.t.numpy(), cms.v, cms.scores
    probabilities = (similarity * float(cache.attrs["logit_scale"])).softmax(dim=1)
    summary = {"cache": str(path), "mode": "no run: Concept Matrix Search view (T and V are cosines)",
               "backbone": {k: cache.attrs[k] for k in BACKBONE_RECORD},
               "concept_set": concept_set.record(),
               "dataset": {k: cache.attrs[k] for k in DATA_RECORD}}
    return InspectData(f"{path.name} — CMS", path, "cache", concept_set.concepts, cache.classes,
                       {"T = cos(class, concept)": t}, split=split, paths=images.paths, labels=images.labels,
                       predicted=similarity.argmax(dim=1).numpy(), confidence=probabilities.max(dim=1).values.numpy(),
                       activations=v.numpy(), scores=v.numpy() * float(cache.attrs["logit_scale"]), head=t,
                       head_kind="cms", summary=summary, dataset_root=root)


def _read_json(path: Path) -> dict:
    """A run's metrics for the summary: missing or unreadable is shown as absent, not an error."""
    from cbmctl.runs import read_json
    try:
        data = read_json(path, "metrics file")
    except CbmctlError:
        return {}
    return data if isinstance(data, dict) else {}
