"""Difficulty presets of the demo world: knobs recorded and overridable, the default world unchanged, the
shipped concept sets and their ground truth, the Bayes ceiling of a world, and one-line errors."""
import hashlib
import json

import numpy as np
import pytest

from cbmctl.concept_truth import truth_matrix
from cbmctl.concepts import load_concept_set, normalise
from cbmctl.datasets import load_config, load_dataset
from cbmctl.demo import presets, vocabulary, world, world_concepts
from cbmctl.demo import species as demo_species
from cbmctl.demo.evaluate import bayes_ceiling, pair_ceiling, value_probabilities
from cbmctl.demo.truth import demo_mapping
from cbmctl.errors import CbmctlError

# sha256 over (relative path, bytes) of every file but the images and world.json of
# `make_world(DIR, seed=11, images_per_class=8)`, as cbmctl wrote it before presets existed. The attribute
# rows depend on every random draw (rendering included), so this pins the whole default world.
DEFAULT_WORLD_TEXT_DIGEST = "b13e38f77c77fd39639d26a7853989f3727f9fc5142b0b9e2e8e7ce677bdb671"
SMALL = {"train_per_class": 2, "test_per_class": 2}


def text_digest(root) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix != ".jpg" and path.name != presets.WORLD_FILE:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def all_files(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_default_world_is_the_world_made_before_presets(tmp_path):
    old_style = world.make_world(tmp_path / "a", seed=11, images_per_class=8)
    assert text_digest(old_style) == DEFAULT_WORLD_TEXT_DIGEST
    assert sorted(p.name for p in old_style.iterdir()) == sorted(
        ["images", "attributes", "images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt",
         "attributes.txt", "cbmctl.yaml", "WORLD.txt", presets.WORLD_FILE])
    # the same world said with the preset and the new knobs: every file byte-identical, images included
    said_with_knobs = world.make_world(tmp_path / "b", seed=11, preset="default", train_per_class=4, test_per_class=4)
    assert all_files(said_with_knobs) == all_files(old_style)
    seed, spec = presets.read_world_spec(old_style)
    assert seed == 11 and spec == presets.resolve_spec("default", train_per_class=4, test_per_class=4)


@pytest.mark.parametrize("preset", ["fewshot", "noisy-concepts", "hard"])
def test_each_preset_records_its_knobs_and_default_concept_set(tmp_path, preset):
    root = world.make_world(tmp_path / preset, seed=3, preset=preset, **SMALL)
    seed, spec = presets.read_world_spec(root)
    expected = presets.resolve_spec(preset, **SMALL)
    assert seed == 3 and spec == expected and spec.preset == preset
    record = json.loads((root / presets.WORLD_FILE).read_text())
    assert record["knobs"]["concept_sets"] == list(presets.PRESETS[preset]["concept_sets"])
    assert f"preset {preset}" in (root / "WORLD.txt").read_text()
    default_set = record["concept_sets"][spec.concept_sets[0]]["concepts"]
    assert f"concepts: {default_set}\n" in (root / "cbmctl.yaml").read_text()
    # the profiles recorded are the ones the images were drawn from
    assert [s["profile"] for s in record["species"]] == [s.profile for s in demo_species.world_species(spec.confusable)[0]]


def test_knob_flags_override_the_preset_and_keep_its_other_knobs(cli, tmp_path):
    result = cli("demo", "make", tmp_path / "w", "--preset", "hard", "--confusable", "2", "--train-per-class", "3",
                 "--test-per-class", "2", "--fidelity", "color=0.6", "--concept-sets", "noisy,clean",
                 "--concept-noise", "0.5", "--seed", "5")
    assert result.exit_code == 0, result.output
    _, spec = presets.read_world_spec(tmp_path / "w")
    assert (spec.preset, spec.confusable, spec.train_per_class, spec.test_per_class) == ("hard", 2, 3, 2)
    assert spec.fidelity == {**demo_species.FIDELITY, "color": 0.6}
    assert spec.concept_sets == ("noisy", "clean") and spec.concept_noise == 0.5
    assert spec.distractors == presets.WorldSpec().distractors  # not given: the preset's value
    assert (tmp_path / "w" / "concepts" / "noisy.txt").is_file()
    assert not (tmp_path / "w" / "concepts" / "distractors.txt").exists()
    assert "preset hard: 3 train + 2 test" in result.output  # the decided knobs, said on stderr
    one_value = presets.resolve_spec("fewshot", fidelity="0.9")
    assert one_value.fidelity == {family: 0.9 for family in vocabulary.FAMILIES}
    for given, named in (("2", "`fidelity` 2.0:"), ("color=1.5", "`fidelity` color=1.5:")):
        with pytest.raises(CbmctlError) as refused:  # one number is every family's: named as given
            presets.resolve_spec("fewshot", fidelity=given)
        assert str(refused.value).startswith(named)


def test_fewshot_has_the_requested_counts(cli, tmp_path):
    result = cli("demo", "make", tmp_path / "w", "--preset", "fewshot", "--test-per-class", "3")
    assert result.exit_code == 0, result.output
    dataset = load_dataset(tmp_path / "w")
    labels = {split: np.bincount([r.label for r in records], minlength=30) for split, records in dataset.splits.items()}
    assert (labels["test"] == 3).all()
    # 6 official train images per species, of which cbmctl's stratified carve keeps one for validation
    assert (labels["train"] + labels["val"] == presets.PRESETS["fewshot"]["train_per_class"]).all()
    assert (labels["val"] == 1).all()


def test_confusable_pairs_differ_in_exactly_one_family():
    base = demo_species.species()
    natural = demo_species.single_attribute_pairs(base)
    assert len(natural) == 3
    edited, edits = demo_species.world_species(4)
    pairs = demo_species.single_attribute_pairs(edited)
    assert len(pairs) == 3 + 4 and len(edits) == 4
    members = [k for i, j, _ in pairs for k in (i, j)]
    assert len(members) == len(set(members))  # no species is in two pairs
    names = [s.name for s in base]
    for edit in edits:
        k = names.index(edit["species"])
        assert demo_species.profile_distance(base[k].profile, edited[k].profile) == [edit["family"]]
        assert edited[k].profile[edit["family"]] == edit["to"] == base[names.index(edit["like"])].profile[edit["family"]]
    profiles = [tuple(s.profile.values()) for s in edited]
    assert len(set(profiles)) == 30


def test_the_ceiling_is_one_when_every_attribute_is_faithful_and_profiles_differ():
    faithful = {family: 1.0 for family in vocabulary.FAMILIES}
    assert bayes_ceiling([s.profile for s in demo_species.species()], faithful) == pytest.approx(1.0)
    assert bayes_ceiling([s.profile for s in demo_species.world_species(demo_species.max_confusable())[0]], faithful) == \
        pytest.approx(1.0)


def test_the_ceiling_of_a_pair_differing_in_one_attribute_is_that_attributes_confusion():
    a = {"color": "red", "shape": "star", "pattern": "plain", "size": "small", "background": "snow"}
    f = 0.7
    fidelity = {**demo_species.FIDELITY, "size": f}
    # size has two values: the pair is told apart exactly when the image shows its own size
    assert pair_ceiling(a, {**a, "size": "large"}, fidelity) == pytest.approx(f)
    # colour has eight: its own colour (f) wins; one of the six others (1-f)·6/7 is a coin toss
    fidelity = {**demo_species.FIDELITY, "color": f}
    assert pair_ceiling(a, {**a, "color": "blue"}, fidelity) == pytest.approx(f + 0.5 * (1 - f) * 6 / 7)
    # in the world: only colour is noisy, so only the two base pairs that differ in colour alone are confused
    only_color = {**{family: 1.0 for family in vocabulary.FAMILIES}, "color": f}
    color_pairs = [p for p in demo_species.single_attribute_pairs(demo_species.species()) if p[2] == "color"]
    assert len(color_pairs) == 2
    expected = 1 - 2 * len(color_pairs) / 30 * (1 - (f + 0.5 * (1 - f) * 6 / 7))
    assert bayes_ceiling([s.profile for s in demo_species.species()], only_color) == pytest.approx(expected)


def test_the_exact_ceiling_matches_the_worlds_own_sampling_process():
    """The Bayes rule applied to attributes drawn by demo_species.sample_attributes scores the exact ceiling."""
    spec = presets.resolve_spec("hard", fidelity="color=0.6")
    profiles = [s.profile for s in demo_species.world_species(spec.confusable)[0]]
    rng = np.random.default_rng(0)
    draws = 6000
    labels = rng.integers(30, size=draws)
    likelihood = np.ones((draws, 30))
    for n, k in enumerate(labels):
        drawn = demo_species.sample_attributes(profiles[k], rng, spec.fidelity)
        for family, value in drawn.items():
            column = list(vocabulary.FAMILIES[family]).index(value)
            likelihood[n] *= value_probabilities(family, profiles, spec.fidelity)[:, column]
    sampled = float((likelihood.argmax(1) == labels).mean())
    assert abs(sampled - bayes_ceiling(profiles, spec.fidelity)) < 0.02  # 3 standard errors at 6000 draws


def test_shipped_concept_sets_load_and_map_to_ground_truth(tmp_path, monkeypatch):
    root = world.make_world(tmp_path / "w", seed=2, preset="noisy-concepts", **SMALL)
    record = json.loads((root / presets.WORLD_FILE).read_text())
    dataset = load_dataset(root)
    attributes, names = dataset.attributes["test"], dataset.attribute_names
    attribute_concepts = [phrases[0] for values in vocabulary.FAMILIES.values() for phrases in values.values()]
    assert load_concept_set("demo").concepts == world_concepts.clean_concepts()

    distractors = load_concept_set(str(root / record["concept_sets"]["distractors"]["concepts"])).concepts
    assert len(distractors) == 33 + 200 == record["concept_sets"]["distractors"]["size"]
    truth = truth_matrix(names, attributes, distractors)
    # the 22 attribute concepts are exactly the image's attributes; nothing else is ever true
    assert (truth[:, :22] == attributes.astype(bool)).all() and not truth[:, 22:].any()
    mapped = set(demo_mapping(names))
    assert not {normalise(p) for p in distractors[22:]} & mapped
    # every word is one the demo CLIP kept an embedding row for
    assert world_concepts.outside_vocabulary(distractors) == []
    assert world_concepts.outside_vocabulary(["a quokka"]) == ["a quokka"]

    noisy = load_concept_set(str(root / "concepts" / "noisy.txt")).concepts
    info = record["concept_sets"]["noisy"]
    touched = round(0.25 * 22)
    assert len(info["removed"]) + len(info["replaced"]) == touched and len(noisy) == 33 - len(info["removed"])
    for old, new in info["replaced"].items():
        assert old not in noisy and new in noisy and vocabulary.bare_word(old) in new.split()
    truth = truth_matrix(names, attributes, noisy)
    kept = [c for c in attribute_concepts if c in noisy]
    assert len(kept) == 22 - touched
    for j, concept in enumerate(noisy):
        expected = attributes[:, attribute_concepts.index(concept)].astype(bool) if concept in kept else False
        assert (truth[:, j] == expected).all(), concept

    # the world's cbmctl.yaml names its default set relative to the world, whatever the working directory
    monkeypatch.chdir(tmp_path)
    assert load_config(root).concepts == str((root / "concepts" / "distractors.txt").resolve())


def test_demo_eval_reports_the_worlds_ceiling_pairs_and_concept_sets(cli, tmp_path, monkeypatch):
    root = world.make_world(tmp_path / "w", seed=4, preset="hard", confusable=2, train_per_class=2, test_per_class=3)
    monkeypatch.chdir(tmp_path)
    result = cli("demo", "eval", root, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    _, spec = presets.read_world_spec(root)
    assert report["preset"] == "hard" and report["seed"] == 4 and report["knobs"] == spec.knobs()
    profiles = [s.profile for s in demo_species.world_species(2)[0]]
    assert report["class_ceiling"]["expected"] == round(bayes_ceiling(profiles, spec.fidelity), 4)
    assert len(report["confusable_pairs"]) == 3 + 2
    sets = report["concept_sets"]
    assert list(sets) == ["distractors", "noisy", "clean"]
    assert sets["distractors"]["concepts"] == 233 and sets["clean"]["concepts"] == 33
    assert sets["clean"]["best_precision@5"] == 1.0
    # the noisy set lacks the removed and replaced attributes: the best precision@5 counts what is left
    info = json.loads((root / presets.WORLD_FILE).read_text())["concept_sets"]["noisy"]
    gone = set(info["removed"]) | set(info["replaced"])
    attributes = load_dataset(root).attributes["test"]
    attribute_concepts = [phrases[0] for values in vocabulary.FAMILIES.values() for phrases in values.values()]
    keep = [j for j, c in enumerate(attribute_concepts) if c not in gone]
    assert sets["noisy"]["best_precision@5"] == round(float(attributes[:, keep].sum(1).mean() / 5), 4)
    for row in sets.values():
        assert 0 <= row["precision@5"] <= row["best_precision@5"] + 1e-9


@pytest.mark.parametrize("args, message", [
    (["--train-per-class", "0"], "--train-per-class must be at least 2"),
    (["--test-per-class", "-2"], "--test-per-class -2: between 1 and 5000"),
    (["--fidelity", "1.5"], "between 0 and 1"),
    (["--fidelity", "colour=0.5"], "unknown family 'colour'"),
    (["--fidelity", "high"], "give a number in [0, 1]"),
    (["--confusable", "99"], "--confusable 99: between 0 and"),
    (["--concept-sets", "clean,bogus"], "--concept-sets"),
    (["--concept-sets", "clean,clean"], "at most once"),
    (["--distractors", "100000"], "--distractors 100000: between 0 and"),
    (["--preset", "noisy-concepts", "--distractors", "0"], "needs --distractors above 0"),
    (["--concept-noise", "-0.1"], "--concept-noise"),
    (["--images-per-class", "8", "--train-per-class", "2"], "not both"),
    (["--images-per-class", "2"], "--images-per-class 2: between 3"),
])
def test_bad_knob_values_give_one_line_errors_and_write_nothing(cli, tmp_path, args, message):
    result = cli("demo", "make", tmp_path / "w", *args)
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot read"),
    ('{"format": "something else", "knobs": {}}', "not a cbmctl demo world record"),
    ('{"format": "cbmctl-demo-world", "version": 99, "knobs": {}}', "record version 99"),
    ('{"format": "cbmctl-demo-world", "version": 1, "preset": "hard", "knobs": {"confusable": "many"}}',
     "whole number"),
    ('{"format": "cbmctl-demo-world", "version": 1, "knobs": {"fidelity": {"color": 7}}}', "between 0 and 1"),
])
def test_a_damaged_world_record_is_refused_in_one_line(tmp_path, content, message):
    (tmp_path / presets.WORLD_FILE).write_text(content)
    with pytest.raises(CbmctlError, match=message) as error:
        presets.read_world_spec(tmp_path)
    assert "\n" not in str(error.value) and presets.WORLD_FILE in str(error.value)


def test_a_bad_knob_in_world_json_is_named_as_its_key_also_on_the_command_line(tmp_path):
    from cbmctl.cli.common import for_the_command_line
    (tmp_path / presets.WORLD_FILE).write_text(
        '{"format": "cbmctl-demo-world", "version": 1, "knobs": {"train_per_class": 0}}')
    with pytest.raises(CbmctlError) as error:
        presets.read_world_spec(tmp_path)
    shown = for_the_command_line(error.value)  # how every command prints it
    assert "`train_per_class` 0: between 1 and" in shown and "--train-per-class" not in shown
    # the same check on a knob given as an option is shown as the option
    with pytest.raises(CbmctlError) as error:
        presets.resolve_spec("default", train_per_class=0)
    assert for_the_command_line(error.value).startswith("--train-per-class 0: between 1 and")


def test_a_world_made_before_presets_reads_as_the_default_world(tmp_path):
    assert presets.read_world_spec(tmp_path) == (None, presets.resolve_spec("default"))
