"""Class and concept names: the one owner of the rules a name obeys wherever it enters cbmctl (dataset
readers, class lists, cbmctl.yaml, concept files and maps, a cache's class list, a run's model.json).

A name is shown in tables, written into files one per line and compared with other names, so it must be
non-empty plain text (no control, format or separator character: cbmctl.sanitize), at most
MAX_NAME_CHARS long, and unambiguous within its list: two class names may not differ only by case or
spacing (ImageNet's `Cardigan` the corgi and `cardigan` the sweater), two concepts not only by case,
spacing or a leading article (`normalise`, the key concept files are de-duplicated by). A list that
breaks a rule is refused in one line naming its source, the item's index and what is wrong. How a raw
label becomes a class name (a CUB folder, a Places path, a numbered classes.txt) is decided here too, for the
dataset readers and the class lists of `concepts` alike."""
from __future__ import annotations

import re

from cbmctl.errors import CbmctlError
from cbmctl.sanitize import first_control, has_control, safe_text

MAX_NAME_CHARS = 1000  # a concept or class name; a real one is a few words
ARTICLES = ("a ", "an ", "the ")


def normalise(text: str) -> str:
    """The comparison key of a concept: case, surrounding space and a leading article do not make a new one."""
    text = re.sub(r"\s+", " ", text.strip().lower())
    for article in ARTICLES:
        if text.startswith(article):
            return text[len(article):]
    return text


def class_key(name: str) -> str:
    """The comparison key of a class name: case and spacing do not make a new class."""
    return " ".join(name.split()).casefold()


def clean_class_name(raw: str) -> str:
    """'001.Black_footed_Albatross' -> 'black footed albatross'; '/a/apartment_building/outdoor' ->
    'apartment building outdoor'."""
    name = raw.strip()
    name = re.sub(r"^\d+[._\s-]+", "", name)
    name = re.sub(r"^/[a-z]/", "", name)
    name = name.replace("/", " ").replace("_", " ")
    return re.sub(r"\s+", " ", name).strip().lower()


def disambiguate(names: list[str], keys: list[str]) -> list[str]:
    """Keep label order; where two classes share a name, also one differing only by case (ImageNet's
    'Cardigan' the corgi and 'cardigan' the sweater: `class_key`), suffix each with its key (e.g. a WordNet id)."""
    counts: dict[str, int] = {}
    for name in names:
        counts[class_key(name)] = counts.get(class_key(name), 0) + 1
    return [f"{name} ({key})" if counts[class_key(name)] > 1 else name for name, key in zip(names, keys)]


NUMBERED_LINE = re.compile(r"(\d+)\s+(\S+)")


def numbered_class_names(lines: list[str]) -> list[str] | None:
    """The names of a CUB-style classes.txt ('1 001.Black_footed_Albatross', numbered 1..K in order) as the
    CUB reader names its classes ('black footed albatross'); None for any other list."""
    matches = [NUMBERED_LINE.fullmatch(line) for line in lines]
    if not lines or not all(matches) or [int(m.group(1)) for m in matches] != list(range(1, len(lines) + 1)):
        return None
    return [clean_class_name(m.group(2)) for m in matches]


def _check_each(names, kind: str, source) -> None:
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise CbmctlError(f"{safe_text(source)}: {kind} {index} has an empty name")
        if len(name) > MAX_NAME_CHARS:
            raise CbmctlError(f"{safe_text(source)}: {kind} {index} has a name of {len(name)} characters (at most "
                              f"{MAX_NAME_CHARS})")
        if has_control(name):
            raise CbmctlError(f"{safe_text(source)}: {kind} {index} holds the control character "
                              f"{first_control(name)} ({safe_text(repr(name[:80]))})")


def _check_distinct(names: list[str], key, plural: str, what: str, source) -> None:
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        first = seen.setdefault(key(name), index)
        if first != index:
            raise CbmctlError(f"{safe_text(source)}: {plural} {first} {safe_text(repr(names[first]))} and {index} "
                              f"{safe_text(repr(name))} differ only by {what}; rename one")


def validate_class_names(names: list[str], source) -> list[str]:
    """Refuse, in one line naming `source`, a class list that would make labels ambiguous or unsafe to show
    (see the module docstring). Returns the names unchanged."""
    _check_each(names, "class", source)
    _check_distinct(names, class_key, "classes", "case or spacing", source)
    return names


def validate_concept_names(names: list[str], source) -> list[str]:
    """The same for a concept list: every concept plain text, no two the same up to case, spacing or a
    leading article (one CBL unit per concept, found by name)."""
    _check_each(names, "concept", source)
    _check_distinct(names, normalise, "concepts", "case, spacing or a leading article", source)
    return names
