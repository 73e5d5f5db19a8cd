"""Ground truth for concepts: which concepts each image really shows, read from the dataset's own attribute
annotations. It comes from the dataset, or there is none: a concept map names the attributes that make each
concept true (CUB: a concept -> attribute mapping file), or a plug-in registers an attribute vocabulary for
the datasets whose attribute names it recognises (the generated demo worlds: cbmctl.demo.truth, found
through the `cbmctl.ground_truth` entry-point group, cbmctl.plugins). Any other dataset has no ground truth."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbmctl.errors import CbmctlError
from cbmctl.names import normalise
from cbmctl.plugins import GROUND_TRUTH, call_plugin, load_group


@dataclass(frozen=True)
class AttributeVocabulary:
    """How concepts read against the attribute annotations of the datasets whose attribute names it `claims`:
    `ways(concept)` lists the ways a concept can be true, each a list of attribute names that must all hold
    ([] when the concept names nothing the annotations record)."""

    name: str
    claims: Callable[[list[str]], bool]
    ways: Callable[[str], list[list[str]]]


_VOCABULARIES: dict[str, AttributeVocabulary] = {}


def register_vocabulary(vocabulary: AttributeVocabulary) -> None:
    _VOCABULARIES[vocabulary.name] = vocabulary


def unregister_vocabulary(name: str) -> None:
    _VOCABULARIES.pop(name, None)


def _claiming(attribute_names: list[str]) -> AttributeVocabulary | None:
    return next((v for v in _VOCABULARIES.values() if call_plugin(v.name, v.claims, attribute_names)), None)


def vocabulary_of(attribute_names) -> AttributeVocabulary | None:
    """The registered vocabulary that claims these attribute names (the plug-ins loaded the first time none
    does), or None."""
    names = [str(name) for name in attribute_names]
    found = _claiming(names)
    if found is None:
        load_group(GROUND_TRUTH)
        found = _claiming(names)
    return found


def read_mapping(path) -> dict[str, list[str]]:
    """A YAML/JSON mapping {concept: attribute name or [names]} (e.g. CUB concepts to CUB attributes)."""
    from cbmctl.data_files import load_structured
    data = load_structured(Path(path))
    if not isinstance(data, dict):
        raise CbmctlError(f"{path}: the concept map must be a mapping concept -> attribute name(s)")
    return {normalise(str(k)): [v] if isinstance(v, str) else [str(x) for x in v] for k, v in data.items()}


def truth_matrix(attribute_names, attributes, concepts, mapping=None):
    """(N, C) booleans: image i shows concept j. Concepts read through the concept map when one is given,
    else through the vocabulary that claims the attribute names. None when there is no ground truth: no
    annotations, no map and no vocabulary for them, or no concept maps onto them."""
    if attribute_names is None or attributes is None:
        return None
    names = [str(name) for name in attribute_names]
    if mapping is not None:
        ways_of = lambda concept: [[name] for name in mapping.get(normalise(concept), [])]
    else:
        vocabulary = vocabulary_of(names)
        if vocabulary is None:
            return None
        ways_of = lambda concept: call_plugin(vocabulary.name, vocabulary.ways, concept)
    column = {name: j for j, name in enumerate(names)}
    present = np.asarray(attributes).astype(bool)
    truth = np.zeros((present.shape[0], len(concepts)), dtype=bool)
    mapped = 0
    for j, concept in enumerate(concepts):
        ways = [[column[n] for n in way] for way in ways_of(concept) if way and all(n in column for n in way)]
        if ways:
            mapped += 1
            truth[:, j] = np.any([present[:, way].all(axis=1) for way in ways], axis=0)
    return truth if mapped else None
