"""The data a training run reads, and its concept scores on the device.

Embeddings come from the HDF5 cache, never from a backbone forward per step. A split is moved to the device
once and batches are indexed there; concept scores ψ = s · cos(image, concept) are computed once for every
split when they fit (cbmctl.resources.PRECOMPUTE_BYTES), else per batch."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cbmctl import resources
from cbmctl.errors import CbmctlError

SPLITS = ("train", "val", "test")


@dataclass
class TrainingData:
    """Everything a run reads: cached image embeddings per split, concept and class text embeddings."""

    features: dict[str, torch.Tensor]   # split -> (N, D) float32, L2-normalised
    labels: dict[str, torch.Tensor]     # split -> (N,) int64
    concept_vectors: torch.Tensor       # (C, D)
    class_vectors: torch.Tensor         # (K, D)
    logit_scale: float
    concepts: list[str]
    classes: list[str]
    truth: dict[str, np.ndarray | None] = field(default_factory=dict)  # split -> (N, C) bool
    record: dict = field(default_factory=dict)  # provenance: cache, backbone, concept set

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """ψ = s · cos(image, concept) for (N, D) normalised features."""
        return self.logit_scale * features @ self.concept_vectors.to(features.device).T

    def sizes(self) -> dict[str, int]:
        """Images per split."""
        return {split: int(labels.shape[0]) for split, labels in self.labels.items()}


class ScoreSource:
    """ψ of one split on the device, precomputed when it fits, else computed per request."""

    def __init__(self, data: TrainingData, split: str, device: torch.device):
        self.data, self.device = data, device
        features = data.features[split]
        self.labels = data.labels[split].to(device)
        size = features.shape[0] * data.concept_vectors.shape[0] * 4
        # read at call time: a test or benchmark may lower the budget to take the per-batch path
        precompute = size <= resources.PRECOMPUTE_BYTES
        self.precomputed = data.scores(features.to(device)) if precompute else None
        self.features = None if self.precomputed is not None else features.to(device)

    def __len__(self):
        return int(self.labels.shape[0])

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """ψ of the rows `index` (any shape, on the device) -> index.shape + (C,)."""
        if self.precomputed is not None:
            return self.precomputed[index]
        return self.data.scores(self.features[index])

    def rows(self, start: int, stop: int) -> torch.Tensor:
        if self.precomputed is not None:
            return self.precomputed[start:stop]
        return self.data.scores(self.features[start:stop])


def check_train_labels(labels: np.ndarray, classes: list[str], where, warn=None) -> None:
    """A train split that cannot support a classifier is an error (images of fewer than two classes: it
    would train to chance and report it as a result); classes without a training image are a warning naming
    them (the model cannot predict them, and their test images count as errors)."""
    from cbmctl.cache import name_some, uncovered_classes
    from cbmctl.logs import sayer
    missing = uncovered_classes(labels, classes)
    covered = len(classes) - len(missing)
    if covered < 2:
        raise CbmctlError(f"{where}: the train split holds images of {covered} of the {len(classes)} classes; a "
                          "classifier needs training images of at least two (check the dataset's labels and splits)")
    if missing:
        sayer(warn)(f"warning: {len(missing)} of the {len(classes)} classes have no training image "
                    f"({name_some(missing)}): the model cannot learn them, and their test images count as errors")


def prepare_data(cache, concept_set, random_concepts: bool = False, concept_map=None, device="auto", warn=None
                 ) -> TrainingData:
    """Read a cache and a concept set into TrainingData. Concept text embeddings come from the cache's text
    store; only when they are not there yet is the cache's backbone loaded (on `device`) to encode (and
    store) them. `warn` gets one line per thing the user should know (classes without training images)."""
    from cbmctl.concept_truth import read_mapping, truth_matrix
    from cbmctl.concepts import concept_vectors, random_concept_set
    if random_concepts:
        concept_set = random_concept_set(concept_set)
    splits = {s: cache.split(s) for s in SPLITS}
    for name, split in splits.items():
        if len(split.labels) == 0:
            raise CbmctlError(f"{cache.path}: the {name} split is empty")
    classes = cache.classes
    check_train_labels(splits["train"].labels, classes, cache.path, warn)
    vectors = concept_vectors(cache, concept_set, device)
    mapping = read_mapping(concept_map) if concept_map else None
    names = cache.attribute_names
    return TrainingData(
        features={s: torch.from_numpy(d.embeddings.astype(np.float32)) for s, d in splits.items()},
        labels={s: torch.from_numpy(d.labels.astype(np.int64)) for s, d in splits.items()},
        concept_vectors=torch.from_numpy(np.asarray(vectors, np.float32)),
        class_vectors=torch.from_numpy(cache.class_embeddings().astype(np.float32)),
        logit_scale=float(cache.attrs["logit_scale"]),
        concepts=list(concept_set.concepts), classes=classes,
        truth={s: truth_matrix(names, d.attributes, concept_set.concepts, mapping) for s, d in splits.items()},
        record={**_provenance(cache, concept_set), "ground_truth": truth_source(names, concept_map)},
    )


def truth_source(attribute_names, concept_map=None) -> str | None:
    """Where the concepts' ground truth (concept precision) is read from, in words, or None: the concept map
    given, else the attribute vocabulary a plug-in registered for these attribute names (whichever plug-in
    claims them decides what counts as true, so a run says which one did)."""
    from cbmctl.concept_truth import vocabulary_of
    if attribute_names is None:
        return None
    if concept_map:
        return f"the concept map {concept_map}"
    vocabulary = vocabulary_of(attribute_names)
    return None if vocabulary is None else f"the {vocabulary.name} attribute vocabulary (a plug-in)"


def _provenance(cache, concept_set) -> dict:
    """What a run records of where its data came from (record.json, model.json)."""
    from cbmctl.identity import BACKBONE_RECORD, DATA_RECORD
    return {"cache": str(Path(cache.path).resolve()),
            "backbone": {k: cache.attrs[k] for k in BACKBONE_RECORD},
            "dataset": {k: cache.attrs[k] for k in (*DATA_RECORD, "val_fraction", "val_seed")},
            "concept_set": concept_set.record(), "logit_scale": float(cache.attrs["logit_scale"])}
