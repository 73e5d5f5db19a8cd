"""A CSV or JSONL manifest: one image per row with path, label and optionally split."""
from __future__ import annotations

import csv
import json
import posixpath
from pathlib import Path

from cbmctl.datasets.base import Dataset, ImageRecord, parse_index, read_list_file
from cbmctl.errors import CbmctlError
from cbmctl.names import validate_class_names
from cbmctl.sanitize import has_control, safe_text

NAMES = ("manifest.csv", "manifest.jsonl")
# Numeric labels name classes 0..max; a forged "label 99999999999" must not make a list of 10^11 names.
MAX_CLASSES = 100_000
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}


def find_file(path: Path) -> Path | None:
    if path.is_file() and path.suffix.lower() in (".csv", ".jsonl"):
        return path
    if path.is_dir():
        return next((path / n for n in NAMES if (path / n).is_file()), None)
    return None


def detect(path: Path) -> bool:
    return find_file(path) is not None


def _rows(file: Path):
    text = read_list_file(file)
    if file.suffix.lower() == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError) as error:
                    raise CbmctlError(f"{safe_text(file)}:{number}: not JSON ({getattr(error, 'msg', 'too deep')})"
                                      ) from None
                if not isinstance(row, dict):
                    raise CbmctlError(f"{safe_text(file)}:{number}: expected an object with path and label")
                yield number, row
    else:
        reader = csv.DictReader(text.splitlines())
        try:
            if not reader.fieldnames or not {"path", "label"} <= {f.strip() for f in reader.fieldnames}:
                raise CbmctlError(f"{safe_text(file)}: the header must name at least 'path' and 'label' columns")
            for number, row in enumerate(reader, 2):
                yield number, {k.strip(): (v or "").strip() for k, v in row.items() if isinstance(k, str) and k}
        except csv.Error as error:
            raise CbmctlError(f"{safe_text(file)}: not CSV near line {reader.line_num + 1} ({error})") from None


def _field(file: Path, number: int, row: dict, key: str) -> str:
    """A row's path or label as text; JSONL may hold numbers (labels), nothing else."""
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
        raise CbmctlError(f"{safe_text(file)}:{number}: every row needs a path and a label (text; a label may "
                          f"be a whole number), got {key} {str(value)[:40]!r}")
    value = str(value).strip()
    if has_control(value):
        raise CbmctlError(f"{safe_text(file)}:{number}: the {key} {value[:80]!r} holds a control character")
    return value


def read(path: Path) -> Dataset:
    file = find_file(path)
    if file is None:
        raise CbmctlError(f"{path}: no manifest.csv or manifest.jsonl")
    root = file.parent
    classes_file = root / "classes.txt"
    declared = None
    if classes_file.is_file():
        declared = [line.strip() for line in read_list_file(classes_file).splitlines() if line.strip()]
        validate_class_names(declared, classes_file)
    raw, first_seen = [], {}
    for number, row in _rows(file):
        image, label = _field(file, number, row, "path"), _field(file, number, row, "label")
        split = SPLIT_ALIASES.get(str(row.get("split") or "train").strip().lower())
        if split is None:
            raise CbmctlError(f"{safe_text(file)}:{number}: unknown split {str(row.get('split'))[:40]!r} "
                              "(train, val or test)")
        # one image in two splits (or twice with two labels) would leak test images into training
        key = posixpath.normpath(image.replace("\\", "/"))
        if key in first_seen:
            earlier, earlier_label, earlier_split = first_seen[key]
            raise CbmctlError(f"{safe_text(file)}:{number}: {image[:80]!r} ({split}, label {label[:40]!r}) is "
                              f"already on line {earlier} ({earlier_split}, label {earlier_label[:40]!r}); each "
                              "image may appear once")
        first_seen[key] = (number, label, split)
        raw.append((image, label, split))
    if not raw:
        raise CbmctlError(f"{safe_text(file)}: no rows")
    labels = [label for _, label, _ in raw]
    numeric = all(parse_index(label) is not None for label in labels)
    negative = next((label for label in labels if label.startswith("-") and parse_index(label[1:]) is not None), None)
    if negative is not None and all(parse_index(label.lstrip("-")) is not None for label in labels):
        raise CbmctlError(f"{safe_text(file)}: label {negative[:40]} is negative (numeric labels name classes "
                          "0..K-1)")
    if declared is not None:
        classes = declared
        index = {name: i for i, name in enumerate(classes)}
        resolve = parse_index if numeric and not set(labels) & set(classes) else index.get
    elif numeric:
        largest = max(labels, key=lambda label: int(label))
        if int(largest) >= MAX_CLASSES:
            raise CbmctlError(f"{safe_text(file)}: numeric label {largest[:40]} would make {int(largest) + 1:,} "
                              f"classes (numeric labels name classes 0..K-1, at most {MAX_CLASSES:,}); add a "
                              "classes.txt or use class names")
        classes = [str(i) for i in range(int(largest) + 1)]
        resolve = parse_index
    else:
        classes = validate_class_names(sorted(set(labels)), file)
        index = {name: i for i, name in enumerate(classes)}
        resolve = index.get
    splits: dict[str, list[ImageRecord]] = {}
    for image, label, split in raw:
        k = resolve(label)
        if k is None or not 0 <= k < len(classes):
            raise CbmctlError(f"{safe_text(file)}: label {label[:80]!r} is not one of the {len(classes)} classes")
        splits.setdefault(split, []).append(ImageRecord(image, k))
    splits.setdefault("train", [])
    return Dataset(name=root.name, root=root, format="manifest", classes=classes, splits=splits)
