"""What every reader returns: class names, official splits of (path, label), optional attributes."""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

import numpy as np

from cbmctl.data_files import read_text_capped
from cbmctl.errors import CbmctlError
from cbmctl.sanitize import has_control, safe_text

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# Listing files (Places365's 1.8 M-line train list, a manifest of ImageNet) are tens of MB; this bounds
# what a forged one can make us hold, and turns a decoding error into one line.
MAX_LIST_BYTES = 1024 * 1024 * 1024


def read_list_file(path: Path) -> str:
    """A dataset's text file (index, labels, class names) as UTF-8 text, or a one-line error."""
    return read_text_capped(path, MAX_LIST_BYTES)


def listed_path(path: str, file: Path, number: int) -> str:
    """An image path read from a listing file; control characters (NUL, newline, ESC ...) are refused, as
    no OS opens the first and every report would print the others."""
    if has_control(path):
        raise CbmctlError(f"{safe_text(file)}:{number}: the image path {path[:80]!r} holds a control character")
    return path


def leaves_root(path: str) -> bool:
    """Whether an image path read from a listing (a manifest row, an index file) points outside the dataset
    root: an absolute path (`/proc/self/environ`, `C:\\x`), or one that climbs out with `..`. Symbolic
    links inside the root are the dataset's own layout and are followed."""
    text = path.replace("\\", "/")
    if text.startswith("/") or PureWindowsPath(path).drive:
        return True
    depth = 0
    for part in text.split("/"):
        depth += -1 if part == ".." else part not in ("", ".")
        if depth < 0:
            return True
    return False


def parse_index(text: str) -> int | None:
    """A non-negative decimal integer, or None (str.isdigit alone accepts '²', which int() refuses)."""
    return int(text) if text.isascii() and text.isdigit() else None


@dataclass(frozen=True)
class ImageRecord:
    """One image: `path` is relative to the dataset root ("batch#row" for array-backed formats)."""

    path: str
    label: int


class FileImages:
    """Opens images stored as files under a root directory."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __call__(self, path: str):
        from cbmctl.images import open_image_file
        return open_image_file(self.root / path)

    def fingerprint_items(self, records):
        # Size is cheap to read and catches a replaced or truncated file; hashing every byte of
        # ImageNet is not.
        for record in records:
            try:
                size = (self.root / record.path).stat().st_size
            except (OSError, ValueError):  # missing, unreadable, or a name the OS refuses (NUL)
                size = -1
            yield f"{record.path}\t{record.label}\t{size}"


@dataclass
class Dataset:
    """A dataset as cbmctl sees it, independent of its on-disk format."""

    name: str
    root: Path
    format: str
    classes: list[str]
    splits: dict[str, list[ImageRecord]]
    open_image: Callable = None
    attribute_names: list[str] | None = None
    # split -> (N × A) uint8 presence matrix, rows aligned with splits[split]
    attributes: dict[str, np.ndarray] | None = None
    val_fraction: float = 0.0
    val_seed: int = 0
    notes: list[str] = field(default_factory=list)
    # extra bytes that define the content when images are not files (CIFAR's batch files)
    content_digest: str = ""
    # listed image paths outside the root, read only when the user allowed it (--allow-outside-root)
    outside_root: frozenset = frozenset()

    def __post_init__(self):
        if self.open_image is None:
            self.open_image = FileImages(self.root)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """Hash of what defines the data: format, class names, split membership, file sizes."""
        digest = hashlib.sha256()
        digest.update(f"{self.format}\n{self.val_fraction}\n{self.val_seed}\n".encode())
        digest.update("\n".join(self.classes).encode())
        digest.update(self.content_digest.encode())
        for split in sorted(self.splits):
            digest.update(f"\n[{split}]\n".encode())
            items = getattr(self.open_image, "fingerprint_items", None)
            lines = items(self.splits[split]) if items else (f"{r.path}\t{r.label}" for r in self.splits[split])
            for line in lines:
                digest.update(line.encode())
                digest.update(b"\n")
        return digest.hexdigest()

    def summary(self) -> str:
        """One line for a terminal (the name comes from a folder, so it is shown escaped)."""
        sizes = ", ".join(f"{split} {len(records)}" for split, records in self.splits.items())
        return safe_text(f"{self.name} ({self.format}): {self.num_classes} classes; {sizes}")
