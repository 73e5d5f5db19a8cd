"""A CSV or JSONL manifest: one image per row with path, label and optionally split."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from cbmctl.datasets.base import Dataset, ImageRecord
from cbmctl.errors import CbmctlError

NAMES = ("manifest.csv", "manifest.jsonl")
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
    text = file.read_text(encoding="utf-8-sig")
    if file.suffix.lower() == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise CbmctlError(f"{file}:{number}: not JSON ({error.msg})") from None
                if not isinstance(row, dict):
                    raise CbmctlError(f"{file}:{number}: expected an object with path and label")
                yield number, row
    else:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or not {"path", "label"} <= {f.strip() for f in reader.fieldnames}:
            raise CbmctlError(f"{file}: the header must name at least 'path' and 'label' columns")
        for number, row in enumerate(reader, 2):
            yield number, {k.strip(): (v or "").strip() for k, v in row.items() if k}


def read(path: Path) -> Dataset:
    file = find_file(path)
    if file is None:
        raise CbmctlError(f"{path}: no manifest.csv or manifest.jsonl")
    root = file.parent
    classes_file = root / "classes.txt"
    declared = None
    if classes_file.is_file():
        declared = [line.strip() for line in classes_file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    raw = []
    for number, row in _rows(file):
        if not row.get("path") or row.get("label") in (None, ""):
            raise CbmctlError(f"{file}:{number}: every row needs a path and a label")
        split = SPLIT_ALIASES.get(str(row.get("split") or "train").lower())
        if split is None:
            raise CbmctlError(f"{file}:{number}: unknown split {row.get('split')!r} (train, val or test)")
        raw.append((str(row["path"]), str(row["label"]), split))
    if not raw:
        raise CbmctlError(f"{file}: no rows")
    labels = [label for _, label, _ in raw]
    if declared is not None:
        classes = declared
        index = {name: i for i, name in enumerate(classes)}
        numeric = all(label.isdigit() for label in labels)
        resolve = (lambda label: int(label)) if numeric and not set(labels) & set(classes) else index.get
    elif all(label.isdigit() for label in labels):
        count = max(int(label) for label in labels) + 1
        classes = [str(i) for i in range(count)]
        resolve = int
    else:
        classes = sorted(set(labels))
        index = {name: i for i, name in enumerate(classes)}
        resolve = index.get
    splits: dict[str, list[ImageRecord]] = {}
    for image, label, split in raw:
        k = resolve(label)
        if k is None or not 0 <= k < len(classes):
            raise CbmctlError(f"{file}: label {label!r} is not one of the {len(classes)} classes")
        splits.setdefault(split, []).append(ImageRecord(image, k))
    splits.setdefault("train", [])
    return Dataset(name=root.name, root=root, format="manifest", classes=classes, splits=splits)
