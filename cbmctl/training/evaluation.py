"""A trained model scored on a split: accuracy and calibration, and for the model kept its sparsity and,
where the data has ground truth, how well its concepts and explanations match it (cbmctl.metrics)."""
from __future__ import annotations

import torch

from cbmctl import metrics as M
from cbmctl.model import ConceptBottleneckModel
from cbmctl.spec import TrainConfig
from cbmctl.training.data import ScoreSource, TrainingData


def _model_outputs(model: ConceptBottleneckModel, source: ScoreSource, chunk: int = 8192):
    activations, logits = [], []
    with torch.no_grad():
        for start in range(0, len(source), chunk):
            a, z = model(source.rows(start, min(start + chunk, len(source))))
            activations.append(a.float())
            logits.append(z.float())
    if not activations:
        c, k = model.num_concepts, model.num_classes
        return torch.zeros(0, c, device=source.device), torch.zeros(0, k, device=source.device)
    return torch.cat(activations), torch.cat(logits)


def evaluate_head(model: ConceptBottleneckModel, source: ScoreSource) -> dict:
    """Accuracy and calibration of a model on one split."""
    _, logits = _model_outputs(model.to(source.device).eval(), source)
    return M.classification_metrics(logits, source.labels, model.num_classes)


def evaluate_model(model: ConceptBottleneckModel, source: ScoreSource, data: TrainingData, split: str,
                   config: TrainConfig) -> dict:
    """Accuracy, calibration, sparsity and faithfulness of `model` on one split."""
    activations, logits = _model_outputs(model.to(source.device).eval(), source)
    labels = source.labels
    predicted = logits.argmax(dim=1)
    contributions = model.contributions(activations, predicted)
    result = {**M.classification_metrics(logits, labels, model.num_classes), **M.activation_sparsity(activations),
              "nec": M.nec(model.class_concept_weights()),
              "coverage90_mean": float(M.coverage(contributions, 0.9).float().mean())}
    truth = data.truth.get(split)
    if truth is not None:
        truth = torch.as_tensor(truth, device=activations.device)
        k = config.precision_k
        result[f"concept_precision@{k}"] = M.concept_precision_at_k(activations, truth, k)
        result[f"explanation_precision@{k}"] = M.explanation_precision_at_k(
            contributions, model.head_inputs(activations), truth, k)
    return result


def evaluate_splits(model, data: TrainingData, config: TrainConfig, splits=("test", "val"),
                    device: torch.device | None = None) -> dict:
    """evaluate_model on each split, with the model on `device` (the configured one when not given)."""
    if device is None:
        from cbmctl.backbones import resolve_device
        device = resolve_device(config.device)
    model = model.to(device).eval()
    return {split: evaluate_model(model, ScoreSource(data, split, device), data, split, config) for split in splits}
