"""CIFAR-10 / CIFAR-100 "python version" batches, read with a restricted unpickler."""
from __future__ import annotations

import hashlib
import io
import math
import pickle
from pathlib import Path

import numpy as np

from cbmctl.data_files import read_bytes_capped
from cbmctl.datasets.base import Dataset, ImageRecord
from cbmctl.errors import CbmctlError
from cbmctl.names import validate_class_names
from cbmctl.sanitize import safe_text

LAYOUTS = {
    "cifar10": {
        "dir": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "names_key": "label_names",
        "labels_key": "labels",
    },
    "cifar100": {
        "dir": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "names_key": "fine_label_names",
        "labels_key": "fine_labels",
    },
}

# The official batches are a dict of lists and one uint8 array, pickled by Python 2 with protocol 2; these
# are the only globals they need. Each maps to a checked stand-in, so a forged file can neither run code nor
# make numpy allocate more than the file itself holds (a `_reconstruct` or `ndarray` call claiming a 1 TiB
# shape would otherwise be a MemoryError, or a lazily mapped terabyte).
MAX_BATCH_BYTES = 512 * 1024 * 1024  # the CIFAR-100 training file is 155 MB


class _Refused(pickle.UnpicklingError):
    pass


class _NdarrayType:
    """Stands in for numpy.ndarray, which a pickle names only as an argument of _reconstruct."""


def _checked_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise _Refused("refusing an object array")
    return dtype


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, max_bytes: int):
        super().__init__(file, encoding="bytes")
        self.max_bytes = max_bytes

    def _reconstruct(self, subtype, shape, dtype):
        if subtype is not _NdarrayType:
            raise _Refused("refusing _reconstruct of anything but numpy.ndarray")
        dtype = _checked_dtype(dtype)
        dims = shape if isinstance(shape, tuple) else (shape,)
        if not all(type(d) is int and d >= 0 for d in dims):
            raise _Refused(f"an array header has the shape {shape!r}")
        if math.prod(dims) * max(dtype.itemsize, 1) > self.max_bytes:
            raise _Refused(f"an array header claims shape {shape} of {dtype}, more than the file holds")
        return np.ndarray.__new__(np.ndarray, shape, dtype)

    def find_class(self, module, name):
        stand_ins = {
            ("numpy", "ndarray"): _NdarrayType,
            ("numpy", "dtype"): _checked_dtype,
            ("numpy.core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy.core.multiarray", "scalar"): _scalar,
            ("numpy._core.multiarray", "scalar"): _scalar,
            ("_codecs", "encode"): _latin1,
        }
        if (module, name) not in stand_ins:
            raise _Refused(f"refusing to load {module}.{name}")
        return stand_ins[module, name]


def _scalar(dtype, data=None):
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    return scalar(_checked_dtype(dtype), data) if data is not None else scalar(_checked_dtype(dtype))


def _latin1(text, encoding="latin1"):
    # protocol 2 writes Python 3 bytes as _codecs.encode(str, "latin1"); nothing else is needed
    if not isinstance(text, str) or encoding != "latin1":
        raise _Refused("refusing _codecs.encode other than str -> latin-1 bytes")
    return text.encode("latin1")


def safe_unpickle(path: Path, raw: bytes | None = None) -> dict:
    """Load a CIFAR batch (from `raw` when already read) without executing anything but bounded numpy
    array reconstruction."""
    raw = read_bytes_capped(path, MAX_BATCH_BYTES) if raw is None else raw
    try:
        data = _RestrictedUnpickler(io.BytesIO(raw), len(raw)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError, MemoryError, RecursionError) as error:
        raise CbmctlError(f"{safe_text(path)}: not a CIFAR batch file ({safe_text(error)[:120]})") from None
    if not isinstance(data, dict):
        raise CbmctlError(f"{safe_text(path)}: not a CIFAR batch file (top level is {type(data).__name__}, not dict)")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in data.items()}


def find_root(path: Path):
    for variant, layout in LAYOUTS.items():
        for candidate in (path, path / layout["dir"]):
            if all((candidate / f).is_file() for f in layout["train"] + layout["test"] + [layout["meta"]]):
                return variant, candidate
    return None, None


def detect(path: Path) -> bool:
    return path.is_dir() and find_root(path)[0] is not None


class ArrayImages:
    """Opens CIFAR images from the in-memory batches; record paths are 'batch#row'."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __call__(self, path: str):
        from PIL import Image
        batch, _, row = path.partition("#")
        flat = self.arrays[batch][int(row)]
        return Image.fromarray(flat.reshape(3, 32, 32).transpose(1, 2, 0))

    def fingerprint_items(self, records):
        for record in records:
            yield f"{record.path}\t{record.label}"


def _class_names(meta: dict, key: str, file: Path) -> list[str]:
    names = meta.get(key)
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, (bytes, str)) for n in names):
        raise CbmctlError(f"{safe_text(file)}: not a CIFAR meta file ('{key}' must be a list of names)")
    try:
        names = [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError:
        raise CbmctlError(f"{safe_text(file)}: a class name in '{key}' is not UTF-8") from None
    return validate_class_names([n.replace("_", " ") for n in names], file)


def _batch(data: dict, labels_key: str, num_classes: int, file: Path) -> tuple[np.ndarray, list[int]]:
    """The N×3072 uint8 images and N labels in [0, num_classes) of one batch, or a one-line error."""
    images, labels = data.get("data"), data.get(labels_key)
    if images is None or labels is None:
        missing = "data" if images is None else labels_key
        raise CbmctlError(f"{safe_text(file)}: not a CIFAR batch ('{missing}' is missing)")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3072:
        shape = getattr(images, "shape", type(images).__name__)
        raise CbmctlError(f"{safe_text(file)}: 'data' must be an N×3072 uint8 array, not {shape} "
                          f"{getattr(images, 'dtype', '')}".rstrip())
    if isinstance(labels, np.ndarray):
        labels = labels.tolist() if labels.ndim == 1 and labels.dtype.kind in "iu" else None
    if not isinstance(labels, list) or not all(type(label) is int for label in labels):
        raise CbmctlError(f"{safe_text(file)}: '{labels_key}' must be a list of integer labels")
    if len(labels) != len(images):
        raise CbmctlError(f"{safe_text(file)}: {len(images)} images but {len(labels)} labels")
    bad = next((label for label in labels if not 0 <= label < num_classes), None)
    if bad is not None:
        raise CbmctlError(f"{safe_text(file)}: label {bad} is outside the {num_classes} classes (0..{num_classes - 1})")
    return images, labels


def read(path: Path) -> Dataset:
    variant, root = find_root(path)
    if variant is None:
        raise CbmctlError(f"{path} holds no CIFAR python batches (cifar-10-batches-py or cifar-100-python)")
    layout = LAYOUTS[variant]
    classes = _class_names(safe_unpickle(root / layout["meta"]), layout["names_key"], root / layout["meta"])
    arrays, splits = {}, {"train": [], "test": []}
    digest = hashlib.sha256()
    for split in ("train", "test"):
        for batch in layout[split]:
            raw = read_bytes_capped(root / batch, MAX_BATCH_BYTES)
            digest.update(hashlib.sha256(raw).digest())
            data = safe_unpickle(root / batch, raw)
            images, labels = _batch(data, layout["labels_key"], len(classes), root / batch)
            arrays[batch] = images
            splits[split].extend(ImageRecord(f"{batch}#{i}", label) for i, label in enumerate(labels))
    return Dataset(
        name=variant,
        root=root,
        format=variant,
        classes=classes,
        splits=splits,
        open_image=ArrayImages(arrays),
        content_digest=digest.hexdigest(),
    )
