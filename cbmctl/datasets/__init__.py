"""Dataset readers, one per on-disk format, and the detection and split logic around them."""
from __future__ import annotations

import os
from pathlib import Path

from cbmctl.datasets import cifar, cub, imagefolder, manifest, places365
from cbmctl.datasets.base import Dataset, FileImages, ImageRecord, leaves_root
from cbmctl.datasets.config import DatasetConfig, apply_class_names, load_config
from cbmctl.datasets.splits import carve, stratified_split
from cbmctl.errors import CbmctlError
from cbmctl.names import clean_class_name, disambiguate, validate_class_names
from cbmctl.sanitize import safe_text
from cbmctl.suggest import did_you_mean

__all__ = ["Dataset", "ImageRecord", "DatasetConfig", "load_dataset", "resolve_dataset_path", "detect_format",
           "FORMATS", "KNOWN_DATASETS", "clean_class_name", "disambiguate", "stratified_split", "load_config"]

# Detection order matters: the most specific layouts first, the generic ImageFolder last.
READERS = {
    "manifest": manifest,
    "cub": cub,
    "cifar": cifar,
    "places365": places365,
    "imagefolder": imagefolder,
}
FORMATS = tuple(READERS)

# name -> folders tried under the data root, and the torchvision class that can download it
KNOWN_DATASETS = {
    "cifar10": (("cifar-10-batches-py", "cifar10"), "CIFAR10"),
    "cifar100": (("cifar-100-python", "cifar100"), "CIFAR100"),
    "cub": (("CUB_200_2011", "cub", "CUB"), None),
    "imagenet": (("imagenet", "ImageNet", "ILSVRC2012"), None),
    "places365": (("places365", "Places365"), None),
}

# what each known dataset's official folder holds, for the message that says where its files go
LAYOUTS = {
    "cifar10": "data_batch_1..5, test_batch, batches.meta",
    "cifar100": "train, test, meta",
    "cub": "images/, images.txt, image_class_labels.txt, train_test_split.txt, classes.txt",
    "imagenet": "train/ and val/ in synset folders, LOC_synset_mapping.txt",
    "places365": "categories_places365.txt, places365_train_standard.txt, places365_val.txt, data_256_standard/, "
                 "val_256/",
}

DEFAULT_VAL_FRACTION = 0.1
DEFAULT_VAL_SEED = 0
DEFAULT_TEST_FRACTION = 0.2


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    return Path(explicit or os.environ.get("CBMCTL_DATA") or "data")


def _download(name: str, root: Path, torchvision_class: str) -> None:
    from cbmctl.network import reachable
    if not reachable("www.cs.toronto.edu"):
        folder = KNOWN_DATASETS[name][0][0]
        raise CbmctlError(f"{name} is not under {root} and the download site is unreachable: "
                          f"put the official '{folder}' folder in {root} (or set `data_root` / $CBMCTL_DATA)")
    import torchvision
    root.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        getattr(torchvision.datasets, torchvision_class)(str(root), train=train, download=True)


def _known_key(name: str) -> str:
    key = str(name).lower().replace("-", "").replace("_", "")
    return {"cub200": "cub", "cub2002011": "cub", "places": "places365", "ilsvrc2012": "imagenet"}.get(key, key)


def resolve_dataset_path(spec: str, root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """A path as given, or a known dataset name looked up (and for CIFAR downloaded) under the data root."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    key = _known_key(spec)
    if key not in KNOWN_DATASETS:
        layout = _known_key(path.name)
        if layout in KNOWN_DATASETS and path.name != str(spec):  # data/cub: a path, named like a known dataset
            official = path.parent / KNOWN_DATASETS[layout][0][0]
            finds = (f"the name {layout} then finds it" if path.parent.resolve() == data_root(root).resolve() else
                     f"then pass that folder, or `{layout} --data-root {path.parent}`")
            raise CbmctlError(f"{spec}: no such directory. For the {layout} dataset put its official folder at "
                              f"{official} ({LAYOUTS[layout]}); {finds}")
        known = ", ".join(KNOWN_DATASETS)
        raise CbmctlError(f"{spec}: no such file or directory, and not a known dataset name ({known})"
                          + did_you_mean(spec, KNOWN_DATASETS))
    base = data_root(root)
    folders, torchvision_class = KNOWN_DATASETS[key]
    for folder in folders:
        if (base / folder).exists():
            return base / folder
    if torchvision_class and download:
        _download(key, base, torchvision_class)
        return base / folders[0]
    raise CbmctlError(f"{key} not found under {base}: put the official dataset folder there as "
                      f"'{folders[0]}' (or set `data_root` / $CBMCTL_DATA)")


def detect_format(path: Path) -> str:
    for name, reader in READERS.items():
        if reader.detect(path):
            return name
    inside = _dataset_inside(path)
    raise CbmctlError(f"{path}: unrecognised dataset layout (expected CUB_200_2011, CIFAR python batches, "
                      "Places365, ImageFolder train/ + val/ or test/, or manifest.csv/.jsonl); "
                      + (f"did you mean {inside}?" if inside else "see `format`"))


def _dataset_inside(path: Path) -> Path | None:
    """A folder directly inside `path` that holds a known layout (a data root given instead of the dataset)."""
    if not path.is_dir():
        return None
    try:
        children = sorted(child for child in path.iterdir() if child.is_dir())[:50]
    except OSError:
        return None
    return next((child for child in children if child.name != "train" and
                 any(reader.detect(child) for name, reader in READERS.items() if name != "imagefolder")), None)


def _check_labels(dataset: Dataset, path: Path) -> None:
    """Every label names a class: one outside [0, K) (a -1, a CIFAR-100 label in CIFAR-10 files) would make
    a cache that every later command fails on."""
    import numpy as np
    classes = len(dataset.classes)
    for split, records in dataset.splits.items():
        try:
            labels = np.fromiter((r.label for r in records), dtype=np.int64, count=len(records))
            bad = np.flatnonzero((labels < 0) | (labels >= classes))
        except (TypeError, ValueError, OverflowError):  # not integers, or beyond int64
            bad = [i for i, r in enumerate(records) if not isinstance(r.label, int) or not 0 <= r.label < classes]
        if len(bad):
            record = records[int(bad[0])]
            raise CbmctlError(f"{path}: {len(bad)} {split} image(s) have labels outside the {classes} classes "
                              f"(0..{classes - 1}), first {record.path!r} labelled {record.label!r}; fix the labels")


def _check_inside_root(dataset: Dataset, path: Path, allow: bool) -> None:
    """Image paths from a manifest or an index file stay inside the dataset root (a row may otherwise name
    `../../etc/passwd`, `/proc/self/environ` or someone's photos): refused unless `allow`, and then
    remembered, so that the cache records which images came from outside."""
    if not isinstance(dataset.open_image, FileImages):
        return  # CIFAR's "batch#row" names no file
    outside = frozenset(r.path for records in dataset.splits.values() for r in records if leaves_root(r.path))
    if not outside:
        return
    if not allow:
        first = sorted(outside)[0]
        raise CbmctlError(f"{path}: {len(outside)} listed image path(s) lead outside the dataset root "
                          f"{dataset.root} (first: {safe_text(first)[:80]!r}); move the images inside it, or pass "
                          "`allow_outside_root` to read them where they are")
    dataset.outside_root = outside
    dataset.notes.append(f"{len(outside)} image(s) lie outside the dataset root (`allow_outside_root`); the cache "
                         "records which")


def load_dataset(
    spec: str | os.PathLike,
    format: str | None = None,
    data_root: str | os.PathLike | None = None,
    val_fraction: float | None = None,
    val_seed: int | None = None,
    config: DatasetConfig | None = None,
    allow_outside_root: bool = False,
) -> Dataset:
    """Read a dataset in any supported format and carve a stratified validation split from train.

    Splits are 'train', 'val' and 'test'; 'test' is always the dataset's official held-out split when it
    has one (ImageNet's and Places365's official val sets play that part). Listed image paths outside the
    dataset's root are refused unless `allow_outside_root`."""
    path = resolve_dataset_path(str(spec), data_root)
    config_dir = path if path.is_dir() else path.parent
    config = config or load_config(config_dir)
    format = (format or config.format or detect_format(path)).lower()
    if format in ("cifar10", "cifar100"):
        format = "cifar"
    if format not in READERS:
        raise CbmctlError(f"unknown `format` {format!r} (choose from {', '.join(FORMATS)})" + did_you_mean(format, FORMATS))
    if not READERS[format].detect(path):
        raise CbmctlError(f"{path} is not laid out as {format}")
    dataset = READERS[format].read(path)
    _check_labels(dataset, path)
    _check_inside_root(dataset, path, allow_outside_root)
    dataset.classes = apply_class_names(dataset.classes, config.class_names, config_dir / "cbmctl.yaml")
    validate_class_names(dataset.classes, path)  # every reader checks its own; this keeps any new one honest
    fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    fraction = fraction if config.val_fraction is None or val_fraction is not None else config.val_fraction
    seed = val_seed if val_seed is not None else (config.val_seed if config.val_seed is not None else DEFAULT_VAL_SEED)
    if "test" not in dataset.splits:
        carve(dataset, "train", "test", DEFAULT_TEST_FRACTION, seed)
        dataset.notes.append(f"no official test split: a stratified {DEFAULT_TEST_FRACTION:.0%} of train "
                             f"(seed {seed}) is held out as test")
    if "val" not in dataset.splits:
        carve(dataset, "train", "val", fraction, seed)
    dataset.val_fraction, dataset.val_seed = fraction, seed
    dataset.splits = {name: dataset.splits[name] for name in ("train", "val", "test")}
    if not dataset.splits["train"]:
        raise CbmctlError(f"{path}: the training split is empty")
    return dataset
