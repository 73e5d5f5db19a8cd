"""Accuracy, calibration, sparsity and faithfulness metrics (docs/method.md, "Metrics"), on whole splits: micro
accuracy over all samples, never a mean of per-batch accuracies."""
from __future__ import annotations

import math

import numpy as np
import torch

ECE_BINS = 15
NEC_LEVELS = (5, 10, 15, 20, 25, 30)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    if len(labels) == 0:
        return 0.0
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return float((top == labels[:, None]).any(dim=1).float().mean())


def per_class_accuracy(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy of each class's images (None for a class without images), from predicted labels."""
    predicted, labels = torch.as_tensor(predicted), torch.as_tensor(labels)
    counts = torch.bincount(labels, minlength=num_classes)
    hits = torch.bincount(labels[predicted == labels], minlength=num_classes)
    return [float(h) / float(n) if n else None for h, n in zip(hits.tolist(), counts.tolist())]


def mean_per_class_accuracy(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    present = [a for a in per_class_accuracy(predicted, labels, num_classes) if a is not None]
    return float(np.mean(present)) if present else 0.0


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Σ_b (n_b / N) |accuracy_b − mean confidence_b| over equal-width bins of the top-1 confidence."""
    if len(labels) == 0:
        return 0.0
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == labels).double()
    # bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 joins the first bin
    index = (torch.ceil(confidence.double() * bins).long() - 1).clamp(0, bins - 1)
    accuracy_sum = torch.bincount(index, weights=correct, minlength=bins)
    confidence_sum = torch.bincount(index, weights=confidence.double(), minlength=bins)
    return float((accuracy_sum - confidence_sum).abs().sum() / len(labels))


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """top-1, top-5, mean per-class accuracy, ECE and mean negative log-likelihood of logits on a split."""
    logits = logits.float()
    probabilities = logits.softmax(dim=1)
    return {"top1": topk_accuracy(logits, labels, 1), "top5": topk_accuracy(logits, labels, 5),
            "mean_per_class": mean_per_class_accuracy(logits.argmax(dim=1), labels, num_classes),
            "ece": expected_calibration_error(probabilities, labels),
            "nll": float(torch.nn.functional.cross_entropy(logits, labels)) if len(labels) else 0.0,
            "images": int(len(labels))}


def activation_l0(activations: torch.Tensor, relative: float = 1e-3) -> torch.Tensor:
    """Per image, how many concepts are active: |a_j| > relative · max_j |a_j|."""
    magnitude = activations.abs()
    return (magnitude > relative * magnitude.max(dim=1, keepdim=True).values).sum(dim=1)


def normalised_entropy(activations: torch.Tensor) -> torch.Tensor:
    """Per image, entropy of softmax_j(a) divided by log C: 1 = uniform over concepts, 0 = one concept."""
    log_p = activations.float().log_softmax(dim=1)
    entropy = -(log_p.exp() * log_p).sum(dim=1)
    return entropy / math.log(activations.shape[1]) if activations.shape[1] > 1 else torch.zeros_like(entropy)


def top_mass(activations: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Per image, the probability mass of the k largest entries of softmax_j(a)."""
    p = activations.float().softmax(dim=1)
    return p.topk(min(k, p.shape[1]), dim=1).values.sum(dim=1)


def hoyer(activations: torch.Tensor) -> torch.Tensor:
    """Per image, Hoyer sparsity (√C − ‖a‖₁/‖a‖₂)/(√C − 1): 0 for equal magnitudes, 1 for one non-zero."""
    c = activations.shape[1]
    if c < 2:
        return torch.ones(activations.shape[0])
    l1 = activations.float().abs().sum(dim=1)
    l2 = activations.float().norm(dim=1).clamp_min(1e-30)
    return (math.sqrt(c) - l1 / l2) / (math.sqrt(c) - 1)


def activation_sparsity(activations: torch.Tensor) -> dict:
    """The per-image activation-sparsity measures a reader of the paper checks, averaged over images."""
    return {"l0_mean": float(activation_l0(activations).float().mean()),
            "entropy_mean": float(normalised_entropy(activations).mean()),
            "top5_mass_mean": float(top_mass(activations, 5).mean()),
            "hoyer_mean": float(hoyer(activations).mean())}


# per-image activation-sparsity measures a run records as histograms: name -> (function, what it is)
SPARSITY_MEASURES = {
    "entropy": (normalised_entropy, "normalised entropy of softmax(a): 1 = spread evenly, 0 = one concept"),
    "hoyer": (hoyer, "Hoyer sparsity of a: 0 = equal magnitudes, 1 = one non-zero"),
    "top5_mass": (lambda a: top_mass(a, 5), "mass of softmax(a) in the 5 largest activations"),
}
SPARSITY_BINS = 20


def sparsity_histograms(activations: torch.Tensor, bins: int = SPARSITY_BINS) -> dict[str, list[int]]:
    """Each per-image sparsity measure of `activations` (N×C) as counts in `bins` equal bins of [0, 1]
    (counts of chunks and seeds add up)."""
    return {name: torch.histc(measure(activations).float().clamp(0, 1).cpu(), bins, 0, 1).long().tolist()
            for name, (measure, _) in SPARSITY_MEASURES.items()}


def nonzero_weights(head: torch.Tensor) -> int:
    return int((head != 0).sum())


def nec(head: torch.Tensor) -> float:
    """Number of effective concepts of a head: its non-zero weights per class (exact zeros only: a head
    trained to a budget is sparse by construction; a dense head's NEC is C)."""
    return nonzero_weights(head) / head.shape[0]


def anec(accuracy_at: dict[int, float]) -> float:
    """ANEC (VLG-CBM): accuracy averaged over the NEC levels 5, 10, ..., 30 that were measured."""
    values = [accuracy_at[level] for level in NEC_LEVELS if level in accuracy_at]
    return float(np.mean(values)) if values else float("nan")


def cbl_weight_metrics(weight: torch.Tensor, initial: torch.Tensor) -> dict:
    """How far the CBL (C×C) moved from its start (‖W − W₀‖/‖W₀‖), and how much of its weight lies off the
    diagonal (Σ_{i≠j}|W_ij| / Σ|W|: 0 means unit j reads concept j alone)."""
    weight, initial = weight.detach().float(), initial.detach().float()
    total = weight.abs().sum().clamp_min(1e-30)
    off_diagonal = total - weight.diagonal().abs().sum()
    return {"cbl_change": float((weight - initial).norm() / initial.norm().clamp_min(1e-30)),
            "cbl_offdiagonal": float(off_diagonal / total)}


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


def explanation_precision_at_k(contributions: torch.Tensor, head_inputs: torch.Tensor, truth: torch.Tensor,
                               k: int) -> float:
    """Of the concepts an explanation cites as evidence present in the image — a positive contribution to
    the predicted class from an activation above its train mean (x_j > 0) — the k largest: the share that
    the image really shows, averaged over images that cite any. (A positive contribution from x_j < 0 says
    "this concept is absent", which the image's true concept set cannot confirm, so it is not counted.)"""
    cited = (contributions > 0) & (head_inputs > 0)
    score = torch.where(cited, contributions, torch.full_like(contributions, -math.inf))
    k = min(k, contributions.shape[1])
    top = score.topk(k, dim=1).indices
    chosen = cited.gather(1, top)
    hits = (truth.gather(1, top) & chosen).sum(dim=1).float()
    counts = chosen.sum(dim=1).float()
    has_any = counts > 0
    return float((hits[has_any] / counts[has_any]).mean()) if bool(has_any.any()) else float("nan")

