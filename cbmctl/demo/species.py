"""The demo worlds' species, each a profile over the vocabulary's families: the classic 30, which the demo
CLIP learnt by name, and the 50 cub-like ones, whose bird-like names carry only their colour, pattern and
shape words as "red-winged blackbird" does (then a bird noun the demo CLIP has never read, so zero-shot from
the names sees three of the five families). Profiles are fixed (the same in every world); `confusable` edits
make a few species pairs differ in a single attribute; an image's attributes are drawn from its species'
profile with a per-family fidelity."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cbmctl.demo.vocabulary import FAMILIES

SPECIES_NAMES = [
    "azure glimmerwing", "crimson thornback", "golden dapplefin", "violet moonhopper", "scarlet pebblecrest",
    "amber sandstrider", "jade whistler", "rose mistdancer", "onyx burrowtail", "cobalt frostbeak",
    "saffron reedhopper", "emerald gladewing", "coral duneskipper", "ebony starling", "lilac snowfinch",
    "ruby spiketail", "citrine marshwing", "teal bramblehop", "magenta sunchaser", "sable crestling",
    "tangerine pipit", "indigo shellback", "blush meadowlark", "charcoal glider", "lemon hollowtail",
    "plum ridgecrest", "cerulean drifter", "vermilion sprite", "olive dunehopper", "orchid frostling",
]
# how often an image shows its species' value, per family (otherwise another value, uniformly)
FIDELITY = {"color": 0.85, "shape": 0.85, "pattern": 0.8, "size": 0.8, "background": 0.8}
PROFILE_SEED = 20240404  # fixed: the species are the same in every world


@dataclass(frozen=True)
class Species:
    name: str
    profile: dict[str, str]


def species() -> list[Species]:
    """The 30 species: distinct (colour, shape) pairs, pattern/size/background spread across them."""
    rng = np.random.default_rng(PROFILE_SEED)
    colors, shapes = list(FAMILIES["color"]), list(FAMILIES["shape"])
    pairs = [(c, s) for c in colors for s in shapes]
    chosen = [pairs[i] for i in sorted(rng.choice(len(pairs), size=len(SPECIES_NAMES), replace=False))]
    result = []
    for k, (name, (color, shape)) in enumerate(zip(SPECIES_NAMES, chosen)):
        result.append(Species(name, {
            "color": color, "shape": shape,
            "pattern": list(FAMILIES["pattern"])[int(rng.integers(3))],
            "size": list(FAMILIES["size"])[k % 2],
            "background": list(FAMILIES["background"])[int(rng.integers(3))],
        }))
    return result


def profile_distance(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """The families in which two profiles differ."""
    return [family for family in FAMILIES if a[family] != b[family]]


def single_attribute_pairs(all_species: list[Species]) -> list[tuple[int, int, str]]:
    """(i, j, family) for every pair of species whose profiles differ in exactly one family."""
    pairs = []
    for i in range(len(all_species)):
        for j in range(i + 1, len(all_species)):
            differ = profile_distance(all_species[i].profile, all_species[j].profile)
            if len(differ) == 1:
                pairs.append((i, j, differ[0]))
    return pairs


# Which family a confusable pair is made to share first: pattern, background and size keep every species'
# (colour, shape) pair distinct, as the base profiles are.
EDIT_ORDER = ("pattern", "background", "size", "shape", "color")


def _confusable_edits(all_species: list[Species]) -> list[dict]:
    """Every edit, in order, that turns a pair two families apart into a pair one family apart by giving
    the later species the earlier one's value in one family, so that no other pair comes within one
    family of each other and no species is in two confusable pairs."""
    profiles = [dict(s.profile) for s in all_species]
    used = {k for i, j, _ in single_attribute_pairs(all_species) for k in (i, j)}
    edits = []
    for i in range(len(profiles)):
        for j in range(i + 1, len(profiles)):
            differ = profile_distance(profiles[i], profiles[j])
            if i in used or j in used or len(differ) != 2:
                continue
            for family in sorted(differ, key=EDIT_ORDER.index):
                edited = {**profiles[j], family: profiles[i][family]}
                if all(len(profile_distance(edited, profiles[k])) >= 2 for k in range(len(profiles)) if k not in (i, j)):
                    edits.append({"species": all_species[j].name, "family": family, "from": profiles[j][family],
                                  "to": profiles[i][family], "like": all_species[i].name})
                    profiles[j] = edited
                    used.update((i, j))
                    break
    return edits


def max_confusable(species_set: str = "classic") -> int:
    return len(_confusable_edits(base_species(species_set)))


SPECIES_SETS = ("classic", "cub-like")


def base_species(species_set: str = "classic") -> list[Species]:
    """The species before confusable edits: the classic 30 the CLIP learnt by name, or the 50 cub-like
    ones whose names carry only part of their profile."""
    if species_set == "cub-like":
        return cub_like_species()
    return species()


def world_species(confusable: int = 0, species_set: str = "classic") -> tuple[list[Species], list[dict]]:
    """The species of a world with `confusable` extra single-attribute pairs, and the profile edits made.
    The CLIP learnt each classic name with its base profile, so an edited species' name still describes the
    base profile: zero-shot and CMS (which use names) see that species one family off."""
    base = base_species(species_set)
    edits = _confusable_edits(base)[:confusable]
    by_name = {edit["species"]: edit for edit in edits}
    result = [Species(s.name, {**s.profile, by_name[s.name]["family"]: by_name[s.name]["to"]}) if s.name in by_name
              else s for s in base]
    return result, edits


def sample_attributes(profile: dict[str, str], rng: np.random.Generator,
                      fidelity: dict[str, float] = FIDELITY) -> dict[str, str]:
    attributes = {}
    for family, values in FAMILIES.items():
        if rng.random() < fidelity[family]:
            attributes[family] = profile[family]
        else:
            others = [v for v in values if v != profile[family]]
            attributes[family] = others[int(rng.integers(len(others)))]
    return attributes



SPECIES_SEED = 20261205  # fixed: the cub-like species are the same in every world
SPECIES_COUNT = 50
# Bird nouns outside the demo CLIP's vocabulary (tests/test_demo_cub_like.py checks it): a name's noun
# carries no visual information, only its feature words do.
NOUNS = ("warbler", "sparrow", "tern", "gull", "wren", "vireo", "jay", "flycatcher", "grebe", "kingfisher",
         "tanager", "oriole", "thrush", "swallow", "shrike", "cuckoo", "plover", "bunting")
# the families a cub-like name carries, in the word order of the CLIP's captions ("red striped star")
NAME_FAMILIES = ("color", "pattern", "shape")
SHAPE_NOUN = {"circle": "circle", "square": "square", "triangle": "triangle", "star": "star", "cross": "cross",
              "diamond": "diamond"}

def cub_like_species():
    """The 50 cub-like species: distinct profiles, named from their colour, pattern and shape."""
    rng = np.random.default_rng(SPECIES_SEED)
    values = {family: list(options) for family, options in FAMILIES.items()}
    seen, result = set(), []
    while len(result) < SPECIES_COUNT:
        profile = {family: options[int(rng.integers(len(options)))] for family, options in values.items()}
        key = tuple(profile.values())
        if key in seen:
            continue
        seen.add(key)
        result.append(profile)
    names, used = [], set()
    for k, profile in enumerate(result):
        words = [profile["color"], profile["pattern"], SHAPE_NOUN[profile["shape"]]]
        # the k-th species takes the first noun (from its own offset) that keeps every name distinct
        for step in range(len(NOUNS)):
            name = " ".join(words + [NOUNS[(k + step) % len(NOUNS)]])
            if name not in used:
                break
        used.add(name)
        names.append(name)
    return [Species(name, profile) for name, profile in zip(names, result)]
