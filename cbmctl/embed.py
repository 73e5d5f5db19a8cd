"""Embedding a dataset into the cache: batched, multi-worker, resumable after any kill, torchrun-aware.

Progress is journalled as atomic shard files in `<cache>.parts/`; the cache file itself is only ever
replaced whole (written beside it, then renamed), so after a kill at any moment the cache path holds
either nothing or the previous complete cache, and rerunning the command continues from the last shard.
One process at a time embeds into a cache (a lock beside it); a second one waits, then finds it done.

This module imports the package root upward for `__version__` alone (recorded in every cache): the root's
lazy public API hands out embed_dataset on first use, never at import time, so no import loop follows."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cbmctl import __version__
from cbmctl.cache import (
    SCHEMA_VERSION,
    SPLITS,
    Cache,
    CacheLocked,
    read_attrs,
    string_array,
    write_text_group,
)
from cbmctl.errors import CbmctlError
from cbmctl.files import atomic_path, atomic_write, fault_point, file_lock, slug, write_text_atomic
from cbmctl.identity import Difference, cache_difference, text_key
from cbmctl.images import BadImage, load_rgb
from cbmctl.sanitize import safe_text

DEFAULT_TEMPLATES = ["a photo of a {}."]
MANIFEST = "manifest.json"
NON_FINITE = "the backbone gave a NaN or infinite embedding"


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


def default_cache_path(dataset, model: str, pretrained: str | None, cache_dir=None) -> Path:
    import hashlib
    base = Path(cache_dir or os.environ.get("CBMCTL_CACHE_DIR") or "cache")
    where = hashlib.sha256(str(Path(dataset.root).resolve()).encode()).hexdigest()[:6]
    model_slug = slug(Path(model).stem if model.endswith(".json") else model)
    return base / f"{slug(dataset.name)}-{where}-{model_slug}-{slug(str(pretrained or 'default'))}.h5"


def cache_header(dataset, backbone, templates) -> dict:
    from cbmctl.backbones import recorded_versions
    return {
        "schema_version": SCHEMA_VERSION,
        "cbmctl_version": __version__,
        **backbone.identity(),
        **{k: v for k, v in recorded_versions(backbone.pretrained).items() if v is not None},
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


def templates_of(attrs: dict) -> list[str]:
    """The class-prompt templates a cache (or journal) records."""
    try:
        value = json.loads(str(attrs.get("templates", "[]")))
    except ValueError:
        return []
    return [str(t) for t in value] if isinstance(value, list) else []


def template_mismatch(path, recorded: list[str], wanted: list[str],
                      hint: str = "pass `overwrite` to rebuild it, or another `cache_path`") -> str:
    return (f"{path} was made with class-prompt template(s) {json.dumps(recorded)[:120]} but this run asks for "
            f"{json.dumps(wanted)[:120]}; {hint}")


def _other_embeddings(path, made: str, difference: Difference) -> str:
    return (f"{path} {made} with {difference.field}={difference.recorded} but this run has {difference.current}; "
            "pass `overwrite` to replace it, or another `cache_path`")


def _write_atomic_npz(path: Path, **arrays) -> None:
    with atomic_write(path, "wb") as handle:
        np.savez(handle, **arrays)


class _Journal:
    """The `<cache>.parts/` folder: a manifest naming what is being built, and one file per finished shard."""

    def __init__(self, cache: Path):
        self.dir = Path(str(cache) + ".parts")

    def shard_path(self, split: str, index: int) -> Path:
        return self.dir / f"{split}-{index:06d}.npz"

    def manifest(self) -> dict | None:
        from cbmctl.data_files import MAX_STRUCTURED_BYTES, read_text_capped
        if not (self.dir / MANIFEST).exists():
            return None
        try:
            return json.loads(read_text_capped(self.dir / MANIFEST, MAX_STRUCTURED_BYTES))
        except (CbmctlError, ValueError, RecursionError):
            return None

    def start(self, header: dict, shard_size: int, sizes: dict) -> dict:
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = {"header": header, "shard_size": shard_size, "sizes": sizes}
        write_text_atomic(self.dir / MANIFEST, json.dumps(manifest, indent=1))
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
    # with `progress`, a bar on a terminal only: redirected stderr gets no carriage-return frames
    bar = tqdm(total=len(items), unit="img", desc=f"embed rank {rank}" if rank else "embed",
               disable=None if progress else True, dynamic_ncols=True)
    for pixels, positions, failures in loader:
        failures = list(failures)
        good = [i for i, reason in enumerate(failures) if not reason]
        if good:
            features = backbone.encode_images(pixels[good] if len(good) < len(failures) else pixels)
            features = features.cpu().numpy().astype(np.float16)
            finite = np.isfinite(features).all(axis=1)  # checked after the float16 cast: it can overflow
            for i in np.flatnonzero(~finite):
                failures[good[i]] = NON_FINITE
            chunks.append(features[finite])
            embedded -= int((~finite).sum())
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
            fault_point("embed:after-shard", journal.shard_path(split, index))
            nxt = next(shard_iter, None)
            if nxt is not None:
                split, index, start, end = nxt
    bar.close()
    return embedded


def _assemble(dataset, backbone, journal, manifest, header: dict, cache: Path, templates) -> tuple[dict, list]:
    """Build the finished cache beside its destination from the shard files, then rename it into place.
    The header is this run's (the journal's agrees on identity; templates and versions are what this run
    really used), so a run resumed with other class-prompt templates records those."""
    import h5py
    shard_size, sizes = manifest["shard_size"], manifest["sizes"]
    counts, skipped = {}, []
    with atomic_path(cache) as tmp:
        with h5py.File(tmp, "w") as handle:
            for key, value in header.items():
                handle.attrs[key] = value
            handle.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            class_vectors = backbone.encode_prompts(dataset.classes, templates).numpy()
            if not np.isfinite(class_vectors).all():
                raise CbmctlError(f"{backbone.name}/{backbone.pretrained} gave NaN or infinite class-prompt "
                                  f"embeddings; this backbone cannot be used (try `device` cpu or other weights)")
            classes = handle.create_group("classes")
            classes.create_dataset("names", data=string_array(dataset.classes))
            classes.create_dataset("embeddings", data=class_vectors.astype(np.float32))
            classes.attrs["text_key"] = text_key(header, dataset.classes, templates)
            write_text_group(handle, classes.attrs["text_key"], dataset.classes, class_vectors,
                             {"kind": "classes", "name": dataset.name, "templates": json.dumps(templates)})
            if dataset.attribute_names:
                handle.create_dataset("attribute_names", data=string_array(dataset.attribute_names))
            if dataset.outside_root:
                handle.attrs["outside_root_images"] = len(dataset.outside_root)
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
                # fletcher32: a flipped bit in the embeddings or labels is an error on reading, not a wrong number
                group.create_dataset("embeddings", data=embeddings.astype(np.float16), fletcher32=True,
                                     chunks=(min(len(embeddings), 4096), dim) if len(embeddings) else True)
                group.create_dataset("labels", data=np.array([records[r].label for r in rows], np.int64),
                                     fletcher32=True)
                group.create_dataset("paths", data=string_array(records[r].path for r in rows))
                if dataset.attributes is not None:
                    group.create_dataset("attributes", data=dataset.attributes[split][rows].astype(np.uint8))
                if dataset.outside_root:  # which images were read from outside the dataset root
                    group.create_dataset("outside_root", data=np.array(
                        [records[r].path in dataset.outside_root for r in rows], np.uint8))
                group.create_dataset("skipped_paths", data=string_array(records[r].path for r in bad))
                group.create_dataset("skipped_reasons", data=string_array(why))
                counts[split] = len(rows)
                skipped.extend((split, records[r].path, reason) for r, reason in zip(bad, why))
        if sum(counts.values()) == 0:
            journal.discard()
            raise CbmctlError(f"none of the {sum(sizes.values())} images could be embedded"
                              + (f" (first: {skipped[0][1]}: {skipped[0][2]})" if skipped else ""))
        fault_point("embed:before-replace", cache)
    journal.discard()
    return counts, skipped


def default_workers() -> int:
    """Image-decoding processes when none are asked for: one per core, at most 8."""
    return min(8, os.cpu_count() or 1)


def _finished(cache: Path, header: dict, templates: list[str]) -> EmbedReport | None:
    """The report of a finished cache made with this backbone and data, None when there is none; a cache
    made otherwise is refused."""
    if not cache.exists():
        return None
    try:
        existing = read_attrs(cache)
    except CacheLocked:
        raise  # waiting helps; overwriting would not
    except CbmctlError as error:
        raise CbmctlError(f"{error}; pass `overwrite` to replace it, or another `cache_path`") from None
    if "schema_version" not in existing:
        raise CbmctlError(f"{cache} exists and is not a cbmctl cache; pass `overwrite`, or another `cache_path`")
    difference = cache_difference(existing, header)
    if difference:
        raise CbmctlError(_other_embeddings(cache, "was made", difference))
    if templates_of(existing) != templates:
        raise CbmctlError(template_mismatch(cache, templates_of(existing), templates))
    return up_to_date_report(Cache(cache))


def up_to_date_report(cache: Cache) -> EmbedReport:
    """The report of a finished cache, read from its record alone (no backbone, no image)."""
    return EmbedReport(cache.path, "up-to-date", cache.counts(), cache.skipped())


def report_lines(report: EmbedReport, limit: int = 10) -> list[str]:
    """What an embed did, in plain lines: the counts after skipping, then the skipped images (up to
    `limit`, and where the full list is)."""
    counts = ", ".join(f"{split} {n}" for split, n in report.counts.items())
    if report.status == "up-to-date":
        lines = [f"up to date {report.cache} ({counts}); --overwrite to redo"]
    else:
        lines = [f"wrote {report.cache} ({counts})",
                 f"{report.embedded_now} images in {report.seconds:.1f} s ({report.images_per_second:.1f} img/s)"]
    if report.skipped:
        lines.append(f"skipped {len(report.skipped)} image(s) that could not be used (recorded in the cache):")
        lines += [f"  {split}: {safe_text(path)}: {safe_text(reason)}" for split, path, reason in report.skipped[:limit]]
        if len(report.skipped) > limit:
            lines.append(f"  ... and {len(report.skipped) - limit} more (`cbmctl embed` with the same arguments "
                         f"and --json lists them all)")
    return lines


def embed_dataset(dataset, backbone, cache, *, batch_size: int = 64, workers: int | None = None,
                  overwrite: bool = False, templates: list[str] | None = None, progress: bool = False,
                  shard_size: int | None = None, log=None) -> EmbedReport:
    """Embed every split of `dataset` with `backbone` into the HDF5 file `cache`.

    Reruns are no-ops; an interrupted run resumes from its last finished shard; a cache or journal made
    with another backbone, preprocessing or dataset content (or a cache with other class-prompt templates)
    is refused unless `overwrite`. `workers`: image decoding processes (default one per core, at most 8; 0
    decodes in this process). One process at a time: a second one waits for the lock beside the cache,
    telling `log` (a callable taking one line) once, then finds the cache done. Under torchrun
    (WORLD_SIZE > 1) each rank embeds every WORLD_SIZE-th shard and rank 0 writes the cache."""
    started = time.perf_counter()
    cache = Path(cache)
    templates = list(templates or DEFAULT_TEMPLATES)
    rank, world = _distributed()
    header = cache_header(dataset, backbone, templates)
    # rank 0 speaks for a torchrun job; the other ranks follow it through barriers
    lock = file_lock(cache, note=log, doing="embedding into") if rank == 0 else contextlib.nullcontext()
    with lock:
        if not overwrite:
            report = _finished(cache, header, templates)
            if report is not None:
                report.seconds = time.perf_counter() - started
                return report
        journal = _Journal(cache)
        sizes = {split: len(dataset.splits[split]) for split in SPLITS}
        manifest = journal.manifest()
        if manifest is not None:
            difference = cache_difference(manifest["header"], header)
            if difference and not overwrite:
                raise CbmctlError(_other_embeddings(journal.dir, "is an unfinished embed made", difference))
            if difference or manifest.get("sizes") != sizes:
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
            counts, skipped = _assemble(dataset, backbone, journal, manifest, header, cache, templates)
        if world > 1:
            dist.barrier()  # every rank returns only once the cache exists
    status = "written" if rank == 0 else "shards-done"
    return EmbedReport(cache, status, counts, skipped, embedded, time.perf_counter() - started)
