"""Tiny datasets written exactly in the real on-disk formats (file names, line formats, pickles): for
smoke runs (`python -m cbmctl.datasets.synthetic DIR`) and tests. Images are class-coloured noise."""
from __future__ import annotations

import csv
import json
import pickle
import sys
from pathlib import Path

import numpy as np
from PIL import Image

PALETTE = [(200, 30, 30), (30, 160, 40), (40, 60, 200), (220, 200, 40), (150, 40, 170), (30, 180, 190)]


def picture(label: int, index: int, size: int = 40) -> Image.Image:
    """A class-coloured image with some per-image noise, so classes are separable."""
    rng = np.random.default_rng(label * 1000 + index)
    base = np.array(PALETTE[label % len(PALETTE)], dtype=np.float64)
    pixels = base + rng.normal(0, 25, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


CUB_NAMES = ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "Groove_billed_Ani"]
CUB_ATTRIBUTES = ["has_bill_shape::curved_(up_or_down)", "has_wing_color::blue", "has_wing_color::brown",
                  "has_size::small_(5_-_9_in)"]


def make_cub(root: Path, classes: int = 3, per_class: int = 6, attributes: bool = True) -> Path:
    """CUB_200_2011 as unpacked from the official archive (attributes.txt sits beside the folder)."""
    cub = Path(root) / "CUB_200_2011"
    (cub / "images").mkdir(parents=True)
    images, labels, split, names = [], [], [], []
    image_id = 0
    for c in range(classes):
        folder = f"{c + 1:03d}.{CUB_NAMES[c % len(CUB_NAMES)]}"
        names.append(f"{c + 1} {folder}")
        (cub / "images" / folder).mkdir()
        for i in range(per_class):
            image_id += 1
            file = f"{folder}/{CUB_NAMES[c % len(CUB_NAMES)]}_{i:04d}_{100 + image_id}.jpg"
            picture(c, i).save(cub / "images" / file, quality=90)
            images.append(f"{image_id} {file}")
            labels.append(f"{image_id} {c + 1}")
            split.append(f"{image_id} {1 if i % 3 else 0}")
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split), ("classes.txt", names)):
        (cub / name).write_text("\n".join(lines) + "\n")
    if attributes:
        (Path(root) / "attributes.txt").write_text(
            "".join(f"{j + 1} {name}\n" for j, name in enumerate(CUB_ATTRIBUTES)))
        (cub / "attributes").mkdir()
        rows = []
        for k in range(1, image_id + 1):
            for j in range(len(CUB_ATTRIBUTES)):
                present = int((k + j) % 3 == 0)
                extra = " 0" if (k, j) == (2, 1) else ""  # the real file has a few 6-field lines
                rows.append(f"{k} {j + 1} {present} 3 {k % 7}.5{extra}")
        (cub / "attributes" / "image_attribute_labels.txt").write_text("\n".join(rows) + "\n")
    return cub


def _pickle(path: Path, data: dict) -> None:
    # Python 2's cPickle wrote these with bytes keys; protocol 2 is what the official files use
    with open(path, "wb") as handle:
        pickle.dump({k.encode(): v for k, v in data.items()}, handle, protocol=2)


def _cifar_batch(labels: list[int], seed: int) -> np.ndarray:
    return np.stack([np.asarray(picture(label, seed + i, 32)).transpose(2, 0, 1).reshape(-1)
                     for i, label in enumerate(labels)]).astype(np.uint8)


def make_cifar10(root: Path, per_batch: int = 6, classes=("airplane", "automobile", "bird")) -> Path:
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    _pickle(folder / "batches.meta", {"label_names": list(classes), "num_cases_per_batch": per_batch,
                                      "num_vis": 3072})
    for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        labels = [(i + b) % len(classes) for i in range(per_batch)]
        _pickle(folder / name, {"batch_label": f"batch {b}".encode(), "labels": labels,
                                "data": _cifar_batch(labels, b * 100),
                                "filenames": [f"img_{b}_{i}.png".encode() for i in range(per_batch)]})
    return folder


def make_cifar100(root: Path, train: int = 24, test: int = 9,
                  classes=("apple", "aquarium_fish", "baby")) -> Path:
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True)
    _pickle(folder / "meta", {"fine_label_names": list(classes), "coarse_label_names": ["fruit", "fish", "people"]})
    for name, count in (("train", train), ("test", test)):
        labels = [i % len(classes) for i in range(count)]
        _pickle(folder / name, {"fine_labels": labels, "coarse_labels": labels, "data": _cifar_batch(labels, count),
                                "filenames": [f"{name}_{i}.png".encode() for i in range(count)],
                                "batch_label": name.encode()})
    return folder


def make_imagefolder(root: Path, synsets=("n01440764", "n01443537", "n02012849", "n03126707"),
                     per_class: int = 5, held_out: str = "val", mapping: bool = True) -> Path:
    root = Path(root)
    names = {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus",
             "n02012849": "crane", "n03126707": "crane"}
    for split, count in (("train", per_class), (held_out, 2)):
        for k, wnid in enumerate(synsets):
            (root / split / wnid).mkdir(parents=True)
            for i in range(count):
                picture(k, i + (0 if split == "train" else 50)).save(root / split / wnid / f"{wnid}_{i}.JPEG", "JPEG")
    if mapping:
        (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {names.get(w, w)}\n" for w in synsets))
    return root


def make_places365(root: Path, categories=("/a/airfield", "/b/bakery/shop", "/a/apartment_building/outdoor"),
                   per_class: int = 4) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "categories_places365.txt").write_text("".join(f"{c} {i}\n" for i, c in enumerate(categories)))
    train_lines, val_lines = [], []
    for k, category in enumerate(categories):
        folder = root / "data_256_standard" / category.lstrip("/")
        folder.mkdir(parents=True)
        for i in range(per_class):
            picture(k, i).save(folder / f"{i + 1:08d}.jpg")
            train_lines.append(f"{category}/{i + 1:08d}.jpg {k}")
    (root / "val_256").mkdir()
    for n in range(len(categories) * 2):
        k = n % len(categories)
        name = f"Places365_val_{n + 1:08d}.jpg"
        picture(k, 90 + n).save(root / "val_256" / name)
        val_lines.append(f"{name} {k}")
    (root / "places365_train_standard.txt").write_text("\n".join(train_lines) + "\n")
    (root / "places365_val.txt").write_text("\n".join(val_lines) + "\n")
    return root


def make_manifest(root: Path, kind: str = "csv", with_split: bool = True, per_class: int = 5) -> Path:
    root = Path(root)
    (root / "img").mkdir(parents=True)
    rows = []
    for k, label in enumerate(["cat", "dog"]):
        for i in range(per_class):
            picture(k, i).save(root / "img" / f"{label}{i}.png")
            row = {"path": f"img/{label}{i}.png", "label": label}
            if with_split:
                row["split"] = "test" if i == 0 else "train"
            rows.append(row)
    if kind == "csv":
        file = root / "manifest.csv"
        with open(file, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        file = root / "manifest.jsonl"
        file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return file


def write_all(root: Path) -> dict[str, Path]:
    """One small dataset per supported format under root; returns name -> path to pass to cbmctl."""
    root = Path(root)
    made = {"cifar10": make_cifar10(root / "cifar10", per_batch=20, classes=("airplane", "automobile", "bird", "cat")),
            "cifar100": make_cifar100(root / "cifar100", train=60, test=24),
            "cub": make_cub(root / "cub", classes=4, per_class=12).parent,
            "imagenet": make_imagefolder(root / "imagenet", per_class=10),
            "places365": make_places365(root / "places365", per_class=10),
            "manifest": make_manifest(root / "manifest", "csv", per_class=10)}
    return made


if __name__ == "__main__":
    for name, path in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "smoke-data")).items():
        print(f"{name}\t{path}")
