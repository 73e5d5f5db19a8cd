"""What a run leaves and says besides its model: activation-sparsity histograms, plots that show every method
over the range that exists, compare.csv in the printed table's units, Ctrl-C naming the command that
continues, a live run never called interrupted, and progress lines for long passes."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch

from cbmctl import metrics as M
from cbmctl import runs
from cbmctl.cache import open_cache
from cbmctl.errors import CbmctlError
from cbmctl.explain import Explainer


def test_a_run_records_activation_histograms_that_match_its_models(unit_runs):
    run = unit_runs["comparison"]
    histograms = runs.read_activation_histograms(run)
    assert set(histograms["methods"]) == {"gumbel (paper, τ=1)", "none"} and histograms["split"] == "test"
    assert (run / runs.ACTIVATIONS_PLOT).stat().st_size > 5000
    features = torch.from_numpy(open_cache(unit_runs["cache"]).split("test").embeddings.astype(np.float32))
    expected = {name: np.zeros(M.SPARSITY_BINS, int) for name in M.SPARSITY_MEASURES}
    for seed in (0, 1):  # summed over the method's seeds, each seed's own model
        _, activations, _ = Explainer.from_run(run / "none" / f"seed-{seed}").forward(features)
        for name, counts in M.sparsity_histograms(activations).items():
            expected[name] += counts
    entry = histograms["methods"]["none"]
    assert entry["seeds"] == 2 and entry["images"] == len(features)
    for name in M.SPARSITY_MEASURES:
        assert entry[name] == expected[name].tolist() and sum(entry[name]) == 2 * len(features)


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d.update(bins=10 ** 9), "'bins'"),
    (lambda d: d["methods"]["none"]["hoyer"].__setitem__(0, -5), "non-negative counts"),
    (lambda d: d["methods"]["none"].update(entropy=[1, 2]), "non-negative counts"),
    (lambda d: d.update(methods=[]), "expected an object"),
])
def test_damaged_activation_histograms_are_one_line(unit_runs, tmp_path, change, fragment):
    data = json.loads((unit_runs["comparison"] / runs.ACTIVATIONS_FILE).read_text())
    change(data)
    (tmp_path / runs.ACTIVATIONS_FILE).write_text(json.dumps(data))
    with pytest.raises(CbmctlError, match=fragment) as refused:
        runs.read_activation_histograms(tmp_path)
    assert "\n" not in str(refused.value)


def test_compare_csv_is_in_the_units_of_the_printed_table(unit_runs):
    run = unit_runs["comparison"]
    rows = json.loads((run / runs.COMPARE_JSON).read_text())
    with (run / runs.COMPARE_CSV).open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["method"] for r in table] == [r["method"] for r in rows]
    for written, row in zip(table, rows):
        assert float(written["top1_mean_pct"]) == pytest.approx(100 * row["top1"]["mean"])   # percent, as printed
        assert float(written["ece_mean"]) == pytest.approx(row["ece"]["mean"])                # ECE in its own unit
        if "top1" in row.get("vs_none", {}):
            assert float(written["top1_vs_none_mean_pp"]) == pytest.approx(100 * row["vs_none"]["top1"]["mean"])
            assert float(written["top1_vs_none_p"]) == pytest.approx(row["vs_none"]["top1"]["p"])


def _drawn(monkeypatch):
    """The figures cbmctl.render draws, kept open for inspection instead of being written."""
    import cbmctl.render as R
    figures = []
    monkeypatch.setattr(R, "_save", lambda figure, path, plt, make_parent=False, tight=True: figures.append(figure))
    return figures


def test_sparsity_plot_spans_the_path_and_labels_every_method(unit_runs, monkeypatch):
    from cbmctl.render import plot_sparsity
    run = unit_runs["comparison"]
    methods = {m: [json.loads((run / m / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 1)]
               for m in ("gumbel", "none")}
    figures = _drawn(monkeypatch)
    plot_sparsity(run / "x.png", methods, "t")
    whole, budget = figures[0].axes
    points = [p for m in methods.values() for p in m[0]["path"]]
    assert whole.get_xlim()[0] == 0 and whole.get_xlim()[1] >= max(p["nec"] for p in points)  # linear, from 0
    assert whole.get_ylim()[0] <= min(p["test_top1"] for p in points)  # the low-NEC path stays on the plot
    labels = [t.get_text() for t in figures[0].legends[0].get_texts()]
    for method in methods:  # every method's path, budgeted heads and dense head are named
        assert {f"{method}: λ path, first seed", f"{method}: dense head",
                f"{method}: sparse head at each NEC budget"} <= set(labels)
    offsets = [line.get_xdata()[0] for line in budget.get_lines() if len(line.get_xdata()) == 6]
    assert len(set(offsets)) == 2  # the methods' budget points side by side, not on top of each other
    assert "mean over seeds" in budget.get_title()
    plot_sparsity(run / "x.png", {m: per_seed[:1] for m, per_seed in methods.items()}, "t")
    assert "one seed" in figures[1].axes[1].get_title() and "mean" not in figures[1].axes[1].get_title()


def test_a_forest_panel_without_rows_is_drawn_empty_without_a_warning(tmp_path, monkeypatch):
    import warnings

    from cbmctl.render_forest import plot_forest
    figures = _drawn(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's identical-limits warning would fail here
        plot_forest(tmp_path / "forest.png", [{"title": "claim (a)", "unit": "points", "rows": []}], "t")
    axis = figures[0].axes[0]
    assert axis.get_ylim() == (0.5, -0.5) and [t.get_text() for t in axis.texts] == ["nothing to show"]


def test_a_forest_row_draws_its_margin_and_marks_a_world_interval_running_off_the_edge(tmp_path, monkeypatch):
    from cbmctl.render_forest import plot_forest
    figures = _drawn(monkeypatch)
    row = {"label": "gumbel − none", "note": "reproduces", "margin": -2.0, "pooled": (0.5, -0.5, 1.5),
           "per_world": [(0.4, -0.2, 1.0), (0.6, -9.0, 30.0)]}  # world 2's interval is far wider than the rest
    plot_forest(tmp_path / "forest.png", [{"title": "claim (d)", "unit": "points", "rows": [row]}], "t")
    axis = figures[0].axes[0]
    low, high = axis.get_xlim()
    assert low < -2.0 < 1.5 < high < 30.0 and low > -9.0  # the margin is in view, the wide interval is not
    dashed = [line for line in axis.get_lines() if line.get_linestyle() == "--"]
    assert [list(line.get_xdata()) for line in dashed] == [[-2.0, -2.0]]
    edges = {line.get_marker(): line.get_xdata()[0] for line in axis.get_lines() if line.get_marker() in "<>"}
    assert edges == {"<": low, ">": high}


def test_comparison_curves_show_every_method_with_a_band(unit_runs, monkeypatch):
    from cbmctl.render import plot_curves
    run = unit_runs["comparison"]
    histories = {m: [json.loads((run / m / f"seed-{s}" / "metrics.json").read_text())["history"] for s in (0, 1)]
                 for m in ("gumbel", "none")}
    figures = _drawn(monkeypatch)
    plot_curves(run / "x.png", histories, "t")
    losses, objective, accuracy = figures[0].axes
    assert [t.get_text() for t in objective.get_legend().get_texts()] == ["gumbel", "none"]
    assert len(losses.collections) == 4  # a band per method for train and for validation
    epochs, mean, low, high = __import__("cbmctl.render", fromlist=["_epoch_band"])._epoch_band(histories["none"], "ce")
    first = [h[0]["ce"] for h in histories["none"]]
    assert mean[0] == pytest.approx(sum(first) / 2) and (low[0], high[0]) == (min(first), max(first))


def _run_concepts_file(unit_runs, tmp_path):
    """The single run's concepts as a concept file (the cache alone names no concept set)."""
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("\n".join(json.loads((unit_runs["single"] / "model.json").read_text())["concepts"]) + "\n")
    return concepts


def test_ctrl_c_names_the_command_that_continues(cli, unit_runs, tmp_path, monkeypatch):
    import cbmctl.training.trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cbmctl.training.trainer, "train_stack", interrupted)
    concepts = _run_concepts_file(unit_runs, tmp_path)
    result = cli("train", unit_runs["cache"], "--concepts", concepts, "--out", tmp_path / "runs", "--epochs", "2",
                 "--device", "cpu", "-q")
    assert result.exit_code == 130
    run = next(path for path in (tmp_path / "runs").iterdir() if path.is_dir())
    assert result.stderr.splitlines()[-1] == f"Interrupted; `cbmctl train --resume {run}` continues it"
    monkeypatch.undo()
    resumed = cli("train", "--resume", run, "-q")  # and it does
    assert resumed.exit_code == 0, resumed.output
    assert runs.is_finished(run)


def test_ctrl_c_before_a_run_starts_on_a_cache_says_there_is_nothing_to_resume(cli, unit_runs, tmp_path, monkeypatch):
    import cbmctl.pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cbmctl.pipeline, "run_train", interrupted)
    concepts = _run_concepts_file(unit_runs, tmp_path)
    result = cli("train", unit_runs["cache"], "--concepts", concepts, "--out", tmp_path / "runs", "-q")
    assert result.exit_code == 130, result.output
    # the cache was given: no embedding to resume, no run directory yet
    assert result.stderr.splitlines()[-1] == "Interrupted; no run had started; rerun the same command"


def test_a_run_locked_by_a_live_process_is_never_called_interrupted(cli, unit_runs, tmp_path):
    from filelock import FileLock

    from cbmctl.files import lock_path
    root = tmp_path / "runs"
    live = root / "live"
    shutil.copytree(unit_runs["single"], live)
    (live / runs.METRICS_FILE).unlink()
    (live / "checkpoint.json").write_text("{}")  # what a run still training holds
    assert runs.is_interrupted(live)
    concepts = _run_concepts_file(unit_runs, tmp_path)  # the copied run's own
    with FileLock(str(lock_path(live))):  # as the process training it holds it
        assert not runs.is_interrupted(live)
        with pytest.raises(CbmctlError, match="not interrupted"):
            runs.resolve_interrupted_run(str(live))
        with pytest.raises(CbmctlError, match="neither a run nor a folder holding an interrupted run"):
            runs.resolve_interrupted_run(str(root))
        started = cli("train", unit_runs["cache"], "--concepts", concepts, "--out", root, "--device", "cuda:7")
        assert started.exit_code == 1 and "was interrupted" not in started.stderr
    # unlocked (its process gone), the same run is interrupted, and a new run beside it says how to continue it
    started = cli("train", unit_runs["cache"], "--concepts", concepts, "--out", root, "--device", "cuda:7")
    assert started.exit_code == 1 and "was interrupted" in started.stderr and f"--resume {root}" in started.stderr


def test_progress_lines_come_every_few_seconds_with_an_estimate():
    from cbmctl.logs import Progress
    lines, now = [], [0.0]
    progress = Progress(lines.append, 1000, "CMS", every=10.0, clock=lambda: now[0])
    for _ in range(10):
        now[0] += 4.0
        progress.advance(100)
    # 40 s for 1000 images, a line at most every 10 s: at 12, 24 and 36 s
    assert lines == ["CMS: 300 of 1,000 images (30 %), about 28 s left",
                     "CMS: 600 of 1,000 images (60 %), about 16 s left",
                     "CMS: 900 of 1,000 images (90 %), about 4 s left"]
    now[0] = 0.0
    capped = Progress(lines.append, 1000, "probe", "iterations at most", every=10.0, clock=lambda: now[0],
                      estimate="at most")
    now[0] = 12.0
    capped.advance(300)  # counted against a cap it may stop far short of: the time left is a bound
    assert lines[-1] == "probe: 300 of 1,000 iterations at most (30 %), at most 28 s left"
    silent = Progress(None, 1000, "CMS", every=0.0)
    assert list(silent.iterate([[1, 2], [3]])) == [[1, 2], [3]] and silent.done == 3


def test_cms_on_a_large_cache_says_how_far_it_is(unit_runs, monkeypatch):
    import cbmctl.logs
    from cbmctl.cms import cms_report
    from cbmctl.concepts import ConceptSet
    monkeypatch.setattr(cbmctl.logs, "PROGRESS_SECONDS", 0.0)  # a line per chunk
    concepts = json.loads((unit_runs["single"] / "model.json").read_text())["concepts"]
    lines = []
    cms_report(open_cache(unit_runs["cache"]), ConceptSet("s", concepts, "test"), random_control=False, chunk=32,
               log=lines.append)
    assert any(line.startswith("CMS: the train split's mean concept scores: 64 of 400 images") for line in lines)
    assert lines[-1] == "CMS: 8 variants on the test split: 80 of 80 images (100 %)"
    quiet = []
    cms_report(open_cache(unit_runs["cache"]), ConceptSet("s", concepts, "test"), random_control=False, chunk=32)
    assert quiet == []


def test_a_users_file_or_folder_named_latest_is_never_replaced(tmp_path):
    from cbmctl import runs
    from cbmctl.errors import CbmctlError
    for make in (lambda p: p.write_text("my notes"), lambda p: p.mkdir()):
        root = tmp_path / f"runs{len(list(tmp_path.iterdir()))}"
        root.mkdir()
        make(root / runs.LATEST)
        run = runs.new_run_dir(root, "data", "gumbel")
        with pytest.raises(CbmctlError, match="is not cbmctl's link"):
            runs.check_latest_free(root)
        with pytest.raises(CbmctlError, match="is not cbmctl's link"):
            runs.point_latest(root, run)
        assert not (root / runs.LATEST).is_symlink()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    first = runs.new_run_dir(fresh, "data", "a")
    runs.point_latest(fresh, first)
    runs.check_latest_free(fresh)  # cbmctl's own link is free to repoint
    assert (fresh / runs.LATEST).resolve() == first.resolve()
