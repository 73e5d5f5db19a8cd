"""Difficulty presets for the demo world and the knobs they set, validated, and recorded in each world's
world.json so that `demo eval` (and a reader) know exactly which world they are looking at.

The default world is easy on purpose (plenty of images, clean concepts, a CLIP that sees every attribute);
the other presets each make one thing hard so that a benchmark can tell CBL objectives apart:
  fewshot         few training images per species (a large test set, so differences are measurable)
  noisy-concepts  the world's default concept set carries ~200 distractor phrases the CLIP knows
  hard            both, plus species pairs that differ in a single attribute
  cub-like        the benchmark default, calibrated to what CLIP does on CUB (cbmctl.demo.cub_like): 50
                  species whose names carry part of their profile, attributes the CLIP sees imperfectly
                  (0.6-0.9 zero-shot per family), and an LLM-like concept set of over a batch of concepts"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cbmctl.demo.species import FIDELITY, SPECIES_SETS, max_confusable
from cbmctl.demo.vocabulary import FAMILIES
from cbmctl.demo.world_concepts import distractor_pool
from cbmctl.errors import CbmctlError

WORLD_FILE = "world.json"
WORLD_FORMAT = "cbmctl-demo-world"
WORLD_VERSION = 1
MAX_WORLD_FILE = 1_000_000  # bytes; a world.json is a few kB
CONCEPT_SETS = ("clean", "distractors", "noisy", "llm")
# images per species and split: 30 species × 5000 × 2 splits is 300k JPEGs (~1 GB), far beyond any benchmark's need
MAX_PER_CLASS = 5000


def _default_fidelity() -> dict[str, float]:
    return dict(FIDELITY)


@dataclass(frozen=True)
class WorldSpec:
    """Every knob of a world. The first name in concept_sets is the world's default concept set."""
    preset: str = "default"
    train_per_class: int = 20  # the official train split; cbmctl carves validation out of it
    test_per_class: int = 20
    fidelity: dict = field(default_factory=_default_fidelity)  # family -> P(image shows its species' value)
    confusable: int = 0  # extra species pairs made to differ in a single attribute
    concept_sets: tuple = ("clean",)
    distractors: int = 200  # compositional distractor phrases in the 'distractors' set
    concept_noise: float = 0.25  # share of the 22 attribute concepts missing or replaced in the 'noisy' set
    species: str = "classic"  # 'classic' (30 species the CLIP knows by name) or 'cub-like' (50, names carry part)
    nuisance: float = 0.0  # 0 clean images; 1 the cub-like calibration (haze, clutter, occlusion, mixed background)

    def knobs(self) -> dict:
        data = asdict(self)
        data.pop("preset")
        data["concept_sets"] = list(self.concept_sets)
        return data


# The benchmark presets test on 100 images per species: seed-to-seed differences of a model are per-image
# flips, so a large test set is what makes 10-seed intervals narrower than a point (measured: 40 per
# species left the hard preset's intervals at ±0.4-0.8 points, 100 at ±0.3-0.4).
PRESETS: dict[str, dict] = {
    "default": {},
    "fewshot": {"train_per_class": 6, "test_per_class": 100, "concept_sets": ("clean", "distractors", "noisy")},
    "noisy-concepts": {"test_per_class": 100, "concept_sets": ("distractors", "noisy", "clean")},
    "hard": {"train_per_class": 6, "test_per_class": 100, "confusable": 6,
             "concept_sets": ("distractors", "noisy", "clean")},
    # CUB has ~30 train images per species; 24 here (22 after the validation carve) and 24 test images per
    # species keep a 5-world × 10-seed benchmark within a 2-core machine's hour.
    "cub-like": {"species": "cub-like", "nuisance": 1.0, "train_per_class": 24, "test_per_class": 24,
                 "fidelity": {"color": 0.9, "shape": 0.9, "pattern": 0.9, "size": 0.9, "background": 0.9},
                 "concept_sets": ("llm", "distractors", "clean")},
}


def parse_fidelity(text) -> float | dict[str, float]:
    """'0.7' (every family) or 'color=0.7,shape=0.9' (those families; the others keep the preset's)."""
    if isinstance(text, dict):  # as recorded in world.json
        return {str(family): value for family, value in text.items()}
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    text = str(text).strip()
    try:
        if "=" not in text:
            return float(text)
        pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
        values = {}
        for family, value in pairs:
            if family.strip() in values:
                raise CbmctlError(f"`fidelity` {text!r}: {family.strip()!r} is given twice; give each family once")
            values[family.strip()] = float(value)
        return values
    except ValueError:
        raise CbmctlError(f"`fidelity` {text!r}: give a number in [0, 1] or FAMILY=NUMBER pairs, e.g. "
                          "color=0.7,shape=0.9") from None


def _as_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or int(value) != value:
        raise CbmctlError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def _fidelity(preset: dict[str, float], given) -> dict[str, float]:
    """The preset's fidelity with the given one (a number for every family, or some families) laid over it."""
    fidelity = dict(preset)
    if given is not None:
        value = parse_fidelity(given)
        if isinstance(value, dict):
            for family in value:
                if family not in FAMILIES:
                    raise CbmctlError(f"`fidelity`: unknown family {family!r} (families: {', '.join(FAMILIES)})")
            fidelity.update(value)
        else:
            fidelity = {family: value for family in FAMILIES}
    for family, value in fidelity.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            # a single number is every family's: named as given, not as the first family it reached
            named = f"{value!r}" if given is not None and not isinstance(parse_fidelity(given), dict) \
                else f"{family}={value!r}"
            raise CbmctlError(f"`fidelity` {named}: must be between 0 and 1")
    if set(fidelity) != set(FAMILIES):
        raise CbmctlError(f"fidelity must give every family ({', '.join(FAMILIES)})")
    return fidelity


def resolve_spec(preset: str = "default", **overrides) -> WorldSpec:
    """The preset's knobs with the given ones (None = keep the preset's) laid over them, checked."""
    if preset not in PRESETS:
        raise CbmctlError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    unknown = sorted(set(overrides) - set(WorldSpec.__dataclass_fields__) - {"preset"})
    if unknown:
        raise CbmctlError(f"unknown world knob {unknown[0]!r}")
    spec = replace(WorldSpec(), preset=preset, **PRESETS[preset])
    given = {k: v for k, v in overrides.items() if v is not None and k != "preset"}
    fidelity = _fidelity(spec.fidelity, given.pop("fidelity", None))
    if "concept_sets" in given:
        sets = given.pop("concept_sets")
        if not isinstance(sets, (str, list, tuple)):
            raise CbmctlError(f"`concept_sets` {sets!r}: a comma list of set names")
        sets = [s.strip() for s in sets.split(",")] if isinstance(sets, str) else list(sets)
        bad = [s for s in sets if s not in CONCEPT_SETS]
        if bad or not sets or len(set(sets)) != len(sets):
            raise CbmctlError(f"`concept_sets` {','.join(map(str, sets))!r}: name each of "
                              f"{', '.join(CONCEPT_SETS)} at most once (the first is the world's default)")
        given["concept_sets"] = tuple(sets)
    spec = replace(spec, fidelity={f: float(fidelity[f]) for f in FAMILIES}, **given)
    for name in ("train_per_class", "test_per_class"):
        if not 1 <= _as_int(f"`{name}`", getattr(spec, name)) <= MAX_PER_CLASS:
            raise CbmctlError(f"`{name}` {getattr(spec, name)}: between 1 and {MAX_PER_CLASS} images "
                              "per species")
    spec = replace(spec, train_per_class=int(spec.train_per_class), test_per_class=int(spec.test_per_class))
    if spec.species not in SPECIES_SETS:
        raise CbmctlError(f"`species` {spec.species!r}: one of {', '.join(SPECIES_SETS)}")
    nuisance = spec.nuisance
    if isinstance(nuisance, bool) or not isinstance(nuisance, (int, float)) or not 0.0 <= nuisance <= 1.0:
        raise CbmctlError(f"`nuisance` {nuisance!r}: a strength between 0 (clean images) and 1 (the cub-like "
                          "calibration)")
    spec = replace(spec, nuisance=float(nuisance))
    if "llm" in spec.concept_sets and spec.species != "cub-like":
        raise CbmctlError("the 'llm' concept set describes the cub-like species: give it with `species` cub-like")
    most = max_confusable(spec.species)
    if not 0 <= _as_int("`confusable`", spec.confusable) <= most:
        raise CbmctlError(f"`confusable` {spec.confusable}: between 0 and {most} (pairs that can be made to "
                          "differ in one attribute without touching any other pair)")
    pool = len(distractor_pool())
    if not 0 <= _as_int("`distractors`", spec.distractors) <= pool:
        raise CbmctlError(f"`distractors` {spec.distractors}: between 0 and {pool} (the phrases the demo CLIP "
                          "can compose)")
    if "distractors" in spec.concept_sets and spec.distractors == 0:
        raise CbmctlError("the 'distractors' concept set needs `distractors` above 0")
    noise = spec.concept_noise
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0.0 <= noise <= 1.0:
        raise CbmctlError(f"`concept_noise` {noise!r}: a share between 0 and 1")
    return replace(spec, confusable=int(spec.confusable), distractors=int(spec.distractors),
                   concept_noise=float(noise))


def is_plain_world(spec: WorldSpec) -> bool:
    """True for the default preset with no knob changed but the image counts: a world that cbmctl made
    before presets existed, whose files stay exactly what they were."""
    counts = {"train_per_class", "test_per_class"}
    default = resolve_spec("default").knobs()
    return spec.preset == "default" and all(v == default[k] for k, v in spec.knobs().items() if k not in counts)


def read_world_spec(root) -> tuple[int | None, WorldSpec]:
    """(seed, knobs) of a world from its world.json; a world made before presets existed is the default
    world (seed unknown)."""
    path = Path(root) / WORLD_FILE
    if not path.is_file():
        return None, resolve_spec("default")
    from cbmctl.data_files import read_text_capped
    try:
        data = json.loads(read_text_capped(path, MAX_WORLD_FILE))
    except (RecursionError, ValueError) as error:  # JSONDecodeError, and integers past Python's digit limit
        raise CbmctlError(f"{path}: cannot read ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict) or data.get("format") != WORLD_FORMAT or not isinstance(data.get("knobs"), dict):
        raise CbmctlError(f"{path}: not a cbmctl demo world record")
    if data.get("version") != WORLD_VERSION:
        raise CbmctlError(f"{path}: record version {data.get('version')!r}; this cbmctl reads {WORLD_VERSION}")
    try:
        spec = resolve_spec(str(data.get("preset", "default")), **data["knobs"])
    except CbmctlError as error:
        raise CbmctlError(f"{path}: {error}", options=()) from None  # the file's keys, not flags
    seed = data.get("seed")
    return (seed if isinstance(seed, int) and not isinstance(seed, bool) else None), spec
