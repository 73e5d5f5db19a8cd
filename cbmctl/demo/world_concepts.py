"""The concept sets a demo world ships with, written into the world's concepts/ folder:

  clean        the 22 attribute values and 11 distractor words (the built-in `demo` set, not copied)
  distractors  clean + N phrases composed from words the demo CLIP knows, each naming at least one value no
               image has ("red hexagon shape", "star on water"), so every one is false of every image while
               its embedding is meaningful: phrases that share a real value word ("red ...") score higher on
               images with that value. Phrases true of some images ("red star shape") are left out: a
               colour-shape pair nearly names a species, and their truth is a conjunction.
  noisy        clean with a share of the attribute concepts missing (half) or replaced (half) by a false
               phrase that keeps the value word ("red" -> "red hexagon shape")

  llm          (cub-like worlds) what an LLM asked for each species' features would answer, as a
               {species: [concepts]} file: per species, phrases of its own features with synonyms and
               composites ("red star", "star on sand", "with stripes"), a share of wrong phrases (features
               of other species: an LLM's hallucinations) and features many species share. Every phrase is
               true of at least one species. llm-raw.json is the answer, llm.json what cbmctl's own
               `concepts filter` rules keep of it (llm-filter.json lists every drop with its reason).

Ground truth needs no extra mapping: `phrase_meaning` reads any phrase made of the CLIP's value words as
the conjunction of the values it names ("red star" is true of red star images), and every phrase with a
word that names no value ("hexagon", "brown") is false of every image."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cbmctl.demo.backbone import DEMO_MODEL, DEMO_WEIGHTS
from cbmctl.demo.species import world_species
from cbmctl.demo.vocabulary import DISTRACTORS, FAMILIES, bare_word, phrase_meaning

FOLDER = "concepts"
BUILTIN_CLEAN = "demo"
POOL_SEED = 13  # fixed: the same N distractors in every world

def clean_concepts() -> list[str]:
    """The canonical phrase of every attribute value, then the distractor words (= the built-in set)."""
    return [phrases[0] for values in FAMILIES.values() for phrases in values.values()] + \
        [phrase for phrases in DISTRACTORS.values() for phrase in phrases]


def vocabulary_words() -> dict[str, tuple[list[str], list[str]]]:
    """family -> (value words images have, distractor words no image has)."""
    return {family: ([bare_word(p[0]) for p in FAMILIES[family].values()], [bare_word(p) for p in DISTRACTORS[family]])
            for family in FAMILIES}


# (template, families it fills), in the word order the CLIP's captions use
TEMPLATES = (("{color} {shape} shape", ("color", "shape")), ("{color} {shape}", ("color", "shape")),
             ("{color} {pattern} pattern", ("color", "pattern")), ("{pattern} {shape}", ("pattern", "shape")),
             ("{size} {shape}", ("size", "shape")), ("{shape} on {background}", ("shape", "background")),
             ("{color} shape on {background}", ("color", "background")))


def distractor_pool() -> list[dict]:
    """Every composed phrase with at least one distractor word, in a fixed shuffled order:
    [{phrase, kind: 'pure' (only distractor words) | 'correlated' (shares a real value word), shares}]."""
    words = vocabulary_words()
    rows = []
    for template, families in TEMPLATES:
        first, second = ([(w, True) for w in words[f][0]] + [(w, False) for w in words[f][1]] for f in families)
        for a, a_real in first:
            for b, b_real in second:
                if a_real and b_real:
                    continue  # true of the images that have both values: not a distractor
                shares = [w for w, real in ((a, a_real), (b, b_real)) if real]
                rows.append({"phrase": template.format(**{families[0]: a, families[1]: b}),
                             "kind": "correlated" if shares else "pure", "shares": shares})
    order = np.random.default_rng(POOL_SEED).permutation(len(rows))
    return [rows[i] for i in order]


def distractor_concepts(count: int) -> list[str]:
    return clean_concepts() + [row["phrase"] for row in distractor_pool()[:count]]


def noisy_concepts(share: float, seed: int) -> tuple[list[str], list[str], dict[str, str]]:
    """(concepts, removed, replaced {old: new}): the clean set with round(share × 22) attribute concepts
    touched, half removed and half replaced by a false phrase sharing their value word; drawn from the
    world's seed."""
    rng = np.random.default_rng([seed, 1])
    attribute_concepts = [phrases[0] for values in FAMILIES.values() for phrases in values.values()]
    touched = [attribute_concepts[i] for i in sorted(rng.choice(len(attribute_concepts),
                                                                int(round(share * len(attribute_concepts))),
                                                                replace=False))]
    replace_count = len(touched) // 2
    chosen = rng.permutation(len(touched))
    replaced_names = {touched[i] for i in chosen[:replace_count]}
    pool = distractor_pool()
    replaced, removed = {}, []
    for concept in touched:
        if concept in replaced_names:
            candidates = [row["phrase"] for row in pool if bare_word(concept) in row["shares"]]
            replaced[concept] = candidates[int(rng.integers(len(candidates)))]
        else:
            removed.append(concept)
    concepts = [replaced.get(c, c) for c in clean_concepts() if c not in removed]
    return concepts, removed, replaced


HEADERS = {
    "distractors": "the clean set (22 attribute values, 11 distractor words), then {n} phrases composed from words "
                   "the demo CLIP knows, each naming a value no image has: false of every image",
    "noisy": "the clean set with {n} of the 22 attribute concepts missing or replaced by a false phrase",
}


def set_file(name: str) -> str:
    """Where a world keeps a non-built-in concept set, relative to the world."""
    return f"{FOLDER}/{name}.json" if name == "llm" else f"{FOLDER}/{name}.txt"


def write_concept_sets(root: Path, spec, seed: int) -> dict[str, dict]:
    """Write the world's non-built-in concept sets; name -> record for world.json, whose 'concepts' is what
    cbmctl.yaml or --concepts takes (a built-in name, or a path relative to the world)."""
    sets: dict[str, dict] = {}
    pool_kinds = {row["phrase"]: row["kind"] for row in distractor_pool()}
    for name in spec.concept_sets:
        if name == "clean":
            sets[name] = {"concepts": BUILTIN_CLEAN, "size": len(clean_concepts())}
            continue
        if name == "llm":
            sets[name] = write_llm_set(root, spec)
            continue
        if name == "distractors":
            concepts = distractor_concepts(spec.distractors)
            extra = concepts[len(clean_concepts()):]
            record = {"distractor_phrases": len(extra),
                      "correlated": sum(pool_kinds[c] == "correlated" for c in extra),
                      "pure": sum(pool_kinds[c] == "pure" for c in extra)}
            header = HEADERS[name].format(n=len(extra))
        else:
            concepts, removed, replaced = noisy_concepts(spec.concept_noise, seed)
            record = {"removed": removed, "replaced": replaced}
            header = HEADERS[name].format(n=len(removed) + len(replaced))
        path = root / set_file(name)
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"# cbmctl demo world concepts: {header}\n" + "\n".join(concepts) + "\n", encoding="utf-8")
        sets[name] = {"concepts": set_file(name), "size": len(concepts), **record}
    return sets


def outside_vocabulary(phrases: list[str]) -> list[str]:
    """The phrases with a token whose embedding row the shipped demo CLIP does not keep (such a token
    embeds as zeros, so the phrase's embedding would mean nothing)."""
    from safetensors import safe_open

    from cbmctl.backbones import load_tokenizer
    from cbmctl.backbones.weights import IDS_KEY
    with safe_open(str(DEMO_WEIGHTS), "pt") as weights:
        known = set(weights.get_tensor(IDS_KEY).tolist())
    tokens = load_tokenizer(DEMO_MODEL)[0](phrases)
    return [phrase for phrase, row in zip(phrases, tokens) if not set(row[row > 0].tolist()) <= known]


# How an LLM describes a species, as (template, families), in the word order of the CLIP's captions.
LLM_COMPOSITES = (("{color} {shape}", ("color", "shape")), ("{size} {shape}", ("size", "shape")),
                  ("{shape} on {background}", ("shape", "background")), ("{color} {pattern}", ("color", "pattern")),
                  ("{pattern} {shape}", ("pattern", "shape")), ("{size} {color}", ("size", "color")),
                  ("{color} on {background}", ("color", "background")),
                  ("{size} {pattern} {shape}", ("size", "pattern", "shape")),
                  ("{pattern} {shape} on {background}", ("pattern", "shape", "background")),
                  ("{size} {shape} on {background}", ("size", "shape", "background")),
                  ("{size} {color} {pattern}", ("size", "color", "pattern")))
LLM_SEED = 31  # fixed: the same answer for the same species in every world
LLM_OWN_FEATURES = 4  # single-feature phrases per species
LLM_COMPOSITES_PER_SPECIES = 6
LLM_WRONG_SHARE = 0.2  # share of a species' phrases that name a feature it does not have


def _phrasing(family: str, value: str, rng) -> str:
    phrases = FAMILIES[family][value]
    return phrases[int(rng.integers(len(phrases)))]


def _composite(template: str, families, profile: dict) -> str:
    return template.format(**{family: bare_word(FAMILIES[family][profile[family]][0]) for family in families})


def llm_answer(all_species) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """({species: [phrases]}, {species: [wrong phrases]}): the LLM-like description of every species. A
    wrong phrase names another species' feature (single or composite), so it is still true of some images."""
    rng = np.random.default_rng(LLM_SEED)
    profiles = [s.profile for s in all_species]
    answer, wrong = {}, {}
    for sp in all_species:
        families = list(FAMILIES)
        own = [_phrasing(f, sp.profile[f], rng) for f in rng.permutation(families)[:LLM_OWN_FEATURES]]
        templates = rng.permutation(len(LLM_COMPOSITES))[:LLM_COMPOSITES_PER_SPECIES]
        own += [_composite(*LLM_COMPOSITES[t], sp.profile) for t in templates]
        mistakes = []
        for _ in range(int(rng.binomial(len(own), LLM_WRONG_SHARE))):
            other = profiles[int(rng.integers(len(profiles)))]
            template, fams = LLM_COMPOSITES[int(rng.integers(len(LLM_COMPOSITES)))]
            composite = rng.random() < 0.6
            if all(other[f] == sp.profile[f] for f in (fams if composite else fams[:1])):
                continue  # no mistake after all: the other species shares these features
            mistakes.append(_composite(template, fams, other) if composite else _phrasing(fams[0], other[fams[0]], rng))
        answer[sp.name] = list(dict.fromkeys(own + mistakes))
        wrong[sp.name] = [m for m in mistakes if m not in own]
    return answer, wrong


def true_of_species(phrase: str, all_species) -> list[str]:
    """The species whose profile has every value the phrase names."""
    meaning = phrase_meaning(phrase) or {}
    return [s.name for s in all_species if meaning and all(s.profile[f] == v for f, v in meaning.items())]


def filter_llm_answer(answer: dict[str, list[str]]) -> tuple[list[str], list[tuple[str, str]]]:
    """What `cbmctl concepts filter` keeps of the answer (Label-free CBM rules, default thresholds, the demo
    CLIP's text encoder, the species names as classes): (kept, [(concept, reason)])."""
    from cbmctl.backbones import load_backbone
    from cbmctl.concepts import FilterThresholds, filter_concepts, normalise
    concepts = list(dict.fromkeys(c for phrases in answer.values() for c in phrases))
    assert len({normalise(c) for c in concepts}) == len(concepts)
    backbone = load_backbone(DEMO_MODEL, None, "cpu")
    classes = list(answer)
    return filter_concepts(concepts, classes, backbone.encode_texts(concepts).numpy(),
                           backbone.encode_texts(classes).numpy(), FilterThresholds())


def write_llm_set(root: Path, spec) -> dict:
    """concepts/llm-raw.json (the LLM-like answer), llm.json (what the filter keeps, per species) and
    llm-filter.json (every drop with its reason); the record for world.json."""
    import json

    all_species, _ = world_species(spec.confusable, spec.species)
    answer, wrong = llm_answer(all_species)
    kept, dropped = filter_llm_answer(answer)
    keep = set(kept)
    folder = root / FOLDER
    folder.mkdir(exist_ok=True)
    filtered = {name: [c for c in phrases if c in keep] for name, phrases in answer.items()}
    for file, data in (("llm-raw.json", answer), ("llm.json", filtered),
                       ("llm-filter.json", {"kept": kept, "dropped": [{"concept": c, "reason": r} for c, r in dropped]})):
        (folder / file).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    shared = {c: len(true_of_species(c, all_species)) for c in kept}
    return {"concepts": set_file("llm"), "size": len(kept), "raw": f"{FOLDER}/llm-raw.json",
            "raw_size": len(dict.fromkeys(c for phrases in answer.values() for c in phrases)),
            "dropped_by_filter": len(dropped), "wrong_phrases": sum(len(w) for w in wrong.values()),
            "true_of_no_species": sum(n == 0 for n in shared.values()),
            "true_of_many_species": sum(n >= 5 for n in shared.values())}
