"""Carving a stratified validation (or, lacking an official one, test) split from train."""
from __future__ import annotations

import numpy as np

from cbmctl.datasets.base import ImageRecord


def stratified_split(records: list[ImageRecord], fraction: float, seed: int):
    """Return (kept, carved) index lists: about `fraction` of each class goes to `carved`.

    Deterministic for a seed; every class with at least two images keeps one in each part."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    labels = np.array([r.label for r in records], dtype=np.int64)
    carved: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        count = int(round(fraction * len(members)))
        if fraction > 0 and len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        else:
            count = 0
        carved.extend(members[:count].tolist())
    carved_set = set(carved)
    kept = [i for i in range(len(records)) if i not in carved_set]
    return kept, sorted(carved)


def carve(dataset, source: str, target: str, fraction: float, seed: int) -> None:
    """Move a stratified `fraction` of `dataset.splits[source]` (and its attribute rows) to `target`."""
    records = dataset.splits[source]
    kept, carved = stratified_split(records, fraction, seed)
    dataset.splits[source] = [records[i] for i in kept]
    dataset.splits[target] = [records[i] for i in carved]
    if dataset.attributes and source in dataset.attributes:
        matrix = dataset.attributes[source]
        dataset.attributes[source] = matrix[kept]
        dataset.attributes[target] = matrix[carved]
