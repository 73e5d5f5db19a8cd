"""The HDF5 embedding cache: schema, reader, identity checks, and the text-embedding store.

Layout (schema 1; open it with plain h5py):
  /                      attrs: schema_version, cbmctl_version, backbone_model, backbone_pretrained,
                                backbone_source, weights_sha256, preprocess (JSON), embed_dim, logit_scale,
                                dataset_name, dataset_format, dataset_root, dataset_fingerprint,
                                val_fraction, val_seed, templates (JSON), created
  /classes/names         (K,) str, label order
  /classes/embeddings    (K, D) float32, prompt-template mean, L2-normalised
  /splits/<split>/       split in train, val, test
      embeddings         (N, D) float16, L2-normalised, chunked by rows
      labels             (N,) int64
      paths              (N,) str, relative to the dataset root ("batch#row" for CIFAR)
      attributes         (N, A) uint8, when the dataset has attribute annotations
      skipped_paths      (S,) str and skipped_reasons (S,) str: images that could not be used
  /attribute_names       (A,) str, when present
  /text/<key>/           text-embedding store (concept sets, prompts), key = hash of model + texts
      texts (M,) str, embeddings (M, D) float32; attrs: kind, name, content_sha256, templates
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbmctl.errors import CbmctlError

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
# Root attributes that must agree for a cache to be reused; anything else is informational.
IDENTITY_KEYS = ("schema_version", "backbone_model", "backbone_pretrained", "weights_sha256", "preprocess",
                 "dataset_fingerprint")


@dataclass
class SplitData:
    embeddings: np.ndarray
    labels: np.ndarray
    paths: list[str]
    attributes: np.ndarray | None
    skipped: list[tuple[str, str]]


def _strings(dataset) -> list[str]:
    return [s for s in dataset.asstr()[()]] if dataset.shape[0] else []


def string_array(values) -> np.ndarray:
    import h5py
    return np.array(list(values), dtype=h5py.string_dtype())


def identity_mismatch(existing: dict, wanted: dict) -> list[str]:
    return [k for k in IDENTITY_KEYS if str(existing.get(k)) != str(wanted.get(k))]


def describe_mismatch(path, existing: dict, wanted: dict, keys: list[str]) -> str:
    key = keys[0]
    width = 12 if key in ("weights_sha256", "dataset_fingerprint") else 200
    old, new = str(existing.get(key))[:width], str(wanted.get(key))[:width]
    return (f"{path} was made with {key}={old} but this run has {new}; pass --overwrite to replace it, "
            f"or --cache another file")


def read_attrs(path) -> dict:
    import h5py
    try:
        with h5py.File(path, "r") as handle:
            return {k: (v.item() if hasattr(v, "item") else v) for k, v in handle.attrs.items()}
    except OSError as error:
        raise CbmctlError(f"{path} is not a readable HDF5 cache ({str(error).splitlines()[0][:100]})") from None


class Cache:
    """Read access to a finished cache file."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CbmctlError(f"{self.path}: no such cache file (run `cbmctl embed` first)")
        self.attrs = read_attrs(self.path)
        if "schema_version" not in self.attrs:
            raise CbmctlError(f"{self.path} is an HDF5 file but not a cbmctl cache")
        if int(self.attrs["schema_version"]) != SCHEMA_VERSION:
            raise CbmctlError(f"{self.path} has cache schema {self.attrs['schema_version']}, this cbmctl reads "
                              f"{SCHEMA_VERSION}: re-embed with --overwrite")

    def _open(self):
        import h5py
        return h5py.File(self.path, "r")

    @property
    def classes(self) -> list[str]:
        with self._open() as handle:
            return _strings(handle["classes/names"])

    @property
    def splits(self) -> list[str]:
        with self._open() as handle:
            return [s for s in SPLITS if s in handle["splits"]]

    @property
    def attribute_names(self) -> list[str] | None:
        with self._open() as handle:
            return _strings(handle["attribute_names"]) if "attribute_names" in handle else None

    def class_embeddings(self) -> np.ndarray:
        with self._open() as handle:
            return handle["classes/embeddings"][()]

    def split(self, name: str) -> SplitData:
        with self._open() as handle:
            if f"splits/{name}" not in handle:
                raise CbmctlError(f"{self.path} has no split {name!r} (has {', '.join(handle['splits'])})")
            group = handle[f"splits/{name}"]
            return SplitData(
                embeddings=group["embeddings"][()],
                labels=group["labels"][()],
                paths=_strings(group["paths"]),
                attributes=group["attributes"][()] if "attributes" in group else None,
                skipped=list(zip(_strings(group["skipped_paths"]), _strings(group["skipped_reasons"]))),
            )

    def text(self, key: str):
        """(texts, embeddings, attrs) from the text store, or None."""
        with self._open() as handle:
            if f"text/{key}" not in handle:
                return None
            group = handle[f"text/{key}"]
            return _strings(group["texts"]), group["embeddings"][()], dict(group.attrs)


def open_cache(path) -> Cache:
    return Cache(path)


def text_key(identity: dict, texts: list[str], templates: list[str] | None = None) -> str:
    """Store key for a list of texts under one backbone: identical texts + model reuse the entry."""
    digest = hashlib.sha256()
    digest.update(identity["weights_sha256"].encode())
    digest.update(str(identity.get("backbone_model")).encode())
    digest.update(json.dumps(templates or []).encode())
    digest.update("\n".join(texts).encode())
    return digest.hexdigest()[:20]


def content_sha256(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


def write_text_group(handle, key: str, texts: list[str], embeddings: np.ndarray, attrs: dict) -> None:
    group = handle.require_group("text").create_group(key)
    group.create_dataset("texts", data=string_array(texts))
    group.create_dataset("embeddings", data=np.asarray(embeddings, dtype=np.float32))
    for name, value in {**attrs, "content_sha256": content_sha256(texts)}.items():
        group.attrs[name] = value


def store_text(path, key: str, texts: list[str], embeddings: np.ndarray, attrs: dict) -> bool:
    """Add an entry to the cache's text store; False when it was already there."""
    import h5py
    with h5py.File(path, "a") as handle:
        if f"text/{key}" in handle:
            return False
        write_text_group(handle, key, texts, embeddings, attrs)
    return True
