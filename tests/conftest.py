import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
TINY_MODEL = str(TESTS.parent / "examples" / "configs" / "tiny-clip.json")

# Tests never reach the network; set before anything imports huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
# The tests' tensors are tiny: one intra-op thread is fastest, and the subprocess tests inherit it (a
# second thread per process only spins against the other processes of a test). An xdist worker always gets
# one, whatever the shell says: the workers already use every CPU between them (see
# pytest_xdist_auto_num_workers). Set before torch is imported; tests of the thread choice set their own.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.hookimpl(optionalhook=True)  # pytest without xdist (-p no:xdist) runs the suite too
def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject's addopts): one worker per CPU this process may use (its affinity mask, as a
    container or taskset sets it), not per core of the machine as xdist counts them;
    $PYTEST_XDIST_AUTO_NUM_WORKERS still wins (xdist reads it when this returns None)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    from cbmctl.threads import usable_cpus
    return usable_cpus()


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


UNIT_CONCEPTS = ["red", "green", "striped pattern", "star shape", "grass background", "small size", "wavy pattern"]


@pytest.fixture(scope="session")
def unit_runs(tmp_path_factory):
    """Trained once per session: a synthetic cache (ground truth for "red" and "green") whose test images exist
    as files, a sparse run and a comparison of two methods × two seeds on it. Tests copy a run before
    changing it."""
    import numpy as np
    from makers import make_synthetic_cache
    from PIL import Image

    from cbmctl.cache import open_cache
    from cbmctl.concepts import ConceptSet
    from cbmctl.experiment import run_experiment
    from cbmctl.spec import TrainConfig
    from cbmctl.training import prepare_data
    root = tmp_path_factory.mktemp("units")
    cache = make_synthetic_cache(root / "c.h5", UNIT_CONCEPTS)
    labels = open_cache(cache).split("test").labels
    (root / "test").mkdir()
    for i, label in enumerate(labels):  # the paths the cache records, relative to its dataset root
        colour = [(200, 40, 40), (40, 160, 60), (40, 60, 200), (220, 200, 40)][int(label) % 4]
        Image.fromarray(np.full((24, 24, 3), colour, np.uint8)).save(root / "test" / f"{i}.jpg")
    data = prepare_data(open_cache(cache), ConceptSet("synthetic", UNIT_CONCEPTS, "test"))
    config = TrainConfig(epochs=8, min_epochs=1, device="cpu", batch_size=64, nec=2)
    made = {"cache": cache, "root": root}
    for name, methods, seeds in (("single", ["gumbel"], [0]), ("comparison", ["gumbel", "none"], [0, 1])):
        run = root / "runs" / name
        run.mkdir(parents=True)
        run_experiment(data, config, methods, seeds, run, {"methods": methods, "seeds": seeds}, log=None)
        made[name] = run
    return made


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        try:
            self.server.respond(self)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should


@pytest.fixture
def serve():
    """serve(respond) starts a real HTTP server whose POSTs `respond(handler)` answers; returns it, with
    .url (an OpenAI-style base URL) and .seen ([(path, Authorization header)])."""
    servers = []

    def start(respond):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.respond, server.seen = respond, []
        server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
