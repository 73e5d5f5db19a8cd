"""Metrics and statistics against values worked out by hand."""
import math

import pytest
import torch

from cbmctl import metrics as M
from cbmctl.stats import holm, mean_interval, paired_difference, student_t_cdf, student_t_quantile


def test_ece_by_hand():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.35 (right) in bins (0.867, 0.933], (0.533, 0.6],
    # (0.333, 0.4]: |1/2 − 0.9|·2/4 + |1 − 0.6|·1/4 + |1 − 0.35|·1/4 = 0.2 + 0.1 + 0.1625
    probabilities = torch.tensor([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0], [0.2, 0.6, 0.2], [0.35, 0.33, 0.32]])
    labels = torch.tensor([0, 1, 1, 0])
    assert M.expected_calibration_error(probabilities, labels) == pytest.approx(0.4625, abs=1e-6)
    # perfectly calibrated: confidence 1 and always right
    assert M.expected_calibration_error(torch.eye(3), torch.arange(3)) == pytest.approx(0.0)


def test_accuracies_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [2.0, 0.0, 1.0], [0.0, 1.0, 2.0]])
    labels = torch.tensor([0, 2, 2, 2])  # right, wrong (2nd), wrong (2nd), right
    assert M.topk_accuracy(logits, labels, 1) == 0.5 and M.topk_accuracy(logits, labels, 2) == 1.0
    # class 0: 1/1, class 2: 1/3 (class 1 has no images and is left out)
    assert M.mean_per_class_accuracy(logits.argmax(1), labels, 3) == pytest.approx((1 + 1 / 3) / 2)
    assert M.per_class_accuracy(logits.argmax(1), labels, 3) == [1.0, None, pytest.approx(1 / 3)]


def test_sparsity_measures_by_hand():
    one_hot = torch.tensor([[0.0, 0.0, 50.0, 0.0]])
    uniform = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert float(M.hoyer(one_hot)[0]) == pytest.approx(1.0) and float(M.hoyer(uniform)[0]) == pytest.approx(0.0)
    # [3, 4, 0, 0]: (2 − 7/5) / (2 − 1) = 0.6
    assert float(M.hoyer(torch.tensor([[3.0, 4.0, 0.0, 0.0]]))[0]) == pytest.approx(0.6)
    assert float(M.normalised_entropy(uniform)[0]) == pytest.approx(1.0)
    assert float(M.normalised_entropy(one_hot)[0]) == pytest.approx(0.0, abs=1e-12)
    # softmax of [log 3, 0]: (3/4, 1/4); entropy −(¾ ln ¾ + ¼ ln ¼) / ln 2 = 0.8113
    two = torch.tensor([[math.log(3.0), 0.0]])
    assert float(M.normalised_entropy(two)[0]) == pytest.approx(0.811278, abs=1e-5)
    assert float(M.top_mass(torch.tensor([[math.log(3.0), 0.0, 0.0]]), 1)[0]) == pytest.approx(0.6)
    assert M.activation_l0(torch.tensor([[1.0, 0.0005, -0.002, 0.0]])).tolist() == [2]


def test_nec_anec_and_coverage_by_hand():
    head = torch.tensor([[0.5, 0.0, -1.0], [0.0, 0.0, 2.0]])
    assert M.nonzero_weights(head) == 3 and M.nec(head) == 1.5
    assert M.anec({5: 0.8, 10: 0.9, 15: 1.0, 20: 1.0, 25: 1.0, 30: 0.7}) == pytest.approx(0.9)
    # positive contributions 3, 1, 0.5 (total 4.5): 90 % = 4.05 needs all three; 50 % = 2.25 needs one
    contributions = torch.tensor([[1.0, 3.0, -2.0, 0.5], [-1.0, -1.0, 0.0, 0.0]])
    assert M.coverage(contributions, 0.9).tolist() == [3, 0] and M.coverage(contributions, 0.5).tolist() == [1, 0]


def test_concept_and_explanation_precision_by_hand():
    activations = torch.tensor([[5.0, 4.0, 3.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    truth = torch.tensor([[True, False, True, False], [False, False, False, True]])
    # top-2: {0, 1} → 1/2 true; {3, 2} → 1/2 true
    assert M.concept_precision_at_k(activations, truth, 2) == pytest.approx(0.5)
    # explanations cite concepts with a positive contribution from a positive (above-mean) input
    contributions = torch.tensor([[2.0, 1.0, -1.0, 3.0], [0.5, 0.0, 0.0, 0.0]])
    inputs = torch.tensor([[1.0, 1.0, 1.0, -1.0], [-1.0, 0.0, 0.0, 0.0]])
    # image 0 cites concepts 0 and 1 (3 is "absent" evidence, 2 is negative): 1 of 2 true; image 1 cites none
    assert M.explanation_precision_at_k(contributions, inputs, truth, 5) == pytest.approx(0.5)


def test_student_t_against_tabulated_values():
    for df, value in ((1, 12.7062047362), (4, 2.7764451052), (9, 2.2621571628), (30, 2.0422724563)):
        assert student_t_quantile(0.975, df) == pytest.approx(value, abs=1e-7)
    assert student_t_cdf(0.0, 5) == 0.5
    assert student_t_cdf(-1.0, 3) == pytest.approx(0.1955011094, abs=1e-9)


def test_interval_paired_difference_and_holm_by_hand():
    interval = mean_interval([1.0, 2.0, 3.0])
    # mean 2, std 1, t(0.975, 2) = 4.302653: half-width 4.302653 / √3 = 2.484138
    assert interval["mean"] == 2.0 and interval["std"] == pytest.approx(1.0)
    assert interval["ci_high"] - 2.0 == pytest.approx(2.484138, abs=1e-6)
    assert mean_interval([0.7])["ci_low"] is None
    # differences 0.5, 0.1, 0.8, −0.1: mean 0.325, std 0.403113, t = 1.6125 with 3 df: p = 0.2053
    difference = paired_difference([1, 2, 3, 4], [0.5, 1.9, 2.2, 4.1])
    assert difference["mean"] == pytest.approx(0.325) and difference["p"] == pytest.approx(0.20526, abs=1e-4)
    same = paired_difference([0.5, 0.6], [0.5, 0.6])
    assert same["mean"] == 0 and same["p"] == 1.0
    steps = paired_difference([3.0, 5.0], [1.0, 3.0])  # the same step on both seeds: no spread, nothing tested
    assert steps["mean"] == 2.0 and steps["std"] == 0 and steps["p"] is None
    assert holm({"steps": steps["p"], "other": 0.001}) == {"steps": False, "other": True}
    # Holm at 0.05 over three: 0.01 ≤ 0.05/3, 0.02 ≤ 0.05/2, 0.04 ≤ 0.05/1 → all; with 0.03 ≤ 0.025 failing, it stops
    assert holm({"a": 0.01, "b": 0.02, "c": 0.04}) == {"a": True, "b": True, "c": True}
    assert holm({"a": 0.01, "b": 0.03, "c": 0.04, "d": None}) == {"a": True, "b": False, "c": False, "d": False}


def test_the_significance_sentence_separates_significant_not_significant_and_untested():
    from cbmctl.render import significance_sentence
    from cbmctl.stats import paired_difference
    none = [0.50, 0.52, 0.51]
    rows = [{"method": "none"},
            {"method": "gumbel", "vs_none": {"top1": {**paired_difference([0.60, 0.63, 0.61], none), "significant": True}}},
            {"method": "l1", "vs_none": {"top1": {**paired_difference([0.49, 0.53, 0.52], none), "significant": False}}},
            {"method": "zero-shot", "vs_none": {"top1": {**paired_difference([0.40, 0.42, 0.41], none),
                                                          "significant": False}}}]
    sentence = significance_sentence(rows)
    significant, rest = sentence.split("differ significantly from the plain CBM (none): ")[1].split(". Not significant")
    assert significant == "gumbel +10.33 points [+8.90, +11.77]"  # ±t(0.975, 2)·0.00577/√3 = ±1.43
    assert "l1 +0.33 points [" in rest and "zero-shot" not in rest.split("no test")[0]
    # 0.40 − 0.50, 0.42 − 0.52, 0.41 − 0.51: the same −10 points on every seed, not a zero-width interval
    assert rest.endswith(". The same difference on every seed, so no interval and no test (more seeds would give one): "
                         "zero-shot -10.00 points.")
