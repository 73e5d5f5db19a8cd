"""The HDF5 embedding cache: schema, checked reader, identity checks, and the text-embedding store.

Layout (schema 1; open it with plain h5py):
  /                      attrs: schema_version, cbmctl_version, backbone_model, backbone_pretrained,
                                backbone_source, weights_sha256, preprocess (JSON), embed_dim, logit_scale,
                                dataset_name, dataset_format, dataset_root, dataset_fingerprint,
                                val_fraction, val_seed, templates (JSON), created,
                                open_clip_version, torch_version (since 0.1: let a rerun be answered
                                without loading the backbone)
  /classes/names         (K,) str, label order
  /classes/embeddings    (K, D) float32, prompt-template mean, L2-normalised
  /splits/<split>/       split in train, val, test
      embeddings         (N, D) float16, L2-normalised, chunked by rows (fletcher32 checksums)
      labels             (N,) int64, in [0, K)
      paths              (N,) str, relative to the dataset root ("batch#row" for CIFAR)
      attributes         (N, A) uint8, when the dataset has attribute annotations
      skipped_paths      (S,) str and skipped_reasons (S,) str: images that could not be used
      outside_root       (N,) uint8, only when embedded with --allow-outside-root: 1 for an image whose
                         listed path leads outside the dataset root (root attr outside_root_images counts them)
  /attribute_names       (A,) str, when present
  /text/<key>/           text embeddings written with the cache (the class prompts; older caches may hold
      texts (M,) str, embeddings (M, D) float32; attrs: kind, name, content_sha256, templates   more)

A cache file is only ever replaced whole. Text embeddings added later (a concept set's) live beside it, in
the folder `<cache>.text/`, one file per key (`<key>.npz`: texts, embeddings, a JSON record), each written
whole too; a cache copied without that folder still works (the entries are encoded again when needed).
"""
from __future__ import annotations

import contextlib
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbmctl.errors import CbmctlError
from cbmctl.identity import concepts_difference, names_sha256
from cbmctl.names import validate_class_names
from cbmctl.sanitize import safe_text

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
REQUIRED_ATTRS = ("backbone_model", "backbone_pretrained", "weights_sha256", "embed_dim", "logit_scale",
                  "dataset_name", "dataset_root", "dataset_fingerprint")
TEXT_STORE_SUFFIX = ".text"
# Our datasets are stored uncompressed: one claiming far more bytes than the file holds is damaged or
# hostile, and reading it would exhaust memory.
MAX_INFLATION = 64
MAX_TEXT_ENTRY_BYTES = 1 << 30
# Embeddings are stored L2-normalised; float16 rounding moves a norm by < 1e-3. A row further from 1 was
# not written by cbmctl (or was damaged), and would silently shift every score it enters.
UNIT_NORM_TOLERANCE = 1e-2
_KEY = re.compile(r"[0-9a-f]{1,64}")
# what h5py raises on a damaged file, beyond OSError (bad object headers, impossible shapes, ...)
_READ_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError)


class CacheLocked(CbmctlError):
    """Another program has the cache open for writing: waiting for it helps, rebuilding the cache would not."""


class CacheNeedsRebuild(CbmctlError):
    """The cache cannot be used as it is, and the message already says to re-embed it."""


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


def _open_failure(path, error: OSError) -> CbmctlError:
    text = str(error)
    if getattr(error, "errno", None) == 11 or "unable to lock file" in text:
        return CacheLocked(f"{path} is locked: another program has it open for writing; close that program (or "
                           f"wait for it) and retry")
    reason = re.search(r"\((.*)\)\s*$", text.splitlines()[0] if text else "")
    reason = reason.group(1) if reason else (text.splitlines()[0] if text else type(error).__name__)
    if "truncated file" in reason:
        found = re.search(r"eof = (\d+).*stored_eof = (\d+)", reason)
        reason = f"truncated: {found.group(1)} of {found.group(2)} bytes" if found else "truncated"
        return CacheNeedsRebuild(f"{path} is not a readable HDF5 cache ({reason}); re-embed it with "
                                 "`cbmctl embed DATA --overwrite`")
    if "signature not found" in reason:
        reason = "not an HDF5 file"
    return CbmctlError(f"{path} is not a readable HDF5 cache ({reason[:100]})")


def open_h5(path):
    """An HDF5 file opened read-only, or a one-line CbmctlError saying why it cannot be (missing, locked by
    a writer, truncated, not HDF5)."""
    import h5py

    from cbmctl.data_files import require_regular
    path = Path(path)
    require_regular(path)
    if not path.is_file():
        raise CbmctlError(f"{path}: no such cache file (run `cbmctl embed` first)")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise _open_failure(path, error) from None


def _damaged(path, what: str, error: Exception | str) -> CbmctlError:
    detail = str(error).splitlines()[0][:100] if str(error) else type(error).__name__
    return CacheNeedsRebuild(f"{path} is damaged ({what}: {detail}); re-embed it with `cbmctl embed DATA --overwrite`")


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def read_attrs(path) -> dict:
    with open_h5(path) as handle:
        try:
            return {k: _plain(v) for k, v in handle.attrs.items()}
        except _READ_ERRORS as error:
            raise _damaged(path, "root attributes", error) from None


def _check_layout(handle, path: Path, attrs: dict) -> tuple[int, int]:
    """Cheap structural check of a cache's metadata (no embedding is read): (classes K, dim D).
    A damaged or hand-made file fails here, with one line, before any command works on it."""
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise _damaged(path, "root attributes", f"no {missing[0]}")
    dim = int(attrs["embed_dim"])
    if not np.isfinite(float(attrs["logit_scale"])) or float(attrs["logit_scale"]) <= 0:
        raise _damaged(path, "root attributes", f"logit_scale {attrs['logit_scale']}")
    budget = max(path.stat().st_size * MAX_INFLATION, 1 << 26)
    names, vectors = handle["classes/names"], handle["classes/embeddings"]
    classes = names.shape[0] if names.ndim == 1 else -1
    if classes < 1 or vectors.shape != (classes, dim):
        raise _damaged(path, "classes", f"{classes} names, embeddings {vectors.shape}, dim {dim}")
    for split in handle["splits"]:
        group = handle[f"splits/{split}"]
        rows = group["embeddings"].shape
        if len(rows) != 2 or rows[1] != dim or group["embeddings"].nbytes > budget:
            raise _damaged(path, f"split {split}", f"embeddings of shape {rows}, dim {dim}")
        for name in ("labels", "paths"):
            if group[name].shape != (rows[0],):
                raise _damaged(path, f"split {split}", f"{name} of shape {group[name].shape} for {rows[0]} rows")
        if "attributes" in group and (group["attributes"].shape[0] != rows[0] or group["attributes"].nbytes > budget):
            raise _damaged(path, f"split {split}", f"attributes of shape {group['attributes'].shape}")
        if "outside_root" in group and group["outside_root"].shape != (rows[0],):
            raise _damaged(path, f"split {split}", f"outside_root of shape {group['outside_root'].shape}")
        if group["skipped_paths"].shape != group["skipped_reasons"].shape:
            raise _damaged(path, f"split {split}", "skipped paths and reasons differ in length")
    return classes, dim


def row_norms(matrix: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """The Euclidean norm of every row, in float64 a block of rows at a time (no full-size copy; a row
    holding NaN or ±Inf gets a non-finite norm, a row of huge finite values a huge one)."""
    norms = np.empty(len(matrix), np.float64)
    for start in range(0, len(matrix), chunk):
        block = np.asarray(matrix[start:start + chunk], np.float64)
        norms[start:start + chunk] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return norms


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Per row, whether it is a finite unit vector (within UNIT_NORM_TOLERANCE)."""
    return np.abs(row_norms(matrix) - 1) <= UNIT_NORM_TOLERANCE


def check_unit_rows(matrix: np.ndarray, what: str, name_of_row) -> None:
    """Raise a one-line error when a row of `matrix` (embeddings, which cbmctl stores L2-normalised) holds
    NaN/Inf or is not a unit vector: such a row would silently move every mean, score or prediction it
    enters. `what` says where ("the train split"), `name_of_row(i)` names row i (an image path)."""
    norms = row_norms(matrix)
    bad = np.flatnonzero(~np.isfinite(norms))
    if len(bad):
        raise CacheNeedsRebuild(f"{what} has {len(bad)} embedding(s) with NaN or infinite values (first: "
                                f"{safe_text(name_of_row(bad[0]))}); the cache is damaged: re-embed it with "
                                "`cbmctl embed DATA --overwrite`")
    bad = np.flatnonzero(np.abs(norms - 1) > UNIT_NORM_TOLERANCE)
    if len(bad):
        raise CacheNeedsRebuild(f"{what} has {len(bad)} embedding(s) that are not unit vectors (first: "
                                f"{safe_text(name_of_row(bad[0]))}, norm {norms[bad[0]]:.4g}; cbmctl stores them "
                                "L2-normalised); the cache is damaged: re-embed it with `cbmctl embed DATA --overwrite`")


def uncovered_classes(labels: np.ndarray, classes: list[str]) -> list[str]:
    """The classes of which `labels` holds no example."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=len(classes))
    return [classes[k] for k in np.flatnonzero(counts[:len(classes)] == 0)]


def name_some(names: list[str], limit: int = 3) -> str:
    """'a', 'b', 'c' and 4 more: a list shortened for a one-line message, each name shown escaped."""
    shown = ", ".join(repr(safe_text(n)) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class Cache:
    """Read access to a finished cache file. Opening checks its structure; reading a split checks its
    values (NaN/Inf embeddings, labels outside the classes): problems are one-line CbmctlErrors."""

    def __init__(self, path):
        self.path = Path(path)
        with self._reading("metadata") as handle:
            self.attrs = {k: _plain(v) for k, v in handle.attrs.items()}
            if "schema_version" not in self.attrs:
                raise CbmctlError(f"{self.path} is an HDF5 file but not a cbmctl cache")
            if int(self.attrs["schema_version"]) != SCHEMA_VERSION:
                raise CacheNeedsRebuild(f"{self.path} has cache schema {self.attrs['schema_version']}, this cbmctl "
                                        f"reads {SCHEMA_VERSION}: re-embed with --overwrite")
            self.num_classes, self.embed_dim = _check_layout(handle, self.path, self.attrs)
            # class names from a cache are names from a file like any other (cbmctl.names)
            validate_class_names(_strings(handle["classes/names"]), f"{self.path}: classes/names")

    def _open(self):
        return open_h5(self.path)

    @contextlib.contextmanager
    def _reading(self, what: str):
        """The open file; any low-level failure while reading it becomes one line naming the file and `what`."""
        try:
            with self._open() as handle:
                yield handle
        except CbmctlError:
            raise
        except _READ_ERRORS as error:
            raise _damaged(self.path, what, error) from None

    @property
    def classes(self) -> list[str]:
        with self._reading("class names") as handle:
            return _strings(handle["classes/names"])

    @property
    def splits(self) -> list[str]:
        with self._reading("splits") as handle:
            return [s for s in SPLITS if s in handle["splits"]]

    @property
    def attribute_names(self) -> list[str] | None:
        with self._reading("attribute names") as handle:
            return _strings(handle["attribute_names"]) if "attribute_names" in handle else None

    def class_embeddings(self) -> np.ndarray:
        with self._reading("class embeddings") as handle:
            vectors = handle["classes/embeddings"][()]
        norms = row_norms(vectors)
        if not np.isfinite(norms).all():
            raise _damaged(self.path, "class embeddings",
                           f"{int((~np.isfinite(norms)).sum())} class(es) with NaN or infinite values")
        if not _unit_rows(vectors).all():
            raise _damaged(self.path, "class embeddings", f"{int((~_unit_rows(vectors)).sum())} class(es) whose "
                                                          "embedding is not a unit vector")
        return vectors

    def split(self, name: str) -> SplitData:
        with self._reading(f"the {name} split") as handle:
            if f"splits/{name}" not in handle:
                raise CbmctlError(f"{self.path} has no split {name!r} (has {', '.join(handle['splits'])})")
            group = handle[f"splits/{name}"]
            data = SplitData(
                embeddings=group["embeddings"][()],
                labels=group["labels"][()],
                paths=_strings(group["paths"]),
                attributes=group["attributes"][()] if "attributes" in group else None,
                skipped=list(zip(_strings(group["skipped_paths"]), _strings(group["skipped_reasons"]))),
            )
        check_unit_rows(data.embeddings, f"{self.path}: the {name} split", data.paths.__getitem__)
        self._check_labels(np.asarray(data.labels), name, data.paths.__getitem__)
        return data

    def _check_labels(self, labels: np.ndarray, split: str, name_of_row) -> None:
        if labels.dtype.kind not in "iu":
            raise _damaged(self.path, f"the {split} split", f"labels of type {labels.dtype}")
        outside = np.flatnonzero((labels < 0) | (labels >= self.num_classes))
        if len(outside):
            first = outside[0]
            raise CacheNeedsRebuild(f"{self.path}: the {split} split has {len(outside)} label(s) outside 0..."
                                    f"{self.num_classes - 1} (first: {safe_text(name_of_row(first))} labelled "
                                    f"{labels[first]}); fix the dataset's labels and re-embed with --overwrite")

    def embedding_chunks(self, split: str, chunk: int = 4096):
        """A split's image embeddings as float32, `chunk` rows at a time (a train split may not fit in memory),
        each chunk checked as `split()` checks the whole."""
        with self._reading(f"the {split} split") as handle:
            if f"splits/{split}" not in handle:
                raise CbmctlError(f"{self.path} has no split {split!r}")
            embeddings, paths = handle[f"splits/{split}/embeddings"], handle[f"splits/{split}/paths"]
            for start in range(0, embeddings.shape[0], chunk):
                rows = embeddings[start:start + chunk].astype(np.float32)
                check_unit_rows(rows, f"{self.path}: the {split} split",
                                lambda i, start=start: paths.asstr()[start + i])
                yield rows

    def labels(self, split: str) -> np.ndarray:
        """A split's labels alone (no embedding is read), checked as `split()` checks them."""
        with self._reading(f"the {split} split") as handle:
            labels = np.asarray(handle[f"splits/{split}/labels"][()])
            self._check_labels(labels, split, lambda i: handle[f"splits/{split}/paths"].asstr()[i])
        return labels

    def counts(self) -> dict[str, int]:
        """Images per split, from the metadata alone."""
        with self._reading("split sizes") as handle:
            return {s: int(handle[f"splits/{s}/labels"].shape[0]) for s in SPLITS if f"splits/{s}" in handle}

    def skipped(self) -> list[tuple[str, str, str]]:
        """(split, path, reason) of every image the embed could not use."""
        found = []
        with self._reading("skipped images") as handle:
            for split in SPLITS:
                if f"splits/{split}" in handle:
                    group = handle[f"splits/{split}"]
                    found += [(split, p, r) for p, r in zip(_strings(group["skipped_paths"]),
                                                             _strings(group["skipped_reasons"]))]
        return found

    def text(self, key: str):
        """(texts, embeddings, attrs) from the text store (beside the cache, or written in it), or None."""
        return read_text(self.path, key)


def open_cache(path) -> Cache:
    return Cache(path)


def write_text_group(handle, key: str, texts: list[str], embeddings: np.ndarray, attrs: dict) -> None:
    """A text entry inside an HDF5 file being written whole (a new cache); never into an existing cache."""
    group = handle.require_group("text").create_group(key)
    group.create_dataset("texts", data=string_array(texts))
    group.create_dataset("embeddings", data=np.asarray(embeddings, dtype=np.float32))
    for name, value in {**attrs, "content_sha256": names_sha256(texts)}.items():
        group.attrs[name] = value


def _usable(texts: list[str], embeddings: np.ndarray, attrs: dict):
    """The entry if it is whole and self-consistent, else None (it is then encoded and written again)."""
    if embeddings.ndim != 2 or embeddings.shape[0] != len(texts) or embeddings.dtype.kind != "f":
        return None
    if "content_sha256" in attrs and concepts_difference({"sha256": attrs["content_sha256"]}, texts):
        return None
    if not _unit_rows(embeddings).all():  # NaN, Inf, or not a normalised text embedding
        return None
    return texts, embeddings.astype(np.float32, copy=False), attrs


def _bounded_npz(path: Path) -> bool:
    """Whether every array in an .npz is as large as its header says and no larger than the bound: numpy
    allocates what a header claims before reading, so a forged header must not reach np.load."""
    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    return False
                shape, _, dtype = read_header(member)
            claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
            total += claimed
            if claimed > info.file_size or total > MAX_TEXT_ENTRY_BYTES:
                return False
    return True


class TextStore:
    """Text embeddings in a folder, one `<key>.npz` per entry (texts, float32 embeddings, a JSON record),
    each replaced whole: a kill at any moment leaves the old entry or the new one, and readers never wait.
    Entries are read without pickle and with a size bound; a damaged one reads as absent."""

    def __init__(self, directory):
        self.dir = Path(directory)

    @classmethod
    def beside(cls, cache_path) -> TextStore:
        return cls(text_store_dir(cache_path))

    def entry(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValueError(f"not a text-store key: {key!r}")
        return self.dir / f"{key}.npz"

    def get(self, key: str):
        path = self.entry(key)
        if not path.is_file():
            return None
        try:
            if not _bounded_npz(path):
                return None
            with np.load(path, allow_pickle=False) as arrays:
                texts, embeddings = arrays["texts"], arrays["embeddings"]
                attrs = json.loads(str(arrays["record"]))
            if texts.dtype.kind != "U" or texts.ndim != 1 or not isinstance(attrs, dict):
                return None
            return _usable([str(t) for t in texts], embeddings, attrs)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, MemoryError):
            return None

    def put(self, key: str, texts: list[str], embeddings: np.ndarray, attrs: dict) -> None:
        from cbmctl.files import atomic_write
        record = {**attrs, "content_sha256": names_sha256(texts)}
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.entry(key), "wb") as handle:
            np.savez(handle, texts=np.array(list(texts), dtype=str).reshape(len(texts)),
                     embeddings=np.asarray(embeddings, dtype=np.float32), record=np.array(json.dumps(record)))


def text_store_dir(cache_path) -> Path:
    return Path(str(cache_path) + TEXT_STORE_SUFFIX)


def _read_text_group(path: Path, key: str):
    """An entry written inside the cache file (the class prompts; every entry in caches made before the
    text store moved beside the file). Incomplete groups, as an interrupted in-place write left them, read
    as absent."""
    import h5py
    try:
        with h5py.File(path, "r") as handle:
            group = handle.get(f"text/{key}")
            if group is None or "texts" not in group or "embeddings" not in group:
                return None
            return _usable(_strings(group["texts"]), group["embeddings"][()],
                           {k: _plain(v) for k, v in group.attrs.items()})
    except _READ_ERRORS:
        return None


def read_text(cache_path, key: str):
    """(texts, embeddings, attrs) of a text-store entry of the cache at `cache_path`, or None."""
    path = Path(cache_path)
    found = _read_text_group(path, key) if path.is_file() else None
    return found if found is not None else TextStore.beside(path).get(key)


def store_text(cache_path, key: str, texts: list[str], embeddings: np.ndarray, attrs: dict) -> bool:
    """Add an entry to the text store beside `cache_path` (the cache file is not touched); False when it was
    already there, or when the folder cannot be written (the embeddings are then just not remembered)."""
    if read_text(cache_path, key) is not None:
        return False
    try:
        TextStore.beside(cache_path).put(key, texts, embeddings, attrs)
    except OSError:
        return False
    return True
