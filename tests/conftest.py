import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
TINY_MODEL = str(TESTS.parent / "examples" / "configs" / "tiny-clip.json")

# Tests never reach the network; set before anything imports huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
# The tests' tensors are tiny: one intra-op thread is fastest, and the subprocess tests inherit it (a
# second thread per process only spins against the other processes of a test).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("CBMCTL_HOME", str(home / "cbmctl"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf" / "hub"))
    monkeypatch.setenv("CBMCTL_CACHE_DIR", str(home / "caches"))
    monkeypatch.delenv("CBMCTL_DATA", raising=False)
    return home


@pytest.fixture
def tiny_model():
    return TINY_MODEL


@pytest.fixture(scope="session")
def tiny_backbone():
    from cbmctl.backbones import load_backbone
    return load_backbone(TINY_MODEL, "none", "cpu")


@pytest.fixture
def cli():
    """Invoke the real click app in-process; returns the click Result."""
    from click.testing import CliRunner

    from cbmctl.cli import cli as app

    def run(*args, input=None):
        return CliRunner().invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)
    return run
