"""Places365-Standard: categories_places365.txt, places365_train_standard.txt, places365_val.txt."""
from __future__ import annotations

from pathlib import Path

from cbmctl.datasets.base import Dataset, ImageRecord, listed_path, parse_index, read_list_file
from cbmctl.errors import CbmctlError
from cbmctl.names import clean_class_name, validate_class_names
from cbmctl.sanitize import safe_text

CATEGORIES = "categories_places365.txt"
TRAIN_LIST = "places365_train_standard.txt"
VAL_LIST = "places365_val.txt"
# torchvision renames the archives' folders to data_<size>_standard; the archives themselves unpack
# to data_<size>.
TRAIN_DIRS = ("data_256_standard", "data_large_standard", "data_256", "data_large")
VAL_DIRS = ("val_256", "val_large")


def detect(path: Path) -> bool:
    return (path / CATEGORIES).is_file() and (path / VAL_LIST).is_file()


def _first_dir(root: Path, names) -> str | None:
    return next((name for name in names if (root / name).is_dir()), None)


def _read_list(path: Path, image_dir: str, num_classes: int) -> list[ImageRecord]:
    records = []
    for number, line in enumerate(read_list_file(path).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or parse_index(fields[1]) is None or int(fields[1]) >= num_classes:
            raise CbmctlError(f"{safe_text(path)}:{number}: expected '<image> <class index below {num_classes}>', "
                              f"got {line[:80]!r}")
        image = listed_path(fields[0].lstrip("/"), path, number)
        records.append(ImageRecord(f"{image_dir}/{image}", int(fields[1])))
    return records


def read(root: Path) -> Dataset:
    categories = {}
    for number, line in enumerate(read_list_file(root / CATEGORIES).splitlines(), 1):
        if line.strip():
            name, _, index = line.strip().rpartition(" ")
            if parse_index(index) is None or int(index) in categories:
                raise CbmctlError(f"{safe_text(root / CATEGORIES)}:{number}: expected '<category> <index>' with "
                                  f"an index not seen before, got {line[:80]!r}")
            categories[int(index)] = name
    if sorted(categories) != list(range(len(categories))):
        missing = next(i for i in range(len(categories)) if i not in categories)
        raise CbmctlError(f"{safe_text(root / CATEGORIES)}: category indices must run 0..{len(categories) - 1}; "
                          f"{missing} is missing")
    classes = validate_class_names([clean_class_name(categories[i]) for i in range(len(categories))],
                                   root / CATEGORIES)
    train_dir, val_dir = _first_dir(root, TRAIN_DIRS), _first_dir(root, VAL_DIRS)
    if val_dir is None:
        raise CbmctlError(f"{root}: no validation images folder ({' or '.join(VAL_DIRS)})")
    splits = {}
    if (root / TRAIN_LIST).is_file() and train_dir is not None:
        splits["train"] = _read_list(root / TRAIN_LIST, train_dir, len(classes))
    # Places365's public labelled held-out set is "val"; it plays the part of the test split.
    splits["test"] = _read_list(root / VAL_LIST, val_dir, len(classes))
    if "train" not in splits:
        raise CbmctlError(f"{root}: needs {TRAIN_LIST} and a training images folder ({' or '.join(TRAIN_DIRS)})")
    return Dataset(name="places365", root=root, format="places365", classes=classes, splits=splits)
