import asyncio
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cbmctl.cache import open_cache
from cbmctl.concepts import ConceptSet
from cbmctl.experiment import run_experiment
from cbmctl.explain import Explainer
from cbmctl.train import TrainConfig, prepare_data
from cbmctl.tui.app import InspectApp
from cbmctl.tui.data import load
from cbmctl.tui.matrix_view import CELL_WIDTH, MatrixView
from makers import make_synthetic_cache

CONCEPTS = ["red", "green", "striped pattern", "star shape", "grass background", "small size", "wavy pattern"]
SNAPSHOTS = Path(__file__).parent / "snapshots"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tui")
    cache = make_synthetic_cache(root / "c.h5", CONCEPTS)
    data = prepare_data(open_cache(cache), ConceptSet("synthetic", CONCEPTS, "test"))
    run = root / "runs" / "demo-run"
    run.mkdir(parents=True)
    run_experiment(data, TrainConfig(epochs=10, device="cpu", batch_size=64), ["gumbel"], [0], run, {}, log=None)
    return run


def drive(data, steps, size=(150, 40)):
    """Run the app headless, apply `steps(pilot, app)` and return what it returns."""
    async def main():
        app = InspectApp(data)
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            return await steps(pilot, app)
    return asyncio.run(main())


def test_matrix_screen_sort_search_and_toggle(run_dir):
    data = load(run_dir)
    assert list(data.matrices) == ["head × CBL", "head"]

    async def steps(pilot, app):
        screen = app.screen
        seen = {"screen": type(screen).__name__, "rows": list(screen.view.row_order)}
        await pilot.press("s")  # concepts by weight in the selected class (class 0)
        seen["weight_order"] = list(screen.view.column_order)
        await pilot.press("s")  # by how many classes use them
        seen["sort"] = screen.column_sort
        await pilot.press("t")
        seen["matrix"] = screen.matrix_name
        await pilot.press("slash", *"stri", "enter")
        seen["filtered"] = [data.concepts[j] for j in screen.view.column_order]
        await pilot.press("escape")
        seen["cleared"] = len(screen.view.column_order)
        await pilot.press("down", "right")
        seen["selected"] = screen.view.selected
        await pilot.click(MatrixView, offset=(26 + 8 * 2 + 1, 3))  # the mouse: third column, third class
        seen["clicked"] = screen.view.cursor
        seen["side"] = str(screen.query_one("#side-panel").render())
        return seen

    seen = drive(data, steps)
    assert seen["screen"] == "MatrixScreen" and seen["rows"] == [0, 1, 2, 3]
    effective = data.matrices["head × CBL"]
    assert seen["weight_order"] == list(np.argsort(-effective[0], kind="stable"))
    assert seen["sort"] == "sparsity" and seen["matrix"] == "head"
    assert seen["filtered"] == ["striped pattern"] and seen["cleared"] == len(CONCEPTS)
    assert seen["selected"][0] == 1
    assert seen["clicked"] == (2, 2)


def test_images_screen_shows_the_library_activations(run_dir):
    data = load(run_dir)
    explainer = Explainer.from_run(run_dir)
    features = torch.from_numpy(open_cache(explainer.metadata["cache"]).split("test").embeddings.astype(np.float32))
    scores, activations, logits = explainer.forward(features)

    async def steps(pilot, app):
        await pilot.press("2")
        await pilot.press("down", "down")
        screen = app.screen
        first = {"name": type(screen).__name__, "selected": screen.selected, "shown": list(screen.shown)}
        await pilot.press("c")
        first["filter"], first["rows"] = screen.filter, list(screen.rows)
        await pilot.press("3")
        first["summary"] = type(app.screen).__name__
        return first

    seen = drive(data, steps)
    assert seen["name"] == "ImagesScreen" and seen["selected"] == 2
    image = 2
    magnitude = activations[image].abs()
    active = torch.nonzero(magnitude > 1e-3 * magnitude.max()).flatten().tolist()
    expected = sorted(active, key=lambda j: -float(magnitude[j]))
    assert [row["concept"] for row in seen["shown"]] == [CONCEPTS[j] for j in expected]
    predicted = int(logits[image].argmax())
    head = explainer.model.head.weight.detach()
    for row in seen["shown"]:
        j = CONCEPTS.index(row["concept"])
        assert row["activation"] == pytest.approx(float(activations[image, j]), abs=1e-5)
        assert row["to_predicted"] == pytest.approx(float(activations[image, j] * head[predicted, j]), abs=1e-5)
        assert row["score"] == pytest.approx(float(scores[image, j]), abs=1e-4)
    correct = (logits.argmax(1).numpy() == data.labels)
    assert seen["filter"] == "correct" and seen["rows"] == list(np.flatnonzero(correct))
    assert seen["summary"] == "SummaryScreen"


def test_matrix_view_renders_only_visible_cells():
    rows, columns = 1000, 5000
    matrix = np.random.default_rng(0).normal(size=(rows, columns)).astype(np.float32)
    view = MatrixView(matrix, [f"class {i}" for i in range(rows)], [f"c{j}" for j in range(columns)])

    from textual.app import App

    class Holder(App):
        def compose(self):
            yield view

    async def main():
        async with Holder().run_test(size=(120, 30)) as pilot:
            await pilot.pause()
            view.cursor = (900, 4000)
            await pilot.pause()
            line = view.render_line(3)
            return line, view.scroll_offset

    line, offset = asyncio.run(main())
    assert line.cell_length <= 120 and len(list(line)) <= 120 // CELL_WIDTH + 3
    assert offset.x > 0 and offset.y > 800  # scrolled to the cursor, far out


def test_cache_without_run_is_the_cms_view(tmp_path):
    cache = make_synthetic_cache(tmp_path / "c.h5", CONCEPTS)
    (tmp_path / "cbmctl.yaml").write_text(f"concepts: {tmp_path / 'concepts.txt'}\n")
    (tmp_path / "concepts.txt").write_text("\n".join(CONCEPTS) + "\n")
    data = load(cache)
    assert data.mode == "cache" and list(data.matrices) == ["T = cos(class, concept)"]
    assert data.activations.shape == (80, len(CONCEPTS)) and "no run" in data.summary["mode"]
    seen = drive(data, lambda pilot, app: _screen_names(pilot, app))
    assert seen == ["MatrixScreen", "ImagesScreen", "SummaryScreen"]


async def _screen_names(pilot, app):
    names = [type(app.screen).__name__]
    for key in ("2", "3"):
        await pilot.press(key)
        names.append(type(app.screen).__name__)
    return names


def test_missing_or_empty_run_is_a_clear_message(cli, tmp_path):
    result = cli("inspect", "--runs-root", tmp_path / "runs")
    assert result.exit_code == 1 and "no runs yet under" in result.output and result.output.count("\n") == 1
    (tmp_path / "empty-run").mkdir()
    result = cli("inspect", tmp_path / "empty-run")
    assert result.exit_code == 1 and "has no trained model yet" in result.output


@pytest.mark.parametrize("screen", ["1", "2"])
def test_snapshots_of_the_main_screens(run_dir, screen):
    data = load(run_dir)

    async def steps(pilot, app):
        await pilot.press(screen, "down")
        await pilot.pause()
        return app.export_screenshot()

    svg = drive(data, steps, size=(120, 32))
    name = {"1": "matrix", "2": "images"}[screen]
    snapshot = SNAPSHOTS / f"{name}.svg"
    if os.environ.get("UPDATE_SNAPSHOTS"):
        snapshot.write_text(svg)
    assert snapshot.exists(), f"no snapshot {snapshot}; create it with UPDATE_SNAPSHOTS=1"
    assert svg == snapshot.read_text(), f"{name} screen changed; rerun with UPDATE_SNAPSHOTS=1 if intended"
