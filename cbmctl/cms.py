"""Concept Matrix Search (training-free) and the zero-shot and description baselines.

V = cos(image, concept) (N×C), T = cos(class name, concept) (K×C); a CMS variant predicts
argmax_c sim(V_i, T_c) (sim = cos or cos3, after none/row/col normalisation), the max-score variant
argmax_c T[c, argmax_j V_ij]. Everything is a matrix product over row chunks of the images, so memory
stays at chunk × C whatever N is; V is computed once per chunk for every variant."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cbmctl.errors import CbmctlError

SIMILARITIES = ("cos", "cos3")
NORMALIZATIONS = ("none", "row", "col")


@dataclass(frozen=True)
class Variant:
    similarity: str = "cos"
    normalization: str = "none"
    max_score: bool = False

    @property
    def name(self) -> str:
        if self.max_score:
            return "CMS max-score"
        suffix = "" if self.normalization == "none" else f", {self.normalization}-normalised"
        return f"CMS {self.similarity}{suffix}"

    @property
    def transductive(self) -> bool:
        return self.normalization == "col"


ALL_VARIANTS = tuple(Variant(s, n) for s in SIMILARITIES for n in NORMALIZATIONS) + (Variant(max_score=True),)


def _prepare(matrix: torch.Tensor, similarity: str) -> torch.Tensor:
    matrix = matrix ** 3 if similarity == "cos3" else matrix
    return F.normalize(matrix, dim=1, eps=1e-12)


def _row_normalise(matrix: torch.Tensor) -> torch.Tensor:
    sums = matrix.sum(dim=1, keepdim=True)
    return matrix / torch.where(sums.abs() < 1e-12, torch.ones_like(sums), sums)


def class_concept_matrix(class_vectors, concept_vectors) -> torch.Tensor:
    """T (K×C): cosine of each class text embedding with each concept embedding."""
    return F.normalize(torch.as_tensor(class_vectors, dtype=torch.float32), dim=1) @ \
        F.normalize(torch.as_tensor(concept_vectors, dtype=torch.float32), dim=1).T


def predict(features, concept_vectors, class_vectors, variants=ALL_VARIANTS, chunk: int = 4096,
            device="cpu") -> dict[Variant, torch.Tensor]:
    """Predicted class per image for every variant, computed over chunks of `chunk` images."""
    device = torch.device(device)
    concepts = F.normalize(torch.as_tensor(concept_vectors, dtype=torch.float32, device=device), dim=1)
    classes = F.normalize(torch.as_tensor(class_vectors, dtype=torch.float32, device=device), dim=1)
    features = torch.as_tensor(features)
    t = classes @ concepts.T
    # column sums of V over all evaluated images need no V: sum_i cos(x_i, d_j) = (sum_i x̂_i) · d_j
    column_sums = None
    if any(v.normalization == "col" for v in variants):
        total = torch.zeros(concepts.shape[1], device=device)
        for start in range(0, len(features), chunk):
            total += F.normalize(features[start:start + chunk].to(device, torch.float32), dim=1).sum(dim=0)
        column_sums = total @ concepts.T
        column_sums = torch.where(column_sums.abs() < 1e-12, torch.ones_like(column_sums), column_sums)
    class_sums = t.sum(dim=0)
    class_sums = torch.where(class_sums.abs() < 1e-12, torch.ones_like(class_sums), class_sums)
    prepared_t = {}
    for variant in variants:
        if variant.max_score:
            continue
        base = {"none": t, "row": _row_normalise(t), "col": t / class_sums}[variant.normalization]
        prepared_t[variant] = _prepare(base, variant.similarity)
    predictions = {v: [] for v in variants}
    for start in range(0, len(features), chunk):
        v = F.normalize(features[start:start + chunk].to(device, torch.float32), dim=1) @ concepts.T
        for variant in variants:
            if variant.max_score:
                predictions[variant].append(t[:, v.argmax(dim=1)].argmax(dim=0).cpu())
                continue
            base = {"none": v, "row": _row_normalise(v),
                    "col": v / column_sums if column_sums is not None else v}[variant.normalization]
            scores = _prepare(base, variant.similarity) @ prepared_t[variant].T
            predictions[variant].append(scores.argmax(dim=1).cpu())
    return {v: torch.cat(p) if p else torch.zeros(0, dtype=torch.long) for v, p in predictions.items()}


def zero_shot_predict(features, class_vectors, chunk: int = 4096) -> torch.Tensor:
    classes = F.normalize(torch.as_tensor(class_vectors, dtype=torch.float32), dim=1)
    features = torch.as_tensor(features)
    return torch.cat([(F.normalize(features[s:s + chunk].float(), dim=1) @ classes.T).argmax(dim=1)
                      for s in range(0, len(features), chunk)])


def description_predict(features, concept_vectors, concepts: list[str], classes: list[str],
                        associations: dict[str, list[str]], chunk: int = 4096) -> torch.Tensor:
    """Each class scored by the mean similarity of the image to the concepts associated with it."""
    index = {c: j for j, c in enumerate(concepts)}
    weights = torch.zeros(len(classes), len(concepts))
    for k, name in enumerate(classes):
        members = [index[c] for c in associations.get(name, []) if c in index]
        if not members:
            raise CbmctlError(f"the concept set associates no concept with class {name!r}")
        weights[k, members] = 1.0 / len(members)
    concepts_n = F.normalize(torch.as_tensor(concept_vectors, dtype=torch.float32), dim=1)
    features = torch.as_tensor(features)
    return torch.cat([((F.normalize(features[s:s + chunk].float(), dim=1) @ concepts_n.T) @ weights.T).argmax(dim=1)
                      for s in range(0, len(features), chunk)])


def accuracy_report(predicted: torch.Tensor, labels, num_classes: int, per_class: bool = False) -> dict:
    labels = torch.as_tensor(np.asarray(labels))
    correct = (predicted == labels).float()
    report = {"top1": float(correct.mean()) if len(labels) else 0.0}
    per = [float(correct[labels == k].mean()) if (labels == k).any() else None for k in range(num_classes)]
    present = [p for p in per if p is not None]
    report["mean_per_class"] = float(np.mean(present)) if present else 0.0
    if per_class:
        report["per_class"] = per
    return report


def cms_report(cache, concept_set, split: str = "test", per_class: bool = False, random_control: bool = True,
               device="cpu", chunk: int = 4096) -> dict:
    """Every CMS variant side by side with zero-shot CLIP, the description baseline and the random-concept
    control, on one split of a cache."""
    from cbmctl.train import concept_vectors, random_concept_set
    data = cache.split(split)
    classes = cache.classes
    concept_embeddings = concept_vectors(cache, concept_set, device)
    class_embeddings = cache.class_embeddings()
    features = torch.from_numpy(data.embeddings.astype(np.float32))
    rows, notes = [], []
    for variant, predicted in predict(features, concept_embeddings, class_embeddings, ALL_VARIANTS, chunk).items():
        rows.append({"method": variant.name, "transductive": variant.transductive,
                     **accuracy_report(predicted, data.labels, len(classes), per_class)})
    rows.append({"method": "zero-shot CLIP", "transductive": False,
                 **accuracy_report(zero_shot_predict(features, class_embeddings, chunk), data.labels, len(classes),
                                   per_class)})
    if concept_set.associations:
        predicted = description_predict(features, concept_embeddings, concept_set.concepts, classes,
                                        concept_set.associations, chunk)
        rows.append({"method": "description (class concepts)", "transductive": False,
                     **accuracy_report(predicted, data.labels, len(classes), per_class)})
    else:
        notes.append(f"description baseline skipped: concept set {concept_set.name!r} does not say which concepts "
                     "describe which class (give a {class: [concepts]} .json/.yaml set)")
    if random_control:
        try:
            random_embeddings = concept_vectors(cache, random_concept_set(concept_set), device)
            predicted = predict(features, random_embeddings, class_embeddings, (Variant(),), chunk)[Variant()]
            rows.append({"method": f"CMS cos, {len(concept_set.concepts)} random words", "transductive": False,
                         **accuracy_report(predicted, data.labels, len(classes), per_class)})
        except CbmctlError as error:
            notes.append(f"random-concept control skipped: {error}")
    if any(r["transductive"] for r in rows):
        notes.append("col-normalised variants divide by column sums over the evaluated images: transductive")
    return {"split": split, "images": int(len(features)), "classes": len(classes),
            "concept_set": concept_set.record(), "cache": str(cache.path), "rows": rows, "notes": notes}
