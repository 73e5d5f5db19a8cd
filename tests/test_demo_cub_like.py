"""The cub-like world: species whose names carry part of their profile, attributes the demo CLIP sees
imperfectly, an LLM-like concept set with ground truth for every phrase, and the calibration targets of
issue 18 measured on a small world the docs never use."""
import json

import numpy as np
import pytest

from cbmctl.concept_truth import truth_matrix
from cbmctl.concepts import load_concept_set
from cbmctl.datasets import load_config, load_dataset
from cbmctl.demo import presets, vocabulary, world, world_concepts
from cbmctl.demo import species as demo_species
from cbmctl.demo.evaluate import evaluate_world
from cbmctl.errors import CbmctlError


def test_species_are_distinct_and_named_after_colour_pattern_and_shape():
    species = demo_species.cub_like_species()
    assert len(species) == demo_species.SPECIES_COUNT == 50
    assert len({tuple(s.profile.values()) for s in species}) == 50 and len({s.name for s in species}) == 50
    for sp in species:
        *features, noun = sp.name.split()
        assert features == [sp.profile["color"], sp.profile["pattern"], demo_species.SHAPE_NOUN[sp.profile["shape"]]]
        assert noun in demo_species.NOUNS
    # the nouns carry nothing: the demo CLIP has no embedding row for any of them
    assert world_concepts.outside_vocabulary(list(demo_species.NOUNS)) == list(demo_species.NOUNS)


def test_phrase_meaning_reads_compositions_and_refuses_unknown_words():
    meaning = vocabulary.phrase_meaning
    assert meaning("small red striped star on grass") == {"size": "small", "color": "red", "pattern": "striped",
                                                          "shape": "star", "background": "grass"}
    assert meaning("with dots") == {"pattern": "dotted"} and meaning("plain surface") == {"pattern": "plain"}
    assert meaning("star-shaped") == {"shape": "star"} and meaning("tiny") == {"size": "small"}
    for false_everywhere in ("red hexagon shape", "brown", "medium size", "red blue", "on", "star warbler"):
        assert meaning(false_everywhere) is None, false_everywhere


def test_truth_of_a_composite_is_the_conjunction_of_its_values():
    names = ["has_color::red", "has_color::blue", "has_shape::star", "has_shape::circle"]
    attributes = np.array([[1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0]])
    truth = truth_matrix(names, attributes, ["red star", "red", "star", "blue circle", "red hexagon shape"])
    assert truth.tolist() == [[True, True, True, False, False], [False, True, False, False, False],
                              [False, False, True, False, False]]


def test_llm_answer_describes_each_species_with_true_and_some_wrong_phrases():
    species = demo_species.cub_like_species()
    answer, wrong = world_concepts.llm_answer(species)
    assert list(answer) == [s.name for s in species]
    phrases = {c for items in answer.values() for c in items}
    # none true of no species; some true of many; every phrase the CLIP can read
    shared = {c: len(world_concepts.true_of_species(c, species)) for c in phrases}
    assert min(shared.values()) >= 1 and sum(n >= 5 for n in shared.values()) >= 20
    assert world_concepts.outside_vocabulary(sorted(phrases)) == []
    by_name = {s.name: s for s in species}
    for name, items in answer.items():
        mistaken = set(wrong[name])
        for phrase in items:
            holds = by_name[name].profile.items() >= vocabulary.phrase_meaning(phrase).items()
            assert holds != (phrase in mistaken), (name, phrase)
    assert 0.05 < sum(map(len, wrong.values())) / sum(map(len, answer.values())) < 0.3


def test_preset_records_its_knobs_and_refuses_the_llm_set_for_classic_species():
    spec = presets.resolve_spec("cub-like")
    assert spec.species == "cub-like" and spec.nuisance == 1.0 and spec.concept_sets[0] == "llm"
    with pytest.raises(CbmctlError, match="cub-like species"):
        presets.resolve_spec("default", concept_sets="llm")
    with pytest.raises(CbmctlError, match="`nuisance`"):
        presets.resolve_spec("cub-like", nuisance=1.5)
    with pytest.raises(CbmctlError, match="`species`"):
        presets.resolve_spec("default", species="pigeons")


@pytest.fixture(scope="module")
def small_cub_like(tmp_path_factory):
    """A cub-like world of a seed the docs never use, 12 train and 8 test images per species, embedded."""
    from cbmctl.backbones import load_backbone
    from cbmctl.cache import open_cache
    from cbmctl.embed import embed_dataset
    root = world.make_world(tmp_path_factory.mktemp("cub") / "w", seed=777, preset="cub-like",
                            train_per_class=12, test_per_class=8)
    backbone = load_backbone("demo", None, "cpu")
    cache = root.parent / "w.h5"
    embed_dataset(load_dataset(root), backbone, cache, workers=0, progress=False)
    return root, open_cache(cache), backbone


def test_calibration_targets_hold_on_a_small_world(small_cub_like):
    root, cache, backbone = small_cub_like
    report = evaluate_world(cache, backbone, "test", root)
    ceiling = report["class_ceiling"]["expected"]
    zero_shot = report["zero_shot_class"]["accuracy"]
    assert zero_shot <= 0.8 * ceiling
    assert report["linear_probe_class"]["accuracy"] >= zero_shot + 0.05
    for family, row in report["families"].items():
        assert 0.6 <= row["accuracy"] <= 0.9, (family, row)
    llm = report["concept_sets"]["llm"]
    assert llm["concepts"] >= 150 and llm["with_truth"] == llm["concepts"] and llm["true_of_no_image"] == 0
    assert llm["description_baseline"] > 5 * report["zero_shot_class"]["chance"]


def test_world_ships_the_raw_answer_the_filtered_set_and_every_drop(small_cub_like):
    root = small_cub_like[0]
    record = json.loads((root / presets.WORLD_FILE).read_text())["concept_sets"]["llm"]
    assert load_config(root).concepts == str(root / record["concepts"]) and record["concepts"] == "concepts/llm.json"
    concept_set = load_concept_set(str(root / record["concepts"]))
    raw = json.loads((root / record["raw"]).read_text())
    dropped = json.loads((root / "concepts" / "llm-filter.json").read_text())["dropped"]
    assert len(concept_set.concepts) == record["size"] > 128  # more concepts than a training batch
    assert record["raw_size"] == len(concept_set.concepts) + len(dropped) == record["size"] + record["dropped_by_filter"]
    assert set(concept_set.associations) == set(raw) and all(concept_set.associations.values())
    assert {d["concept"] for d in dropped}.isdisjoint(concept_set.concepts)
