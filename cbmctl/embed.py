"""Embedding a dataset into the cache: batched, multi-worker, resumable after any kill, torchrun-aware.

Progress is journalled as atomic shard files in `<cache>.parts/`; the cache file itself is only ever
replaced whole (written beside it, then renamed), so after a kill at any moment the cache path holds
either nothing or the previous complete cache, and rerunning the command continues from the last shard."""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cbmctl import __version__
from cbmctl.cache import (SCHEMA_VERSION, SPLITS, describe_mismatch, identity_mismatch, read_attrs,
                          string_array, text_key, write_text_group)
from cbmctl.errors import CbmctlError
from cbmctl.images import BadImage, load_rgb

DEFAULT_TEMPLATES = ["a photo of a {}."]
MANIFEST = "manifest.json"


@dataclass
class EmbedReport:
    cache: Path
    status: str  # "written", "up-to-date", or "shards-done" (a non-zero rank under torchrun)
    counts: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)  # (split, path, reason)
    embedded_now: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.embedded_now / self.seconds if self.seconds > 0 else 0.0


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "-" for c in text).strip("-") or "x"


def default_cache_path(dataset, model: str, pretrained: str | None, cache_dir=None) -> Path:
    import hashlib
    base = Path(cache_dir or os.environ.get("CBMCTL_CACHE_DIR") or "cache")
    where = hashlib.sha256(str(Path(dataset.root).resolve()).encode()).hexdigest()[:6]
    model_slug = _slug(Path(model).stem if model.endswith(".json") else model)
    return base / f"{_slug(dataset.name)}-{where}-{model_slug}-{_slug(str(pretrained or 'default'))}.h5"


def cache_header(dataset, backbone, templates) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "cbmctl_version": __version__,
        **backbone.identity(),
        "embed_dim": backbone.embed_dim,
        "logit_scale": backbone.logit_scale,
        "dataset_name": dataset.name,
        "dataset_format": dataset.format,
        "dataset_root": str(Path(dataset.root).resolve()),
        "dataset_fingerprint": dataset.fingerprint(),
        "val_fraction": dataset.val_fraction,
        "val_seed": dataset.val_seed,
        "templates": json.dumps(templates),
    }


def _write_atomic_npz(path: Path, **arrays) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class _Journal:
    """The `<cache>.parts/` folder: a manifest naming what is being built, and one file per finished shard."""

    def __init__(self, cache: Path):
        self.dir = Path(str(cache) + ".parts")

    def shard_path(self, split: str, index: int) -> Path:
        return self.dir / f"{split}-{index:06d}.npz"

    def manifest(self) -> dict | None:
        try:
            return json.loads((self.dir / MANIFEST).read_text())
        except (OSError, ValueError):
            return None

    def start(self, header: dict, shard_size: int, sizes: dict) -> dict:
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = {"header": header, "shard_size": shard_size, "sizes": sizes}
        tmp = self.dir / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, self.dir / MANIFEST)
        return manifest

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _shards(sizes: dict, shard_size: int):
    for split in SPLITS:
        for index, start in enumerate(range(0, sizes.get(split, 0), shard_size)):
            yield split, index, start, min(start + shard_size, sizes[split])


class _Images:
    """torch Dataset over (split, row) pairs: preprocessed pixels, or a zero tensor and the reason it failed."""

    def __init__(self, dataset, items, preprocess, image_size):
        self.dataset, self.items, self.preprocess = dataset, items, preprocess
        size = image_size if isinstance(image_size, (tuple, list)) else (image_size, image_size)
        self.shape = (3, int(size[0]), int(size[1]))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, position):
        import torch
        split, row = self.items[position]
        record = self.dataset.splits[split][row]
        try:
            return self.preprocess(load_rgb(self.dataset.open_image, record.path)), position, ""
        except BadImage as error:
            return torch.zeros(self.shape), position, str(error)


def _collate(batch):
    import torch
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch], [b[2] for b in batch]


def _distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def _embed_shards(dataset, backbone, journal, pending, batch_size, workers, progress, rank) -> int:
    """Embed the pending shards in order, writing each one's file as soon as it is complete."""
    import torch
    from tqdm import tqdm
    items, batches = [], []
    for split, _, start, end in pending:
        first = len(items)
        items.extend((split, row) for row in range(start, end))
        batches.extend(list(range(b, min(b + batch_size, first + end - start)))
                       for b in range(first, first + end - start, batch_size))
    if not items:
        return 0
    source = _Images(dataset, items, backbone.preprocess, backbone.preprocess_cfg.get("size", 224))
    loader = torch.utils.data.DataLoader(source, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
                                         pin_memory=backbone.device.type == "cuda",
                                         persistent_workers=False)
    shard_iter = iter(pending)
    split, index, start, end = next(shard_iter)
    chunks, rows, skipped_rows, reasons, done_in_shard, embedded = [], [], [], [], 0, 0
    bar = tqdm(total=len(items), unit="img", desc=f"embed rank {rank}" if rank else "embed", disable=not progress,
               dynamic_ncols=True)
    for pixels, positions, failures in loader:
        good = [i for i, reason in enumerate(failures) if not reason]
        if good:
            features = backbone.encode_images(pixels[good] if len(good) < len(failures) else pixels)
            chunks.append(features.cpu().numpy().astype(np.float16))
        for i, position in enumerate(positions):
            row = items[position][1]
            if failures[i]:
                skipped_rows.append(row)
                reasons.append(failures[i])
            else:
                rows.append(row)
        embedded += len(good)
        done_in_shard += len(positions)
        bar.update(len(positions))
        if done_in_shard == end - start:
            dim = backbone.embed_dim
            _write_atomic_npz(journal.shard_path(split, index),
                              embeddings=np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float16),
                              rows=np.asarray(rows, np.int64), skipped_rows=np.asarray(skipped_rows, np.int64),
                              skipped_reasons=np.asarray(reasons, dtype=str))
            chunks, rows, skipped_rows, reasons, done_in_shard = [], [], [], [], 0
            nxt = next(shard_iter, None)
            if nxt is not None:
                split, index, start, end = nxt
    bar.close()
    return embedded


def _assemble(dataset, backbone, journal, manifest, cache: Path, templates) -> tuple[dict, list]:
    """Build the finished cache beside its destination from the shard files, then rename it into place."""
    import h5py
    header = manifest["header"]
    shard_size, sizes = manifest["shard_size"], manifest["sizes"]
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    counts, skipped = {}, []
    try:
        with h5py.File(tmp, "w") as handle:
            for key, value in header.items():
                handle.attrs[key] = value
            handle.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            class_vectors = backbone.encode_prompts(dataset.classes, templates).numpy()
            classes = handle.create_group("classes")
            classes.create_dataset("names", data=string_array(dataset.classes))
            classes.create_dataset("embeddings", data=class_vectors.astype(np.float32))
            classes.attrs["text_key"] = text_key(header, dataset.classes, templates)
            write_text_group(handle, classes.attrs["text_key"], dataset.classes, class_vectors,
                             {"kind": "classes", "name": dataset.name, "templates": json.dumps(templates)})
            if dataset.attribute_names:
                handle.create_dataset("attribute_names", data=string_array(dataset.attribute_names))
            dim = int(header["embed_dim"])
            for split in SPLITS:
                records = dataset.splits[split]
                parts = [np.load(journal.shard_path(split, i)) for i in range((sizes[split] + shard_size - 1)
                                                                               // shard_size)]
                embeddings = np.concatenate([p["embeddings"] for p in parts]) if parts else np.zeros((0, dim))
                rows = np.concatenate([p["rows"] for p in parts]) if parts else np.zeros(0, np.int64)
                bad = np.concatenate([p["skipped_rows"] for p in parts]) if parts else np.zeros(0, np.int64)
                why = [str(r) for p in parts for r in p["skipped_reasons"]]
                group = handle.create_group(f"splits/{split}")
                group.create_dataset("embeddings", data=embeddings.astype(np.float16),
                                     chunks=(max(1, min(len(embeddings), 4096)), dim) if len(embeddings) else None)
                group.create_dataset("labels", data=np.array([records[r].label for r in rows], np.int64))
                group.create_dataset("paths", data=string_array(records[r].path for r in rows))
                if dataset.attributes is not None:
                    group.create_dataset("attributes", data=dataset.attributes[split][rows].astype(np.uint8))
                group.create_dataset("skipped_paths", data=string_array(records[r].path for r in bad))
                group.create_dataset("skipped_reasons", data=string_array(why))
                counts[split] = len(rows)
                skipped.extend((split, records[r].path, reason) for r, reason in zip(bad, why))
        if sum(counts.values()) == 0:
            journal.discard()
            raise CbmctlError(f"none of the {sum(sizes.values())} images could be embedded"
                              + (f" (first: {skipped[0][1]}: {skipped[0][2]})" if skipped else ""))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, cache)
    finally:
        tmp.unlink(missing_ok=True)
    journal.discard()
    return counts, skipped


def default_workers() -> int:
    """Image-decoding processes when none are asked for: one per core, at most 8."""
    return min(8, os.cpu_count() or 1)


def embed_dataset(dataset, backbone, cache, *, batch_size: int = 64, workers: int | None = None,
                  overwrite: bool = False,
                  templates: list[str] | None = None, progress: bool = True, shard_size: int | None = None
                  ) -> EmbedReport:
    """Embed every split of `dataset` with `backbone` into the HDF5 file `cache`.

    Reruns are no-ops; an interrupted run resumes from its last finished shard; a cache or journal made
    with another backbone, preprocessing or dataset content is refused unless `overwrite`. `workers`: image
    decoding processes (default one per core, at most 8; 0 decodes in this process). Under torchrun
    (WORLD_SIZE > 1) each rank embeds every WORLD_SIZE-th shard and rank 0 writes the cache."""
    started = time.perf_counter()
    cache = Path(cache)
    templates = list(templates or DEFAULT_TEMPLATES)
    rank, world = _distributed()
    header = cache_header(dataset, backbone, templates)
    if cache.exists() and not overwrite:
        existing = read_attrs(cache)
        if "schema_version" not in existing:
            raise CbmctlError(f"{cache} exists and is not a cbmctl cache; pass --overwrite or --cache another file")
        mismatch = identity_mismatch(existing, header)
        if mismatch:
            raise CbmctlError(describe_mismatch(cache, existing, header, mismatch))
        with __import__("h5py").File(cache, "r") as handle:
            counts = {s: int(handle[f"splits/{s}/labels"].shape[0]) for s in SPLITS if f"splits/{s}" in handle}
        return EmbedReport(cache, "up-to-date", counts, seconds=time.perf_counter() - started)

    journal = _Journal(cache)
    sizes = {split: len(dataset.splits[split]) for split in SPLITS}
    manifest = journal.manifest()
    if manifest is not None:
        mismatch = identity_mismatch(manifest["header"], header)
        if mismatch and not overwrite:
            raise CbmctlError(describe_mismatch(journal.dir, manifest["header"], header, mismatch)
                              .replace("was made", "is an unfinished embed made"))
        if mismatch or manifest.get("sizes") != sizes:
            manifest = None
    if world > 1:
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group("nccl" if backbone.device.type == "cuda" else "gloo")
    if manifest is None and rank == 0:
        journal.discard()
        manifest = journal.start(header, shard_size or max(batch_size, 1024 // batch_size * batch_size), sizes)
    if world > 1:
        dist.barrier()
        manifest = journal.manifest()
    cache.parent.mkdir(parents=True, exist_ok=True)
    pending = [shard for n, shard in enumerate(_shards(sizes, manifest["shard_size"]))
               if n % world == rank and not journal.shard_path(shard[0], shard[1]).is_file()]
    workers = default_workers() if workers is None else workers
    embedded = _embed_shards(dataset, backbone, journal, pending, batch_size, workers, progress, rank)
    if world > 1:
        dist.barrier()
    counts, skipped = {}, []
    if rank == 0:
        counts, skipped = _assemble(dataset, backbone, journal, manifest, cache, templates)
    if world > 1:
        dist.barrier()  # every rank returns only once the cache exists
    status = "written" if rank == 0 else "shards-done"
    return EmbedReport(cache, status, counts, skipped, embedded, time.perf_counter() - started)
