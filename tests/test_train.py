import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from makers import make_synthetic_cache

from cbmctl.cache import open_cache
from cbmctl.concepts import ConceptSet
from cbmctl.errors import CbmctlError
from cbmctl.spec import TrainConfig
from cbmctl.training import prepare_data, train_cbm

CONCEPTS = ["red", "green", "striped pattern", "star shape", "grass background", "small size", "wavy pattern",
            "hexagon shape"]


@pytest.fixture
def cache_file(tmp_path):
    return make_synthetic_cache(tmp_path / "synthetic.h5", CONCEPTS)


@pytest.fixture
def data(cache_file):
    return prepare_data(open_cache(cache_file), ConceptSet("synthetic", CONCEPTS, "test"))


def quick(**changes):
    return replace(TrainConfig(epochs=8, min_epochs=0, patience=50, device="cpu", batch_size=64), **changes)


def test_both_layers_learn_and_the_head_changes(data):
    result = train_cbm(data, quick(loss="gumbel"))
    assert result.model.head.weight.abs().sum() > 0  # the head starts at zero: it must have been trained
    assert not torch.equal(result.model.cbl.weight, torch.eye(len(CONCEPTS)))
    assert result.metrics["test"]["top1"] > 0.5  # separable clusters, 4 classes
    assert result.history[-1]["ce"] < result.history[0]["ce"]


@pytest.mark.parametrize("loss", ["gumbel", "contrastive", "l1", "cos3", "none"])
def test_every_loss_trains_and_reports_every_metric(data, loss):
    result = train_cbm(data, quick(loss=loss, nec=2, epochs=3))
    test = result.metrics["test"]
    for key in ("top1", "top5", "mean_per_class", "ece", "l0_mean", "entropy_mean", "top5_mass_mean", "hoyer_mean",
                "nec", "coverage90_mean", "concept_precision@5", "dense_top1", "nec2_top1", "nec5_top1", "anec"):
        assert key in test and np.isfinite(test[key]), key
    for key in ("top1", "top5", "mean_per_class", "ece", "top5_mass_mean", "hoyer_mean", "concept_precision@5",
                "dense_top1", "nec2_top1", "nec5_top1", "anec"):  # fractions, not percentages
        assert 0 <= test[key] <= 1, (key, test[key])
    assert test["top5"] >= test["top1"] and 0 <= test["l0_mean"] <= len(CONCEPTS) and test["entropy_mean"] >= 0
    assert test["nec"] == 2.0  # the sparse head holds exactly NEC x classes weights
    assert 1 <= test["coverage90_mean"] <= 2  # at most the two concepts a class's row uses


def test_reference_form_and_hard_samples_train(data):
    """Each option reaches the loss (the same seed trains a different CBL than the paper's soft form) and
    still learns the separable clusters."""
    paper = train_cbm(data, quick(epochs=2, tau=0.1))
    for changed in (quick(gumbel_form="reference", epochs=2, tau=0.1), quick(hard=True, tau=0.1, epochs=2)):
        result = train_cbm(data, changed)
        assert not torch.equal(result.model.cbl.weight, paper.model.cbl.weight), changed
        assert result.metrics["test"]["top1"] > 0.5, changed  # 4 classes: chance is 0.25
        assert result.history[-1]["ce"] < result.history[0]["ce"], changed
    with pytest.raises(CbmctlError, match="`hard` applies only"):
        train_cbm(data, quick(gumbel_form="reference", hard=True))


def test_deterministic_for_a_seed(data):
    first, second = train_cbm(data, quick(seed=5)), train_cbm(data, quick(seed=5))
    assert torch.equal(first.model.cbl.weight, second.model.cbl.weight)
    assert first.metrics == second.metrics
    assert not torch.equal(first.model.head.weight, train_cbm(data, quick(seed=6)).model.head.weight)


def test_precomputed_scores_equal_scores_per_batch(data, monkeypatch):
    precomputed = train_cbm(data, quick())
    monkeypatch.setattr("cbmctl.resources.PRECOMPUTE_BYTES", 0)  # too large to precompute: ψ per batch
    per_batch = train_cbm(data, quick())
    assert torch.allclose(precomputed.model.cbl.weight, per_batch.model.cbl.weight, atol=1e-5)
    assert torch.allclose(precomputed.extra["dense"].head.weight, per_batch.extra["dense"].head.weight, atol=1e-5)
    assert precomputed.metrics["test"]["dense_top1"] == per_batch.metrics["test"]["dense_top1"]


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(data, tmp_path):
    from cbmctl import runs
    straight = train_cbm(data, quick(epochs=6))
    train_cbm(data, quick(epochs=3), checkpoints=runs.CheckpointFiles(tmp_path))
    tensors, plain = runs.load_checkpoint(tmp_path)
    assert plain["epoch"] == 3 and set(tensors) >= {"cbl", "head", "order_rng.0", "noise_rng.0"}
    resumed = train_cbm(data, quick(epochs=6), checkpoints=runs.CheckpointFiles(tmp_path))
    assert torch.equal(resumed.extra["dense"].head.weight, straight.extra["dense"].head.weight)
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in straight.history]


def test_concept_precision_uses_ground_truth(data):
    # attribute "has_color::red" is true for even classes, "green" for odd ones; the others never apply
    truth = data.truth["test"]
    assert truth.shape == (80, len(CONCEPTS))
    assert truth[:, 0].tolist() == (data.labels["test"] % 2 == 0).tolist() and not truth[:, 2:].any()


def test_train_cli_run_directory_and_config_roundtrip(cli, cache_file, tmp_path):
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("\n".join(CONCEPTS) + "\n")
    out = tmp_path / "runs"
    args = ["train", cache_file, "--concepts", concepts, "--epochs", "4", "--device", "cpu", "--out", out, "--quiet"]
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    latest = (out / "latest").resolve()
    for name in ("config.yaml", "metrics.json", "model.safetensors", "model.json", "curves.png", "train.log",
                 "record.json"):
        assert (latest / name).is_file(), name
    model_meta = json.loads((latest / "model.json").read_text())
    assert model_meta["concepts"] == CONCEPTS and model_meta["classes"][0] == "class 0"
    assert model_meta["dataset"]["dataset_fingerprint"] == "fp0" and model_meta["concept_set"]["size"] == 8
    assert model_meta["versions"]["torch"] == torch.__version__
    config = yaml.safe_load((latest / "config.yaml").read_text())
    assert config["methods"] == ["gumbel"] and config["epochs"] == 4
    assert config["cache_path"] == str(cache_file.resolve())
    replay = cli("train", "--config", latest / "config.yaml", "--json", "--quiet")
    assert replay.exit_code == 0, replay.output
    assert json.loads(replay.stdout)["test"] == metrics["test"]
    assert yaml.safe_load(((out / "latest").resolve() / "config.yaml").read_text()) == config
    overridden = cli("train", "--config", latest / "config.yaml", "--epochs", "2", "--json", "--quiet")
    assert json.loads(overridden.stdout)["epochs_run"] == 2  # the command line wins over the file


def test_compare_seeds_and_baselines_table(cli, cache_file, tmp_path):
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("\n".join(CONCEPTS) + "\n")
    out = tmp_path / "runs"
    result = cli("train", cache_file, "--concepts", concepts, "--epochs", "3", "--device", "cpu", "--out", out,
                 "--quiet", "--compare", "gumbel,none,linear-probe,zero-shot", "--seeds", "0,1")
    assert result.exit_code == 0, result.output
    assert "linear-probe" in result.output and "±" in result.output
    latest = (out / "latest").resolve()
    rows = json.loads((latest / "compare.json").read_text())
    assert [r["loss"] for r in rows] == ["gumbel", "none", "linear-probe", "zero-shot"]
    assert len(rows[0]["top1"]["values"]) == 2
    assert (latest / "compare.csv").read_text().splitlines()[0].startswith("method,top1_mean_pct,top1_std_pct")
    assert (latest / "gumbel" / "seed-1" / "model.safetensors").is_file() and (latest / "model.safetensors").is_file()


def test_random_concepts_control_needs_the_backbone_and_says_so(cli, cache_file, tmp_path):
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("\n".join(CONCEPTS) + "\n")
    result = cli("train", cache_file, "--concepts", concepts, "--random-concepts", "--device", "cpu",
                 "--out", tmp_path / "runs", "--quiet")
    # the synthetic cache's backbone does not exist, so the random words cannot be embedded: one clear line
    assert result.exit_code == 1 and "unknown model 'synthetic'" in result.output


def test_resume_refuses_another_concept_set(cli, cache_file, tmp_path):
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("\n".join(CONCEPTS) + "\n")
    out = tmp_path / "runs"
    cli("train", cache_file, "--concepts", concepts, "--epochs", "2", "--device", "cpu", "--out", out, "--quiet")
    run = (out / "latest").resolve()
    concepts.write_text("\n".join(CONCEPTS[:4]) + "\n")
    make_synthetic_cache(cache_file, CONCEPTS[:4])
    result = cli("train", "--resume", run, "--quiet")
    assert result.exit_code == 1 and "was trained with another concept set" in result.output


@pytest.mark.slow
def test_cli_resume_after_sigkill(tmp_path, cli):
    cache_file = make_synthetic_cache(tmp_path / "big.h5", CONCEPTS, per_split=(600, 100, 100))
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("\n".join(CONCEPTS) + "\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}

    def command(out, *extra):
        return ["train", str(cache_file), "--concepts", str(concepts), "--epochs", "6", "--patience", "100",
                "--device", "cpu", "--batch-size", "32", "--out", str(out), "--quiet", *extra]

    # a real process SIGKILLs itself right after its first checkpoint (epoch 1): a kill -9 in mid-training
    killed = subprocess.run([sys.executable, "-m", "cbmctl", *command(tmp_path / "killed")],
                            env={**env, "CBMCTL_FAULT": "train:checkpoint-written"}, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL
    run = next((tmp_path / "killed").glob("*-gumbel"))
    assert (run / "checkpoint.json").is_file() and not (run / "model.safetensors").exists()
    # resuming what the dead process left, and the uninterrupted reference, need no process of their own
    resumed = cli("train", "--resume", run, "--quiet", "--json")
    assert resumed.exit_code == 0, resumed.output
    straight = cli(*command(tmp_path / "straight", "--json"))
    assert json.loads(resumed.stdout)["test"] == json.loads(straight.stdout)["test"]
    assert "resuming after epoch 1" in (run / "train.log").read_text()


def test_resuming_a_finished_run_says_so(cli, cache_file, tmp_path):
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("\n".join(CONCEPTS) + "\n")
    out = tmp_path / "runs"
    cli("train", cache_file, "--concepts", concepts, "--epochs", "2", "--device", "cpu", "--out", out, "--quiet")
    result = cli("train", "--resume", (out / "latest").resolve(), "--quiet")
    assert result.exit_code == 1 and "already finished; nothing to resume" in result.output


def test_models_trained_together_equal_models_trained_alone(data):
    from cbmctl.training import train_many
    members = [("gumbel", 0), ("none", 1), ("contrastive", 2), ("gumbel", 3)]
    config = quick(epochs=40, patience=3, min_epochs=2, lr=0.05, cbl_lr=0.05)
    together = train_many(data, config, members)
    for (loss, seed), stacked in zip(members, together):
        alone = train_cbm(data, replace(config, loss=loss, seed=seed))
        assert stacked.best_epoch == alone.best_epoch and len(stacked.history) == len(alone.history)
        assert torch.allclose(stacked.model.cbl.weight, alone.model.cbl.weight, atol=1e-5)
        assert torch.allclose(stacked.extra["dense"].head.weight, alone.extra["dense"].head.weight, atol=1e-5)
        # the sparse head goes through a validation-chosen refit: equal up to that choice's float noise
        assert torch.allclose(stacked.model.head.weight, alone.model.head.weight, atol=1e-3)
        assert stacked.metrics["test"]["top1"] == pytest.approx(alone.metrics["test"]["top1"], abs=1 / 80)
    # early stopping is per model: not every member ran for the same number of epochs
    assert len({len(r.history) for r in together}) > 1


def test_the_sparse_head_never_uses_units_that_left_their_concept(data):
    # a random CBL: its units are mixtures, unrelated to the concept each is named after
    result = train_cbm(data, quick(cbl_init="random", faithfulness_cutoff=0.9, epochs=2))
    dropped = result.metrics["unfaithful_units"]
    assert dropped and result.metrics["model"]["faithful_units"] == len(CONCEPTS) - len(dropped)
    weight = result.model.class_concept_weights()
    for name in dropped:
        assert weight[:, CONCEPTS.index(name)].abs().sum() == 0
    everything = train_cbm(data, quick(cbl_init="random", faithfulness_cutoff=-1, epochs=2))
    assert everything.metrics["unfaithful_units"] == []
    # identity start, little training: every unit still follows its concept
    assert train_cbm(data, quick(epochs=1)).metrics["unfaithful_units"] == []


def test_random_concept_control_trains_on_as_many_random_words(cli, tmp_path, tiny_model):
    from makers import make_cub
    cub = make_cub(tmp_path / "data")
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("red wings\nblue feathers\nlong beak\nwhite belly\n")
    args = ["train", cub, "--model", tiny_model, "--pretrained", "none", "--device", "cpu", "--concepts", concepts,
            "--epochs", "2", "--quiet", "--cache", tmp_path / "c.h5", "--random-concepts"]
    words = []
    for out in ("runs-a", "runs-b"):
        result = cli(*args, "--out", tmp_path / out)
        assert result.exit_code == 0, result.output
        meta = json.loads(((tmp_path / out / "latest").resolve() / "model.json").read_text())
        words.append(meta["concepts"])
        assert meta["concept_set"]["name"] == "random-words-4"
    assert words[0] == words[1] and len(set(words[0])) == 4  # as many words, drawn the same way every time
    assert not set(words[0]) & {"red wings", "blue feathers", "long beak", "white belly"}
    assert all(word.isalpha() for word in words[0])


def test_a_sparse_path_point_stopped_by_the_iteration_cap_is_warned_about_and_recorded(data, monkeypatch):
    from functools import partial

    import cbmctl.sparse as sparse
    from cbmctl.training import train_many
    solved = train_cbm(data, quick(epochs=2)).metrics["sparse_solver"]
    assert solved["points_at_cap"] == [] and solved["points"] > 1 and solved["max_iterations"] == 2000
    assert solved["tolerance_floor"] == sparse.SparseConfig().tolerance_floor and solved["violation_unit"] == "λα"
    monkeypatch.setattr(sparse, "SparseConfig", partial(sparse.SparseConfig, max_iterations=1))
    warnings = []
    capped = train_many(data, quick(epochs=2), [("gumbel", 0), ("none", 0)], warn=warnings.append)
    for result in capped:
        record = result.metrics["sparse_solver"]
        assert record["points_at_cap"] and record["max_iterations"] == 1
        assert record["largest_violation"] > record["tolerance"]  # in units of λα: far from solved
    [line] = [w for w in warnings if "iteration cap" in w]
    assert line.startswith("warning: ") and "of 2 models stopped at the iteration cap (1)" in line
