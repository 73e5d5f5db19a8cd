"""What training hands back for one model or baseline."""
from __future__ import annotations

from dataclasses import dataclass, field

from cbmctl.model import ConceptBottleneckModel


@dataclass
class TrainResult:
    model: ConceptBottleneckModel | None  # None for a baseline
    metrics: dict
    history: list[dict]                   # one row per epoch trained
    best_epoch: int
    extra: dict = field(default_factory=dict)  # a CBM's both heads: "dense" and "sparse" models
