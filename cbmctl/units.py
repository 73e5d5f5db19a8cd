"""Concept units inspected: what each CBL unit responds to, as Label-free CBM and VLG-CBM show it.

For every unit j of a run (read as concept j): the images of a split that activate it most, its
faithfulness (the correlation of its activation with concept j's own CLIP score ψ_j over the train split,
the number the sparse head's cutoff reads), how much the head uses it, how often it is among an image's five
strongest units, and — where the dataset has ground-truth attributes — the share of its top images that
really show the concept, next to the share of all the split's images that do (the rate a unit that
ignored its concept would reach). Data only; cbmctl.render and cbmctl.report draw it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cbmctl.errors import CbmctlError
from cbmctl.suggest import did_you_mean

TOP_RANK = 5        # a unit "in an image's top 5" is among its five strongest activations
CHUNK = 8192        # images per forward pass: memory stays at CHUNK × concepts whatever the split's size


@dataclass
class UnitImage:
    index: int                  # row in the split
    path: str                   # relative to the dataset root ("batch#row" for array-backed formats)
    label: str                  # the image's true class
    activation: float           # a_j
    score: float                # ψ_j, the raw CLIP score of the concept
    shows: bool | None = None   # ground truth: the image shows the concept (None: not known)


@dataclass
class Unit:
    concept: str
    index: int
    faithfulness: float         # corr(a_j, ψ_j) over the train split
    offered: bool               # faithfulness ≥ the run's cutoff: the sparse head may use the unit
    classes_using: int          # classes whose head row gives the unit a non-zero weight
    weight_mass: float          # Σ_c |F[c, j]|
    top5_rate: float            # share of the split's images with the unit among their 5 strongest
    truth_share: float | None   # share of the top images that show the concept (None: no ground truth)
    truth_rate: float | None    # share of all the split's images that show it
    top: list[UnitImage] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class UnitsReport:
    run: str
    split: str
    images: int
    cutoff: float
    head: str
    units: list[Unit]
    dataset_root: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def unit(self, concept: str) -> Unit:
        lowered = concept.strip().lower()
        for unit in self.units:
            if unit.concept.lower() == lowered:
                return unit
        raise CbmctlError(f"concept {concept!r} is not in the run's concept set"
                          + did_you_mean(concept, [u.concept for u in self.units]))


class ColumnCorrelation:
    """Pearson correlation of x[:, j] with y[:, j] for every column j, accumulated over row chunks in
    float64 (a split need not fit in memory)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.double(), y.double()
        for name, value in (("x", x), ("xx", x * x), ("y", y), ("yy", y * y), ("xy", x * y)):
            total = value.sum(0)
            self.sums[name] = self.sums[name] + total if name in self.sums else total
        self.count += x.shape[0]

    def result(self) -> torch.Tensor:
        if not self.count:
            raise CbmctlError("no images to correlate over")
        n, s = self.count, self.sums
        mean_x, mean_y = s["x"] / n, s["y"] / n
        var_x = (s["xx"] / n - mean_x ** 2).clamp_min(0)
        var_y = (s["yy"] / n - mean_y ** 2).clamp_min(0)
        return ((s["xy"] / n - mean_x * mean_y) / (var_x * var_y).sqrt().clamp_min(1e-30)).float()


def faithfulness(explainer, chunks) -> torch.Tensor:
    """(C,) corr(a_j, ψ_j) over the image embeddings in `chunks` (the train split, as training's cutoff)."""
    correlation = ColumnCorrelation()
    for chunk in chunks:
        scores, activations, _ = explainer.forward(torch.as_tensor(chunk))
        correlation.add(activations, scores)
    return correlation.result()


def unit_statistics(activations: np.ndarray, head: np.ndarray) -> dict[str, np.ndarray]:
    """Per unit: classes using it, Σ|F[:, j]|, and how often it is among an image's TOP_RANK strongest."""
    n, c = activations.shape
    rank = min(TOP_RANK, c)
    top = np.argpartition(-activations, rank - 1, axis=1)[:, :rank] if n else np.zeros((0, rank), int)
    counts = np.bincount(top.ravel(), minlength=c)
    return {"classes_using": (head != 0).sum(0), "weight_mass": np.abs(head).sum(0),
            "top5_rate": counts / max(n, 1)}


def top_images(activations: np.ndarray, k: int) -> np.ndarray:
    """(C, k') rows of the k most activating images of each unit, strongest first (k' = min(k, N))."""
    k = min(k, activations.shape[0])
    if k == 0:
        return np.zeros((activations.shape[1], 0), dtype=int)
    part = np.argpartition(-activations, k - 1, axis=0)[:k].T
    order = np.argsort(-np.take_along_axis(activations.T, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def build_units(concepts, classes, activations, scores, head, labels, paths, faithful, cutoff: float,
                truth=None, k: int = 10) -> list[Unit]:
    """Units from a split's activations and ψ (N×C), the head's F (K×C), labels and paths, the train-split
    faithfulness (C,) and ground truth (N×C booleans or None)."""
    stats = unit_statistics(activations, head)
    best = top_images(activations, k)
    units = []
    for j, concept in enumerate(concepts):
        rows = best[j].tolist()
        known = truth is not None and bool(truth[:, j].any())
        shown = [UnitImage(i, paths[i], classes[int(labels[i])], float(activations[i, j]), float(scores[i, j]),
                           bool(truth[i, j]) if known else None) for i in rows]
        units.append(Unit(concept, j, float(faithful[j]), bool(faithful[j] >= cutoff), int(stats["classes_using"][j]),
                          float(stats["weight_mass"][j]), float(stats["top5_rate"][j]),
                          float(np.mean([u.shows for u in shown])) if known and shown else None,
                          float(truth[:, j].mean()) if known else None, shown))
    return units


def run_truth(run_dir: Path, cache, split_data, concepts) -> tuple[np.ndarray | None, list[str]]:
    """(N×C ground truth of the split or None, notes): the demo world maps itself; other datasets through the
    concept map the run was trained with (its config.yaml's concept_map)."""
    from cbmctl.concept_truth import read_mapping, truth_matrix
    notes, mapping = [], None
    config = Path(run_dir) / "config.yaml"
    if config.is_file():
        from cbmctl.runs import read_yaml
        named = read_yaml(config).get("concept_map")
        if isinstance(named, str):
            if Path(named).is_file():
                mapping = read_mapping(named)
            else:
                notes.append(f"the run's concept map {named} is missing: no ground truth")
                return None, notes
    truth = truth_matrix(cache.attribute_names, split_data.attributes, concepts, mapping)
    if truth is None:
        notes.append("no ground truth for these concepts (no attribute annotations mapped to them)")
    return truth, notes


def run_faithfulness(explainer, cache, log=None) -> torch.Tensor:
    """faithfulness over the cache's train split; `log` hears of progress when it takes a while."""
    from cbmctl.logs import Progress
    progress = Progress(log, cache.counts().get("train", 0), "faithfulness over the train split")
    return faithfulness(explainer, progress.iterate(cache.embedding_chunks("train", CHUNK)))


def split_outputs(explainer, embeddings: np.ndarray, log=None):
    """(ψ, activations, logits) of a split's embeddings as float32 numpy arrays, CHUNK images at a time."""
    from cbmctl.logs import Progress
    progress = Progress(log, len(embeddings), "the model over the split")
    parts = [explainer.forward(torch.from_numpy(chunk.astype(np.float32)))
             for chunk in progress.iterate(embeddings[s:s + CHUNK] for s in range(0, len(embeddings), CHUNK))]
    if not parts:
        c, k = len(explainer.concepts), len(explainer.classes)
        return np.zeros((0, c), np.float32), np.zeros((0, c), np.float32), np.zeros((0, k), np.float32)
    return tuple(torch.cat([p[i] for p in parts]).numpy() for i in range(3))


def concept_units(run_dir, split: str = "test", k: int = 10, log=None) -> UnitsReport:
    """Every unit of a run on one split of its cache: see the module docstring."""
    from cbmctl.explain import Explainer, open_run_cache
    from cbmctl.logs import sayer
    say = sayer(log)
    run_dir = Path(run_dir)
    explainer = Explainer.from_run(run_dir)
    cache = open_run_cache(explainer.metadata, run_dir)
    data = cache.split(split)
    say(f"units: {len(explainer.concepts)} concepts over the {len(data.labels)} {split} images; faithfulness over "
        f"the {cache.counts().get('train', 0)} train images")
    scores, activations, _ = split_outputs(explainer, data.embeddings, log)
    return units_of_run(run_dir, explainer, cache, split, data, scores, activations, k, log)


def units_of_run(run_dir, explainer, cache, split: str, data, scores, activations, k: int, log=None) -> UnitsReport:
    """concept_units from a split already read (SplitData) and passed through the model (ψ, activations)."""
    truth, notes = run_truth(run_dir, cache, data, explainer.concepts)
    config = explainer.metadata.get("train_config") if isinstance(explainer.metadata.get("train_config"), dict) else {}
    cutoff = float(config.get("faithfulness_cutoff", -1.0)) if explainer.model.head_kind == "sparse" else -1.0
    head = explainer.model.class_concept_weights().numpy()
    units = build_units(explainer.concepts, explainer.classes, activations, scores, head, data.labels, data.paths,
                        run_faithfulness(explainer, cache, log).numpy(), cutoff, truth, k)
    return UnitsReport(str(run_dir), split, int(len(data.labels)), cutoff, explainer.model.head_kind, units,
                       str(cache.attrs.get("dataset_root", "")) or None, notes)


def order_by_use(units: list[Unit]) -> list[Unit]:
    """Most used first (classes using it, then weight), then the most faithful."""
    return sorted(units, key=lambda u: (-u.classes_using, -u.weight_mass, -u.faithfulness))
