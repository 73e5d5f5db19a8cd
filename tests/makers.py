"""Test helpers: the real-format writers live in cbmctl.datasets.synthetic; these are test-only extras."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cbmctl.datasets.synthetic import (  # noqa: F401
    CUB_ATTRIBUTES,
    CUB_NAMES,
    make_cifar10,
    make_cifar100,
    make_cub,
    make_imagefolder,
    make_manifest,
    make_places365,
    picture,
)


def write_bad_images(folder: Path) -> dict[str, str]:
    """One file per troublesome kind; returns name -> 'ok' (convertible) or the expected skip reason."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = picture(0, 0, 48)
    base.save(folder / "good.jpg")
    base.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.arange(48 * 48, dtype=np.uint16).reshape(48, 48) * 20).save(folder / "gray16.png")
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
    its text store beside it (so training needs no backbone), and ground-truth attributes named like the
    demo world's, so that the concept phrases map onto them."""
    import h5py

    from cbmctl.cache import store_text
    from cbmctl.identity import text_key
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
    store_text(path, text_key(attrs, concepts), concepts, concept_vectors, {"kind": "concepts"})
    return Path(path)
