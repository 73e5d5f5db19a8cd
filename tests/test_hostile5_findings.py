"""Hostile round 5 (a tester's reproductions, fixed): untrusted world.json knobs, hints that are not flags,
plug-in failure reasons kept whole, the sparse path on a design that carries nothing."""
import json
import math

import pytest

from cbmctl.errors import CbmctlError


@pytest.mark.parametrize("knobs", [{"concept_sets": 5}, {"train_per_class": math.inf}])
def test_a_bad_world_json_knob_is_one_line_not_a_traceback(tmp_path, knobs):
    from cbmctl.demo.presets import WORLD_FILE, read_world_spec, resolve_spec
    record = {"format": "cbmctl-demo-world", "knobs": {**resolve_spec("default").knobs(), **knobs}}
    from cbmctl.demo import presets
    record.update(format=presets.WORLD_FORMAT, version=presets.WORLD_VERSION)
    (tmp_path / WORLD_FILE).write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(CbmctlError):
        read_world_spec(tmp_path)


def test_a_dataset_hint_naming_a_layout_is_not_shown_as_a_flag(tmp_path, monkeypatch):
    from cbmctl.cli.common import for_the_command_line
    from cbmctl.datasets import resolve_dataset_path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(CbmctlError) as caught:
        resolve_dataset_path("data/cub")
    shown = for_the_command_line(caught.value)
    assert "--cub" not in shown and "the name cub then finds it" in shown


def test_models_warning_keeps_the_failure_reason_whole(cli, monkeypatch):
    from cbmctl import plugins
    monkeypatch.setattr(plugins, "_loaded", {plugins.BACKBONES})
    monkeypatch.setattr(plugins, "_failed", {plugins.BACKBONES: ["x = x:register: `device` missing (see the docs)"]})
    result = cli("models")
    # the reason is the plug-in's own words: whole, and its backquotes not taken for cbmctl's parameters
    assert "warning: plug-ins that failed to load: x = x:register: `device` missing (see the docs)" in \
        result.stderr.splitlines()


def test_a_design_that_carries_nothing_has_a_one_point_path_with_a_finite_record():
    import torch

    from cbmctl.sparse import Design, SparseConfig, fit_path, solver_record
    x, y = torch.zeros(1, 60, 4), torch.arange(60) % 3
    design = Design(lambda start, stop: x[:, start:stop], y, 1000, True)
    config = SparseConfig(path_points=5, max_nec=2)
    path = fit_path(design, 3, [1], config, design)
    points = path.points[0]
    assert all(p["converged"] and p["iterations"] <= 1 and p["nonzeros"] == 0 for p in points)
    assert all(math.isfinite(r["largest_violation"]) for r in solver_record(path, config))
    json.dumps(solver_record(path, config), allow_nan=False)
    with pytest.raises(CbmctlError, match="at least one iteration"):
        fit_path(design, 3, [1], SparseConfig(max_iterations=0))
