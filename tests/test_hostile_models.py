"""Tampered models, conflicting interventions, special files and out-of-range knobs, as a hostile tester
tried them: every one is a one-line error (or a skipped image with its reason), never a traceback, a hang,
NaN printed as a result, or a half-written directory. Everything goes through the real click app."""
import json
import os
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch
from makers import make_cub, picture
from safetensors.torch import load_file, save_file
from test_hostile_runs import one_line_error

CONCEPTS = "red wings\nblue feathers\nlong beak\nwhite belly\n"


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """(run directory, an image) of a run trained on the tiny CLIP, so explain can embed real images."""
    from click.testing import CliRunner
    from conftest import TINY_MODEL

    from cbmctl.cli import cli
    root = tmp_path_factory.mktemp("hostile-models")
    cub = make_cub(root / "data", classes=3, per_class=4)
    (root / "concepts.txt").write_text(CONCEPTS)
    result = CliRunner().invoke(cli, ["train", str(cub), "--model", TINY_MODEL, "--pretrained", "none", "--device", "cpu",
                                      "--concepts", str(root / "concepts.txt"), "--epochs", "2", "--out",
                                      str(root / "runs"), "--quiet", "--cache", str(root / "c.h5")])
    assert result.exit_code == 0, result.output
    return (root / "runs" / "latest").resolve(), str(sorted((cub / "images").rglob("*.jpg"))[0])


@pytest.fixture
def run(image_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(image_run[0], copy)
    return copy


def tamper(run, tensors=None, meta=None):
    if tensors:
        state = load_file(str(run / "model.safetensors"))
        tensors(state)
        save_file(state, str(run / "model.safetensors"))
    if meta:
        data = json.loads((run / "model.json").read_text())
        meta(data)
        (run / "model.json").write_text(json.dumps(data))


def set_first(name, value):
    def change(state):
        state[name].view(-1)[0] = value
    return change


@pytest.mark.parametrize("tensors, meta, fragment", [
    (set_first("head.weight", 3e38), None, "head.weight holds a value of magnitude 3e+38"),
    (set_first("cbl.weight", 3e38), None, "cbl.weight holds a value of magnitude"),
    (set_first("activation_std", 1e-44), None, "activation_std must lie in"),
    (set_first("concept_vectors", 3e38), None, "concept_vectors holds a value of magnitude"),
    (None, lambda m: m.update(logit_scale=1e308), "logit_scale 1e+308 is not a number in (0, 1000]"),
    (None, lambda m: m.update(logit_scale="nan"), "logit_scale 'nan'"),
    (None, lambda m: m.update(logit_scale=float("nan")), "logit_scale nan"),
    (None, lambda m: m.update(logit_scale=-1), "logit_scale -1"),
])
def test_huge_weights_and_bad_logit_scales_are_refused_at_load(cli, image_run, run, tensors, meta, fragment):
    tamper(run, tensors, meta)
    image = image_run[1]
    one_line_error(cli("explain", image, "--run", run, "--device", "cpu"), fragment)
    one_line_error(cli("explain", image, "--run", run, "--device", "cpu", "--json"), fragment)
    one_line_error(cli("train", "--evaluate", run, "--device", "cpu"), fragment)


def test_non_finite_logits_are_refused_at_explain_time_and_never_reach_json(image_run):
    """The last guard, for what the load-time bounds could miss: a one-line error, not NaN as a probability."""
    from cbmctl.cli.common import print_json
    from cbmctl.errors import CbmctlError
    from cbmctl.explain import Explainer
    explainer = Explainer.from_run(image_run[0])
    features = torch.randn(1, explainer.concept_vectors.shape[1])
    assert explainer.explain(features, ["x"])[0].probability > 0  # the intact model explains
    with torch.no_grad():
        explainer.model.head.weight.fill_(3e38)
    with pytest.raises(CbmctlError, match="non-finite"):
        explainer.explain(features, ["x"])
    with pytest.raises(CbmctlError, match="NaN or infinite"):
        print_json({"p": float("nan")}, strict=True)


@pytest.mark.parametrize("key", ["classes", "concepts"])
def test_names_longer_than_the_bound_are_refused(cli, run, key):
    from cbmctl.identity import names_sha256
    from cbmctl.names import MAX_NAME_CHARS

    def lengthen(meta):
        meta[key][0] = "x" * (MAX_NAME_CHARS + 1)
        meta["concept_set"]["sha256"] = names_sha256(meta["concepts"])
    tamper(run, meta=lengthen)
    singular = {"classes": "class", "concepts": "concept"}[key]
    one_line_error(cli("inspect", run), f"{singular} 0 has a name of {MAX_NAME_CHARS + 1} characters")


def test_the_control_character_error_names_a_class_in_the_singular(cli, run):
    tamper(run, meta=lambda m: m["classes"].__setitem__(0, "a\x1bb"))
    line = one_line_error(cli("inspect", run), "class 0 holds the control character \\x1b")
    assert "classe " not in line


@pytest.mark.parametrize("change, fragment", [
    (lambda m: m.pop("concept_set"), "lacks its concept_set hash"),
    (lambda m: m["concept_set"].pop("sha256"), "lacks its concept_set hash"),
    (lambda m: m["classes"].__setitem__(1, m["classes"][0]), "classes 0"),
])
def test_model_descriptions_must_keep_their_hash_and_distinct_classes(cli, image_run, run, change, fragment):
    tamper(run, meta=change)
    one_line_error(cli("explain", image_run[1], "--run", run, "--device", "cpu"), fragment)
    one_line_error(cli("inspect", run), fragment)


@pytest.mark.parametrize("args, fragment", [
    (["--set", "long beak=1", "--set", "long beak=2"], "set the same concept twice"),
    (["--set", "long beak=1", "--zero", "Long Beak"], "name the same concept"),
    (["--set", "long beak=1e400"], "'1e400' is not a finite number"),  # what was typed, not 'inf'
])
def test_conflicting_interventions_are_refused(cli, image_run, args, fragment):
    run_dir, image = image_run
    one_line_error(cli("explain", image, "--run", run_dir, "--device", "cpu", *args), fragment)


def test_devices_are_checked_for_every_kind():
    from cbmctl.backbones import resolve_device
    from cbmctl.errors import CbmctlError
    if not torch.backends.mps.is_available():
        with pytest.raises(CbmctlError, match="no usable mps device"):
            resolve_device("mps")
    with pytest.raises(CbmctlError, match="cpu, cuda, mps or xpu, not meta"):
        resolve_device("meta")
    with pytest.raises(CbmctlError, match="not a device"):
        resolve_device("gpu")
    assert resolve_device("cpu").type == "cpu"


def test_png_targets_are_checked_before_any_work(cli, image_run, tmp_path):
    run_dir, image = image_run
    one_line_error(cli("explain", image, "--run", run_dir, "--png", tmp_path / "out.txt"), "cannot draw a .txt file")
    (tmp_path / "file").write_text("")
    one_line_error(cli("explain", image, "--run", run_dir, "--png", tmp_path / "file" / "x.png"), "not a directory")
    written = cli("explain", image, "--run", run_dir, "--device", "cpu", "--png", tmp_path / "new" / "x.svg")
    assert written.exit_code == 0, written.output
    assert (tmp_path / "new" / "x.svg").read_text().lstrip().startswith("<?xml")


def in_thread(function, *args):
    """function(*args) in a daemon thread: a regression that blocks (a pipe opened for reading) fails the
    test instead of hanging the suite."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function(*args)
        except Exception as error:
            outcome["error"] = error
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "blocked"
    return outcome


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_named_pipes_are_skipped_not_read(tmp_path):
    from cbmctl.datasets.base import FileImages
    from cbmctl.images import BadImage, load_rgb, open_image_file
    os.mkfifo(tmp_path / "pipe.jpg")
    picture(0, 0, 32).save(tmp_path / "good.jpg")
    for opener, path in ((open_image_file, str(tmp_path / "pipe.jpg")), (FileImages(tmp_path), "pipe.jpg")):
        outcome = in_thread(load_rgb, opener, path)
        assert isinstance(outcome.get("error"), BadImage) and str(outcome["error"]) == "is a named pipe, not an image file"
    assert load_rgb(FileImages(tmp_path), "good.jpg").size == (32, 32)
    assert str(in_thread(load_rgb, open_image_file, str(tmp_path))["error"]) == "is a directory, not an image file"


def test_explain_skips_a_named_pipe_with_its_reason(cli, image_run, tmp_path):
    os.mkfifo(tmp_path / "f.jpg")
    outcome = in_thread(cli, "explain", tmp_path / "f.jpg", image_run[1], "--run", image_run[0], "--device", "cpu",
                        "--json")
    result = outcome["value"]
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["errors"] == [{"image": str(tmp_path / "f.jpg"), "error": "is a named pipe, not an image file"}]
    assert len(payload["explanations"]) == 1


def test_an_unreadable_image_with_control_characters_in_its_name_is_reported_escaped(cli, image_run, tmp_path):
    hostile = tmp_path / "x\x1b[31mRED\x07nope.jpg"
    result = cli("explain", hostile, image_run[1], "--run", image_run[0], "--device", "cpu")
    assert result.exit_code == 1
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("Error: ") and "\\x1b[31mRED\\x07" in line]


def test_an_oversized_image_is_reported_in_whole_sentences(tmp_path, monkeypatch):
    from PIL import Image

    from cbmctl.images import BadImage, load_rgb, open_image_file
    picture(0, 0, 64).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64×64 is then over twice the limit: a "bomb"
    with pytest.raises(BadImage) as raised:
        load_rgb(open_image_file, str(tmp_path / "big.png"))
    assert str(raised.value).endswith("could be decompression bomb DOS attack.)"), str(raised.value)


def test_labels_drawn_in_pngs_are_escaped_and_raise_no_glyph_warning(tmp_path):
    from cbmctl.render import plot_curves
    history = [{"epoch": e, "ce": 1.0 / e, "val_loss": 1.2 / e, "cbl_loss": 0.5, "train_top1": 0.5, "val_top1": 0.4}
               for e in (1, 2, 3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_curves(tmp_path / "curves.png", history, "world \x1b]0;pwned\x07")
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert not [w for w in caught if "\x1b" in str(w.message) or "Glyph" in str(w.message)]


# --- demo make: bounded knobs, checked targets, no partial world ---


@pytest.mark.parametrize("args, fragment", [
    (["--seed", "-1"], "'--seed'"),
    (["--train-per-class", "99999999999", "--test-per-class", "1"], "between 1 and 5000"),
    (["--train-per-class", "2", "--test-per-class", "99999999999"], "between 1 and 5000"),
    (["--images-per-class", "2"], "between 3"),
    (["--fidelity", "color=0.5,color=0.6"], "'color' is given twice"),
    (["--train-per-class", "1", "--test-per-class", "1"], "--train-per-class must be at least 2"),
])
def test_demo_make_refuses_knobs_out_of_range(cli, tmp_path, args, fragment):
    one_line_error(cli("demo", "make", tmp_path / "D", *args), fragment)
    assert not (tmp_path / "D").exists() and list(tmp_path.iterdir()) == []


def test_demo_make_checks_its_target(cli, tmp_path):
    loop = tmp_path / "L"
    loop.symlink_to(loop)
    one_line_error(cli("demo", "make", loop), "leads nowhere")
    assert loop.is_symlink()


def test_a_world_of_two_train_images_per_species_has_a_validation_split(cli, tmp_path):
    from cbmctl.datasets import load_dataset
    made = cli("demo", "make", tmp_path / "W", "--train-per-class", "2", "--test-per-class", "1", "-q")
    assert made.exit_code == 0, made.output
    assert made.stderr == "" and made.stdout.startswith(f"wrote {tmp_path / 'W'}: 30 species")  # -q: the result only
    dataset = load_dataset(str(tmp_path / "W"))
    assert {split: len(records) for split, records in dataset.splits.items()} == {"train": 30, "val": 30, "test": 30}
    # no temporary directory left beside it (only the hidden lock file every make and embed leaves)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".W.lock", "W"]
    assert oct((tmp_path / "W").stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_demo_make_killed_midway_leaves_no_world(tmp_path):
    target = tmp_path / "W"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "CBMCTL_FAULT": "demo:world-written"}
    killed = subprocess.run([sys.executable, "-m", "cbmctl", "demo", "make", str(target), "--train-per-class", "2",
                             "--test-per-class", "1"], env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert not target.exists()  # the half-made world sits under a hidden temporary name, never under W
    env.pop("CBMCTL_FAULT")
    again = subprocess.run([sys.executable, "-m", "cbmctl", "demo", "make", str(target), "--train-per-class", "2",
                            "--test-per-class", "1"], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert (target / "world.json").is_file()
    assert not list(tmp_path.glob(".W.making-*"))  # the killed make's staging folder is swept
