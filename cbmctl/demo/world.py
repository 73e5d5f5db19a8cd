"""A generated, CUB-like world on disk: images of made-up species (cbmctl.demo.species), each drawn from a
noisy copy of its species' profile over the vocabulary's attributes (cbmctl.demo.vocabulary).

The species and their profiles are fixed (the same in every world, so the shipped CLIP knows their
names); a world's seed only decides which images are drawn. Same seed and knobs -> byte-identical files.
Difficulty presets and their knobs (cbmctl.demo.presets) change how many images are drawn, how faithfully
an image shows its species' profile, which concept sets ship with the world, and (`confusable`) make a few
species pairs differ in a single attribute by editing one family of one species' profile."""
from __future__ import annotations

import glob
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from cbmctl.demo import cub_like, presets
from cbmctl.demo.species import sample_attributes, single_attribute_pairs, world_species
from cbmctl.demo.vocabulary import BACKGROUND_RGB, COLOR_RGB, SIZE_RADIUS, attribute_list, attribute_name
from cbmctl.demo.world_concepts import write_concept_sets
from cbmctl.errors import CbmctlError
from cbmctl.sanitize import safe_text

IMAGE_SIZE = 64
SUPERSAMPLE = 3



def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        points = [(math.cos(a), math.sin(a)) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
        points = [(x * 1.0, y * 1.0) for x, y in points]
    elif shape == "triangle":
        points = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    elif shape == "star":
        points = [((1.0 if k % 2 == 0 else 0.45) * math.cos(-math.pi / 2 + k * math.pi / 5),
                   (1.0 if k % 2 == 0 else 0.45) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]
    elif shape == "cross":
        w = 0.33
        points = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w),
                  (-1, -w), (-w, -w)]
    elif shape == "diamond":
        points = [(0, -1.1), (0.68, 0), (0, 1.1), (-0.68, 0)]
    else:  # circle
        points = [(math.cos(2 * math.pi * k / 48), math.sin(2 * math.pi * k / 48)) for k in range(48)]
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in points]


def shape_mask(shape: str, cx: float, cy: float, radius: float, angle: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size, 1) coverage in [0, 1] of a shape, drawn supersampled and box-filtered (antialiased)."""
    from PIL import Image, ImageDraw
    big = size * SUPERSAMPLE
    mask_image = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask_image).polygon(
        [(x * SUPERSAMPLE, y * SUPERSAMPLE) for x, y in _polygon(shape, cx, cy, radius, angle)], fill=255)
    return np.asarray(mask_image.resize((size, size), Image.Resampling.BOX), dtype=np.float32)[..., None] / 255.0


def render(attributes: dict[str, str], rng: np.random.Generator, size: int = IMAGE_SIZE, nuisance: float = 0.0):
    """Draw one image of the given attributes (position, rotation and colours jittered by rng). With
    nuisance > 0 (the cub-like worlds) the image is also hazy, cluttered, occluded, shrunk or shows a second
    background, each with a probability scaled by it (cbmctl.demo.cub_like); at 0 the draws, and so the
    images of every other world, are exactly what they always were."""
    from PIL import Image
    background = np.array(BACKGROUND_RGB[attributes["background"]], dtype=np.float32)
    texture = rng.normal(0, 14 if attributes["background"] == "grass" else 7, (size, size, 1)).astype(np.float32)
    canvas = np.clip(background + texture + rng.normal(0, 6, 3), 0, 255)
    if nuisance:
        canvas = cub_like.mix_background(canvas, attributes, rng, nuisance)
    low, high = SIZE_RADIUS[attributes["size"]]
    radius = float(rng.uniform(low, high)) * (cub_like.shrink_factor(rng, nuisance) if nuisance else 1.0)
    margin = radius * 1.1 + 1
    cx, cy = (float(rng.uniform(margin, size - margin)) for _ in range(2))
    angle = float(rng.uniform(-0.2, 0.2))
    mask = shape_mask(attributes["shape"], cx, cy, radius, angle, size)
    color = np.clip(np.array(COLOR_RGB[attributes["color"]], np.float32) + rng.normal(0, 10, 3), 0, 255)
    fill = np.broadcast_to(color, (size, size, 3)).copy()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if attributes["pattern"] == "striped":
        phase = float(rng.uniform(0, 6))
        stripes = (((xx + yy + phase) % 6.0) < 3.0)[..., None]
        fill = np.where(stripes, fill * 0.45 + (255 * 0.25 if attributes["color"] == "black" else 0), fill)
    elif attributes["pattern"] == "dotted":
        ox, oy = rng.uniform(0, 5, 2)
        dots = ((((xx + ox) % 5.0) - 2.5) ** 2 + (((yy + oy) % 5.0) - 2.5) ** 2 < 1.7)[..., None]
        fill = np.where(dots, fill * 0.3 + 255 * 0.7 if attributes["color"] != "yellow" else fill * 0.4, fill)
    pixels = canvas * (1 - mask) + fill * mask
    if nuisance:
        pixels = cub_like.add_clutter_and_haze(pixels, attributes, rng, nuisance,
                                               lambda *shape: shape_mask(*shape, size=size))
    return Image.fromarray(np.clip(pixels + rng.normal(0, 3, pixels.shape), 0, 255).astype(np.uint8))


def _folder_name(index: int, name: str) -> str:
    return f"{index + 1:03d}.{name.title().replace(' ', '_')}"


MAX_SEED = 2**32 - 1


def _check_target(root: Path) -> None:
    """Refuse, before anything is written, a target that is not a new or empty directory."""
    try:
        root.lstat()
    except FileNotFoundError:
        return
    except OSError as error:
        raise CbmctlError(f"cannot use {safe_text(root)}: {error.strerror}") from None
    try:
        is_dir = root.is_dir() and not root.is_symlink() or root.resolve(strict=True).is_dir()
    except (OSError, RuntimeError):  # a symlink loop or a link to nowhere
        raise CbmctlError(f"{safe_text(root)} is a symbolic link that leads nowhere (broken or a loop); choose a new "
                          "directory") from None
    if not is_dir:
        raise CbmctlError(f"{safe_text(root)} exists and is not a directory; choose a new directory")
    if any(root.iterdir()):
        raise CbmctlError(f"{safe_text(root)} exists and is not empty; choose a new directory")


def make_world(directory, seed: int = 0, images_per_class: int | None = None, preset: str = "default",
               **knobs) -> Path:
    """Write a world in the CUB_200_2011 layout (+ attributes, cbmctl.yaml, world.json, and the concept
    sets its knobs ask for) and return its path. `images_per_class` is the pre-preset way of saying
    train_per_class = test_per_class = half of it; knobs are those of cbmctl.demo.presets.WorldSpec.
    The world is written into a temporary directory beside `directory` and moved into place when complete,
    so a failure (or an interrupt) leaves nothing behind."""
    root = Path(directory)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise CbmctlError(f"`seed` {seed!r}: a whole number between 0 and {MAX_SEED}")
    _check_target(root)
    if images_per_class is not None:
        if knobs.get("train_per_class") is not None or knobs.get("test_per_class") is not None:
            raise CbmctlError("give `images_per_class` or `train_per_class`/`test_per_class`, not both")
        if not 3 <= images_per_class <= 2 * presets.MAX_PER_CLASS:
            raise CbmctlError(f"`images_per_class` {images_per_class}: between 3 (two train images, one carved for "
                              f"validation, and one test image) and {2 * presets.MAX_PER_CLASS}")
        knobs["train_per_class"] = max(2, int(round(0.5 * images_per_class)))
        knobs["test_per_class"] = images_per_class - knobs["train_per_class"]
    given = knobs.get("train_per_class")
    spec = None if isinstance(given, int) and given < 2 else presets.resolve_spec(preset, **knobs)
    if spec is None or spec.train_per_class < 2:
        raise CbmctlError("`train_per_class` must be at least 2: cbmctl carves a validation image per species out "
                          "of the train images, and 1 would leave none to validate (or train) on")
    from cbmctl.files import file_lock
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CbmctlError(f"cannot write {safe_text(root)}: {error.strerror or error}") from None
    with file_lock(root, wait=False, doing="making"):
        return _make_in_place(root, seed, spec)


def _make_in_place(root: Path, seed: int, spec) -> Path:
    """Under the target's lock: sweep what a killed make left (its staging folder; no other make of this
    target can be running), then write into a new staging folder and move it into place."""
    staging = f".{root.name}.making-"
    for stale in root.parent.glob(f"{glob.escape(staging)}*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    try:
        work = Path(tempfile.mkdtemp(prefix=staging, dir=root.parent))
        from cbmctl.files import _umask
        os.chmod(work, 0o777 & ~_umask())  # mkdtemp's 0700 is for the temporary name, not the world
    except OSError as error:
        raise CbmctlError(f"cannot write {safe_text(root)}: {error.strerror or error}") from None
    try:
        _write_world(work, seed, spec)
        from cbmctl.files import fault_point
        fault_point("demo:world-written", root)  # crash tests: killed here, the target must not exist
        if root.is_dir():  # an existing empty directory (or a link to one) keeps its identity
            for child in work.iterdir():
                child.rename(root / child.name)
            work.rmdir()
        else:
            work.rename(root)
    except OSError as error:
        shutil.rmtree(work, ignore_errors=True)
        raise CbmctlError(f"cannot write {safe_text(root)}: {error.strerror or error}") from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return root


def _write_world(root: Path, seed: int, spec) -> None:
    all_species, edits = world_species(spec.confusable, spec.species)
    attributes = attribute_list()
    column = {pair: j for j, pair in enumerate(attributes)}
    rng = np.random.default_rng(seed)
    per_class = spec.train_per_class + spec.test_per_class
    (root / "images").mkdir()
    images, labels, splits, attribute_rows = [], [], [], []
    image_id = 0
    for k, sp in enumerate(all_species):
        folder = _folder_name(k, sp.name)
        (root / "images" / folder).mkdir()
        is_train = np.zeros(per_class, dtype=bool)
        is_train[rng.permutation(per_class)[: spec.train_per_class]] = True
        for i in range(per_class):
            image_id += 1
            drawn = sample_attributes(sp.profile, rng, spec.fidelity)
            file = f"{folder}/{sp.name.title().replace(' ', '_')}_{i:04d}.jpg"
            render(drawn, rng, nuisance=spec.nuisance).save(root / "images" / file, quality=92)
            images.append(f"{image_id} {file}")
            labels.append(f"{image_id} {k + 1}")
            splits.append(f"{image_id} {int(is_train[i])}")
            present = {column[(family, value)] for family, value in drawn.items()}
            attribute_rows.extend(f"{image_id} {j + 1} {int(j in present)} 4 1.0" for j in range(len(attributes)))
    files = {
        "images.txt": images, "image_class_labels.txt": labels, "train_test_split.txt": splits,
        "classes.txt": [f"{k + 1} {_folder_name(k, sp.name)}" for k, sp in enumerate(all_species)],
        "attributes.txt": [f"{j + 1} {attribute_name(family, value)}" for j, (family, value) in enumerate(attributes)],
    }
    for name, lines in files.items():
        (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "attributes").mkdir()
    (root / "attributes" / "image_attribute_labels.txt").write_text("\n".join(attribute_rows) + "\n")
    sets = write_concept_sets(root, spec, seed)
    (root / "cbmctl.yaml").write_text(
        "# defaults for every cbmctl command run on this world (command-line flags win)\n"
        f"model: demo\nconcepts: {sets[spec.concept_sets[0]]['concepts']}\n", encoding="utf-8")
    summary = (f"cbmctl demo world: seed {seed}, {per_class} images per species, "
               f"{len(all_species)} species, {IMAGE_SIZE}px\n")
    if not presets.is_plain_world(spec):  # the default world's files stay exactly what they were
        summary += (f"preset {spec.preset}: {spec.train_per_class} train + {spec.test_per_class} test images per "
                    f"species, {spec.confusable} extra confusable pairs, concept sets "
                    f"{', '.join(spec.concept_sets)} (first is the default); every knob in {presets.WORLD_FILE}\n")
    (root / "WORLD.txt").write_text(summary, encoding="utf-8")
    record = {"format": presets.WORLD_FORMAT, "version": presets.WORLD_VERSION, "seed": seed, "preset": spec.preset,
              "knobs": spec.knobs(),
              "species": [{"name": s.name, "profile": s.profile} for s in all_species],
              "single_attribute_pairs": [{"species": [all_species[i].name, all_species[j].name], "family": family}
                                         for i, j, family in single_attribute_pairs(all_species)],
              "profile_edits": edits, "concept_sets": sets}
    (root / presets.WORLD_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
