"""The demo worlds' vocabulary: the attribute families and their values (what images have, and the
phrases the demo CLIP was taught for each), the distractor phrases no image has, how each value looks, and
how a phrase made of value words reads as the values it names. Everything else of the demo builds on it."""
from __future__ import annotations

# family -> values that images have; the first phrase of each value is its canonical concept text
FAMILIES: dict[str, dict[str, list[str]]] = {
    "color": {
        "red": ["red"], "orange": ["orange"], "yellow": ["yellow"], "green": ["green"],
        "blue": ["blue"], "purple": ["purple"], "pink": ["pink"], "black": ["black"],
    },
    "shape": {
        "circle": ["circle shape", "round", "circle"], "square": ["square shape", "square", "boxy"],
        "triangle": ["triangle shape", "triangle", "triangular"], "star": ["star shape", "star", "star-shaped"],
        "cross": ["cross shape", "cross", "plus sign"], "diamond": ["diamond shape", "diamond", "rhombus"],
    },
    "pattern": {
        "plain": ["plain surface", "plain", "solid colored"], "striped": ["striped pattern", "striped", "with stripes"],
        "dotted": ["dotted pattern", "dotted", "with dots"],
    },
    "size": {"small": ["small size", "small", "tiny"], "large": ["large size", "large", "big"]},
    "background": {
        "grass": ["grass background", "on grass", "grassy"], "sand": ["sand background", "on sand", "sandy"],
        "snow": ["snow background", "on snow", "snowy"],
    },
}
# Phrases no image has: the CLIP is taught that they match nothing, and the concept set carries them.
DISTRACTORS: dict[str, list[str]] = {
    "color": ["brown", "gray"],
    "shape": ["hexagon shape", "oval shape", "heart shape"],
    "pattern": ["checkered pattern", "wavy pattern"],
    "size": ["medium size"],
    "background": ["forest background", "road background", "water background"],
}

COLOR_RGB = {"red": (205, 35, 35), "orange": (240, 135, 25), "yellow": (240, 215, 35), "green": (70, 200, 90),
             "blue": (40, 75, 215), "purple": (125, 45, 170), "pink": (245, 135, 185), "black": (25, 25, 28)}
BACKGROUND_RGB = {"grass": (55, 115, 40), "sand": (212, 190, 140), "snow": (232, 236, 242)}
SIZE_RADIUS = {"small": (10.0, 13.0), "large": (19.0, 23.0)}


def attribute_list() -> list[tuple[str, str]]:
    """(family, value) in the fixed column order of the attribute annotations."""
    return [(family, value) for family, values in FAMILIES.items() for value in values]


def attribute_name(family: str, value: str) -> str:
    """The name of an attribute in a world's attributes.txt (CUB's spelling)."""
    return f"has_{family}::{value}"


SUFFIXES = (" shape", " pattern", " size", " background", " surface")


def bare_word(phrase: str) -> str:
    """A value's word without its family noun ("striped pattern" -> "striped")."""
    for suffix in SUFFIXES:
        phrase = phrase.removesuffix(suffix)
    return phrase


FILLER_WORDS = frozenset({"a", "an", "on", "with", "shape", "pattern", "background", "size", "surface"})


def _lexicon() -> dict[tuple[str, ...], tuple[str, str]]:
    """Every phrasing of every value (and its bare word, "striped" for "striped pattern"), as a token tuple."""
    lexicon = {}
    for family, values in FAMILIES.items():
        for value, phrases in values.items():
            for phrase in [*phrases, bare_word(phrases[0])]:
                lexicon[tuple(phrase.lower().split())] = (family, value)
    return lexicon


def phrase_meaning(phrase: str) -> dict[str, str] | None:
    """family -> value for a phrase made only of value phrasings and filler words ("small red star on
    sand"); None when a word names no value, or two values of one family, or nothing at all."""
    lexicon = _lexicon()
    longest = max(len(key) for key in lexicon)
    tokens = phrase.lower().replace(",", " ").split()
    meaning: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        for length in range(min(longest, len(tokens) - i), 0, -1):
            found = lexicon.get(tuple(tokens[i:i + length]))
            if found:
                break
        if found:
            family, value = found
            if meaning.get(family, value) != value:
                return None
            meaning[family] = value
            i += length
        elif tokens[i] in FILLER_WORDS:
            i += 1
        else:
            return None
    return meaning or None
