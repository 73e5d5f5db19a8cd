"""CUB_200_2011: images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, attributes."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cbmctl.data_files import open_regular
from cbmctl.datasets.base import Dataset, ImageRecord, listed_path, parse_index, read_list_file
from cbmctl.errors import CbmctlError
from cbmctl.names import clean_class_name, validate_class_names
from cbmctl.sanitize import safe_text

REQUIRED = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def find_root(path: Path) -> Path | None:
    for candidate in (path, path / "CUB_200_2011"):
        if all((candidate / name).is_file() for name in REQUIRED):
            return candidate
    return None


def detect(path: Path) -> bool:
    return path.is_dir() and find_root(path) is not None


def _read_pairs(path: Path, paths: bool = False) -> dict[int, str]:
    """'<id> <value>' lines; with `paths`, values are image paths and may hold no control character."""
    pairs = {}
    for number, line in enumerate(read_list_file(path).splitlines(), 1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if not value:
            raise CbmctlError(f"{safe_text(path)}:{number}: expected '<id> <value>', got {line[:80]!r}")
        if parse_index(key) is None:
            raise CbmctlError(f"{safe_text(path)}:{number}: id {key[:40]!r} is not a non-negative integer")
        if int(key) in pairs:
            raise CbmctlError(f"{safe_text(path)}:{number}: id {key} appears twice")
        pairs[int(key)] = listed_path(value.strip(), path, number) if paths else value.strip()
    return pairs


def _find_attribute_names(root: Path) -> Path | None:
    # The official archive puts attributes.txt beside CUB_200_2011/, not inside it.
    for candidate in (root / "attributes.txt", root / "attributes" / "attributes.txt", root.parent / "attributes.txt"):
        if candidate.is_file():
            return candidate
    return None


def _read_attributes(root: Path, image_ids: list[int]):
    labels_file = root / "attributes" / "image_attribute_labels.txt"
    names_file = _find_attribute_names(root)
    if not labels_file.is_file() or names_file is None:
        return None, None
    names_by_id = _read_pairs(names_file)
    attribute_ids = sorted(names_by_id)
    column = {attribute_id: j for j, attribute_id in enumerate(attribute_ids)}
    row = {image_id: i for i, image_id in enumerate(image_ids)}
    matrix = np.zeros((len(image_ids), len(attribute_ids)), dtype=np.uint8)
    try:
        descriptor = open_regular(labels_file)  # streamed (tens of MB), but only ever a regular file
    except OSError as error:
        raise CbmctlError(f"{safe_text(labels_file)}: cannot read ({error.strerror or error})") from None
    with os.fdopen(descriptor, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            # "<image_id> <attribute_id> <is_present> <certainty_id> <time>"; a few lines of the real
            # file carry an extra field, so only the first three are read.
            fields = line.split()
            if len(fields) < 3:
                continue
            image_id, attribute_id, present = (parse_index(f) for f in fields[:3])
            if image_id is None or attribute_id is None or present not in (0, 1):
                raise CbmctlError(f"{safe_text(labels_file)}:{number}: expected '<image id> <attribute id> "
                                  f"<0 or 1> ...', got {line.strip()[:80]!r}")
            if image_id in row and attribute_id in column and present:
                matrix[row[image_id], column[attribute_id]] = 1
    names = [names_by_id[a] for a in attribute_ids]  # verbatim, so mapping files can name them
    return names, matrix


def read(path: Path) -> Dataset:
    root = find_root(path)
    if root is None:
        raise CbmctlError(f"{path} is not a CUB_200_2011 directory (needs {', '.join(REQUIRED)})")
    images = _read_pairs(root / "images.txt", paths=True)
    labels = _read_pairs(root / "image_class_labels.txt")
    is_train = _read_pairs(root / "train_test_split.txt")
    classes_by_id = _read_pairs(root / "classes.txt")
    class_ids = sorted(classes_by_id)
    class_index = {class_id: k for k, class_id in enumerate(class_ids)}
    image_ids = sorted(images)
    missing = [i for i in image_ids if i not in labels or i not in is_train]
    if missing:
        raise CbmctlError(f"{root}: image id {missing[0]} has no class label or split entry")
    attribute_names, matrix = _read_attributes(root, image_ids)
    splits = {"train": [], "test": []}
    rows = {"train": [], "test": []}
    for row, image_id in enumerate(image_ids):
        if is_train[image_id] not in ("0", "1"):
            raise CbmctlError(f"{safe_text(root)}: train_test_split.txt gives image {image_id} "
                              f"{is_train[image_id][:20]!r}; expected 1 (train) or 0 (test)")
        split = "train" if is_train[image_id] == "1" else "test"
        label = parse_index(labels[image_id])
        if label not in class_index:
            raise CbmctlError(f"{safe_text(root)}: image {image_id} has class id {labels[image_id][:20]!r}, absent "
                              "from classes.txt")
        splits[split].append(ImageRecord(f"images/{images[image_id]}", class_index[label]))
        rows[split].append(row)
    attributes = None
    if matrix is not None:
        attributes = {split: matrix[rows[split]] for split in splits}
    return Dataset(
        name=root.name if root.name != "CUB_200_2011" else "cub",
        root=root,
        format="cub",
        classes=validate_class_names([clean_class_name(classes_by_id[c]) for c in class_ids], root / "classes.txt"),
        splits=splits,
        attribute_names=attribute_names,
        attributes=attributes,
    )
