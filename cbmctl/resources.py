"""What a request will need, estimated and refused before anything is allocated.

A concept set of 200,000 lines is a few MB of text, but its CBL alone is C² floats (160 GB), times the
optimizer's state; a comparison of every method over 1000 seeds stacks 5000 of them; 50,000 classes make
every chunk of logits 50,000 wide. Such a request must not start, run for minutes and then exhaust the
machine: training and CMS estimate their peak memory from the sizes alone (models S, concepts C, classes
K, images per split, batch B, embedding width D) and compare it with what the device has free, and a
request that cannot fit is one line naming the numbers, the cause and how to lift the limit.

The estimate counts what dominates (the stacked CBLs and heads with their gradients and Adam moments, the
precomputed concept scores, a batch's activations, the sparse head's design matrix and logit chunks), not
every temporary; set CBMCTL_MEMORY_LIMIT (e.g. `200G`) to compare against another amount than the one
detected (swap, unified memory, or an estimate you know to be pessimistic)."""
from __future__ import annotations

import os
import re

from cbmctl.errors import CbmctlError

MEMORY_ENV = "CBMCTL_MEMORY_LIMIT"
FLOAT = 4  # bytes of a float32
# What training keeps of every CBL and dense head: the parameter, its gradient, Adam's two moments, the best
# epoch's copy and the initial CBL.
COPIES_PER_PARAMETER = 6
SPARSE_CHUNK = 8192  # rows of the sparse head's design handled at once (cbmctl.training.heads)
# What training decides by size, here beside the estimate that counts it (cbmctl.training reads both at call
# time): concept scores of every split are precomputed when they take at most PRECOMPUTE_BYTES; the sparse
# head's design matrix (models × train images × concepts) stays on the device up to SPARSE_MATERIALISE_BYTES.
PRECOMPUTE_BYTES = 2 << 30
SPARSE_MATERIALISE_BYTES = 4 << 30
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def format_bytes(size: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} PB"


def parse_size(text: str) -> int:
    """'200G', '512M', '1.5T' or a number of bytes."""
    found = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
    if not found:
        raise CbmctlError(f"${MEMORY_ENV}={str(text)[:40]!r}: expected a size such as 200G, 512M or a number of bytes")
    return int(float(found.group(1)) * _UNITS[found.group(2).upper()])


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory(device) -> tuple[int | None, str]:
    """(bytes the device can still hold, where that number comes from); None when it cannot be told."""
    if os.environ.get(MEMORY_ENV):
        return parse_size(os.environ[MEMORY_ENV]), f"${MEMORY_ENV}"
    if getattr(device, "type", str(device)) == "cuda":
        import torch
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device}"
    return _meminfo_available(), "available on this machine"


def require(need: int, what: str, device, advice: str) -> None:
    """Refuse, in one line, a request whose estimated peak memory `need` exceeds what `device` has."""
    limit, source = available_memory(device)
    if limit is not None and need > limit:
        raise CbmctlError(f"{what} needs about {format_bytes(need)} of memory, more than the {format_bytes(limit)} "
                          f"{source}; {advice}, or set {MEMORY_ENV}=SIZE (e.g. 200G) to lift the limit")


def training_bytes(models: int, concepts: int, classes: int, sizes: dict[str, int], batch: int, dim: int) -> dict:
    """The dominant allocations of training `models` stacked CBMs and fitting their sparse heads, by part."""
    s, c, k = models, concepts, classes
    n = sizes.get("train", 0)
    b = max(1, min(batch, n))
    scores = sum(rows * c * FLOAT for rows in sizes.values() if rows * c * FLOAT <= PRECOMPUTE_BYTES)
    design = s * n * c * FLOAT
    return {
        "CBL (C×C per model)": s * c * c * FLOAT * COPIES_PER_PARAMETER,
        "dense head (K×C per model)": s * k * c * FLOAT * COPIES_PER_PARAMETER,
        "image embeddings and concept scores": sum(sizes.values()) * dim * FLOAT * 2 + scores + c * dim * FLOAT,
        "a batch's activations and logits": s * b * (4 * c + 3 * k + 2 * b) * FLOAT,
        "sparse head (design and logit chunks)": (design if design <= SPARSE_MATERIALISE_BYTES else 0)
        + s * min(n, SPARSE_CHUNK) * (k + c) * FLOAT * 4 + s * k * c * FLOAT * 8,
    }


def check_training(models: int, concepts: int, classes: int, sizes: dict[str, int], batch: int, dim: int,
                   device) -> None:
    """Refuse a training request that cannot fit, naming its largest part and what to change."""
    parts = training_bytes(models, concepts, classes, sizes, batch, dim)
    largest = max(parts, key=parts.get)
    shape = f"{models} model{'s' * (models > 1)} × {concepts:,} concepts × {classes:,} classes"
    advice = {"CBL (C×C per model)": "use fewer concepts (`cbmctl concepts filter`) or fewer models (`seeds`, "
                                     "`methods`)",
              "a batch's activations and logits": "lower `batch_size` or train fewer models at once"
              }.get(largest, "use fewer concepts, classes or models (`seeds`, `methods`)")
    require(sum(parts.values()), f"training {shape} (mostly its {largest}, {format_bytes(parts[largest])})",
            device, advice)


def cms_bytes(concepts: int, classes: int, chunk: int, dim: int) -> int:
    """CMS's peak: T (K×C) in its variants, and per chunk of images V (chunk×C) and the scores (chunk×K)."""
    return (classes * concepts * 4 + chunk * (concepts * 3 + classes * 3) + (classes + concepts) * dim) * FLOAT


def cms_chunk(concepts: int, classes: int, chunk: int, budget: int = 256 << 20) -> int:
    """Images scored at once: `chunk`, fewer when a chunk's V and scores would pass `budget` bytes (50,000
    classes make every row of scores 200 KB)."""
    return max(1, min(chunk, budget // (FLOAT * 3 * max(concepts + classes, 1))))
