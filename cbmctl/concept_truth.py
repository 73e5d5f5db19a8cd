"""Ground truth for concepts: which concepts each image really shows, from the dataset's attribute
annotations (the demo world maps itself; CUB needs a concept -> attribute mapping file)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cbmctl.errors import CbmctlError
from cbmctl.names import normalise


def demo_mapping(attribute_names: list[str]) -> dict[str, list[str]]:
    """concept phrase -> attribute names, for every phrase the demo CLIP was taught for an attribute."""
    from cbmctl.demo.world import FAMILIES
    mapping: dict[str, list[str]] = {}
    for name in attribute_names:
        family, _, value = name.removeprefix("has_").partition("::")
        for phrase in FAMILIES.get(family, {}).get(value, []):
            mapping.setdefault(normalise(phrase), []).append(name)
    return mapping


def read_mapping(path) -> dict[str, list[str]]:
    """A YAML/JSON mapping {concept: attribute name or [names]} (e.g. CUB concepts to CUB attributes)."""
    from cbmctl.data_files import load_structured
    data = load_structured(Path(path))
    if not isinstance(data, dict):
        raise CbmctlError(f"{path}: the concept map must be a mapping concept -> attribute name(s)")
    return {normalise(str(k)): [v] if isinstance(v, str) else [str(x) for x in v] for k, v in data.items()}


def _requirements(concept: str, mapping, column: dict[str, int]) -> list[list[int]]:
    """Ways a concept can be true, each a list of attribute columns that must all hold: from the given
    mapping, any one of its attributes; from a demo world, every value its phrase names ("red star")."""
    if mapping is not None:
        return [[column[n]] for n in mapping.get(normalise(concept), []) if n in column]
    from cbmctl.demo.world_concepts import phrase_meaning
    meaning = phrase_meaning(concept)
    names = [f"has_{family}::{value}" for family, value in (meaning or {}).items()]
    return [[column[n] for n in names]] if names and all(n in column for n in names) else []


def truth_matrix(attribute_names, attributes, concepts, mapping=None):
    """(N, C) booleans: image i shows concept j; None when there is no ground truth to map. Without a
    mapping, the attribute names are read as a demo world's (has_family::value)."""
    if attribute_names is None or attributes is None:
        return None
    column = {name: j for j, name in enumerate(attribute_names)}
    present = np.asarray(attributes).astype(bool)
    truth = np.zeros((present.shape[0], len(concepts)), dtype=bool)
    mapped = 0
    for j, concept in enumerate(concepts):
        ways = _requirements(concept, mapping, column)
        if ways:
            mapped += 1
            truth[:, j] = np.any([present[:, way].all(axis=1) for way in ways], axis=0)
    return truth if mapped else None
