"""Round four against runs: a run directory is one signed whole (editing any list or tensor that gives
another its meaning is refused), a tampered config.yaml on --resume is one line, absurd knobs end in one
line or a correct result with a warning, two trains into one folder never collide, and a read-only folder,
a full disk or a kill -9 in the middle of a comparison lose nothing the user had. Through the real click app
(a real process where a signal or a resource limit is needed) on a tiny synthetic cache."""
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from test_hostile_models import tamper
from test_hostile_runs import CONCEPTS, finished_run, one_line_error  # noqa: F401 (a fixture)
from test_hostile_training import _interrupt, interrupted  # noqa: F401 (a fixture: a copy per test)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(finished_run, tmp_path):  # noqa: F811
    copy = tmp_path / "runs" / "run"
    shutil.copytree(finished_run, copy)
    (tmp_path / "runs" / "latest").symlink_to("run")
    return copy


def everywhere(cli, run, *fragments):
    """The same one-line refusal from every command that loads a run."""
    for args in (("inspect", run), ("train", "--evaluate", run, "--device", "cpu"),
                 ("explain", "--run", run, "--save-edited", run.parent / "edited", "--zero", "red")):
        one_line_error(cli(*args), *fragments)
    assert not (run.parent / "edited").exists()


IDENTITY = "no longer match the run's identity"


# 1. every list and tensor that gives another its meaning is tied to the run's identity

@pytest.mark.parametrize("tensors, meta, fragment", [
    (None, lambda m: m["classes"].reverse(), IDENTITY),  # explain would name the wrong class
    (None, lambda m: m.update(head="dense"), IDENTITY),
    (None, lambda m: m.update(logit_scale=m["logit_scale"] * 2), IDENTITY),
    (lambda s: s["activation_mean"].add_(1.0), None, IDENTITY),  # within every bound, still refused
    (lambda s: s["head.weight"].mul_(-1), None, IDENTITY),
    (lambda s: s.pop("head.bias"), None, IDENTITY),  # a missing optional tensor would default to zeros
    (lambda s: s.update({"cbl.weight": s["cbl.weight"].half()}), None, "cbl.weight is stored as torch.float16"),
    (lambda s: s.update({"extra": torch.zeros(2)}), None, "unexpected tensor 'extra'"),
    (lambda s: s.pop("cbl.weight"), None, "lacks cbl.weight"),
    (lambda s: s["activation_std"].zero_(), None, "activation_std must lie in"),
    (lambda s: s["head.weight"].fill_(float("nan")), None, "NaN"),
    (lambda s: s["cbl.weight"].fill_(1e30), None, "beyond the ±10000"),
    (lambda s: s.update({"head.weight": torch.zeros(3, 3)}), None, "head.weight has shape (3, 3)"),
    (None, lambda m: m.pop("identity"), "records no identity"),
])
def test_editing_any_part_of_a_run_is_refused(cli, run, tensors, meta, fragment):
    tamper(run, tensors, meta)
    everywhere(cli, run, fragment)


def test_a_concept_renamed_with_its_hash_recomputed_is_still_refused(cli, run):
    from cbmctl.identity import names_sha256

    def rename(meta):
        meta["concepts"][0] = "blue"
        meta["concept_set"]["sha256"] = names_sha256(meta["concepts"])
    tamper(run, meta=rename)
    everywhere(cli, run, IDENTITY)


def test_an_edited_run_saved_by_cbmctl_carries_its_own_identity(cli, run):
    edited = run.parent / "edited"
    result = cli("explain", "--run", run, "--save-edited", edited, "--zero", "red")
    assert result.exit_code == 0, result.output
    meta = json.loads((edited / "model.json").read_text())
    assert meta["identity"] != json.loads((run / "model.json").read_text())["identity"]
    assert cli("train", "--evaluate", edited, "--device", "cpu").exit_code == 0


# 2. a tampered config.yaml on --resume

@pytest.fixture(scope="module")
def interrupted_once(finished_run, tmp_path_factory):  # noqa: F811
    """The finished run made to look interrupted once per module (a training pass); tests edit copies."""
    run = tmp_path_factory.mktemp("interrupted") / "run"
    shutil.copytree(finished_run, run)
    return _interrupt(run)


def _fifo(path):
    path.unlink(missing_ok=True)
    os.mkfifo(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
@pytest.mark.parametrize("edit, fragment", [
    (lambda text: text.replace("lr: 0.001\n", "lr: 0.01\n", 1), "another dataset, concept set, backbone or training"),
    (lambda text: text.replace("epochs: 3\n", "epochs: -5\n"), "`epochs` must be at least 1"),
    (lambda text: text.replace("epochs: 3\n", "epochs: 1e400\n"), "epochs must be a whole number"),
    (lambda text: text + "lr: 1e300\n", "duplicate key 'lr'"),
    (lambda text: text.replace("lr: 0.001\n", "lr: 1e300\n", 1), "config.yaml: `lr` must be at most 1e+06"),
    (lambda text: "a: &x [1]\nb: *x\n", "aliases"),
    (lambda text: "[" * 5000, "config.yaml"),
    (lambda text: text.replace("concepts: ", "concepts: /nonexistent/"), "concept set"),
    (lambda text: None, "is a named pipe, not a regular file"),
])
def test_a_tampered_config_on_resume_is_one_line_and_the_checkpoint_survives(cli, interrupted, edit, fragment):  # noqa: F811
    before = (interrupted / "checkpoint.safetensors").read_bytes()
    config = interrupted / "config.yaml"
    changed = edit(config.read_text())
    if changed is None:
        _fifo(config)  # would block a reader that opened it as a file
    else:
        config.write_text(changed)
    one_line_error(cli("train", "--resume", interrupted, "--quiet"), fragment)
    assert (interrupted / "checkpoint.safetensors").read_bytes() == before


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_checkpoint_that_is_a_named_pipe_is_refused_not_waited_on(cli, interrupted):  # noqa: F811
    from test_hostile_models import in_thread
    _fifo(interrupted / "checkpoint.safetensors")  # safetensors would wait for a writer
    result = in_thread(cli, "train", "--resume", interrupted, "--quiet")["value"]
    one_line_error(result, "checkpoint.safetensors is a named pipe, not a regular file")


# 3. absurd knobs: one line, or a correct result that says what was decided

def test_absurd_but_harmless_knobs_train_and_say_so(cli, finished_run, tmp_path):  # noqa: F811
    spec = json.loads((finished_run / "model.json").read_text())
    huge = "9" * 30
    result = cli("train", spec["cache"], "--concepts", finished_run.parent.parent / "concepts.txt", "--device", "cpu",
                 "--out", tmp_path / "runs", "--quiet", "--nec", huge, "--batch-size", huge, "--epochs", huge,
                 "--patience", "1", "--min-epochs", "1")
    assert result.exit_code == 0, result.output
    assert f"--nec {huge} asks for more concepts per class than the" in result.stderr
    assert f"note: --batch-size {huge} is more than the 400 train images" in result.stderr
    metrics = json.loads((tmp_path / "runs" / "latest" / "metrics.json").read_text())
    assert metrics["sparse"]["nec_requested"] == int(huge) and metrics["stopped_early"]


@pytest.mark.parametrize("args, fragment", [
    (["--lr", "1e300"], "--lr must be at most 1e+06"), (["--cbl-lr", "1e7"], "--cbl-lr must be at most"),
    (["--tau", "1e300"], "--tau must be at most"), (["--weight-decay", "1e300"], "--weight-decay must be at most"),
    (["--lr", "nan"], "--lr must be a positive number"), (["--l1-lambda", "inf"], "--l1-lambda must be a non-negative"),
])
def test_absurd_rates_are_refused_before_training(cli, finished_run, tmp_path, args, fragment):  # noqa: F811
    one_line_error(cli("train", finished_run.parent.parent / "c.h5", "--out", tmp_path / "runs", "--quiet", *args),
                   fragment)
    assert not (tmp_path / "runs").exists()


# 4. two trains into one runs folder, started in the same second, get a directory each

def test_two_trains_into_one_folder_never_share_a_run_directory(tmp_path, monkeypatch):
    from datetime import datetime

    from cbmctl import runs

    class SameSecond(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2030, 1, 1, 12, 0, 0)
    monkeypatch.setattr(runs, "datetime", SameSecond)
    made, errors, start = [], [], threading.Barrier(8)

    def make():
        start.wait()
        try:
            made.append(runs.new_run_dir(tmp_path / "runs", "data", "gumbel"))
        except Exception as error:  # what the race gave before: FileExistsError
            errors.append(error)
    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(made)) == 8
    assert sorted(p.name for p in made)[:2] == ["20300101-120000-data-gumbel", "20300101-120000-data-gumbel-2"]


# 5. a read-only destination, a full disk, a kill -9 in a comparison: nothing the user had is lost

@pytest.fixture
def read_only(tmp_path):
    """A folder this process cannot write in: made read-only, or, for root (whom permissions do not stop),
    a folder of sysfs, which nobody can create files in."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        folder = Path("/sys/kernel")
        if not folder.is_dir() or not _refuses_files(folder):
            pytest.skip("no folder here refuses this user's writes")
    yield folder
    (tmp_path / "ro").chmod(0o755)


def _refuses_files(folder: Path) -> bool:
    import tempfile
    try:
        with tempfile.TemporaryFile(dir=folder):
            return False
    except OSError:
        return True


def test_a_read_only_runs_folder_is_one_line_before_training(cli, finished_run, read_only):  # noqa: F811
    before = sorted(read_only.iterdir())
    line = one_line_error(cli("train", finished_run.parent.parent / "c.h5", "--out", read_only / "runs", "--quiet"),
                          "cannot write runs in")
    assert str(read_only) in line and sorted(read_only.iterdir()) == before


@contextlib.contextmanager
def full_disk(limit: int = 16 << 10):
    """Files of this process may grow to `limit` bytes, as on a disk that is full (`ulimit -f`: a write beyond
    it fails with EFBIG, CPython ignoring SIGXFSZ); the limit is lifted again afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_full_disk_is_one_line_and_the_previous_run_stays(cli, run, tmp_path):
    runs_root = run.parent
    (tmp_path / "c.txt").write_text("\n".join(CONCEPTS) + "\n")
    before = {p.relative_to(runs_root): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    args = ("train", json.loads((run / "model.json").read_text())["cache"], "--concepts", tmp_path / "c.txt",
            "--epochs", "2", "--device", "cpu", "--out", runs_root, "--quiet")
    with full_disk():
        result = cli(*args)
    error = one_line_error(result, "File too large")
    assert {p.relative_to(runs_root): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert os.readlink(runs_root / "latest") == "run", error  # still the last finished run
    assert not list(runs_root.rglob(".*.tmp"))  # no half-written file left beside its destination


def _cbmctl(*args, **env):
    return subprocess.run([sys.executable, "-m", "cbmctl", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), **env})


@pytest.mark.slow
def test_a_comparison_killed_after_its_first_checkpoint_resumes(cli, finished_run, tmp_path):  # noqa: F811
    cache = json.loads((finished_run / "model.json").read_text())["cache"]
    (tmp_path / "c.txt").write_text("\n".join(CONCEPTS) + "\n")
    killed = _cbmctl("train", cache, "--concepts", tmp_path / "c.txt", "--compare", "gumbel,none,zero-shot",
                     "--seeds", "2", "--epochs", "3", "--device", "cpu", "--out", tmp_path / "runs", "--quiet",
                     CBMCTL_FAULT="train:checkpoint-written")
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "runs" / "latest").exists()  # latest only ever names a finished run
    resumed = cli("train", "--resume", tmp_path / "runs", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    rows = json.loads((tmp_path / "runs" / "latest" / "compare.json").read_text())
    assert [row["loss"] for row in rows] == ["gumbel", "none", "zero-shot"]
    assert "resuming after epoch 1" in (tmp_path / "runs" / "latest" / "train.log").read_text()
