"""The image nuisances of the cub-like worlds, which make the demo CLIP see attributes the way real CLIP
sees CUB's: imperfectly (the cub-like species themselves are in cbmctl.demo.species; the calibration
targets are in docs/method.md, "Benchmark worlds", and issue 18; `cbmctl demo eval` measures them).

Nuisances are drawn per image (haze that washes colours out, clutter of small objects of other colours
and shapes, an occluding band of background, a second background type mixed in, a shrunken object, a
colour cast of the light, blur): the attribute is still there (ground truth unchanged) but faint,
occluded or in clutter, so the CLIP's attribute zero-shot falls from 1.00 to 0.6-0.9 per family and a CBL
has something to learn. A world's seed decides them, with its images."""
from __future__ import annotations

import numpy as np

from cbmctl.demo.vocabulary import BACKGROUND_RGB, COLOR_RGB, FAMILIES

# Nuisance strengths at --nuisance 1 (the cub-like preset), measured with the shipped demo CLIP to put
# every family's attribute zero-shot between 0.6 and 0.9 (`cbmctl demo eval`).
NUISANCE = {"haze": 0.5, "clutter": 0.25, "occlusion": 0.3, "mixed_background": 1.0, "shrink": 0.2,
            "color_cast": 0.1, "blur": 0.2}
HAZE_RGB = (150.0, 150.0, 150.0)


def _band(rng, size: int, width_share: float) -> tuple[slice, slice]:
    width = max(1, int(size * rng.uniform(0.15, width_share)))
    start = int(rng.integers(0, size - width + 1))
    return (slice(None), slice(start, start + width)) if rng.random() < 0.5 else (slice(start, start + width), slice(None))


def mix_background(canvas: np.ndarray, attributes: dict, rng, strength: float) -> np.ndarray:
    """With probability mixed_background·strength, part of the canvas (beyond a random line) shows another
    background type: the image's true background is still the larger share."""
    if rng.random() >= NUISANCE["mixed_background"] * strength:
        return canvas
    size = canvas.shape[0]
    others = [b for b in BACKGROUND_RGB if b != attributes["background"]]
    other = np.array(BACKGROUND_RGB[others[int(rng.integers(len(others)))]], np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    distance = (xx - size / 2) * np.cos(angle) + (yy - size / 2) * np.sin(angle)
    region = (distance > rng.uniform(0.0, 0.35) * size)[..., None]
    patch = np.clip(other + rng.normal(0, 7, (size, size, 1)), 0, 255)
    return np.where(region, patch, canvas)


def shrink_factor(rng, strength: float) -> float:
    """The object's radius factor: sometimes smaller than its size class says (a bird far away)."""
    return float(1.0 - rng.uniform(0, NUISANCE["shrink"] * strength)) if rng.random() < 0.5 * strength else 1.0


def add_clutter_and_haze(pixels: np.ndarray, attributes: dict, rng, strength: float, mask_of) -> np.ndarray:
    """Clutter (1-2 small objects of random colour and shape), an occluding band of background, haze, a
    colour cast and blur, each drawn with its own probability; `mask_of(shape, cx, cy, radius, angle)`
    rasterises a shape."""
    size = pixels.shape[0]
    if rng.random() < NUISANCE["clutter"] * strength:
        for _ in range(int(rng.integers(1, 3))):
            color = list(COLOR_RGB)[int(rng.integers(len(COLOR_RGB)))]
            shape = list(FAMILIES["shape"])[int(rng.integers(len(FAMILIES["shape"])))]
            radius = float(rng.uniform(3.5, 6.5))
            mask = mask_of(shape, float(rng.uniform(radius, size - radius)), float(rng.uniform(radius, size - radius)),
                           radius, float(rng.uniform(-0.3, 0.3)))
            pixels = pixels * (1 - mask) + np.array(COLOR_RGB[color], np.float32) * mask
    if rng.random() < NUISANCE["occlusion"] * strength:
        band = _band(rng, size, 0.35)
        background = np.array(BACKGROUND_RGB[attributes["background"]], np.float32)
        pixels = pixels.copy()
        pixels[band] = np.clip(background + rng.normal(0, 7, pixels[band].shape[:-1] + (1,)), 0, 255)
    haze = float(rng.uniform(0, NUISANCE["haze"] * strength))
    pixels = pixels * (1 - haze) + np.array(HAZE_RGB, np.float32) * haze
    cast = 1 + rng.uniform(-1, 1, 3) * NUISANCE["color_cast"] * strength  # the light's colour (dusk, shade)
    pixels = np.clip(pixels * cast.astype(np.float32), 0, 255)
    if rng.random() < NUISANCE["blur"] * strength:  # out of focus: stripes and dots run together
        from PIL import Image, ImageFilter
        blurred = Image.fromarray(pixels.astype(np.uint8)).filter(ImageFilter.GaussianBlur(float(rng.uniform(0.6, 1.4))))
        pixels = np.asarray(blurred, dtype=np.float32)
    return pixels
