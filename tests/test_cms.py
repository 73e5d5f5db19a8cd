"""CMS variants against a hand computation on a tiny V and T."""
import json
import math

import numpy as np
import pytest
import torch
from makers import make_synthetic_cache

from cbmctl.cache import open_cache
from cbmctl.cms import (
    ALL_VARIANTS,
    CENTRED,
    PAPER_VARIANTS,
    ZERO_SUM_PER_TERM,
    ConceptMatrixSearch,
    Variant,
    accuracy_report,
    description_predict,
    predict,
    score_matrices,
    zero_shot_predict,
)
from cbmctl.errors import CbmctlError
from cbmctl.identity import text_key

# With the concepts as the standard basis, V is the normalised image embeddings and T the normalised class ones.
CONCEPTS = torch.eye(3)
# chosen so that the seven rules disagree: five distinct prediction vectors
IMAGES = torch.tensor([[0.3, 0.6, 0.7], [0.4, 0.5, 0.9], [0.8, 0.9, 0.4], [0.7, 0.9, 0.6]])
CLASSES = torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.7, 0.7], [0.1, 0.1, 1.0]])


def unit(row):
    norm = math.sqrt(sum(x * x for x in row))
    return [x / norm for x in row]


def argmax(values):
    return max(range(len(values)), key=lambda k: values[k])  # the first of tied maxima, as torch.argmax


def divided_by_sum(row):
    """The reference's row normalisation; a sum that is zero up to rounding leaves the row as it is."""
    total = sum(row)
    return [x / (1.0 if abs(total) < len(row) * ZERO_SUM_PER_TERM else total) for x in row]


def max_score_by_loop(v, t):
    v, t = [divided_by_sum(r) for r in v], [divided_by_sum(r) for r in t]
    return [argmax([t[c][argmax(row)] for c in range(len(t))]) for row in v]


def cos_rule_by_loop(v, t):
    v, t = [unit(r) for r in v], [unit(r) for r in t]
    return [argmax([sum(a * b for a, b in zip(row, t[c])) for c in range(len(t))]) for row in v]


def hand_predictions(variant):
    v = [unit(r) for r in IMAGES.tolist()]
    t = [unit(r) for r in CLASSES.tolist()]
    if variant.max_score:
        return max_score_by_loop(v, t)
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
    return cos_rule_by_loop(v, t)


def test_every_paper_variant_matches_the_hand_computation():
    got = predict(IMAGES, CONCEPTS, CLASSES, PAPER_VARIANTS)
    assert len(got) == 7
    for variant in PAPER_VARIANTS:
        assert got[variant].tolist() == hand_predictions(variant), variant.name
    # the hand-made data is not degenerate: the rules disagree somewhere
    assert len({tuple(p.tolist()) for p in got.values()}) >= 5


# Max-score: rows of T and V with negative sums, sums that are zero (up to rounding) and ties.
MAX_T = [[0.4, 0.1, 0.2, 0.3],      # T̃ = [.4, .1, .2, .3]
         [0.2, 0.05, 0.1, 0.15],    # exactly half of class 0: the same T̃ row, a tie everywhere (class 0 wins)
         [-0.3, 0.2, -0.4, 0.1],    # sum -0.4: T̃ = [.75, -.5, 1, -.25]
         [0.1, 0.5, -0.2, 0.1],     # sum 0.5: T̃ = [.2, 1, -.4, .2]
         [0.7, -0.1, -0.2, -0.4]]   # sum 0 (-3e-8 in float32, rounding): left as it is, never the best
# T̃'s columns pick: j=0 -> class 2 (.75), j=1 -> 3 (1.0), j=2 -> 2 (1.0), j=3 -> 0 (.3, tied with class 1)
MAX_V = [[0.1, 0.7, 0.3, 0.2],      # j* = 1 -> 3
         [0.2, 0.1, 0.3, 0.6],      # j* = 3 -> 0 (tie of classes 0 and 1)
         [-0.5, -0.1, -0.3, 0.2],   # sum -0.7: Ṽ = [.71, .14, .43, -.29], j* = 0 -> 2 (raw V would pick j = 3)
         [0.1, 0.4, 0.1, 0.4],      # tie of j = 1 and 3: j* = 1 -> 3
         [-0.2, -0.6, -0.1, -0.6],  # sum -1.5, tie of j = 1 and 3 after the flip: j* = 1 -> 3 (raw: j = 2)
         [0.7, -0.1, -0.2, -0.4]]   # sum 0 (-3e-8 in float32): left as it is, j* = 0 -> 2 (not a flip to j = 3)
MAX_EXPECTED = [3, 0, 2, 3, 3, 2]


def test_max_score_follows_the_reference_definition():
    got = score_matrices(torch.tensor(MAX_V), torch.tensor(MAX_T), Variant(max_score=True))
    assert got.predicted.tolist() == MAX_EXPECTED == max_score_by_loop(MAX_V, MAX_T)
    # the scores are T̃'s column j* for every class
    assert got.scores[2].tolist() == pytest.approx([0.4, 0.4, 0.75, 0.2, 0.7])
    # the raw rule (argmax_c T[c, argmax_j V_ij], what cbmctl computed before) differs on this data
    raw = [argmax([MAX_T[c][argmax(row)] for c in range(len(MAX_T))]) for row in MAX_V]
    assert raw != MAX_EXPECTED


def test_max_score_through_the_embeddings_matches_the_definition():
    rng = np.random.default_rng(3)
    features, concepts, classes = rng.normal(size=(60, 8)), rng.normal(size=(12, 8)), rng.normal(size=(5, 8))
    search = ConceptMatrixSearch(concepts, classes)
    got = predict(features, concepts, classes, (Variant(max_score=True),), chunk=7)[Variant(max_score=True)]
    assert got.tolist() == max_score_by_loop(search.v(features).tolist(), search.t.tolist())
    assert any(sum(row) < 0 for row in search.v(features).tolist())  # negative sums occur here


# Centred: concept 2 is shared by every class and every image (a distractor); the train split's mean V is M.
CENTRED_T = [[0.6, 0.1, 0.8], [0.1, 0.6, 0.8], [0.3, 0.3, 0.9]]  # column means over classes: [1/3, 1/3, 5/6]
CENTRED_M = [0.3, 0.3, 0.8]
CENTRED_V = [[0.5, 0.2, 0.9], [0.4, 0.25, 0.9], [0.2, 0.45, 0.7], [0.1, 0.1, 0.95]]


def centred_by_loop(v, t, mean):
    column_means = [sum(row[j] for row in t) / len(t) for j in range(len(mean))]
    v = [[x - m for x, m in zip(row, mean)] for row in v]
    t = [[x - m for x, m in zip(row, column_means)] for row in t]
    return cos_rule_by_loop(v, t)


def test_centred_matches_the_hand_computation():
    got = score_matrices(torch.tensor(CENTRED_V), torch.tensor(CENTRED_T), CENTRED,
                         v_train_mean=torch.tensor(CENTRED_M))
    # image 1 by hand: V - M = [.1, -.05, .1]; T centred: [.267, -.233, -.033], [-.233, .267, -.033],
    # [-.033, -.033, .067]; cosines .656, -.749, .408 -> class 0, where the plain cosine picks class 2
    assert got.scores[1].tolist() == pytest.approx([0.6556, -0.7493, 0.4082], abs=1e-4)
    assert got.predicted.tolist() == [0, 0, 1, 2] == centred_by_loop(CENTRED_V, CENTRED_T, CENTRED_M)
    plain = score_matrices(torch.tensor(CENTRED_V), torch.tensor(CENTRED_T), Variant())
    assert plain.predicted.tolist() == [0, 2, 1, 2] == cos_rule_by_loop(CENTRED_V, CENTRED_T)
    with pytest.raises(CbmctlError, match="train split's mean"):
        score_matrices(torch.tensor(CENTRED_V), torch.tensor(CENTRED_T), CENTRED)


def test_centred_does_not_look_at_the_evaluated_split():
    rng = np.random.default_rng(1)
    features = torch.tensor(rng.normal(size=(40, 6)) + 1.0, dtype=torch.float32)
    concepts, classes = rng.normal(size=(9, 6)), rng.normal(size=(4, 6))
    mean = ConceptMatrixSearch(concepts, classes).mean_v([torch.tensor(rng.normal(size=(30, 6)))])
    together = predict(features, concepts, classes, (CENTRED, Variant("cos", "col")), v_train_mean=mean)
    alone = [predict(features[i:i + 1], concepts, classes, (CENTRED, Variant("cos", "col")), v_train_mean=mean)
             for i in range(len(features))]
    # each image's centred prediction is the same whichever other images are evaluated with it ...
    assert together[CENTRED].tolist() == [a[CENTRED].item() for a in alone]
    # ... unlike the transductive col variant, whose column sums run over the evaluated images
    assert together[Variant("cos", "col")].tolist() != [a[Variant("cos", "col")].item() for a in alone]


def test_cms_report_centres_with_the_train_split(tmp_path):
    import h5py

    from cbmctl.cms import cms_report
    from cbmctl.concepts import ConceptSet
    concepts = ["red", "green", "striped pattern", "star shape", "blue", "sand background"]
    path = make_synthetic_cache(tmp_path / "c.h5", concepts, seed=5)
    # a train split of class-0 images only: centring with its mean takes class 0's own signature out of the
    # test images, which centring with the test split's mean would not
    with h5py.File(path, "r+") as handle:
        embeddings, labels = handle["splits/train/embeddings"], handle["splits/train/labels"][()]
        class_0 = embeddings[()][labels == 0]
        embeddings[...] = class_0[np.arange(len(labels)) % len(class_0)]
    cache = open_cache(path)
    report = cms_report(cache, ConceptSet("six", concepts, "test"), "test", per_class=True, random_control=False)
    row = next(r for r in report["rows"] if r["method"] == CENTRED.name)
    test, train = cache.split("test"), cache.split("train")
    search = ConceptMatrixSearch(cache.text(text_key(cache.attrs, concepts))[1], cache.class_embeddings())

    def centred_top1(mean):
        predicted = search.score(test.embeddings.astype(np.float32), CENTRED, v_train_mean=mean).predicted
        return accuracy_report(predicted, test.labels, 4)["top1"]

    assert row["top1"] == pytest.approx(centred_top1(search.v(train.embeddings.astype(np.float32)).mean(dim=0)))
    assert row["top1"] < centred_top1(search.v(test.embeddings.astype(np.float32)).mean(dim=0)) - 0.1
    assert row["per_class"][0] < 0.5 and not row["transductive"]
    assert any("400 train images" in note for note in report["notes"])
    # the chunked reader sees the train split whole
    assert np.array_equal(np.concatenate(list(cache.embedding_chunks("train", 64))),
                          train.embeddings.astype(np.float32))


def test_chunked_equals_unchunked():
    rng = np.random.default_rng(0)
    features = torch.tensor(rng.normal(size=(503, 24)), dtype=torch.float32)
    concepts = torch.tensor(rng.normal(size=(40, 24)), dtype=torch.float32)
    classes = torch.tensor(rng.normal(size=(7, 24)), dtype=torch.float32)
    mean = torch.tensor(rng.normal(size=40) * 0.1, dtype=torch.float32)
    whole = predict(features, concepts, classes, ALL_VARIANTS, chunk=10_000, v_train_mean=mean)
    pieces = predict(features, concepts, classes, ALL_VARIANTS, chunk=37, v_train_mean=mean)
    for variant in ALL_VARIANTS:
        assert torch.equal(whole[variant], pieces[variant]), variant.name
    assert torch.equal(zero_shot_predict(features, classes, 10_000), zero_shot_predict(features, classes, 37))


def test_sums_below_zero_are_counted_where_the_normalised_variants_divide_by_them():
    from cbmctl.cms import negative_sum_notes
    concepts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    classes = torch.tensor([[1.0, 0.2], [-1.0, -0.1]])  # the second class's row of T sums below zero
    positive = torch.tensor([[1.0, 1.0], [2.0, 1.0]])
    assert negative_sum_notes(positive, concepts, classes[:1], 10, "cpu") == []  # CLIP-like: nothing to say
    # image 1's row of V sums below zero; over the images, concept 1's column does too (−0.03)
    images = torch.tensor([[1.0, 0.5], [-1.0, -0.9], [0.5, 0.1]])
    note, = negative_sum_notes(images, concepts, classes, 2, "cpu")
    assert note.startswith("the normalised variants divide by sums below zero in 1 of 3 image rows of V, 1 of 2 "
                           "class rows of T, 1 of 2 concept columns of V, 1 of 2 concept columns of T:")
    # the hand computation: V's row sums and column sums, T's row and column sums
    v = torch.nn.functional.normalize(images, dim=1) @ concepts.T
    t = torch.nn.functional.normalize(classes, dim=1) @ concepts.T
    assert (v.sum(1) < 0).sum() == 1 and (v.sum(0) < 0).sum() == 1 and (t.sum(1) < 0).sum() == 1
    assert (t.sum(0) < 0).sum() == 1


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
                 "--per-class", "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    methods = [r["method"] for r in report["rows"]]
    assert methods[:8] == [v.name for v in ALL_VARIANTS] and "zero-shot CLIP" in methods
    assert "CMS cos, centred" in methods and "description (class concepts)" in methods
    assert [r["transductive"] for r in report["rows"][:8]] == [False, False, True, False, False, True, False, False]
    assert report["images"] == 80 and len(report["rows"][0]["per_class"]) == 4 and report["device"] == "cpu"
    assert any("transductive" in note for note in report["notes"])
    plain = tmp_path / "plain.txt"
    plain.write_text("\n".join(concepts) + "\n")
    table = cli("cms", cache, "--concepts", plain, "--no-random-control")
    assert "CMS cos3, col-normalised (transductive)" in table.output and "description baseline skipped" in table.output
    title = " ".join(table.output.split())  # the title wraps to the table's width
    assert "4 concepts (plain), backbone synthetic (none)" in title and "device: cpu (--device auto)" in title
    bad = cli("cms", cache, "--concepts", plain, "--no-random-control", "--device", "nonsense")
    assert bad.exit_code == 1 and "is not a device" in bad.output


def test_cms_without_train_images_skips_the_centred_variant(cli, tmp_path):
    concepts = ["red", "green", "striped pattern", "star shape"]
    cache = make_synthetic_cache(tmp_path / "c.h5", concepts, per_split=(0, 8, 8))
    (tmp_path / "plain.txt").write_text("\n".join(concepts) + "\n")
    result = cli("cms", cache, "--concepts", tmp_path / "plain.txt", "--no-random-control", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "CMS cos, centred" not in [r["method"] for r in report["rows"]]
    assert any("centred skipped: the cache has no train images" in note for note in report["notes"])
