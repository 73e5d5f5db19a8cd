"""A library call leaves the caller's global state as it found it: torch's and numpy's global random
generators (the run's randomness lives in generators it owns), and torch's thread count (cbmctl.threads)."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from makers import make_synthetic_cache

from cbmctl.cache import open_cache
from cbmctl.concepts import ConceptSet
from cbmctl.spec import TrainConfig
from cbmctl.threads import choose_threads, torch_threads, usable_cpus
from cbmctl.training import prepare_data, train_cbm

CONCEPTS = ["red", "green", "striped pattern", "star shape", "grass background", "small size"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    cache = make_synthetic_cache(tmp_path_factory.mktemp("state") / "c.h5", CONCEPTS, per_split=(120, 40, 40))
    return prepare_data(open_cache(cache), ConceptSet("synthetic", CONCEPTS, "test"))


def quick(**changes):
    return replace(TrainConfig(epochs=3, min_epochs=0, device="cpu", batch_size=64, nec=2), **changes)


def global_states():
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return torch.get_rng_state(), cuda, np.random.get_state()


def assert_unchanged(before, after):
    assert torch.equal(before[0], after[0])
    assert len(before[1]) == len(after[1]) and all(torch.equal(a, b) for a, b in zip(before[1], after[1]))
    assert before[2][0] == after[2][0] and np.array_equal(before[2][1], after[2][1]) and before[2][2:] == after[2][2:]


def test_training_leaves_the_callers_random_state_and_does_not_depend_on_it(data):
    torch.manual_seed(123)
    np.random.seed(123)
    before = global_states()
    first = train_cbm(data, quick(seed=7, cbl_init="random"))
    assert_unchanged(before, global_states())
    torch.manual_seed(999)  # another caller state: the same seed still trains the same model
    second = train_cbm(data, quick(seed=7, cbl_init="random"))
    assert torch.equal(first.model.cbl.weight, second.model.cbl.weight)
    assert first.metrics == second.metrics
    other = train_cbm(data, quick(seed=8, cbl_init="random"))
    assert not torch.equal(first.model.cbl.weight, other.model.cbl.weight)


def test_experiment_probe_and_cms_leave_the_callers_state(data, tmp_path, monkeypatch):
    from cbmctl.cms import cms_report
    from cbmctl.experiment import run_experiment
    # the figures (matplotlib, most of this test's time otherwise) draw no random numbers
    monkeypatch.setattr("cbmctl.experiment._write_figures", lambda *args: None)
    torch.manual_seed(5)
    np.random.seed(5)
    callers = torch.get_num_threads()
    torch.set_num_threads(2)  # the run asks for one thread (more only spin on a busy test machine)
    before = global_states()
    try:
        run_experiment(data, quick(threads=1), ["gumbel", "linear-probe"], [0], tmp_path,
                       {"methods": ["gumbel", "linear-probe"]})
        cms_report(open_cache(data.record["cache"]), ConceptSet("synthetic", CONCEPTS, "test"))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(callers)
    assert_unchanged(before, global_states())
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["threads"] == {"count": 1, "reason": "asked for"}
    assert "torch: 1 CPU thread (asked for)" in (tmp_path / "train.log").read_text()


def test_threads_are_set_for_the_call_and_restored_after(monkeypatch):
    callers = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        with torch_threads(0) as choice:
            assert choice.count == usable_cpus() == torch.get_num_threads()
            assert "CPU" in choice.reason
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert choose_threads(0).count == 3 and choose_threads(0).reason == "OMP_NUM_THREADS"
        assert choose_threads(2).count == 2  # --threads wins over the environment
        monkeypatch.setenv("OMP_NUM_THREADS", "many")  # not a count: ignored
        assert choose_threads(0).count == usable_cpus()
        with pytest.raises(RuntimeError), torch_threads(2):
            raise RuntimeError("the training failed")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(callers)


def test_a_throttled_log_passes_one_line_per_interval_and_none_before_the_first():
    from cbmctl.logs import throttled
    now, heard = [0.0], []
    log = throttled(heard.append, every=10, clock=lambda: now[0], prefix="· ")
    for t, line in [(1, "a"), (9.9, "b"), (10, "c"), (15, "d"), (20.5, "e"), (21, "f")]:
        now[0] = t
        log(line)
    assert heard == ["· c", "· e"]
