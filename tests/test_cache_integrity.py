"""Hostile and unlucky inputs around the cache: killed and concurrent writes, locked and damaged files,
NaN/Inf and out-of-range labels, flags that contradict a cache, and what the user is told. Every case ends
with one line (an error or a warning), the right exit code, no traceback, and the user's cache still opens."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from makers import make_cub, make_imagefolder, make_synthetic_cache, write_bad_images

from cbmctl.cache import open_cache, store_text, text_store_dir, write_text_group
from cbmctl.identity import text_key

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "examples" / "configs" / "tiny-clip.json")
TINY_ARGS = ["--model", TINY, "--pretrained", "none"]
CONCEPTS = ["red", "green", "striped pattern", "star shape", "grass background", "small size"]


def env(**extra):
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), **extra}


def cbmctl(*args, **extra_env):
    """A real `cbmctl` process (stderr in a file, so a test can watch it while it runs)."""
    err = open(Path(os.environ["CBMCTL_HOME"]).parent / f"stderr-{time.monotonic_ns()}.txt", "w+")
    process = subprocess.Popen([sys.executable, "-m", "cbmctl", *map(str, args)], env=env(**extra_env),
                               stdout=subprocess.PIPE, stderr=err, text=True)
    process.stderr_file = err
    return process


@contextlib.contextmanager
def reaped(processes: list):
    """However the test ends, no process it started is left behind (a stopped one included)."""
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def finish(process, timeout=300):
    out, _ = process.communicate(timeout=timeout)
    process.stderr_file.seek(0)
    return process.returncode, out, process.stderr_file.read()


def wait_for(predicate, what, timeout=300):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def one_line_error(result, code=1) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def warnings_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("warning:")]


def still_opens(path) -> None:
    cache = open_cache(path)
    for split in cache.splits:
        cache.split(split)
    cache.class_embeddings()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny CUB embedded once with the tiny random-weight CLIP, with a concept set in its text store."""
    from click.testing import CliRunner

    from cbmctl.cli import cli as app
    root = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CBMCTL_HOME", str(root / "home"))
        patch.setenv("HF_HOME", str(root / "hf"))
        data = make_cub(root / "data")
        concepts = root / "concepts.txt"
        concepts.write_text("\n".join(CONCEPTS) + "\n")
        cache = root / "tiny.h5"
        for args in (["embed", data, "--cache", cache, *TINY_ARGS, "--workers", "0", "--quiet"],
                     ["concepts", "embed", concepts, "--cache", cache, "--device", "cpu"]):
            result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
            assert result.exit_code == 0, result.output
    return {"data": data, "cache": cache, "concepts": concepts}


@pytest.fixture
def tiny(built, tmp_path):
    """A private copy of the built cache (and its text store)."""
    cache = tmp_path / "tiny.h5"
    shutil.copy(built["cache"], cache)
    shutil.copytree(text_store_dir(built["cache"]), text_store_dir(cache))
    return {**built, "cache": cache}


@pytest.fixture
def synthetic(tmp_path):
    cache = make_synthetic_cache(tmp_path / "s.h5", CONCEPTS)
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("\n".join(CONCEPTS) + "\n")
    return {"cache": cache, "concepts": concepts}


def train_args(cache, concepts, tmp_path, *extra):
    return ["train", cache, "--concepts", concepts, "--epochs", "2", "--device", "cpu", "--out", tmp_path / "runs",
            "--quiet", *extra]


def cms_args(cache, concepts, *extra):
    return ["cms", cache, "--concepts", concepts, "--no-random-control", *extra]


# ---- the text store: beside the cache, written whole ----

def test_the_text_store_lives_beside_the_cache_which_is_never_written(synthetic):
    cache = synthetic["cache"]
    before = cache.read_bytes()
    texts = ["a long beak", "webbed feet"]
    key = text_key(open_cache(cache).attrs, texts)
    vectors = np.random.default_rng(0).normal(size=(2, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # text embeddings are unit vectors
    assert store_text(cache, key, texts, vectors, {"kind": "concepts"})
    assert not store_text(cache, key, texts, vectors, {"kind": "concepts"})
    assert cache.read_bytes() == before
    got_texts, got_vectors, attrs = open_cache(cache).text(key)
    assert got_texts == texts and np.array_equal(got_vectors, vectors) and attrs["kind"] == "concepts"
    assert (text_store_dir(cache) / f"{key}.npz").is_file()


def test_old_in_cache_text_groups_still_read_and_a_half_written_one_is_ignored(synthetic):
    cache = synthetic["cache"]
    attrs = open_cache(cache).attrs
    old, broken = ["old concept"], ["half written"]
    with h5py.File(cache, "a") as handle:  # the layout caches had before the store moved beside them
        write_text_group(handle, text_key(attrs, old), old, np.full((1, 16), 0.25, np.float32), {"kind": "concepts"})
        # what a kill between the two datasets of the old in-place write left behind
        handle.create_group(f"text/{text_key(attrs, broken)}").create_dataset(
            "texts", data=np.array(broken, dtype=h5py.string_dtype()))
    assert open_cache(cache).text(text_key(attrs, old))[0] == old
    assert open_cache(cache).text(text_key(attrs, broken)) is None
    assert store_text(cache, text_key(attrs, broken), broken, np.full((1, 16), 0.25, np.float32), {"kind": "concepts"})
    assert open_cache(cache).text(text_key(attrs, broken))[0] == broken


STORE_ONE = """
import sys, numpy as np
from cbmctl.cache import open_cache, store_text
from cbmctl.identity import text_key
cache, texts = sys.argv[1], ["a long beak", "webbed feet"]
print(store_text(cache, text_key(open_cache(cache).attrs, texts), texts, np.full((2, 16), 0.25, np.float32), {"kind": "c"}))
"""


@pytest.mark.parametrize("point", ["atomic:before-fsync", "atomic:before-replace", "atomic:after-replace"])
def test_a_killed_text_store_write_leaves_every_later_command_working(cli, synthetic, tmp_path, point):
    cache, concepts = synthetic["cache"], synthetic["concepts"]
    before = cache.read_bytes()
    killed = subprocess.run([sys.executable, "-c", STORE_ONE, str(cache)], env=env(CBMCTL_FAULT=f"{point}@*.npz"),
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert cache.read_bytes() == before
    key = text_key(open_cache(cache).attrs, ["a long beak", "webbed feet"])
    entry = open_cache(cache).text(key)
    assert entry is None if point != "atomic:after-replace" else entry[0] == ["a long beak", "webbed feet"]
    still_opens(cache)
    assert cli(*cms_args(cache, concepts)).exit_code == 0
    assert cli(*train_args(cache, concepts, tmp_path)).exit_code == 0
    again = subprocess.run([sys.executable, "-c", STORE_ONE, str(cache)], env=env(), capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and again.stdout.strip() == str(point != "atomic:after-replace")
    assert open_cache(cache).text(key)[0] == ["a long beak", "webbed feet"]


@pytest.mark.slow
def test_a_killed_concepts_embed_leaves_the_real_cache_working(cli, tiny, tmp_path):
    new = tmp_path / "new.txt"
    new.write_text("blue wings\nshort tail\nyellow beak\n")
    killed = finish(cbmctl("concepts", "embed", new, "--cache", tiny["cache"], "--device", "cpu",
                           CBMCTL_FAULT="atomic:before-replace@*.npz"))
    assert killed[0] == -signal.SIGKILL
    result = cli(*cms_args(tiny["cache"], new, "--json"))
    assert result.exit_code == 0 and json.loads(result.stdout)["images"] == 6
    assert "already there" in cli("concepts", "embed", new, "--cache", tiny["cache"], "--device", "cpu").output
    still_opens(tiny["cache"])


WRITER = """
import sys, numpy as np
from cbmctl.cache import TextStore
store = TextStore(sys.argv[1])
for i in range(60):
    # unit rows (64 × (1/8)² = 1), the sign telling the rounds apart
    store.put("abc", [f"text {i % 2}"] * 3000, np.full((3000, 64), (2 * (i % 2) - 1) / 8, np.float32), {"round": i % 2})
"""


def test_a_reader_sees_the_old_or_the_new_entry_never_a_part(synthetic):
    cache = synthetic["cache"]
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(text_store_dir(cache))], env=env())
    seen = set()
    with reaped([writer]):
        finished = False
        while not finished:
            finished = writer.poll() is not None  # one more read after the last write
            entry = open_cache(cache).text("abc")
            if entry is not None:
                texts, vectors, attrs = entry
                assert len(texts) == 3000 and vectors.shape == (3000, 64)
                assert set(texts) == {f"text {attrs['round']}"} and np.all(vectors == (2 * attrs["round"] - 1) / 8)
                seen.add(attrs["round"])
    assert writer.returncode == 0 and seen


def test_a_cache_open_for_writing_elsewhere_is_reported_as_locked(cli, synthetic):
    cache, concepts = synthetic["cache"], synthetic["concepts"]
    holder = subprocess.Popen([sys.executable, "-c", "import sys, h5py\nh = h5py.File(sys.argv[1], 'a')\n"
                               "print('open', flush=True)\nsys.stdin.read()", str(cache)],
                              env=env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        line = one_line_error(cli(*cms_args(cache, concepts)))
        assert "is locked" in line and str(cache) in line
    finally:
        holder.communicate("", timeout=60)
    assert cli(*cms_args(cache, concepts)).exit_code == 0


# ---- two processes, one cache ----

def _stopped(process):
    """Wait until the child has stopped itself (its fault point with =stop)."""
    _, status = os.waitpid(process.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), "the first process should have stopped at its fault point"


def _stderr_so_far(process) -> str:
    return Path(process.stderr_file.name).read_text()


def _wait_for_note(process):
    note = "waiting: another cbmctl process is embedding into"
    wait_for(lambda: note in _stderr_so_far(process) or process.poll() is not None, "the waiting note")
    assert note in _stderr_so_far(process), _stderr_so_far(process)


def _second_waits_for_first(start_first, start_second):
    """Start a process that stops holding the cache's lock (its journal half-assembled), then a second one;
    once the second says it waits, let the first go on. Returns both (exit code, stdout, stderr)."""
    with reaped([]) as started:
        first = start_first(CBMCTL_FAULT="embed:before-replace=stop")
        started.append(first)
        _stopped(first)
        second = start_second()
        started.append(second)
        _wait_for_note(second)
        os.kill(first.pid, signal.SIGCONT)
        return finish(first), finish(second)


@pytest.mark.slow
def test_two_embeds_of_one_cache_the_second_waits_then_finds_it_done(built, tmp_path):
    cache = tmp_path / "c.h5"
    args = ["embed", built["data"], "--cache", cache, *TINY_ARGS, "--workers", "0", "--shard-size", "4"]
    (code_a, out_a, err_a), (code_b, out_b, err_b) = _second_waits_for_first(
        lambda **fault: cbmctl(*args, **fault), lambda: cbmctl(*args))
    assert (code_a, code_b) == (0, 0), err_a + err_b
    assert out_a.startswith("wrote") and out_b.startswith("up to date")
    assert "Traceback" not in err_a + err_b and err_b.count("waiting:") == 1
    assert not Path(str(cache) + ".parts").exists()
    still_opens(cache)


@pytest.mark.slow
def test_two_trains_that_both_need_the_cache_embed_it_once(built, tmp_path):
    cache = tmp_path / "c.h5"

    def train(out, **fault):
        return cbmctl("train", built["data"], "--cache", cache, *TINY_ARGS, "--concepts", built["concepts"],
                      "--epochs", "2", "--device", "cpu", "--out", tmp_path / out, **fault)
    (code_a, _, err_a), (code_b, _, err_b) = _second_waits_for_first(lambda **fault: train("a", **fault),
                                                                      lambda: train("b"))
    assert (code_a, code_b) == (0, 0), err_a + err_b
    assert "no cache yet: embedding" in err_a and "no cache yet: embedding" not in err_b
    assert "Traceback" not in err_a + err_b
    assert (tmp_path / "a" / "latest" / "metrics.json").is_file() and (tmp_path / "b" / "latest" / "metrics.json").is_file()


# ---- flags that contradict the cache ----

def test_flags_that_contradict_a_given_cache_are_refused(cli, tiny, tmp_path):
    cache, concepts = tiny["cache"], tiny["concepts"]
    before = cache.read_bytes()
    other = tmp_path / "other.json"
    config = json.loads(Path(TINY).read_text())
    config["vision_cfg"]["layers"] = 2
    other.write_text(json.dumps(config))
    for flags in (["--model", "RN50", "--pretrained", "none"], ["--model", other], ["--pretrained", "openai"]):
        line = one_line_error(cli(*train_args(cache, concepts, tmp_path, *flags)))
        assert "was made with backbone_" in line and "leave out" in line and "--cache" not in line.split(";")[0]
        assert "was made with backbone_" in one_line_error(cli(*cms_args(cache, concepts, *flags)))
    assert not (tmp_path / "runs").exists()
    # repeating what the cache holds is fine
    assert cli(*train_args(cache, concepts, tmp_path, *TINY_ARGS)).exit_code == 0
    assert cache.read_bytes() == before


def test_the_data_path_compares_the_weights_not_only_the_model_name(cli, tiny, tmp_path, tiny_backbone):
    from safetensors.torch import save_file
    data, cache, concepts = tiny["data"], tiny["cache"], tiny["concepts"]
    weights = tmp_path / "other-weights.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_backbone.model.state_dict().items()}, str(weights))
    for flags, key in ((["--model", TINY, "--pretrained", "openai"], "backbone_pretrained"),
                       (["--model", TINY, "--pretrained", weights], "weights_sha256")):
        for command in ("train", "cms"):
            line = one_line_error(cli(command, data, "--cache", cache, *flags, "--concepts", concepts,
                                      "--out" if command == "train" else "--split", tmp_path / "runs"
                                      if command == "train" else "test"))
            assert f"was made with {key}=" in line and "cbmctl embed" in line and "--overwrite" in line
        assert f"was made with {key}=" in one_line_error(cli("embed", data, "--cache", cache, *flags))
    still_opens(cache)


def test_another_template_on_a_finished_cache_is_refused_until_overwrite(cli, tiny, tmp_path):
    data = shutil.copytree(tiny["data"], tmp_path / "data")
    cache = tiny["cache"]
    before = cache.read_bytes()
    drawing = "a drawing of a {}."
    line = one_line_error(cli("embed", data, "--cache", cache, *TINY_ARGS, "--template", drawing))
    assert "template" in line and "--overwrite" in line and cache.read_bytes() == before
    (data / "cbmctl.yaml").write_text(f"templates: ['{drawing}']\n")
    line = one_line_error(cli("train", data, "--cache", cache, *TINY_ARGS, "--concepts", tiny["concepts"]))
    assert "template" in line and "cbmctl embed" in line and cache.read_bytes() == before
    redone = cli("embed", data, "--cache", cache, *TINY_ARGS, "--template", drawing, "--overwrite", "--workers", "0")
    assert redone.exit_code == 0, redone.output
    assert json.loads(open_cache(cache).attrs["templates"]) == [drawing]
    assert cli(*train_args(data, tiny["concepts"], tmp_path, "--cache", cache, *TINY_ARGS)).exit_code == 0


@pytest.mark.slow
def test_a_resumed_embed_records_the_template_it_really_used(cli, built, tmp_path, tiny_backbone):
    cache = tmp_path / "c.h5"
    args = ["embed", built["data"], "--cache", cache, *TINY_ARGS, "--workers", "0", "--shard-size", "4",
            "--batch-size", "4"]
    killed = finish(cbmctl(*args, CBMCTL_FAULT="embed:after-shard"))
    assert killed[0] == -signal.SIGKILL and Path(str(cache) + ".parts").is_dir() and not cache.exists()
    drawing = "a drawing of a {}."
    assert cli(*args, "--template", drawing).exit_code == 0
    resumed = open_cache(cache)
    assert json.loads(resumed.attrs["templates"]) == [drawing]
    expected = tiny_backbone.encode_prompts(resumed.classes, [drawing]).numpy()
    assert np.allclose(resumed.class_embeddings(), expected, atol=1e-5)


# ---- values that would give wrong results ----

@pytest.mark.parametrize("damage", ["nan", "inf", "class-inf"])
def test_nan_or_inf_in_a_cache_is_a_one_line_error_naming_where(cli, synthetic, tmp_path, damage):
    cache, concepts = synthetic["cache"], synthetic["concepts"]
    with h5py.File(cache, "a") as handle:
        if damage == "class-inf":
            handle["classes/embeddings"][1, 3] = np.inf
        else:
            handle["splits/test/embeddings"][5, 2] = np.nan if damage == "nan" else np.inf
    for args in (cms_args(cache, concepts), train_args(cache, concepts, tmp_path)):
        line = one_line_error(cli(*args))
        assert str(cache) in line and "NaN or infinite" in line
        assert ("class embeddings" if damage == "class-inf" else "the test split has 1 embedding(s)") in line


@pytest.mark.parametrize("label", [-1, 4])
def test_labels_outside_the_classes_are_a_one_line_error(cli, synthetic, tmp_path, label):
    cache, concepts = synthetic["cache"], synthetic["concepts"]
    with h5py.File(cache, "a") as handle:
        handle["splits/train/labels"][7] = label
    for args in (cms_args(cache, concepts, "--split", "train"), train_args(cache, concepts, tmp_path)):
        line = one_line_error(cli(*args))
        assert "the train split has 1 label(s) outside 0...3" in line and f"labelled {label}" in line


def test_dataset_labels_outside_the_classes_are_refused_before_embedding(cli, tmp_path):
    from cbmctl.datasets.synthetic import _pickle, make_cifar10
    folder = make_cifar10(tmp_path / "data")
    _pickle(folder / "batches.meta", {"label_names": ["airplane", "automobile"], "num_cases_per_batch": 6,
                                      "num_vis": 3072})
    line = one_line_error(cli("embed", folder, "--cache", tmp_path / "c.h5", *TINY_ARGS))
    assert "outside the 2 classes" in line and not (tmp_path / "c.h5").exists()


def test_a_backbone_giving_nan_embeddings_is_skipped_not_cached(cli, built, tmp_path, tiny_backbone):
    import torch
    from safetensors.torch import save_file
    state = {k: (torch.full_like(v, float("nan")) if k.startswith("visual.") and v.is_floating_point() else v)
             for k, v in tiny_backbone.model.state_dict().items()}
    weights = tmp_path / "nan.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    line = one_line_error(cli("embed", built["data"], "--cache", tmp_path / "c.h5", "--model", TINY,
                              "--pretrained", weights, "--workers", "0"))
    assert "none of the 18 images could be embedded" in line and "NaN or infinite embedding" in line
    assert not (tmp_path / "c.h5").exists()


def _damaged_copies(source: Path, folder: Path) -> dict:
    raw = source.read_bytes()
    rng = np.random.default_rng(0)
    copies = {"truncated": raw[: len(raw) // 2], "random": rng.integers(0, 256, len(raw), np.uint8).tobytes(),
              "empty": b""}
    for n in range(1, 8):  # one flipped bit at fixed places across the file
        flipped = bytearray(raw)
        flipped[len(raw) * n // 8] ^= 0x10
        copies[f"flip-{n}"] = bytes(flipped)
    paths = {}
    for name, content in copies.items():
        paths[name] = folder / f"{name}.h5"
        paths[name].write_bytes(content)
    return paths


def test_damaged_cache_files_give_one_line_errors_everywhere(cli, tiny, tmp_path):
    for name, damaged in _damaged_copies(tiny["cache"], tmp_path).items():
        shutil.copytree(text_store_dir(tiny["cache"]), text_store_dir(damaged))
        for args in (cms_args(damaged, tiny["concepts"]), train_args(damaged, tiny["concepts"], tmp_path),
                     ["embed", tiny["data"], "--cache", damaged, *TINY_ARGS]):
            result = cli(*args)  # an exception other than the one-line error would fail the test here
            if name.startswith("flip") and result.exit_code == 0:
                continue  # the bit landed where nothing reads it
            line = one_line_error(result)
            assert str(damaged) in line, (name, line)
            if args[0] == "embed" and name in ("truncated", "random", "empty"):
                assert "--overwrite" in line
        rebuilt = cli("embed", tiny["data"], "--cache", damaged, *TINY_ARGS, "--overwrite", "--workers", "0")
        assert rebuilt.exit_code == 0, (name, rebuilt.output)
        still_opens(damaged)
    still_opens(tiny["cache"])


# ---- answering before torch ----

FAST = """
import sys
from cbmctl.cli import cli
try:
    cli.main(sys.argv[1:], prog_name="cbmctl", standalone_mode=False)
except Exception as error:
    print("ERROR", error)
print("LOADED", "torch" in sys.modules, "open_clip" in sys.modules)
"""


def _fast(*args):
    run = subprocess.run([sys.executable, "-c", FAST, *map(str, args)], env=env(), capture_output=True, text=True,
                         timeout=120)
    return run.stdout + run.stderr


def test_a_finished_embed_is_answered_without_importing_torch(tiny):
    output = _fast("embed", tiny["data"], "--cache", tiny["cache"], *TINY_ARGS)
    assert "up to date" in output and "LOADED False False" in output


def test_mistakes_are_answered_before_torch_is_imported(tiny, tmp_path):
    missing = _fast("embed", tiny["data"], "--cache", tmp_path / "c.h5", "--model", "ViT-B-32",
                    "--pretrained", "laion2b_s34b_b79k")
    assert "Error: ViT-B-32/laion2b_s34b_b79k is not in the HF cache" in missing and "LOADED False False" in missing
    assert "LOADED False False" in _fast("embed", "no-such-dataset") and "not a known dataset" in _fast("embed", "nope")
    bad_template = _fast("embed", tiny["data"], "--cache", tmp_path / "c.h5", *TINY_ARGS, "--template", "a {x} photo")
    assert "is not a class-prompt template" in bad_template and "LOADED False False" in bad_template
    code = ("import sys\nfrom cbmctl.errors import CbmctlError\nfrom cbmctl.pipeline import resolve_cache\n"
            "try:\n    resolve_cache(sys.argv[1], model='ViT-B-32', pretrained='laion2b_s34b_b79k', "
            "cache_path=sys.argv[2], log=print)\nexcept CbmctlError as e:\n    print('ERROR', e)\n"
            "print('LOADED', 'torch' in sys.modules, 'open_clip' in sys.modules)\n")
    run = subprocess.run([sys.executable, "-c", code, str(tiny["data"]), str(tmp_path / "c.h5")], env=env(),
                         capture_output=True, text=True, timeout=120)
    lines = run.stdout.strip().splitlines()
    # no "no cache yet: embedding ..." before the error, and torch never loaded
    assert lines[0].startswith("ERROR ViT-B-32/laion2b_s34b_b79k is not in the HF cache"), run.stdout
    assert lines[-1] == "LOADED False False"


# ---- what the user is told ----

def test_meaningless_backbones_are_named_in_one_warning_line(cli, built, tmp_path):
    from cbmctl.demo.world import make_world
    random = cli("embed", built["data"], "--cache", tmp_path / "r.h5", *TINY_ARGS, "--workers", "0", "--quiet")
    assert random.exit_code == 0 and len(warnings_in(random.output)) == 1
    assert "random weights" in warnings_in(random.output)[0]
    demo = cli("embed", built["data"], "--cache", tmp_path / "d.h5", "--model", "demo", "--workers", "0", "--quiet")
    assert demo.exit_code == 0 and len(warnings_in(demo.output)) == 1
    assert "demo CLIP knows only the generated demo world" in warnings_in(demo.output)[0]
    world = make_world(tmp_path / "world", images_per_class=3)
    assert warnings_in(cli("embed", world, "--cache", tmp_path / "w.h5", "--workers", "0", "--quiet").output) == []
    as_json = cli("embed", built["data"], "--cache", tmp_path / "d.h5", "--model", "demo", "--json")
    assert "demo CLIP" in json.loads(as_json.stdout)["warnings"][0]
    # a command given the cache says it too
    cms = cli("cms", tmp_path / "r.h5", "--concepts", built["concepts"], "--no-random-control")
    assert cms.exit_code == 0 and "random weights" in warnings_in(cms.output)[0]


def test_the_automatic_embed_lists_skipped_images_after_the_counts(cli, built, tmp_path):
    root = make_imagefolder(tmp_path / "folder", synsets=("n1", "n2"), per_class=3, mapping=False)
    expected = write_bad_images(root / "train" / "n1")
    result = cli("cms", root, "--cache", tmp_path / "c.h5", *TINY_ARGS, "--concepts", built["concepts"],
                 "--no-random-control")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("no cache yet: embedding"))
    wrote = next(i for i, line in enumerate(lines) if line.startswith("wrote "))
    skipped = next(i for i, line in enumerate(lines) if line.startswith("skipped 3 image(s)"))
    assert start < wrote < skipped
    listed = " ".join(lines[skipped + 1: skipped + 4])
    assert all(name in listed for name, reason in expected.items() if reason != "ok")
    assert open_cache(tmp_path / "c.h5").split("train").skipped
