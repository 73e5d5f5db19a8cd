"""The embedded default: the generated world, the shipped tiny CLIP, and the whole pipeline on them."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cbmctl.datasets import load_dataset
from cbmctl.demo import species as demo_species
from cbmctl.demo import vocabulary, world

# The shipped CLIP's embedding of one fixed rendered image (first 8 of 128 dimensions). A change means the
# weights file, the architecture config or the preprocessing changed.
REFERENCE_EMBEDDING = [0.037, -0.021, 0.0234, 0.0431, -0.0644, -0.1358, -0.1775, -0.0288]


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    return world.make_world(tmp_path_factory.mktemp("w") / "demo", seed=11, images_per_class=8)


def test_same_seed_gives_byte_identical_files(tmp_path, small_world):
    again = world.make_world(tmp_path / "again", seed=11, images_per_class=8)
    assert digest(again) == digest(small_world)
    other = world.make_world(tmp_path / "other", seed=12, images_per_class=8)
    assert digest(other) != digest(small_world)


def test_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(Exception, match="not empty"):
        world.make_world(tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_the_cub_reader_loads_the_world_with_splits_and_attributes(small_world):
    dataset = load_dataset(small_world)
    assert dataset.format == "cub" and dataset.classes[0] == demo_species.SPECIES_NAMES[0]
    assert len(dataset.classes) == 30
    sizes = {split: len(records) for split, records in dataset.splits.items()}
    assert sizes["test"] == 30 * 4 and sizes["train"] + sizes["val"] == 30 * 4
    families = vocabulary.attribute_list()
    assert [name for name in dataset.attribute_names] == [f"has_{f}::{v}" for f, v in families]
    for split in ("train", "val", "test"):
        attributes = dataset.attributes[split]
        # exactly one value per family for every image
        for family in vocabulary.FAMILIES:
            columns = [j for j, (f, _) in enumerate(families) if f == family]
            assert (attributes[:, columns].sum(axis=1) == 1).all()
    # a species' own profile is the most common value among its images (fidelity ≥ 0.8)
    train = dataset.attributes["train"]
    labels = np.array([r.label for r in dataset.splits["train"]])
    sp = demo_species.species()[0]
    column = families.index(("color", sp.profile["color"]))
    assert train[labels == 0, column].mean() >= 0.5
    assert (small_world / "cbmctl.yaml").read_text().count("model: demo") == 1


def test_demo_clip_loads_offline_and_is_stable():
    from cbmctl.backbones import load_backbone
    backbone = load_backbone("demo", None, "cpu")
    assert backbone.pretrained == "shipped" and backbone.embed_dim == 128
    image = world.render({"color": "red", "shape": "star", "pattern": "striped", "size": "large",
                          "background": "grass"}, np.random.default_rng(0))
    embedding = backbone.encode_images(backbone.preprocess(image)[None])[0]
    assert torch.allclose(embedding[:8], torch.tensor(REFERENCE_EMBEDDING), atol=2e-3)
    text = backbone.encode_texts(["red", "blue", "star shape", "circle shape"])
    similarity = (embedding @ text.T).tolist()
    assert similarity[0] > similarity[1] and similarity[2] > similarity[3]


def test_demo_eval_schema(cli, small_world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("demo", "eval", small_world, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) >= {"world", "split", "images", "families", "zero_shot_class", "linear_probe_class",
                           "class_ceiling"}
    assert set(report["families"]) == set(vocabulary.FAMILIES)
    assert report["families"]["color"]["chance"] == pytest.approx(1 / 8, abs=1e-3)
    assert report["families"]["shape"]["values"] == 6 and report["zero_shot_class"]["chance"] == pytest.approx(1 / 30, abs=1e-3)
    assert 0.7 < report["class_ceiling"]["expected"] < 0.9
    for family in report["families"].values():  # the demo CLIP sees every attribute family
        assert family["accuracy"] > 0.9
    # the cache is there now (in the working directory, where `cbmctl embed` puts it): no embedding to announce
    again = cli("demo", "eval", small_world, "--device", "cpu")
    assert again.exit_code == 0 and "no cache yet" not in again.stderr and "zero-shot color" in again.stdout


def test_demo_eval_says_it_embeds_the_world_first(cli, tmp_path, monkeypatch):
    root = world.make_world(tmp_path / "w", seed=3, train_per_class=2, test_per_class=1)
    monkeypatch.chdir(tmp_path)
    result = cli("demo", "eval", root, "--device", "cpu", "--cache", tmp_path / "w.h5")
    assert result.exit_code == 0, result.output
    assert "no cache yet: embedding" in result.stderr and str(tmp_path / "w.h5") in result.stderr
    assert (tmp_path / "w.h5").is_file() and "species ceiling" in result.stdout


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`cbmctl train --loss gumbel <world>` with no other flag, from a fresh working directory."""
    import os

    from click.testing import CliRunner

    from cbmctl.cli import cli
    root = tmp_path_factory.mktemp("demo-run")
    world_dir = world.make_world(root / "data" / "demo", seed=5, images_per_class=16)
    previous = os.getcwd()
    os.chdir(root)
    try:
        result = CliRunner().invoke(cli, ["train", "--loss", "gumbel", str(world_dir)], catch_exceptions=False)
    finally:
        os.chdir(previous)
    assert result.exit_code == 0, result.output
    return root, world_dir, result.output


def test_train_needs_no_flag_on_the_demo_world(demo_run):
    root, _, output = demo_run
    for column in ("top-1", "dense", "NEC=5", "ANEC", "ECE", "concept p@5", "entropy", "Hoyer"):
        assert column in output
    assert "backbone demo (shipped), concepts demo (33), head sparse NEC 5" in output
    metrics = json.loads(((root / "runs" / "latest").resolve() / "metrics.json").read_text())
    test = metrics["test"]
    assert test["top1"] > 0.3 and 0 < test["concept_precision@5"] <= 1 and test["nec"] == 5
    assert metrics["record"]["backbone"]["backbone_model"] == "demo"
    # what decides concept precision is said, and recorded
    assert "concept precision: the ground truth is read through the demo world attribute vocabulary (a plug-in)" \
        in output.splitlines()
    assert metrics["record"]["ground_truth"] == "the demo world attribute vocabulary (a plug-in)"


def test_explanations_of_correct_demo_images_name_their_true_attributes(demo_run):
    root, world_dir, _ = demo_run
    from cbmctl.backbones import load_backbone
    from cbmctl.concepts import normalise
    from cbmctl.demo.truth import demo_mapping
    from cbmctl.explain import Explainer, embed_images
    explainer = Explainer.from_run((root / "runs" / "latest").resolve())
    dataset = load_dataset(world_dir)
    records = dataset.splits["test"][:60]
    attributes = dataset.attributes["test"][:60]
    features, names, errors = embed_images(load_backbone("demo", None, "cpu"),
                                           [str(world_dir / r.path) for r in records])
    assert not errors
    mapping = demo_mapping(dataset.attribute_names)
    checked = 0
    for i, explanation in enumerate(explainer.explain(features, names, top_k=5)):
        if explanation.predicted != dataset.classes[records[i].label]:
            continue
        true = {dataset.attribute_names[j] for j in np.flatnonzero(attributes[i])}
        named = [row.concept for row in explanation.concepts
                 if set(mapping.get(normalise(row.concept), [])) & true]
        assert named, f"{names[i]}: none of {[r.concept for r in explanation.concepts]} is a true attribute"
        checked += 1
    assert checked >= 5


@pytest.mark.slow
def test_quickstart_runs_offline_reuses_and_matches_train_and_cms(cli, tmp_path, monkeypatch):
    from cbmctl.demo.presets import PRESETS
    monkeypatch.chdir(tmp_path)
    # the quickstart's own preset with fewer images per species (a third of the time; the README times the real one)
    monkeypatch.setitem(PRESETS, "cub-like", {**PRESETS["cub-like"], "train_per_class": 8, "test_per_class": 6})
    first = cli("quickstart", "--json")
    assert first.exit_code == 0, first.output
    result = json.loads(first.stdout)
    second = cli("quickstart")
    assert second.exit_code == 0 and "reusing data/demo" in second.output and "reusing runs/quickstart-gumbel" in second.output
    assert "cbmctl inspect runs/latest" in second.output
    # the same numbers as the individual commands on the same data
    trained = json.loads(cli("train", "--loss", "gumbel", "data/demo", "--quiet", "--json").stdout)
    assert trained["test"]["top1"] == result["test"]["top1"]
    assert trained["test"]["concept_precision@5"] == result["test"]["concept_precision@5"]
    cms = json.loads(cli("cms", "--dataset", "data/demo", "--json").stdout)
    assert [r["top1"] for r in cms["rows"]] == [r["top1"] for r in result["cms"]]
    explained = json.loads(cli("explain", result["image"], "--json").stdout)["explanations"][0]
    assert explained["predicted"] == result["explanation"]["predicted"]
    # its one-line explanation marks the same concepts absent as explain does (a newcomer must not read a
    # contribution from a concept's absence as the concept being there)
    line = next(line for line in second.output.splitlines() if "top concepts:" in line)
    for row in explained["concepts"][:5]:
        absent = row["head_input"] is not None and row["head_input"] < 0
        assert (f"{row['concept']} (absent) (" in line) == absent, (row, line)
