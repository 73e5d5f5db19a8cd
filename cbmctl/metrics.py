"""Accuracy, sparsity and faithfulness metrics (shared/METHOD.md), on whole splits: micro accuracy over
all samples, never a mean of per-batch accuracies."""
from __future__ import annotations

import numpy as np
import torch


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    if len(labels) == 0:
        return 0.0
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return float((top == labels[:, None]).any(dim=1).float().mean())


def mean_per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    predicted = logits.argmax(dim=1)
    per_class = [float((predicted[labels == c] == c).float().mean()) for c in range(num_classes)
                 if (labels == c).any()]
    return float(np.mean(per_class)) if per_class else 0.0


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    predicted = logits.argmax(dim=1)
    return [float((predicted[labels == c] == c).float().mean()) if (labels == c).any() else None
            for c in range(num_classes)]


def activation_l0(activations: torch.Tensor, relative: float = 1e-3) -> torch.Tensor:
    """Per image, how many concepts are active: |a_j| > relative · max_j |a_j|."""
    magnitude = activations.abs()
    return (magnitude > relative * magnitude.max(dim=1, keepdim=True).values).sum(dim=1)


def truncate_head(head: torch.Tensor, per_class: int) -> torch.Tensor:
    """The head keeping only each class's `per_class` largest-magnitude weights (NEC = per_class)."""
    keep = head.abs().topk(min(per_class, head.shape[1]), dim=1).indices
    return torch.zeros_like(head).scatter_(1, keep, head.gather(1, keep))


def effective_concepts(head: torch.Tensor, relative: float = 1e-3) -> float:
    """NEC of a head as it is: non-zero weights (above relative · max |F|) per class."""
    return float((head.abs() > relative * head.abs().max()).sum()) / head.shape[0]


def coverage(contributions: torch.Tensor, share: float = 0.9) -> torch.Tensor:
    """Per image, the fewest concepts whose positive contributions reach `share` of the positive total
    (contributions to the predicted class, B×C). Images with no positive contribution count 0."""
    positive = contributions.clamp_min(0)
    ordered = positive.sort(dim=1, descending=True).values
    cumulative = ordered.cumsum(dim=1)
    total = cumulative[:, -1:]
    reached = cumulative >= share * total - 1e-12
    counts = reached.float().argmax(dim=1) + 1
    return torch.where(total[:, 0] > 0, counts, torch.zeros_like(counts))


def concept_precision_at_k(activations: torch.Tensor, truth: torch.Tensor, k: int) -> float:
    """Mean over images of the share of its k most activated concepts that are in its true concept set
    (truth: B×C booleans; concepts without ground truth count as not true)."""
    k = min(k, activations.shape[1])
    top = activations.topk(k, dim=1).indices
    return float(truth.gather(1, top).float().mean())


def summarise(values: list[float]) -> dict:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "values": [float(v) for v in array]}
