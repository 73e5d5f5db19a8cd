"""Identity: the hashes that name what a cache, run or text entry was made from, and the one answer to each
question "is this the same data / backbone / concept list / cache?" that cbmctl asks before it reuses a
cache, resumes a run or explains images with a run's cache.

A record is a mapping as a cache's attributes, or a section of a run's record.json or model.json, holds it.
Each question compares the fields listed beside it and returns None when the two records agree, else a
Difference: the first field that differs, with both values, which callers put into their one-line message.
The hashes of things read from disk are made where they are read: a dataset's fingerprint by its reader
(cbmctl.datasets), a weights file's SHA-256 by cbmctl.backbones, a saved model's by cbmctl.model."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from cbmctl.sanitize import safe_text

# the data: format, class names, split membership and file sizes, all in the dataset's fingerprint
DATA_FIELDS = ("dataset_fingerprint",)
# the backbone: the weights' hash, and the model name too, because the same weights under another architecture
# config (ViT-B-32 and ViT-B-32-quickgelu) embed differently; the pretrained tag only names the weights
BACKBONE_FIELDS = ("backbone_model", "weights_sha256")
# a concept list: names_sha256 of its names, in order (a concept set's record calls it "sha256")
CONCEPT_FIELDS = ("sha256",)
# a cache's image embeddings: this schema, this data, this backbone and its preprocessing; the tag too, since
# a cache is reused without loading its backbone and the tag is what `embed` was asked for
CACHE_FIELDS = ("schema_version", "backbone_model", "backbone_pretrained", "weights_sha256", "preprocess",
                "dataset_fingerprint")
# what a run records of its backbone and data (record.json, model.json)
BACKBONE_RECORD = ("backbone_model", "backbone_pretrained", "weights_sha256")
DATA_RECORD = ("dataset_name", "dataset_root", "dataset_fingerprint")
_HASHES = ("weights_sha256", "dataset_fingerprint", "sha256")  # shown by their first 12 characters


def names_sha256(names: list[str]) -> str:
    """The identity of a list of names (a concept set, the texts of a text-store entry): SHA-256 of the
    names joined by newlines, which no name may hold (cbmctl.names). Runs, caches and concept sets all
    record this one."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def text_key(identity: Mapping, texts: list[str], templates: list[str] | None = None) -> str:
    """The text store's key for a list of texts under one backbone (identity: a cache's attributes or a
    backbone's identity()): the same texts, templates, model and weights reuse the entry."""
    digest = hashlib.sha256()
    digest.update(identity["weights_sha256"].encode())
    digest.update(str(identity.get("backbone_model")).encode())
    digest.update(json.dumps(templates or []).encode())
    digest.update("\n".join(texts).encode())  # kept as it was: keys already stored in caches stay valid
    return digest.hexdigest()[:20]


@dataclass(frozen=True)
class Difference:
    """The first field in which two records disagree, with each side's value (hashes shortened)."""

    field: str
    recorded: str
    current: str

    def __str__(self) -> str:
        return f"{self.field} {self.recorded} vs {self.current}"


def data_difference(recorded: Mapping, current: Mapping) -> Difference | None:
    """None when both records describe the same data (DATA_FIELDS), else the first difference."""
    return _difference(recorded, current, DATA_FIELDS)


def backbone_difference(recorded: Mapping, current: Mapping) -> Difference | None:
    """None when both records name the same backbone (BACKBONE_FIELDS), else the first difference."""
    return _difference(recorded, current, BACKBONE_FIELDS)


def concepts_difference(recorded: Mapping | list[str], current: Mapping | list[str]) -> Difference | None:
    """None when both are the same list of names, in order: each side a record holding "sha256" (a concept
    set's record) or the list itself; else the difference of the hashes."""
    return _difference(_concept_record(recorded), _concept_record(current), CONCEPT_FIELDS)


def cache_difference(existing: Mapping, wanted: Mapping) -> Difference | None:
    """None when a cache's attributes say it holds the embeddings asked for (CACHE_FIELDS): the one test for
    reusing, resuming or refusing to overwrite a cache."""
    return _difference(existing, wanted, CACHE_FIELDS)


def _concept_record(side: Mapping | list[str]) -> Mapping:
    return side if isinstance(side, Mapping) else {"sha256": names_sha256(list(side))}


def _difference(recorded: Mapping, current: Mapping, fields: tuple[str, ...]) -> Difference | None:
    # compared as text: HDF5 hands attributes back as numpy scalars, JSON as plain values
    recorded, current = _mapping(recorded), _mapping(current)
    for field in fields:
        old, new = str(recorded.get(field)), str(current.get(field))
        if old != new:
            width = 12 if field in _HASHES else 200
            return Difference(field, safe_text(old[:width]), safe_text(new[:width]))
    return None


def _mapping(record) -> Mapping:
    """A damaged record (not a mapping) has no fields: it differs from every real one."""
    return record if isinstance(record, Mapping) else {}
