"""Opening any image PIL can read as 8-bit RGB, or saying in a few words why it cannot be used."""
from __future__ import annotations

import os

import numpy as np


class BadImage(Exception):
    """The image cannot be used; the message is the reason recorded in the cache."""


def to_rgb(image):
    """EXIF orientation applied; CMYK, 16-bit, palette, alpha and grayscale converted to RGB."""
    from PIL import Image, ImageOps
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit grayscale: scale the actual range to 8 bits instead of clipping at 255
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_image_file(path):
    """The decoded image in file `path`, opened only when it is a regular file (cbmctl.data_files.open_regular:
    a named pipe would block the reader forever and a device would never end), and closed before returning."""
    from PIL import Image

    from cbmctl.data_files import NotRegularFile, open_regular
    try:
        descriptor = open_regular(path)
    except NotRegularFile as error:
        raise BadImage(f"{error}".replace("a regular file", "an image file")) from None
    with os.fdopen(descriptor, "rb") as file:
        image = Image.open(file)
        image.load()
        return image


def _reason(error: Exception, limit: int = 300) -> str:
    """An error's text for a one-line reason: whole sentences, control characters escaped, and cut at a
    word (with '…') only when it is longer than `limit`."""
    from cbmctl.sanitize import safe_text
    text = safe_text(error.strerror if isinstance(error, OSError) and error.strerror else str(error)).strip()
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = cut.rfind(". ")
    return cut[:end + 1] if end > limit // 2 else cut.rsplit(" ", 1)[0] + " …"


def load_rgb(opener, path: str):
    """Open `path` through `opener` (a dataset's image source) and return a decoded RGB image. An image of
    more pixels than PIL's bomb limit is refused, not only one of twice as many (PIL merely warns between
    the two, then decodes up to 180 M pixels: half a gigabyte per image and decoding process)."""
    import warnings

    from PIL import Image, UnidentifiedImageError
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = opener(path)
            image.load()
        return to_rgb(image)
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except UnidentifiedImageError:
        try:
            empty = opener.root is not None and (opener.root / path).stat().st_size == 0
        except (AttributeError, OSError):
            empty = False
        raise BadImage("empty file" if empty else "not an image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        text = str(error).lower()
        reason = "truncated image" if "truncat" in text else f"unreadable image ({_reason(error)})"
        raise BadImage(reason) from None


def thumbnail(root, relative: str, size: int = 112):
    """A dataset image (`relative` to the dataset `root`, as a cache records it) as an RGB image at most
    `size` pixels on a side, or None when it is not a readable image file there: an array-backed row such
    as CIFAR's "batch#row", a moved dataset, or a path that would leave the root (a cache's paths are not
    trusted to stay inside it: a report must not pick up a file from elsewhere on the machine)."""
    from pathlib import Path
    if root is None or "#" in relative:
        return None
    base = Path(root).resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        return None
    try:
        image = load_rgb(open_image_file, str(path))
    except (BadImage, OSError):
        return None
    image.thumbnail((size, size))
    return image
