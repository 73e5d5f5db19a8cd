"""The concept sets a demo world ships with, written into the world's concepts/ folder:

  clean        the 22 attribute values and 11 distractor words (the built-in `demo` set, not copied)
  distractors  clean + N phrases composed from words the demo CLIP knows, each naming at least one value no
               image has ("red hexagon shape", "star on water"), so every one is false of every image while
               its embedding is meaningful: phrases that share a real value word ("red ...") score higher on
               images with that value. Phrases true of some images ("red star shape") are left out: a
               colour-shape pair nearly names a species, and their truth is a conjunction.
  noisy        clean with a share of the attribute concepts missing (half) or replaced (half) by a false
               phrase that keeps the value word ("red" -> "red hexagon shape")

Ground truth needs no extra mapping: concept_truth.demo_mapping maps every attribute phrase, and every
other phrase is false of every image."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cbmctl.demo.world import DISTRACTORS, FAMILIES

FOLDER = "concepts"
BUILTIN_CLEAN = "demo"
POOL_SEED = 13  # fixed: the same N distractors in every world
SUFFIXES = (" shape", " pattern", " size", " background", " surface")


def _word(phrase: str) -> str:
    for suffix in SUFFIXES:
        phrase = phrase.removesuffix(suffix)
    return phrase


def clean_concepts() -> list[str]:
    """The canonical phrase of every attribute value, then the distractor words (= the built-in set)."""
    return [phrases[0] for values in FAMILIES.values() for phrases in values.values()] + \
        [phrase for phrases in DISTRACTORS.values() for phrase in phrases]


def vocabulary_words() -> dict[str, tuple[list[str], list[str]]]:
    """family -> (value words images have, distractor words no image has)."""
    return {family: ([_word(p[0]) for p in FAMILIES[family].values()], [_word(p) for p in DISTRACTORS[family]])
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
            candidates = [row["phrase"] for row in pool if _word(concept) in row["shares"]]
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


def write_concept_sets(root: Path, spec, seed: int) -> dict[str, dict]:
    """Write the world's non-built-in concept sets; name -> record for world.json, whose 'concepts' is what
    cbmctl.yaml or --concepts takes (a built-in name, or a path relative to the world)."""
    sets: dict[str, dict] = {}
    pool_kinds = {row["phrase"]: row["kind"] for row in distractor_pool()}
    for name in spec.concept_sets:
        if name == "clean":
            sets[name] = {"concepts": BUILTIN_CLEAN, "size": len(clean_concepts())}
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
        path = root / FOLDER / f"{name}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"# cbmctl demo world concepts: {header}\n" + "\n".join(concepts) + "\n", encoding="utf-8")
        sets[name] = {"concepts": f"{FOLDER}/{name}.txt", "size": len(concepts), **record}
    return sets


def outside_vocabulary(phrases: list[str]) -> list[str]:
    """The phrases with a token whose embedding row the shipped demo CLIP does not keep (such a token
    embeds as zeros, so the phrase's embedding would mean nothing)."""
    import open_clip
    from safetensors import safe_open

    from cbmctl.backbones import DEMO_CONFIG, DEMO_WEIGHTS, _register_config
    from cbmctl.demo.compact import IDS_KEY
    with safe_open(str(DEMO_WEIGHTS), "pt") as weights:
        known = set(weights.get_tensor(IDS_KEY).tolist())
    tokens = open_clip.get_tokenizer(_register_config(DEMO_CONFIG))(phrases)
    return [phrase for phrase, row in zip(phrases, tokens) if not set(row[row > 0].tolist()) <= known]
