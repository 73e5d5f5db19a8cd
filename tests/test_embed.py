import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from makers import make_cifar10, make_cub, make_imagefolder, picture, write_bad_images

from cbmctl.errors import CbmctlError


def embed_args(data, cache, model, *extra):
    return ["embed", data, "--cache", cache, "--model", model, "--pretrained", "none", "--device", "cpu",
            "--workers", "0", "--quiet", *extra]


def test_embed_writes_the_documented_schema(cli, tmp_path, tiny_model):
    cub = make_cub(tmp_path / "data")
    cache = tmp_path / "cub.h5"
    result = cli(*embed_args(cub, cache, tiny_model, "--json"))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["status"] == "written" and report["counts"] == {"train": 9, "val": 3, "test": 6}
    with h5py.File(cache, "r") as f:  # plain h5py, as the README documents
        assert f.attrs["schema_version"] == 1 and f.attrs["embed_dim"] == 32
        assert f.attrs["backbone_model"] == tiny_model and f.attrs["backbone_pretrained"] == "none"
        assert f.attrs["dataset_format"] == "cub" and len(f.attrs["dataset_fingerprint"]) == 64
        assert json.loads(f.attrs["preprocess"])["mean"][0] == pytest.approx(0.48145466)
        assert f.attrs["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-4)
        names = f["classes/names"].asstr()[()].tolist()
        assert names[0] == "black footed albatross"
        assert f["classes/embeddings"].shape == (3, 32)
        assert f"text/{f['classes'].attrs['text_key']}/texts" in f
        for split, n in report["counts"].items():
            group = f[f"splits/{split}"]
            emb = group["embeddings"][()]
            assert emb.dtype == np.float16 and emb.shape == (n, 32)
            assert np.allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1, atol=2e-3)
            assert group["labels"].shape == (n,) and group["attributes"].shape == (n, 4)
            assert all(p.startswith("images/0") for p in group["paths"].asstr()[()])
            assert group["skipped_paths"].shape == (0,)
    assert not Path(str(cache) + ".parts").exists()


def test_rerun_is_a_noop_and_overwrite_redoes(cli, tmp_path, tiny_model):
    cub = make_cub(tmp_path / "data")
    cache = tmp_path / "cub.h5"
    cli(*embed_args(cub, cache, tiny_model))
    stamp = cache.stat().st_mtime_ns
    again = cli(*embed_args(cub, cache, tiny_model))
    assert again.exit_code == 0 and "up to date" in again.output and cache.stat().st_mtime_ns == stamp
    redo = cli(*embed_args(cub, cache, tiny_model, "--overwrite"))
    assert redo.exit_code == 0 and "wrote" in redo.output and cache.stat().st_mtime_ns != stamp


def test_other_backbone_or_changed_dataset_is_refused(cli, tmp_path, tiny_model):
    cub = make_cub(tmp_path / "data")
    cache = tmp_path / "cub.h5"
    cli(*embed_args(cub, cache, tiny_model))
    original = cache.read_bytes()
    other = tmp_path / "other.json"
    config = json.loads(Path(tiny_model).read_text())
    config["vision_cfg"]["layers"] = 2
    other.write_text(json.dumps(config))
    refused = cli(*embed_args(cub, cache, other))
    assert refused.exit_code == 1
    assert refused.output.strip().splitlines()[-1].startswith("Error: ") and "Traceback" not in refused.output
    assert "was made with backbone_model=" in refused.output and "--overwrite" in refused.output
    assert cache.read_bytes() == original
    (cub / "images.txt").write_text((cub / "images.txt").read_text().rsplit("\n", 2)[0] + "\n")
    changed = cli(*embed_args(cub, cache, tiny_model))
    assert changed.exit_code == 1 and "dataset_fingerprint" in changed.output
    assert cli(*embed_args(cub, cache, tiny_model, "--overwrite")).exit_code == 0
    not_cache = tmp_path / "notes.h5"
    not_cache.write_text("my notes")
    assert "not a readable HDF5 cache" in cli(*embed_args(cub, not_cache, tiny_model)).output
    assert not_cache.read_text() == "my notes"


def test_bad_images_are_converted_or_skipped_and_recorded(cli, tmp_path, tiny_model):
    root = tmp_path / "folder"
    make_imagefolder(root, synsets=("n1", "n2"), per_class=3, mapping=False)
    expected = write_bad_images(root / "train" / "n1")
    cache = tmp_path / "bad.h5"
    result = cli(*embed_args(root, cache, tiny_model, "--json"))
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert skipped == {name: reason for name, reason in expected.items() if reason != "ok"}
    with h5py.File(cache, "r") as f:
        stored = dict(zip(f["splits/train/skipped_paths"].asstr()[()].tolist() +
                          f["splits/val/skipped_paths"].asstr()[()].tolist(),
                          f["splits/train/skipped_reasons"].asstr()[()].tolist() +
                          f["splits/val/skipped_reasons"].asstr()[()].tolist()))
        embedded = set(f["splits/train/paths"].asstr()[()]) | set(f["splits/val/paths"].asstr()[()])
    assert {Path(p).name: r for p, r in stored.items()} == skipped
    for name, reason in expected.items():
        assert (f"train/n1/{name}" in embedded) == (reason == "ok")
    assert "skipped 3 image(s)" in cli(*embed_args(root, tmp_path / "again.h5", tiny_model)).output


def test_nothing_embeddable_is_an_error(cli, tmp_path, tiny_model):
    root = tmp_path / "folder"
    for split in ("train", "val"):
        (root / split / "a").mkdir(parents=True)
        for i in range(2):
            (root / split / "a" / f"{i}.jpg").write_text("not an image")
    result = cli(*embed_args(root, tmp_path / "x.h5", tiny_model))
    assert result.exit_code == 1 and "none of the 4 images could be embedded" in result.output
    assert not (tmp_path / "x.h5").exists()


def test_cifar_batches_embed(cli, tmp_path, tiny_model):
    make_cifar10(tmp_path / "data")
    result = cli(*embed_args(tmp_path / "data", tmp_path / "c.h5", tiny_model, "--json"))
    assert json.loads(result.stdout)["counts"]["test"] == 6
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert f["splits/test/paths"].asstr()[0] == "test_batch#0"


def test_library_api_roundtrip(tmp_path, tiny_backbone):
    import cbmctl
    from cbmctl.cache import store_text
    from cbmctl.identity import text_key
    dataset = cbmctl.load_dataset(make_cub(tmp_path / "data"))
    report = cbmctl.embed_dataset(dataset, tiny_backbone, tmp_path / "c.h5", progress=False)
    cache = cbmctl.open_cache(report.cache)
    train = cache.split("train")
    assert train.embeddings.shape == (9, 32) and cache.classes == dataset.classes
    assert cache.attribute_names == dataset.attribute_names
    # the embeddings are the backbone's, row for row
    first = dataset.splits["train"][0]
    pixels = tiny_backbone.preprocess(dataset.open_image(first.path).convert("RGB"))[None]
    assert np.allclose(tiny_backbone.encode_images(pixels).numpy()[0], train.embeddings[0], atol=2e-3)
    texts = ["red wings", "a long beak"]
    key = text_key(json.loads(json.dumps(cache.attrs)), texts)
    assert store_text(cache.path, key, texts, tiny_backbone.encode_texts(texts).numpy(), {"kind": "concepts"})
    assert not store_text(cache.path, key, texts, tiny_backbone.encode_texts(texts).numpy(), {"kind": "concepts"})
    stored_texts, vectors, attrs = cache.text(key)
    assert stored_texts == texts and vectors.shape == (2, 32) and attrs["kind"] == "concepts"
    with pytest.raises(CbmctlError, match="no such cache file"):
        cbmctl.open_cache(tmp_path / "missing.h5")


def _big_folder(root: Path, classes: int = 4, per_class: int = 300) -> Path:
    for k in range(classes):
        for split, count in (("train", per_class), ("test", 10)):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                picture(k, i, 24).save(folder / f"{i}.png")
    return root


def _run_cli(args, env=None, **kwargs):
    env = {**(env or os.environ), "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.Popen([sys.executable, "-m", "cbmctl", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _arrays(cache):
    with h5py.File(cache, "r") as f:
        return {f"{s}/{k}": f[f"splits/{s}/{k}"][()] for s in ("train", "val", "test")
                for k in ("embeddings", "labels", "paths")}


@pytest.mark.slow
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, tiny_model, cli):
    data = _big_folder(tmp_path / "data", per_class=80)
    args = lambda cache: embed_args(data, cache, tiny_model, "--shard-size", "8", "--batch-size", "8")
    cache = tmp_path / "killed.h5"
    parts = Path(str(cache) + ".parts")
    # a real process SIGKILLs itself right after writing train shard 3, as a kill -9 there would
    process = _run_cli(args(cache), {**os.environ, "CBMCTL_FAULT": "embed:after-shard@train-000003.npz"})
    process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL
    done_before = len(list(parts.glob("*.npz")))
    assert 4 <= done_before < 45 and not cache.exists(), "the kill must land mid-way"
    # resuming what the dead process left, and the reference run, need no process of their own
    resumed = cli(*args(cache))
    assert resumed.exit_code == 0, resumed.output
    clean = tmp_path / "clean.h5"
    assert cli(*args(clean)).exit_code == 0
    a, b = _arrays(cache), _arrays(clean)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not parts.exists()


@pytest.mark.slow
def test_kill_during_overwrite_leaves_the_old_cache_intact(tmp_path, tiny_model, cli):
    data = _big_folder(tmp_path / "data", per_class=150)
    cache = tmp_path / "c.h5"
    assert cli(*embed_args(data, cache, tiny_model)).exit_code == 0
    before = cache.read_bytes()
    other = tmp_path / "wider.json"
    config = json.loads(Path(tiny_model).read_text())
    config["embed_dim"] = 16
    other.write_text(json.dumps(config))
    process = _run_cli(embed_args(data, cache, other, "--overwrite", "--shard-size", "8", "--batch-size", "8"))
    deadline = time.time() + 120
    while time.time() < deadline and not list(Path(str(cache) + ".parts").glob("train-000002.npz")):
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert cache.read_bytes() == before
    assert cli(*embed_args(data, cache, tiny_model)).exit_code == 0  # still usable as it was


@pytest.mark.slow
def test_torchrun_two_processes_make_the_same_cache(tmp_path, tiny_model, cli):
    data = _big_folder(tmp_path / "data", classes=3, per_class=20)
    single = tmp_path / "single.h5"  # the reference needs no process of its own
    assert cli(*embed_args(data, single, tiny_model, "--shard-size", "8")).exit_code == 0
    multi = tmp_path / "multi.h5"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    # --standalone: a free port of torchrun's choosing, so parallel test runs never meet on a fixed one
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "cbmctl", *map(str, embed_args(data, multi, tiny_model, "--shard-size", "8"))],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    a, b = _arrays(single), _arrays(multi)
    for key in a:
        if key.endswith("embeddings"):
            assert np.allclose(a[key].astype(np.float32), b[key].astype(np.float32), atol=2e-3)
        else:
            assert np.array_equal(a[key], b[key])


def test_cli_errors_are_one_line(cli, tmp_path):
    result = cli("embed", tmp_path / "nope", "--model", "demo")
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert "not a known dataset name" in result.output


def test_help_lists_exactly_the_commands_and_each_name_loads_its_own_command(cli):
    """The top-level help lists COMMANDS without importing them (cbmctl.cli.LazyGroup): each listed name must
    load a command of that name, whose own help is its own docstring."""
    import click

    from cbmctl.cli import COMMANDS
    from cbmctl.cli import cli as app
    output = cli("--help").output
    section = output.split("Commands:\n", 1)[1].splitlines()
    listed = [line.split()[0] for line in section if line.startswith("  ") and not line.startswith("   ")]
    assert listed == sorted(COMMANDS)
    for name, (_, _, summary) in COMMANDS.items():
        assert " ".join(summary.split()) in " ".join(output.split()), name
        command = app.get_command(click.Context(app), name)
        assert isinstance(command, click.Command) and command.name == name
        own = cli(name, "--help")
        assert own.exit_code == 0 and own.output.startswith("Usage: ") and f" {name} [OPTIONS]" in own.output
        assert " ".join(command.help.split()[:8]) in " ".join(own.output.split()), name


@pytest.mark.slow
def test_reproduce_paper_smoke_mode(tmp_path):
    # one of the five datasets: the script's loop is the same for each, and every format is read in
    # test_datasets.py; CUB's (its own concept set and attributes) is the one with the most to go wrong
    script = Path(__file__).parents[1] / "examples" / "reproduce_paper.sh"
    env = {**os.environ, "OUT": str(tmp_path / "out"), "CBMCTL": f"{sys.executable} -m cbmctl",
           "DATASETS": "cub",
           "PYTHONPATH": str(Path(__file__).parents[1]), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run = subprocess.run(["bash", str(script), "--smoke"], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    table = (tmp_path / "out" / "results.md").read_text()
    for name in ("| cub |", "gumbel (paper", "l1 (", "contrastive", "cos3", "linear-probe", "zero-shot",
                 "CMS (cos)"):
        assert name in table
    assert "imagenet" not in table and "cifar10" not in table
    assert table.count("\n| ") == 8  # header + 7 method rows
