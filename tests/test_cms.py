"""CMS variants against a hand computation on a tiny V and T."""
import json
import math

import numpy as np
import pytest
import torch

from cbmctl.cms import ALL_VARIANTS, Variant, accuracy_report, description_predict, predict, zero_shot_predict
from makers import make_synthetic_cache

# With the concepts as the standard basis, V is the normalised image embeddings and T the normalised class ones.
CONCEPTS = torch.eye(3)
# chosen so that the seven rules disagree: five distinct prediction vectors
IMAGES = torch.tensor([[0.3, 0.6, 0.7], [0.4, 0.5, 0.9], [0.8, 0.9, 0.4], [0.7, 0.9, 0.6]])
CLASSES = torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.7, 0.7], [0.1, 0.1, 1.0]])


def unit(row):
    norm = math.sqrt(sum(x * x for x in row))
    return [x / norm for x in row]


def hand_predictions(variant):
    v = [unit(r) for r in IMAGES.tolist()]
    t = [unit(r) for r in CLASSES.tolist()]
    if variant.max_score:
        return [max(range(3), key=lambda c: t[c][max(range(3), key=lambda j: row[j])]) for row in v]
    if variant.normalization == "row":
        v = [[x / sum(row) for x in row] for row in v]
        t = [[x / sum(row) for x in row] for row in t]
    elif variant.normalization == "col":
        v_sums = [sum(row[j] for row in v) for j in range(3)]
        t_sums = [sum(row[j] for row in t) for j in range(3)]
        v = [[row[j] / v_sums[j] for j in range(3)] for row in v]
        t = [[row[j] / t_sums[j] for j in range(3)] for row in t]
    if variant.similarity == "cos3":
        v = [[x ** 3 for x in row] for row in v]
        t = [[x ** 3 for x in row] for row in t]
    v, t = [unit(r) for r in v], [unit(r) for r in t]
    return [max(range(3), key=lambda c: sum(a * b for a, b in zip(row, t[c]))) for row in v]


def test_every_variant_matches_the_hand_computation():
    got = predict(IMAGES, CONCEPTS, CLASSES, ALL_VARIANTS)
    assert len(got) == 7
    for variant in ALL_VARIANTS:
        assert got[variant].tolist() == hand_predictions(variant), variant.name
    # the hand-made data is not degenerate: the rules disagree somewhere
    assert len({tuple(p.tolist()) for p in got.values()}) == 5


def test_row_normalisation_does_not_change_the_cosine_rule():
    got = predict(IMAGES, CONCEPTS, CLASSES, (Variant("cos", "none"), Variant("cos", "row")))
    assert got[Variant("cos", "none")].tolist() == got[Variant("cos", "row")].tolist()


def test_chunked_equals_unchunked():
    rng = np.random.default_rng(0)
    features = torch.tensor(rng.normal(size=(503, 24)), dtype=torch.float32)
    concepts = torch.tensor(rng.normal(size=(40, 24)), dtype=torch.float32)
    classes = torch.tensor(rng.normal(size=(7, 24)), dtype=torch.float32)
    whole = predict(features, concepts, classes, chunk=10_000)
    pieces = predict(features, concepts, classes, chunk=37)
    for variant in ALL_VARIANTS:
        assert torch.equal(whole[variant], pieces[variant]), variant.name
    assert torch.equal(zero_shot_predict(features, classes, 10_000), zero_shot_predict(features, classes, 37))


def test_zero_shot_and_description_baselines():
    images = torch.tensor([[0.9, 0.3, 0.1], [0.1, 0.2, 0.95], [0.2, 0.8, 0.5]])
    assert zero_shot_predict(images, CLASSES).tolist() == [0, 2, 1]
    associations = {"a": ["x"], "b": ["y", "z"], "c": ["z"]}
    # image 0 is mostly concept x -> a; image 1 mostly z: c (z alone) beats b (mean of y and z);
    # image 2 leans to y: b's mean of y and z beats z alone
    assert description_predict(images, CONCEPTS, ["x", "y", "z"], ["a", "b", "c"], associations).tolist() == [0, 2, 1]


def test_accuracy_report():
    report = accuracy_report(torch.tensor([0, 1, 1, 2]), [0, 1, 2, 2], 3, per_class=True)
    assert report["top1"] == 0.75 and report["per_class"] == [1.0, 1.0, 0.5]
    assert report["mean_per_class"] == pytest.approx(2.5 / 3)


def test_cms_command_json(cli, tmp_path):
    concepts = ["red", "green", "striped pattern", "star shape"]
    cache = make_synthetic_cache(tmp_path / "c.h5", concepts)
    (tmp_path / "concepts.json").write_text(json.dumps({"class 0": ["red"], "class 1": ["green"],
                                                        "class 2": ["striped pattern"], "class 3": ["star shape"]}))
    result = cli("cms", cache, "--concepts", tmp_path / "concepts.json", "--json", "--no-random-control",
                 "--per-class")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    methods = [r["method"] for r in report["rows"]]
    assert methods[:7] == [v.name for v in ALL_VARIANTS] and "zero-shot CLIP" in methods
    assert "description (class concepts)" in methods
    assert [r["transductive"] for r in report["rows"][:7]] == [False, False, True, False, False, True, False]
    assert report["images"] == 80 and len(report["rows"][0]["per_class"]) == 4
    assert any("transductive" in note for note in report["notes"])
    plain = tmp_path / "plain.txt"
    plain.write_text("\n".join(concepts) + "\n")
    table = cli("cms", cache, "--concepts", plain, "--no-random-control")
    assert "CMS cos3, col-normalised (transductive)" in table.output and "description baseline skipped" in table.output
