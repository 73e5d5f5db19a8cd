"""CIFAR-10 / CIFAR-100 "python version" batches, read with a restricted unpickler."""
from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

import numpy as np

from cbmctl.datasets.base import Dataset, ImageRecord
from cbmctl.errors import CbmctlError

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

# The official batches are numpy arrays pickled by Python 2; these are the only globals they need.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
    ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"),
    ("__builtin__", "object"),
    ("builtins", "object"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def safe_unpickle(path: Path) -> dict:
    """Load a CIFAR batch without executing anything but numpy array reconstruction."""
    try:
        data = _RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise CbmctlError(f"{path}: not a CIFAR batch file ({error})") from None
    if not isinstance(data, dict):
        raise CbmctlError(f"{path}: not a CIFAR batch file (top level is {type(data).__name__}, not dict)")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in data.items()}


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


def read(path: Path) -> Dataset:
    variant, root = find_root(path)
    if variant is None:
        raise CbmctlError(f"{path} holds no CIFAR python batches (cifar-10-batches-py or cifar-100-python)")
    layout = LAYOUTS[variant]
    meta = safe_unpickle(root / layout["meta"])
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[layout["names_key"]]]
    classes = [c.replace("_", " ") for c in classes]
    arrays, splits = {}, {"train": [], "test": []}
    digest = hashlib.sha256()
    for split in ("train", "test"):
        for batch in layout[split]:
            raw = (root / batch).read_bytes()
            digest.update(hashlib.sha256(raw).digest())
            data = safe_unpickle(root / batch)
            images = np.asarray(data["data"], dtype=np.uint8)
            labels = data[layout["labels_key"]]
            if images.ndim != 2 or images.shape[1] != 3072 or len(labels) != len(images):
                raise CbmctlError(f"{root / batch}: expected N×3072 uint8 data with N labels")
            arrays[batch] = images
            splits[split].extend(ImageRecord(f"{batch}#{i}", int(label)) for i, label in enumerate(labels))
    return Dataset(
        name=variant,
        root=root,
        format=variant,
        classes=classes,
        splits=splits,
        open_image=ArrayImages(arrays),
        content_digest=digest.hexdigest(),
    )
