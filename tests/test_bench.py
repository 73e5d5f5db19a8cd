"""`cbmctl demo bench`: pooling over worlds (hand-computed cases), Holm's adjusted p-values, the claims'
verdicts on constructed worlds, and one end-to-end run on two tiny worlds that is then resumed."""
import json
import math

import pytest
from test_hostile_runs import one_line_error

from cbmctl.demo import bench_report as report
from cbmctl.demo.bench import BenchSpec, check_spec, world_seeds
from cbmctl.errors import CbmctlError
from cbmctl.stats import dersimonian_laird, f_quantile, holm, holm_adjusted, mean_of_effects, pool_effects, variance_ratio_limit

T_2DF = 4.302652729911275  # the 97.5 % quantile of Student's t with 2 degrees of freedom (tables: 4.3027)


def test_mean_of_worlds_matches_a_hand_computed_case():
    # d_w = 1, 2, 6: mean 3; deviations -2, -1, 3, squares 4 + 1 + 9 = 14, s² = 14/2 = 7, se = √(7/3);
    # half-width t(0.975, 2)·se; t = 3/√(7/3) = √(27/7), and for 2 df the two-sided p is 1 − t/√(t² + 2) = 1 − √(27/41)
    pooled = mean_of_effects([1.0, 2.0, 6.0])
    se = math.sqrt(7 / 3)
    assert pooled["mean"] == pytest.approx(3.0)
    assert pooled["se"] == pytest.approx(se)
    assert pooled["ci_low"] == pytest.approx(3 - T_2DF * se, rel=1e-9)
    assert pooled["ci_high"] == pytest.approx(3 + T_2DF * se, rel=1e-9)  # 3 ± 6.5723
    assert pooled["p"] == pytest.approx(1 - math.sqrt(27 / 41), rel=1e-9)
    assert pooled["df"] == 2


def test_dersimonian_laird_matches_a_hand_computed_case():
    # d = 0, 2, 6 with variances 1, 1, 4. Fixed-effect weights 1, 1, 1/4 (sum 9/4): mean 3.5/2.25 = 14/9;
    # Q = (14/9)² + (4/9)² + ¼(40/9)² = 68/9; C = 9/4 − (1 + 1 + 1/16)/(9/4) = 4/3; τ² = (68/9 − 2)/(4/3) = 25/6.
    # Random-effects weights 1/(v + τ²) = 6/31, 6/31, 6/49 (sum 774/1519): mean (12/31 + 36/49)/(774/1519) = 284/129.
    # Hartung–Knapp: q = Σ w(d − μ)²/2 = 1808/1333, var = q/Σw = 44296/16641, half-width t(0.975, 2)·√var;
    # p (2 df) = 1 − √(t²/(t² + 2)) with t² = (284/129)²/var = 80656/44296.
    pooled = dersimonian_laird([0.0, 2.0, 6.0], [1.0, 1.0, 4.0])
    assert pooled["tau2"] == pytest.approx(25 / 6)
    assert pooled["q"] == pytest.approx(68 / 9)
    assert pooled["mean"] == pytest.approx(284 / 129)
    assert pooled["weights"] == pytest.approx([(6 / 31) / (774 / 1519)] * 2 + [(6 / 49) / (774 / 1519)])
    half = T_2DF * math.sqrt(44296 / 16641)
    assert (pooled["ci_low"], pooled["ci_high"]) == pytest.approx((284 / 129 - half, 284 / 129 + half), rel=1e-9)
    assert pooled["p"] == pytest.approx(1 - math.sqrt(80656 / (80656 + 2 * 44296)), rel=1e-9)


def test_dersimonian_laird_with_equal_variances_is_the_mean_of_worlds():
    effects = [0.4, -0.1, 0.9, 0.3]
    dl, plain = dersimonian_laird(effects, [0.2] * 4), mean_of_effects(effects)
    for key in ("mean", "ci_low", "ci_high", "p"):
        assert dl[key] == pytest.approx(plain[key], rel=1e-9)


def test_the_pooling_rule_switches_to_random_effects_only_when_variances_differ_a_lot():
    effects = [0.0, 2.0, 6.0]
    assert pool_effects(effects, [1.0, 1.0, 4.0])["estimator"] == mean_of_effects(effects)["estimator"]  # 4×: not more
    weighted = pool_effects(effects, [1.0, 1.0, 4.5])
    assert weighted["estimator"] == "DerSimonian–Laird, Hartung–Knapp t" and "4.5×" in weighted["why"]
    for variances in (None, [1.0, 0.0, 4.5], [None, 1.0, 9.0]):  # a world without a variance: worlds weigh the same
        assert pool_effects(effects, variances)["mean"] == pytest.approx(8 / 3)
    with pytest.raises(ValueError):
        pool_effects([1.0])


def test_the_variance_ratio_must_also_exceed_what_seed_noise_gives():
    # F(2, 2) has CDF x/(1 + x), so its p-quantile is p/(1 − p): for 2 worlds (2 ordered pairs) at 5 %,
    # 0.975/0.025 = 39; for 3 worlds (6 ordered pairs), (1 − 0.05/6)/(0.05/6) = 119
    assert f_quantile(0.975, 2, 2) == pytest.approx(39.0)
    assert variance_ratio_limit(2, 2) == pytest.approx(39.0) and variance_ratio_limit(3, 2) == pytest.approx(119.0)
    assert variance_ratio_limit(3, None) == 4.0 and variance_ratio_limit(3, 1000) == 4.0  # never below 4×
    effects = [0.0, 2.0]
    assert pool_effects(effects, [1.0, 30.0], df=2)["estimator"] == "mean of worlds, Student-t"  # 30× < 39×
    assert pool_effects(effects, [1.0, 40.0], df=2)["estimator"] == "DerSimonian–Laird, Hartung–Knapp t"


def test_holm_adjusted_p_values_and_the_step_down_agree():
    # sorted: a 0.01·3 = 0.03, c 0.03·2 = 0.06, b 0.04·1 = 0.04 → made non-decreasing: 0.03, 0.06, 0.06
    p = {"a": 0.01, "b": 0.04, "c": 0.03, "d": None}
    assert holm_adjusted(p) == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06, "d": None})
    assert holm(p) == {"a": True, "b": False, "c": False, "d": False}
    assert holm({"a": 0.01, "b": 0.02}) == {"a": True, "b": True}  # 0.01·2, then 0.02·1 ≤ 0.05


def _pooled(mean, low, high, significant):
    return {"mean": mean, "ci_low": low, "ci_high": high, "significant": significant}


def test_verdicts_follow_the_claims_direction_and_margin():
    greater = report.Contrast("g", "a", "b", "top1")
    assert report.verdict(greater, _pooled(0.02, 0.01, 0.03, True)) == "reproduces"
    assert report.verdict(greater, _pooled(-0.02, -0.03, -0.01, True)) == "does not reproduce"
    assert report.verdict(greater, _pooled(0.02, -0.01, 0.05, False)) == "inconclusive"
    assert report.verdict(greater, None) == "not measured"
    lower = report.Contrast("entropy", "a", "b", "entropy_mean", direction=-1)  # the claim: a − b < 0
    assert report.verdict(lower, _pooled(-0.02, -0.03, -0.01, True)) == "reproduces"
    assert report.verdict(lower, _pooled(0.02, 0.01, 0.03, True)) == "does not reproduce"
    keeps = report.Contrast("p@5", "a", "b", "concept_precision@5", kind="not_lower", margin=0.02)
    assert report.verdict(keeps, _pooled(-0.005, -0.015, 0.005, False)) == "reproduces"  # within the margin
    assert report.verdict(keeps, _pooled(-0.005, -0.030, 0.020, False)) == "inconclusive"  # reaches past it
    # a significant loss smaller than the margin is what a claim of no loss allows; one wholly past it is not
    assert report.verdict(keeps, _pooled(-0.005, -0.008, -0.002, True)) == "reproduces"
    assert report.verdict(keeps, _pooled(-0.04, -0.05, -0.03, True)) == "does not reproduce"
    assert report.claim_verdict("all", ["reproduces", "inconclusive"]) == "inconclusive"
    assert report.claim_verdict("all", ["reproduces", "does not reproduce"]) == "does not reproduce"
    assert report.claim_verdict("each", ["reproduces", "inconclusive"]) == "mixed"


def _world(index, shift, seeds=3, precision=0.0):
    """A constructed world: gumbel > l1 > contrastive by ~2 points in both heads, CMS cos 5 points below
    zero-shot, gumbel's activations denser than none's, its concept precision none's + `precision`, identity
    init far above random init; per-seed wiggles so that every paired difference has a variance, and a
    per-world one on CMS (equal effects in every world leave nothing to test: p None)."""
    def metrics(top1, entropy, precision, dense_gap=0.0, phase=0):
        # each method its own wiggle (cos3 and none share one: equal in every world and seed)
        wiggle = [0.001 * ((index * 7 + s * 3 + phase) % 5) for s in range(seeds)]
        return {"top1": [top1 + w for w in wiggle], "nec5_top1": [top1 + w for w in wiggle],
                "dense_top1": [top1 + dense_gap + 2 * w for w in wiggle], "entropy_mean": [entropy + w for w in wiggle],
                "hoyer_mean": [0.3 - entropy / 10 + w for w in wiggle], report.PRECISION: [precision - w for w in wiggle]}
    values = {"gumbel": metrics(0.70 + shift, 0.40, 0.91 + precision, phase=1),
              "contrastive": metrics(0.66 + shift, 0.30, 0.90, phase=2), "l1": metrics(0.68 + shift, 0.30, 0.90, phase=3),
              "cos3": metrics(0.67 + shift, 0.30, 0.90), "none": metrics(0.67 + shift, 0.30, 0.91),
              "linear-probe": {"top1": [0.72 + shift]}, report.RANDOM_INIT: metrics(0.30 + shift, 0.30, 0.15, phase=4)}
    return {"index": index, "seed": 100 + index, "seeds": list(range(seeds)), "values": values,
            "labels": {m: m for m in values},
            "cms": {"CMS cos": 0.60 + shift + 0.002 * (index % 2 - 0.5), "zero-shot CLIP": 0.65 + shift}}


def test_summary_of_constructed_worlds_gives_the_built_in_verdicts():
    shifts, precision = [0.0, 0.05, -0.03, 0.02], [0.004, -0.006, 0.002, -0.004]
    worlds = [_world(k, shift, precision=p) for k, (shift, p) in enumerate(zip(shifts, precision), 1)]
    summary = report.summarise(worlds)
    claims = {claim["id"]: claim for claim in summary["claims"]}
    assert claims["a"]["verdict"] == "does not reproduce"  # CMS cos 5 points below zero-shot in every world
    assert claims["a"]["contrasts"][0]["pooled"]["mean"] == pytest.approx(-0.05)
    assert claims["b"]["verdict"] == "reproduces"
    assert claims["c"]["verdict"] == "does not reproduce"  # denser, not sparser
    # -0.1 points [-0.8, +0.6]: inside the 2-point margin
    assert claims["d"]["verdict"] == "reproduces"
    assert claims["d"]["contrasts"][0]["pooled"]["mean"] == pytest.approx(-0.001, abs=0.0005)  # ± the wiggles
    assert claims["f"]["verdict"] == "reproduces"
    # every method's NEC 5 head is a significant ~0.2 points below its dense head: within the 1-point margin
    assert claims["e"]["verdict"] == "reproduces"
    gumbel = next(e for e in summary["methods"]["top1"] if e["method"] == "gumbel")
    assert gumbel["pooled"]["mean"] == pytest.approx(0.03, abs=0.0005) and gumbel["pooled"]["significant"]
    assert [d["world"] for d in gumbel["per_world"]] == [1, 2, 3, 4]
    assert any("gumbel +2.97 points" in sentence for sentence in summary["conclusions"])  # 3 points less the wiggles
    # cos3 equals none in every world and seed: no conclusion names it
    assert not any("cos3 +" in sentence or "cos3 -" in sentence for sentence in summary["conclusions"][:2])
    panels = report.forest_panels({**summary, "per_world": []})
    assert len(panels) == 2 + len(summary["claims"]) and all(len(p["rows"][0]["per_world"]) == 4 for p in panels)
    margins = {p["title"][:3]: {row["margin"] for row in p["rows"]} for p in panels}
    # non-inferiority: a loss of 2 points of concept precision (d), 1 point from dense to NEC 5 (e); none else
    assert margins["(d)"] == {-2.0} and margins["(e)"] == {-1.0} and margins["(b)"] == {None}


def test_a_metric_a_world_lacks_is_not_measured():
    worlds = [_world(k, 0.01 * k) for k in (1, 2, 3)]
    for world in worlds:
        for method in world["values"].values():
            method.pop(report.PRECISION, None)
    claims = {claim["id"]: claim for claim in report.summarise(worlds)["claims"]}
    assert claims["d"]["verdict"] == "not measured"
    assert claims["f"]["contrasts"][1]["verdict"] == "not measured"


def test_a_pooled_row_takes_a_method_label_only_when_every_world_gives_it():
    worlds = [_world(k, 0.01 * k) for k in (1, 2, 3)]
    for world in worlds:
        world["labels"]["gumbel"] = "gumbel (τ=1)"
    labels = {e["method"]: e["label"] for e in report.method_comparisons(worlds)["top1"]}
    assert labels["gumbel"] == "gumbel (τ=1)" and labels["l1"] == "l1"
    del worlds[1]["labels"]  # a world without labels says nothing against the others'
    labels = {e["method"]: e["label"] for e in report.method_comparisons(worlds)["top1"]}
    assert labels["gumbel"] == "gumbel (τ=1)"
    worlds[2]["labels"]["gumbel"] = "gumbel (τ=0.5)"  # one world trained with other settings
    labels = {e["method"]: e["label"] for e in report.method_comparisons(worlds)["top1"]}
    assert labels["gumbel"] == "gumbel (settings differ between worlds)"


def test_world_seeds_are_fixed_by_base_and_index():
    assert world_seeds(1800, 3)[:2] == world_seeds(1800, 2)  # world k is the same whatever the count
    assert world_seeds(1800, 3) != world_seeds(1801, 3)
    assert all(0 <= seed < 2 ** 32 for seed in world_seeds(7, 50))


@pytest.mark.parametrize("spec, fragment", [
    (BenchSpec(worlds=1), "at least 2"), (BenchSpec(worlds=51), "between 2 and 50"),
    (BenchSpec(seeds=1), "at least 2"), (BenchSpec(world_seed=-1), "`world_seed`"),
    (BenchSpec(preset="nope"), "unknown preset"), (BenchSpec(knobs={"test_per_class": 0}), "`test_per_class`"),
    (BenchSpec(train={"epochs": 2, "min_epochs": 5}), "`min_epochs`"), (BenchSpec(train={"lr": 1.0}), "unknown"),
    (BenchSpec(train={"epochs": -3}), "`epochs`"),
])
def test_bad_options_are_refused_before_any_work(spec, fragment):
    with pytest.raises(CbmctlError, match=fragment.replace("-", r"\-")):
        check_spec(spec)


TINY = ["--preset", "default", "--worlds", "2", "--seeds", "2", "--train-per-class", "2", "--test-per-class", "1",
        "--epochs", "2", "--min-epochs", "1", "--device", "cpu"]


def test_bench_end_to_end_writes_report_and_plot_and_resumes(cli, tmp_path):
    out = tmp_path / "bench"
    first = cli("demo", "bench", *TINY, "--out", out)
    assert first.exit_code == 0, first.output
    assert "world 2/2" in first.output and "training" in first.output and "Concept Matrix Search" in first.output
    data = json.loads((out / "bench.json").read_text())
    assert data["preset"] == "default" and data["worlds"] == 2 and data["seeds"] == [0, 1]
    assert data["world_seeds"] == world_seeds(data["world_seed"], 2)
    assert [w["seed"] for w in data["per_world"]] == data["world_seeds"]
    assert set(data["per_world"][0]["seconds"]) >= {"make", "embed", "train", "random_init", "cms"}
    for entries in data["methods"].values():
        for entry in entries:
            assert len(entry["per_world"]) == 2 and {"ci_low", "ci_high", "p"} <= set(entry["per_world"][0])
            assert {"mean", "ci_low", "ci_high", "estimator", "holm_p"} <= set(entry["pooled"])
    methods = {e["method"] for e in data["methods"]["top1"]}
    assert methods == {"gumbel", "contrastive", "l1", "cos3", "linear-probe", "zero-shot", report.RANDOM_INIT}
    assert [c["id"] for c in data["claims"]] == ["a", "b", "c", "d", "e", "f"]
    assert all(c["verdict"] in report.VERDICTS + ("mixed",) for c in data["claims"])
    assert (out / "forest.png").stat().st_size > 10_000
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("world-*/result.json")}
    assert len(mtimes) == 2

    again = cli("demo", "bench", *TINY, "--out", out)
    assert again.exit_code == 0, again.output
    assert again.output.count("finished earlier, not redone") == 2 and "resuming the bench" in again.output
    assert {p: p.stat().st_mtime_ns for p in out.glob("world-*/result.json")} == mtimes
    assert json.loads((out / "bench.json").read_text())["claims"] == data["claims"]

    other = cli("demo", "bench", *TINY, "--out", out, "--epochs", "3")
    one_line_error(other, "other options", "epochs")

    # a directory where a world's result belongs is neither a finished world nor one to redo and overwrite
    result = out / "world-1" / "result.json"
    result.unlink()
    result.mkdir()
    one_line_error(cli("demo", "bench", *TINY, "--out", out), "result.json is not a file; move it away")
    assert result.is_dir() and not any(result.iterdir())


def test_bench_refuses_a_folder_that_is_not_a_bench(cli, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    one_line_error(cli("demo", "bench", *TINY, "--out", tmp_path / "mine"), "not a bench folder")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    one_line_error(cli("demo", "bench", "--worlds", "1", "--out", tmp_path / "b"), "--worlds 1", "at least 2")
    assert not (tmp_path / "b").exists()


def test_bench_takes_every_preset_and_world_knob_demo_make_takes():
    from cbmctl.cli.demo import bench, make
    params = {p.name: p for p in bench.params}
    knobs = {p.name for p in make.params} - {"directory", "seed", "images_per_class"}
    assert knobs <= set(params)
    flags = [flag for p in bench.params for flag in p.opts]
    assert len(flags) == len(set(flags))  # make's -q is its own: bench keeps one
    make_preset = next(p for p in make.params if p.name == "preset")
    assert list(params["preset"].type.choices) == list(make_preset.type.choices)


def test_a_tampered_world_result_is_refused_in_one_line():
    from types import SimpleNamespace

    from cbmctl.demo.bench import FORMAT, VERSION, check_world_result
    world = SimpleNamespace(index=1, seed=5)
    good = {"format": f"{FORMAT}-world", "version": VERSION, "index": 1, "seed": 5, "seeds": [0, 1],
            "values": {"none": {"top1": [0.5, 0.6]}, "zero-shot": {"top1": [0.4]}}, "cms": {"cos": 0.3},
            "labels": {"none": "none"}, "seconds": {"make": 1.0, "cpu": {"make": 0.9}}, "reused": [],
            "concept_set": {"name": "llm", "size": 3}}
    assert check_world_result(good, world, 2, "r.json") is good
    for key, value in [("values", {"none": {"top1": [1e308, -1e308]}}),  # finite, but squaring overflows
                       ("values", {"none": {"top1": [0.5]}}),  # one value for a seeded method
                       ("seconds", {"make": "x"}), ("seconds", {"make": 1.0, "cpu": [1]}), ("reused", 5),
                       ("labels", {"none": 3}), ("concept_set", "llm")]:
        with pytest.raises(CbmctlError, match="remove it to redo the world"):
            check_world_result({**good, key: value}, world, 2, "r.json")
