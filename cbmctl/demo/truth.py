"""The demo worlds' ground truth, as a plug-in: a world's attribute annotations name the vocabulary's values
(has_color::red), and a concept made of value words is true of an image that has every value it names
(cbmctl.demo.vocabulary.phrase_meaning): "red star" of red star images, a phrase with a word that names no
value ("hexagon", "brown") of none. cbmctl's pyproject.toml names `register` in the `cbmctl.ground_truth`
entry-point group, so cbmctl.concept_truth finds it without importing the demo."""
from __future__ import annotations

from cbmctl.concept_truth import AttributeVocabulary, register_vocabulary
from cbmctl.demo.vocabulary import FAMILIES, attribute_list, attribute_name, phrase_meaning
from cbmctl.names import normalise

ATTRIBUTE_NAMES = frozenset(attribute_name(family, value) for family, value in attribute_list())


def claims(attribute_names: list[str]) -> bool:
    """A demo world's annotations: every attribute is one of the vocabulary's values."""
    return bool(attribute_names) and all(name in ATTRIBUTE_NAMES for name in attribute_names)


def ways(concept: str) -> list[list[str]]:
    meaning = phrase_meaning(concept)
    return [[attribute_name(family, value) for family, value in meaning.items()]] if meaning else []


def demo_mapping(attribute_names: list[str]) -> dict[str, list[str]]:
    """concept phrase -> attribute names, for every phrase the demo CLIP was taught for an attribute."""
    mapping: dict[str, list[str]] = {}
    for name in attribute_names:
        family, _, value = name.removeprefix("has_").partition("::")
        for phrase in FAMILIES.get(family, {}).get(value, []):
            mapping.setdefault(normalise(phrase), []).append(name)
    return mapping


VOCABULARY = AttributeVocabulary("demo world", claims, ways)


def register() -> None:
    """The `cbmctl.ground_truth` entry point."""
    register_vocabulary(VOCABULARY)
