"""The baselines a CBM is compared with, on the same split: zero-shot CLIP and the linear probe."""
from __future__ import annotations

import torch

from cbmctl import metrics as M
from cbmctl.errors import CbmctlError
from cbmctl.training.data import TrainingData
from cbmctl.training.result import TrainResult


def run_baseline(data: TrainingData, name: str, log=None) -> TrainResult:
    """The linear probe (on image embeddings, L2 chosen by validation loss) or zero-shot CLIP, on the same split;
    `log` hears how far a long probe fit is."""
    from cbmctl.probe import fit_linear_probe
    if name == "zero-shot":
        logits = {s: data.logit_scale * data.features[s] @ data.class_vectors.T for s in ("val", "test")}
        extra = {}
    elif name == "linear-probe":
        probe = fit_linear_probe(data.features["train"].numpy(), data.labels["train"].numpy(),
                                 data.features["val"].numpy(), data.labels["val"].numpy(), len(data.classes),
                                 log=log)
        logits = {s: torch.as_tensor(probe.logits(data.features[s].numpy())) for s in ("val", "test")}
        extra = {"l2": probe.l2}
    else:
        raise CbmctlError(f"unknown baseline {name!r}")
    metrics = {s: M.classification_metrics(logits[s], data.labels[s], len(data.classes)) for s in ("val", "test")}
    metrics.update(extra)
    return TrainResult(None, metrics, [], 0)
