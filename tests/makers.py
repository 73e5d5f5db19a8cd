"""Writers of small datasets laid out exactly like the real ones (file names, line formats, pickles)."""
from __future__ import annotations

import csv
import json
import pickle
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


def write_bad_images(folder: Path) -> dict[str, str]:
    """One file per troublesome kind; returns name -> 'ok' (convertible) or the expected skip reason."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = picture(0, 0, 48)
    base.save(folder / "good.jpg")
    base.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((np.arange(48 * 48, dtype=np.uint16).reshape(48, 48) * 20)).save(folder / "gray16.png")
    base.convert("P").save(folder / "palette.png")
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "alpha.png")
    base.convert("L").save(folder / "gray.jpg")
    palette_alpha = base.convert("P")
    palette_alpha.info["transparency"] = 0
    palette_alpha.save(folder / "palette_alpha.png", transparency=0)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    full = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(full[: len(full) // 2])
    return {"good.jpg": "ok", "cmyk.jpg": "ok", "gray16.png": "ok", "palette.png": "ok", "alpha.png": "ok",
            "gray.jpg": "ok", "palette_alpha.png": "ok", "empty.jpg": "empty file", "text.jpg": "not an image",
            "truncated.jpg": "truncated image"}


def make_synthetic_cache(path: Path, concepts: list[str], per_split=(400, 80, 80), classes: int = 4, dim: int = 16,
                         seed: int = 0, attributes: bool = True) -> Path:
    """A cache in the documented schema with separable class clusters, concept text embeddings already in
    its text store (so training needs no backbone), and ground-truth attributes named like the demo
    world's, so that the concept phrases map onto them."""
    import h5py

    from cbmctl.cache import text_key, write_text_group
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(classes, dim))
    concept_vectors = rng.normal(size=(len(concepts), dim))
    concept_vectors /= np.linalg.norm(concept_vectors, axis=1, keepdims=True)
    attrs = {"schema_version": 1, "cbmctl_version": "test", "backbone_model": "synthetic", "backbone_pretrained": "none",
             "backbone_source": "test", "weights_sha256": "0" * 64, "preprocess": "{}", "embed_dim": dim,
             "logit_scale": 20.0, "dataset_name": "synthetic", "dataset_format": "test",
             "dataset_root": str(Path(path).parent), "dataset_fingerprint": f"fp{seed}", "val_fraction": 0.1,
             "val_seed": 0, "templates": "[]"}
    with h5py.File(path, "w") as handle:
        handle.attrs.update(attrs)
        handle["classes/names"] = np.array([f"class {k}" for k in range(classes)], dtype=h5py.string_dtype())
        class_vectors = prototypes / np.linalg.norm(prototypes, axis=1, keepdims=True)
        handle["classes/embeddings"] = class_vectors.astype(np.float32)
        if attributes:
            handle["attribute_names"] = np.array([f"has_color::{c}" for c in ("red", "green")],
                                                 dtype=h5py.string_dtype())
        for split, n in zip(("train", "val", "test"), per_split):
            labels = np.arange(n) % classes
            x = prototypes[labels] + rng.normal(scale=1.2, size=(n, dim))
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            group = handle.create_group(f"splits/{split}")
            group["embeddings"] = x.astype(np.float16)
            group["labels"] = labels.astype(np.int64)
            group["paths"] = np.array([f"{split}/{i}.jpg" for i in range(n)], dtype=h5py.string_dtype())
            if attributes:
                group["attributes"] = np.stack([labels % 2 == 0, labels % 2 == 1], 1).astype(np.uint8)
            group["skipped_paths"] = np.array([], dtype=h5py.string_dtype())
            group["skipped_reasons"] = np.array([], dtype=h5py.string_dtype())
        write_text_group(handle, text_key(attrs, concepts), concepts, concept_vectors, {"kind": "concepts"})
    return Path(path)
