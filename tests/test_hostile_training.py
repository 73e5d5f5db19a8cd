"""`cbmctl train` against a hostile tester: interrupted runs whose checkpoint was tampered with or copied in
from another run, seeds and knobs out of range, control characters in names, destinations that cannot be
written, warnings that a quiet run must still show, and scoring that must not destroy what training wrote.
Everything goes through the real click app on a tiny synthetic cache."""
import json
import shutil

import pytest
import torch
from makers import make_synthetic_cache
from safetensors.torch import load_file, save_file
from test_hostile_runs import CONCEPTS, one_line_error


def _train(root, cache, *extra):
    from click.testing import CliRunner

    from cbmctl.cli import cli
    result = CliRunner().invoke(cli, ["train", str(cache), "--concepts", str(root / "concepts.txt"), "--epochs", "3",
                                      "--device", "cpu", "--quiet", "--nec", "2", *map(str, extra)])
    assert result.exit_code == 0, result.output
    return result


def _interrupt(run):
    """Make a finished run look as one killed after its last epoch: no metrics.json, and the checkpoint that
    training writes (by the library's own training loop, on the run's own config)."""
    from cbmctl.cache import open_cache
    from cbmctl.concepts import load_concept_set
    from cbmctl.runs import CheckpointFiles, read_yaml
    from cbmctl.spec import ExperimentSpec
    from cbmctl.training import member_configs, prepare_data
    from cbmctl.training.epochs import train_stack
    (run / "metrics.json").unlink()
    spec = ExperimentSpec.from_mapping(read_yaml(run / "config.yaml"))
    data = prepare_data(open_cache(spec.cache_path), load_concept_set(spec.concepts))
    configs = member_configs(spec.train, [(m, s) for m in spec.methods for s in spec.seeds])
    train_stack(data, configs, torch.device("cpu"), CheckpointFiles(run))
    assert (run / "checkpoint.json").is_file()
    return run


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two synthetic worlds with the same concepts and classes but other data, one finished run on each."""
    root = tmp_path_factory.mktemp("hostile-training")
    (root / "concepts.txt").write_text("\n".join(CONCEPTS) + "\n")
    worlds = {}
    for seed in (0, 1):
        cache = make_synthetic_cache(root / f"w{seed}.h5", CONCEPTS, per_split=(120, 40, 40), seed=seed)
        _train(root, cache, "--out", root / f"runs{seed}")
        worlds[seed] = (cache, (root / f"runs{seed}" / "latest").resolve())
    worlds["root"] = root
    return worlds


@pytest.fixture
def finished(world, tmp_path):
    copy = tmp_path / "runs" / "run"
    shutil.copytree(world[0][1], copy)
    (tmp_path / "runs" / "latest").symlink_to("run")
    return copy


@pytest.fixture(scope="module")
def interrupted_once(world, tmp_path_factory):
    """The finished run of world 0 made to look interrupted, once per module (a whole training pass);
    each test gets its own copy through `interrupted`."""
    run = tmp_path_factory.mktemp("interrupted") / "run"
    shutil.copytree(world[0][1], run)
    return _interrupt(run)


@pytest.fixture
def interrupted(interrupted_once, tmp_path):
    copy = tmp_path / "runs" / "run"
    shutil.copytree(interrupted_once, copy)
    (tmp_path / "runs" / "latest").symlink_to("run")
    return copy


# 1. scoring a run never overwrites what training wrote
def test_evaluate_writes_its_own_file_and_keeps_metrics(cli, finished):
    before = (finished / "metrics.json").read_bytes()
    scored = cli("train", "--evaluate", finished, "--device", "cpu", "--json")
    assert scored.exit_code == 0, scored.output
    assert (finished / "metrics.json").read_bytes() == before  # history, λ path, NEC/ANEC kept
    evaluation = json.loads((finished / "evaluation.json").read_text())
    assert evaluation["test"] == json.loads(scored.stdout)["test"] and "evaluated" in evaluation


def test_evaluate_of_an_unwritable_run_still_prints_the_scores(cli, finished):
    (finished / "evaluation.json").mkdir()  # cannot be replaced by a file (as a read-only run cannot be written)
    scored = cli("train", "--evaluate", finished, "--device", "cpu")
    assert scored.exit_code == 0, scored.output
    assert "test top-1" in scored.stdout and "Traceback" not in scored.output
    assert [line for line in scored.stderr.splitlines() if "nothing written" in line]


# 2. every field of a checkpoint is checked before it is used
@pytest.mark.parametrize("field, value, fragment", [
    ("epoch", [1], "'epoch'"), ("epoch", "x", "'epoch'"), ("epoch", -5, "'epoch'"), ("epoch", 1e30, "'epoch'"),
    ("epoch", True, "'epoch'"), ("epoch", 1.5, "'epoch'"), ("epoch", 4, "'epoch'"),
    ("best_loss", [], "'best_loss'"), ("best_loss", ["x"], "'best_loss'"), ("best_epoch", ["a"], "'best_epoch'"),
    ("history", [], "'history'"), ("history", "abc", "'history'"), ("history", [[{"epoch": "x"}]], "'history'"),
    ("stopped", None, "'stopped'"), ("cbl_optimizer.keys", "x", "cbl_optimizer.keys"),
    ("cbl_optimizer.betas", [2, "x"], "cbl_optimizer.param_groups"),
    ("identity", "0" * 64, "another dataset"),
    ("epoch", 2, "'history'"), ("history", [[]], "'history'"),  # rows must be the epochs trained, no fewer
    ("best_loss", [-1e308], "'best_loss'"), ("best_epoch", [1], "'best_epoch'"),
])
def test_tampered_checkpoint_fields_are_one_line(cli, interrupted, field, value, fragment):
    path = interrupted / "checkpoint.json"
    plain = json.loads(path.read_text())
    if field == "cbl_optimizer.keys":
        plain["cbl_optimizer"]["keys"] = value
    elif field == "cbl_optimizer.betas":
        plain["cbl_optimizer"]["param_groups"][0]["betas"] = value
    else:
        plain[field] = value
    path.write_text(json.dumps(plain))
    one_line_error(cli("train", "--resume", interrupted, "--quiet"), "checkpoint.json", fragment)


def test_deeply_nested_checkpoint_is_one_line(cli, interrupted):
    (interrupted / "checkpoint.json").write_text("[" * 100_000 + "]" * 100_000)
    one_line_error(cli("train", "--resume", interrupted, "--quiet"), "checkpoint.json")


@pytest.mark.parametrize("key, value, fragment", [
    ("cbl_optimizer.0.exp_avg", torch.zeros(2, 2), "shape"),
    ("cbl_optimizer.0.step", torch.zeros(3, 3), "shape"),
    ("cbl", None, "NaN"),
    ("best_head", torch.full((1, 2, 2), 3e38), "shape"),
    ("cbl_optimizer.0.step", torch.tensor(-5.0), "whole number"),
    ("cbl_optimizer.0.exp_avg_sq", None, "negative"),
    ("best_head", "huge", "beyond"),
])
def test_tampered_checkpoint_tensors_are_one_line(cli, interrupted, key, value, fragment):
    path = interrupted / "checkpoint.safetensors"
    tensors = load_file(str(path))
    if value is None:
        value = torch.full_like(tensors[key], -1.0 if key.endswith("_sq") else float("nan"))
    elif isinstance(value, str):
        value = torch.full_like(tensors[key], 3e38)
    tensors[key] = value
    save_file(tensors, str(path))
    error = one_line_error(cli("train", "--resume", interrupted, "--quiet"), key.split(".")[0], fragment)
    assert "--lr" not in error  # not the advice for a diverging loss


def test_an_untampered_checkpoint_resumes(cli, interrupted):
    resumed = cli("train", "--resume", interrupted, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert not (interrupted / "checkpoint.json").exists()


def test_a_run_still_training_elsewhere_is_not_resumed(cli, interrupted):
    from filelock import FileLock

    from cbmctl.files import lock_path
    before = (interrupted / "checkpoint.json").read_bytes()
    with FileLock(str(lock_path(interrupted))):  # as another process training it holds it
        one_line_error(cli("train", "--resume", interrupted, "--quiet"), "in use", "training")
    assert (interrupted / "checkpoint.json").read_bytes() == before
    resumed = cli("train", "--resume", interrupted, "--quiet")
    assert resumed.exit_code == 0, resumed.output


# 3. a checkpoint copied in from a run on other data is refused
def test_a_checkpoint_from_another_world_is_refused(cli, world, interrupted, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(world[1][1], other)
    _interrupt(other)
    for suffix in (".json", ".safetensors"):
        shutil.copyfile(other / f"checkpoint{suffix}", interrupted / f"checkpoint{suffix}")
    one_line_error(cli("train", "--resume", interrupted, "--quiet"), "another dataset")


def test_a_checkpoint_of_the_hard_gumbel_loss_does_not_resume_the_soft_one(cli, world, interrupted, tmp_path):
    root = world["root"]
    _train(root, world[0][0], "--out", tmp_path / "hard", "--hard")
    hard = _interrupt((tmp_path / "hard" / "latest").resolve())
    for suffix in (".json", ".safetensors"):
        shutil.copyfile(hard / f"checkpoint{suffix}", interrupted / f"checkpoint{suffix}")
    one_line_error(cli("train", "--resume", interrupted, "--quiet"), "training configuration")


# 4. control characters in the destination are refused, never printed raw
def test_control_characters_in_out_are_refused(cli, world, tmp_path):
    cache = world[0][0]
    result = cli("train", cache, "--out", tmp_path / "o\x1b]0;T\x07", "--quiet")
    one_line_error(result, "control character")
    assert "\x1b" not in result.output
    config = tmp_path / "c.yaml"
    config.write_text('out: "/tmp/o\\e[2J\\e]0;PWN\\a"\n')
    result = cli("train", cache, "--config", config, "--quiet")
    one_line_error(result, "control character")
    assert "\x1b" not in result.output and "\x07" not in result.output


# 5. a destination that cannot be written is one line, before any training
def test_unwritable_destinations_are_one_line(cli, world, tmp_path):
    cache = world[0][0]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = tmp_path / "c.yaml"
    config.write_text(f"out: {blocker}\n")  # a config's `out:` is not checked by click as --out is
    one_line_error(cli("train", cache, "--config", config, "--quiet"), "not a directory")
    one_line_error(cli("train", cache, "--out", blocker / "sub", "--quiet"), "cannot write")
    one_line_error(cli("train", cache, "--out", "/proc/nope", "--quiet"), "cannot write")


# 6. seeds are bounded and read exactly
@pytest.mark.parametrize("args, fragment", [
    (["--seeds", "99999999999"], "[1, 1000]"), (["--seeds", "1000000"], "[1, 1000]"),
    (["--seeds", "1e3"], "digits"), (["--seeds", "0,9007199254740993"], "2^32"),
    (["--seeds", "0,18446744073709551616"], "2^32"), (["--seed", "99999999999999999999"], "2^32"),
    (["--seeds", ",".join(map(str, range(1001)))], "at most 1000"),
])
def test_seeds_are_bounded_and_exact(cli, world, args, fragment):
    one_line_error(cli("train", world[0][0], "--quiet", *args), fragment)


def test_seeds_of_a_config_and_of_a_resumed_run_are_checked(cli, world, interrupted, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("seeds: '1e3'\n")
    one_line_error(cli("train", world[0][0], "--config", config, "--quiet"), "c.yaml: seeds")
    text = (interrupted / "config.yaml").read_text()
    (interrupted / "config.yaml").write_text(text.replace("seeds:\n- 0\n", "seeds: 99999999999\n"))
    one_line_error(cli("train", "--resume", interrupted, "--quiet"), "config.yaml: seeds")


# 7. -q and --json silence progress, never warnings
@pytest.mark.parametrize("flag", ["-q", "--json"])
def test_warnings_reach_stderr_when_quiet(cli, world, tmp_path, flag):
    result = cli("train", world[0][0], "--concepts", world["root"] / "concepts.txt", "--epochs", "2",
                 "--min-epochs", "1", "--faithfulness-cutoff", "1", "--device", "cpu", "--out", tmp_path, flag)
    assert result.exit_code == 0, result.output
    assert "warning: no CBL unit" in result.stderr
    assert "epoch   1" not in result.stderr


# 8. a runs root stands for its latest run
def test_a_runs_root_means_its_latest_run(cli, finished):
    root = finished.parent
    scored = cli("train", "--evaluate", root, "--device", "cpu")
    assert scored.exit_code == 0, scored.output
    assert "latest run" in scored.stderr
    one_line_error(cli("train", "--resume", root, "--quiet"), "interrupted run")  # only a finished one there
    # a run killed after `latest` was last moved is the one --resume means (latest only names finished runs)
    shutil.copytree(finished, root / "zz-killed")
    _interrupt(root / "zz-killed")
    resumed = cli("train", "--resume", root, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert "newest interrupted run" in resumed.stderr and "zz-killed" in resumed.stderr
    assert (root / "zz-killed" / "metrics.json").is_file() and not (root / "zz-killed" / "checkpoint.json").exists()


def test_a_new_run_beside_an_interrupted_one_says_how_to_continue_it(cli, world, interrupted):
    started = cli("train", world[0][0], "--concepts", world["root"] / "concepts.txt", "--epochs", "2",
                  "--device", "cpu", "--out", interrupted.parent, "-q")
    assert started.exit_code == 0, started.output
    notes = [line for line in started.stderr.splitlines() if "was interrupted" in line]
    assert len(notes) == 1 and interrupted.name in notes[0] and "--resume" in notes[0]
    assert (interrupted / "checkpoint.json").is_file()  # the interrupted run is left as it was


# 9. a run records absolute paths, so its config works from anywhere
def test_relative_data_is_recorded_absolute(world, tmp_path, monkeypatch):
    from cbmctl.runs import read_yaml
    monkeypatch.chdir(world[0][0].parent)
    _train(world["root"], world[0][0].name, "--out", tmp_path / "runs")
    config = read_yaml(tmp_path / "runs" / "latest" / "config.yaml")
    assert config["data"] == str(world[0][0].resolve())


# 10. knobs that cannot all hold are refused or said
def test_contradicting_knobs(cli, world, tmp_path):
    cache = world[0][0]
    one_line_error(cli("train", cache, "--min-epochs", "5", "--epochs", "2", "--quiet"), "--min-epochs 5")
    one_line_error(cli("train", cache, "--compare", "", "--quiet"), "methods")
    result = cli("train", cache, "--concepts", world["root"] / "concepts.txt", "--epochs", "2", "--precision-k",
                 "1000", "--device", "cpu", "--out", tmp_path, "-q")
    assert result.exit_code == 0, result.output
    assert f"precision@{len(CONCEPTS)} is reported instead" in result.stderr
    metrics = json.loads((tmp_path / "latest" / "metrics.json").read_text())
    assert f"concept_precision@{len(CONCEPTS)}" in metrics["test"]


def test_an_unexpected_file_error_is_one_line_not_a_traceback(cli, interrupted):
    # train.log replaced by a directory: no command checks for this; the CLI's last-resort handler says it
    (interrupted / "train.log").unlink()
    (interrupted / "train.log").mkdir()
    one_line_error(cli("train", "--resume", interrupted, "--quiet"), "train.log")
