"""Run directories and configs a user may have been sent: nothing in them is executed, a damaged or
tampered file is one line on stderr with a non-zero exit (never a traceback), and values out of range are
refused. Everything goes through the real click app."""
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from makers import make_synthetic_cache
from safetensors.torch import load_file, save_file

CONCEPTS = ["red", "green", "striped pattern", "star shape", "grass background", "small size"]


class Payload:
    """Unpickling this writes a marker file: the proof that a pickle was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path(self.marker).write_text, ("executed",))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from click.testing import CliRunner

    from cbmctl.cli import cli
    root = tmp_path_factory.mktemp("hostile-runs")
    cache = make_synthetic_cache(root / "c.h5", CONCEPTS)
    concepts = root / "concepts.txt"
    concepts.write_text("\n".join(CONCEPTS) + "\n")
    result = CliRunner().invoke(cli, ["train", str(cache), "--concepts", str(concepts), "--epochs", "3", "--device",
                                      "cpu", "--out", str(root / "runs"), "--quiet", "--head", "sparse", "--nec", "2"])
    assert result.exit_code == 0, result.output
    return (root / "runs" / "latest").resolve()


@pytest.fixture
def run(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def one_line_error(result, *fragments):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def test_a_pickle_dropped_into_a_run_is_never_loaded(cli, run, tmp_path):
    marker = tmp_path / "pwned"
    (run / "checkpoint.pt").write_bytes(pickle.dumps(Payload(marker)))
    finished = cli("train", "--resume", run, "--quiet")
    one_line_error(finished, "already finished")
    # an unfinished run with a pickle beside it: resuming reads only checkpoint.safetensors + .json
    (run / "metrics.json").unlink()
    resumed = cli("train", "--resume", run, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert not marker.exists()
    for path in [run / "model.safetensors", *run.rglob("*.safetensors")]:
        assert load_file(str(path))  # what cbmctl writes is tensors only


def test_damaged_checkpoints_are_one_line(cli, run):
    (run / "metrics.json").unlink()
    (run / "checkpoint.json").write_text("{ not json")
    one_line_error(cli("train", "--resume", run, "--quiet"), "checkpoint")
    (run / "checkpoint.json").write_text(json.dumps({"epoch": 2}))
    (run / "checkpoint.safetensors").write_bytes(b"\x00" * 64)
    one_line_error(cli("train", "--resume", run, "--quiet"), "checkpoint.safetensors")


def damage_weights(run, how):
    path = run / "model.safetensors"
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif how == "random":
        path.write_bytes(bytes(range(256)) * 8)
    else:
        state = load_file(str(path))
        if how == "nan":
            state["head.weight"][0, 0] = float("nan")
        elif how == "shape":
            state["cbl.weight"] = torch.zeros(3, 3)
        save_file(state, str(path))


@pytest.mark.parametrize("how, fragment", [("truncated", "damaged"), ("random", "damaged"),
                                           ("nan", "NaN"), ("shape", "cbl.weight has shape")])
def test_damaged_model_weights_are_one_line_everywhere(cli, run, how, fragment):
    damage_weights(run, how)
    one_line_error(cli("train", "--evaluate", run, "--device", "cpu"), fragment)
    one_line_error(cli("inspect", run), fragment)
    one_line_error(cli("explain", "--run", run, "--save-edited", run.parent / "edited", "--zero", "red"), fragment)


@pytest.mark.parametrize("change, fragment", [
    (lambda m: m.pop("classes"), "'classes' must be a non-empty list"),
    (lambda m: m.update(concepts=["blue"] + m["concepts"][1:]), "does not match its recorded hash"),
    (lambda m: m.update(classes=["\x1b]0;pwned\x07"] + m["classes"][1:]), "control character"),
    (lambda m: m.update(head="magic"), "unknown head"),
])
def test_tampered_model_descriptions_are_refused(cli, run, change, fragment):
    meta = json.loads((run / "model.json").read_text())
    change(meta)
    (run / "model.json").write_text(json.dumps(meta))
    line = one_line_error(cli("inspect", run), fragment)
    assert "\x1b" not in line
    one_line_error(cli("train", "--evaluate", run, "--device", "cpu"), fragment)


def test_a_model_description_that_is_not_json_is_one_line(cli, run):
    (run / "model.json").write_bytes(b"\xff\xfe not json")
    one_line_error(cli("inspect", run), "model description")


@pytest.mark.parametrize("text, fragment", [
    ("epochs: abc\n", "epochs must be a number"),
    ("lr: [1, 2]\n", "lr must be a number"),
    ("seeds: 0,x\n", "seeds: each seed must be a number"),
    ("hard: 'yes'\n", "hard must be true or false"),
    ("bogus: 1\n", "unknown option 'bogus'"),
    ("a: &a [1, 2]\nb: *a\n", "aliases"),
])
def test_config_values_are_checked_not_trusted(cli, tmp_path, text, fragment):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    one_line_error(cli("train", "--config", config), fragment)


def test_config_values_are_converted(tmp_path):
    from cbmctl.runs import read_yaml
    from cbmctl.spec import ExperimentSpec
    config = tmp_path / "run.yaml"
    config.write_text("lr: 1e-3\nepochs: '7'\nseeds: [0, 1]\ncompare: gumbel,none\n")  # YAML reads 1e-3 as text
    spec = ExperimentSpec.from_mapping(read_yaml(config), str(config))
    assert spec.train.lr == 0.001 and spec.train.epochs == 7 and spec.seeds == [0, 1]
    assert spec.methods == ["gumbel", "none"]
    assert ExperimentSpec.from_mapping({"seeds": "3"}).seeds == [0, 1, 2]  # a count


@pytest.mark.parametrize("value", ["nan", "inf", "1e308", "-2e6"])
def test_interventions_must_be_finite_and_bounded(finished_run, value):
    from cbmctl.errors import CbmctlError
    from cbmctl.explain import Explainer
    explainer = Explainer.from_run(finished_run)
    with pytest.raises(CbmctlError, match="must be a finite number"):
        explainer.intervene(torch.randn(2, explainer.concept_vectors.shape[1]), {"red": float(value)}, [])
