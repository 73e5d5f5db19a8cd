"""The inspect TUI, driven headless (textual's run_test) on real runs of both heads, a cache, hostile
names, and hand-made data for the layout snapshots.

Snapshots (tests/snapshots/*.txt) are the screen's text grid — the characters a terminal shows, one line
per row, trailing spaces dropped — not textual's SVG, whose markup changes with every textual release.
They are made from hand-made data (no training), so they do not depend on the machine, the BLAS or the
timing. After an intended change: `UPDATE_SNAPSHOTS=1 python -m pytest tests/test_tui.py` and review the
diff of tests/snapshots/ (see tests/snapshots/README.md)."""
import asyncio
import difflib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import UNIT_CONCEPTS
from makers import make_synthetic_cache
from rich.cells import cell_len
from rich.console import Console

from cbmctl.cache import open_cache
from cbmctl.concepts import ConceptSet
from cbmctl.errors import CbmctlError
from cbmctl.experiment import run_experiment
from cbmctl.explain import Explainer
from cbmctl.identity import names_sha256
from cbmctl.model import model_identity
from cbmctl.spec import TrainConfig
from cbmctl.training import prepare_data
from cbmctl.tui.app import HELP, InspectApp
from cbmctl.tui.data import InspectData, load
from cbmctl.tui.matrix_view import MatrixView, decimals, heat
from cbmctl.units import UnitsReport, build_units

CONCEPTS = ["red", "green", "striped pattern", "star shape", "grass background", "small size", "wavy pattern"]
SNAPSHOTS = Path(__file__).parent / "snapshots"
HOSTILE = "\x1b[2J\x1b]0;pwned\x07[bold]loud[/bold] [red]x \u202eevil"   # clear screen, retitle, BEL, markup, RTL


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One small run per head, trained on the same synthetic cache."""
    root = tmp_path_factory.mktemp("tui")
    cache = make_synthetic_cache(root / "c.h5", CONCEPTS)
    data = prepare_data(open_cache(cache), ConceptSet("synthetic", CONCEPTS, "test"))
    made = {}
    for head in ("sparse", "dense"):
        run = root / "runs" / head
        run.mkdir(parents=True)
        config = TrainConfig(epochs=8, min_epochs=1, device="cpu", batch_size=64, head=head, nec=2)
        run_experiment(data, config, ["gumbel"], [0], run, {}, log=None, figures=False)  # the TUI draws no PNG
        made[head] = run
    return made


def drive(data, steps, size=(150, 40)):
    """Run the app headless, apply `steps(pilot, app)` and return what it returns."""
    async def main():
        app = InspectApp(data)
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            return await steps(pilot, app)
    return asyncio.run(main())


def screen_text(app) -> str:
    """The characters on screen, as a terminal shows them (the composited screen, the way textual's own
    export_screenshot renders it, exported as plain text): one line per row, trailing spaces dropped."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), record=True, force_terminal=True,
                      color_system=None, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return "\n".join(line.rstrip() for line in console.export_text(styles=False).splitlines()) + "\n"


async def settled_text(pilot, app) -> str:
    """The screen once it stops changing: textual sizes a table's columns on a later refresh, and one pause
    can catch the layout half done when the machine is busy (parallel workers). Bounded: after 50 pauses
    the screen is returned as it is, and the assertions on it say what differs."""
    text = None
    for _ in range(50):
        await pilot.pause()
        previous, text = text, screen_text(app)
        if text == previous:
            break
    return text


def library_view(run):
    explainer = Explainer.from_run(run)
    features = torch.from_numpy(open_cache(explainer.metadata["cache"]).split("test").embeddings.astype(np.float32))
    return explainer, features, *explainer.forward(features)


def test_matrix_screen_sparse_head(runs):
    data = load(runs["sparse"])
    assert list(data.matrices) == ["head", "head × CBL (on ψ)"] and data.head_kind == "sparse"
    head = data.matrices["head"]
    assert (head == 0).any(), "a sparse head at NEC 2 of 7 concepts has zero weights"
    model = Explainer.from_run(runs["sparse"]).model

    async def steps(pilot, app):
        screen = app.screen
        seen = {"screen": type(screen).__name__, "rows": list(screen.view.row_order),
                "columns": list(screen.view.column_order), "hide": screen.hide_zero}
        await pilot.press("z")
        seen["all_columns"] = len(screen.view.column_order)
        await pilot.press("z", "slash", *"class 1", "enter")   # one class: only the concepts it uses remain
        seen["class_1"] = sorted(screen.view.column_order.tolist())
        seen["status"] = str(screen.query_one("#matrix-status").render())
        seen["panel"] = list(screen.panel_rows)
        seen["side"] = await settled_text(pilot, app)
        await pilot.press("escape", "s")  # concepts by weight in the selected class
        seen["weight_order"] = (screen.view.selected, list(screen.view.column_order))
        await pilot.press("s")
        seen["sort"] = screen.column_sort
        await pilot.press("t")
        seen["matrix"] = screen.matrix_name
        seen["toggled_columns"] = len(screen.view.column_order)
        await pilot.press("slash", *"stri", "enter")
        seen["filtered"] = [data.concepts[j] for j in screen.view.column_order]
        await pilot.press("escape", "down", "right")
        seen["selected"] = screen.view.selected
        view = screen.view  # the mouse: third column, third class
        await pilot.click(MatrixView, offset=(view.label_width + 2 * view.cell_width + 1, view.header_height + 2))
        seen["clicked"] = view.cursor
        return seen

    seen = drive(data, steps)
    assert seen["screen"] == "MatrixScreen" and seen["rows"] == [0, 1, 2, 3] and seen["hide"]
    used = np.flatnonzero((head != 0).any(axis=0))
    assert sorted(seen["columns"]) == used.tolist() and seen["all_columns"] == len(CONCEPTS)
    assert seen["class_1"] == np.flatnonzero(head[1]).tolist()
    assert f"{len(CONCEPTS) - len(seen['class_1'])} all-zero hidden" in seen["status"]
    # the side panel lists exactly the class's non-zero weights, largest first, and its bias
    order = np.flatnonzero(head[1])[np.argsort(-head[1][np.flatnonzero(head[1])], kind="stable")]
    assert seen["panel"] == [(CONCEPTS[j], pytest.approx(float(head[1, j]))) for j in order]
    assert f"bias {float(model.head.bias.detach()[1]):+.3f}" in " ".join(seen["side"].split())
    selected, weight_order = seen["weight_order"]
    shown = [j for j in weight_order]
    assert shown == sorted(shown, key=lambda j: -abs(head[selected[0], j]))  # negative weights before zeros
    assert (head[selected[0]] < 0).any() and (head[selected[0]] == 0).any()  # so the order says so
    assert seen["sort"] == "sparsity" and seen["matrix"] == "head × CBL (on ψ)"
    assert seen["toggled_columns"] == len(CONCEPTS)  # head × CBL mixes every concept in: nothing to hide
    assert seen["filtered"] == ["striped pattern"]
    assert seen["selected"][0] == 1 and seen["clicked"] == (2, 2)


def test_images_screen_sparse_head_lists_exactly_the_contributing_concepts(runs):
    data = load(runs["sparse"])
    explainer, features, _, _, logits = library_view(runs["sparse"])
    wrong = int(np.flatnonzero(logits.argmax(1).numpy() != data.labels)[0])

    async def steps(pilot, app):
        await pilot.press("2")
        screen = app.screen
        screen.query_one("#images").move_cursor(row=wrong)
        await pilot.pause()
        seen = {"name": type(screen).__name__, "selected": screen.selected, "shown": list(screen.shown),
                "text": await settled_text(pilot, app)}
        await pilot.press("c")
        seen["filter"], seen["rows"] = screen.filter, list(screen.rows)
        await pilot.press("3")
        seen["summary"] = type(app.screen).__name__
        return seen

    seen = drive(data, steps)
    assert seen["name"] == "ImagesScreen" and seen["selected"] == wrong
    predicted, true = int(logits[wrong].argmax()), int(data.labels[wrong])
    assert [(b.class_index, b.role) for b in seen["shown"]] == [(predicted, "predicted"), (true, "true")]
    for part in seen["shown"]:
        name = explainer.classes[part.class_index]
        expected = explainer.explain(features[wrong:wrong + 1], ["x"], top_k=len(CONCEPTS), class_name=name)[0]
        # exactly the library's concepts (the row's non-zero weights), in its order, with its numbers
        assert [r["concept"] for r in part.rows] == [r.concept for r in expected.concepts]
        for row, reference in zip(part.rows, expected.concepts):
            assert row["activation"] == pytest.approx(reference.activation, abs=1e-4)
            assert row["input"] == pytest.approx(reference.head_input, abs=1e-4)
            assert row["weight"] == pytest.approx(reference.weight, abs=1e-6)
            assert row["contribution"] == pytest.approx(reference.contribution, abs=1e-4)
            assert row["score"] == pytest.approx(reference.score, abs=1e-3)
        assert part.others == 0 and part.bias == pytest.approx(expected.bias, abs=1e-6)
        assert sum(r["contribution"] for r in part.rows) + part.bias == pytest.approx(float(logits[wrong, part.class_index]),
                                                                                       abs=1e-3)
        assert part.logit == pytest.approx(float(logits[wrong, part.class_index]), abs=1e-3)
    assert "x=(a−μ)/σ" in seen["text"] and "= logit" in seen["text"]
    correct = logits.argmax(1).numpy() == data.labels
    assert seen["filter"] == "correct" and seen["rows"] == list(np.flatnonzero(correct))
    assert seen["summary"] == "SummaryScreen"


def test_images_screen_dense_head_sums_to_the_logit(runs):
    data = load(runs["dense"])
    assert data.head_kind == "dense" and list(data.matrices) == ["head", "head × CBL (on ψ)"]
    explainer, _, scores, activations, logits = library_view(runs["dense"])

    async def steps(pilot, app):
        await pilot.press("2", "down", "down")
        return app.screen.selected, list(app.screen.shown), await settled_text(pilot, app)

    image, shown, text = drive(data, steps)
    assert image == 2 and "x=(a−μ)/σ" not in text and "a·F" in text
    head = explainer.model.head.weight.detach()
    for part in shown:
        contributions = activations[image] * head[part.class_index]
        magnitude = activations[image].abs()
        active = torch.nonzero(magnitude > 1e-3 * magnitude.max()).flatten().tolist()
        expected = sorted(active, key=lambda j: -float(contributions[j]))[:15]
        assert [r["concept"] for r in part.rows] == [CONCEPTS[j] for j in expected]
        for row in part.rows:
            j = CONCEPTS.index(row["concept"])
            assert row["activation"] == pytest.approx(float(activations[image, j]), abs=1e-5)
            assert row["input"] == pytest.approx(float(activations[image, j]), abs=1e-5)  # x = a for the dense head
            assert row["contribution"] == pytest.approx(float(contributions[j]), abs=1e-5)
            assert row["score"] == pytest.approx(float(scores[image, j]), abs=1e-4)
        total = sum(r["contribution"] for r in part.rows) + part.others_sum + part.bias
        assert total == pytest.approx(float(logits[image, part.class_index]), abs=1e-4)


def test_images_screen_shows_the_activation_vector_and_marks_absence(runs):
    data = load(runs["sparse"])
    from cbmctl.render import absence_evidence

    async def steps(pilot, app):
        await pilot.press("2")
        screen, seen = app.screen, []
        for image in range(20):  # until an image whose activations include evidence from absence
            predicted = int(data.predicted[image])
            table = screen.render_activations(image, predicted)
            seen.append((image, predicted, [str(c) for c in table.columns[0]._cells],
                         [str(c) for c in table.columns[-1]._cells]))
        return seen, await settled_text(pilot, app)

    seen, text = drive(data, steps)
    marked = 0
    for image, predicted, names, contributions in seen:
        order = np.argsort(-data.activations[image], kind="stable")
        assert [name.removesuffix(" (absent)") for name in names] == [data.concepts[j] for j in order]
        for j, name, shown in zip(order, names, contributions):
            used = data.head[predicted, j] != 0
            assert shown == (f"{data.contributions(image, predicted)[j]:+.3f}" if used else "·")
            absent = used and absence_evidence("sparse", float(data.inputs[image, j]))
            assert name.endswith("(absent)") == absent
            marked += absent
    assert marked > 0  # the case occurs here, so the check above is not vacuous
    assert "activations of this image" in text and "F: the head's weight" in " ".join(text.split())


def test_concepts_screen_lists_every_unit_and_offers_its_top_images(unit_runs, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    data = load(unit_runs["single"])
    units = data.units.units

    async def steps(pilot, app):
        await pilot.press("4")
        await pilot.pause()
        screen, seen = app.screen, {}
        seen["order"] = [unit.concept for unit in screen.order]
        seen["text"] = await settled_text(pilot, app)
        await pilot.press("s")
        seen["by_faithfulness"] = [unit.concept for unit in screen.order]
        await pilot.press("down", "tab", "down", "o")
        await pilot.pause()
        seen["unit"], seen["notes"] = screen.unit, [n.message for n in app._notifications]
        return seen

    seen = drive(data, steps, size=(160, 40))
    assert seen["order"] == [u.concept for u in sorted(units, key=lambda u: (-u.classes_using, -u.weight_mass,
                                                                             -u.faithfulness))]
    assert sorted(seen["by_faithfulness"]) == sorted(UNIT_CONCEPTS)
    assert seen["by_faithfulness"] == [u.concept for u in sorted(units, key=lambda u: u.faithfulness)]
    first = units[UNIT_CONCEPTS.index(seen["order"][0])]
    assert f"faithfulness {first.faithfulness:.3f}" in " ".join(seen["text"].split())
    # the second unit in faithfulness order, its second top image: "o" names its file (no viewer here)
    assert seen["unit"].concept == seen["by_faithfulness"][1]
    assert any(seen["unit"].top[1].path in note for note in seen["notes"]), seen["notes"]


def test_no_viewer_is_offered_without_a_display(monkeypatch, tmp_path):
    from cbmctl.tui.images_screen import viewer_command
    if not sys.platform.startswith("linux"):
        pytest.skip("display detection applies to X11/Wayland desktops")
    opener = tmp_path / "xdg-open"
    opener.write_text("#!/bin/sh\n")
    opener.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert viewer_command() is None  # xdg-open would exit 0 on a server without showing anything
    monkeypatch.setenv("DISPLAY", ":0")
    assert viewer_command() == [str(opener)]


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
            return view.render_line(view.header_height + 3), view.scroll_offset, list(view.visible_columns())

    line, offset, visible = asyncio.run(main())
    assert line.cell_length <= 120 and len(list(line)) <= 120 // view.cell_width + 3
    assert 4000 in visible and len(visible) <= 120 // view.cell_width + 1
    assert offset.x > 0 and offset.y > 800  # scrolled to the cursor, far out


def test_heat_colours_and_cell_precision():
    def rgb(value, scale=2.0):
        colour = heat(value, scale).bgcolor.triplet
        return colour.red, colour.green, colour.blue

    assert rgb(0.0) == (22, 24, 28)                          # no weight: the background
    assert rgb(2.0) == (30, 170, 70) and rgb(-2.0) == (200, 45, 45)  # the largest: full green / red
    assert rgb(1.0)[1] < rgb(2.0)[1] and rgb(-1.0)[0] < rgb(-2.0)[0]  # stronger with magnitude
    # about three significant digits for the largest value, within the cell
    assert [decimals(s, 7) for s in (150.0, 12.0, 1.6, 0.71, 0.05, 0.0004)] == [0, 1, 2, 3, 4, 4]
    assert decimals(123456.0, 7) == 0 and decimals(0.0, 7) == 2


def _cache_view(tmp_path, classes=None):
    cache = make_synthetic_cache(tmp_path / "c.h5", CONCEPTS)
    if classes:
        import h5py
        with h5py.File(cache, "a") as handle:
            del handle["classes/names"]
            handle["classes/names"] = np.array(classes, dtype=h5py.string_dtype())
    (tmp_path / "cbmctl.yaml").write_text(f"concepts: {tmp_path / 'concepts.txt'}\n")
    (tmp_path / "concepts.txt").write_text("\n".join(CONCEPTS) + "\n")
    return cache


def test_cache_without_run_is_the_cms_view(tmp_path):
    data = load(_cache_view(tmp_path))
    assert data.mode == "cache" and list(data.matrices) == ["T = cos(class, concept)"]
    assert data.activations.shape == (80, len(CONCEPTS)) and "no run" in data.summary["mode"]

    async def steps(pilot, app):
        seen = [type(app.screen).__name__, app.screen.hide_zero]
        for key in ("2", "3"):
            await pilot.press(key)
            seen += [type(app.screen).__name__, await settled_text(pilot, app)]
        return seen

    matrix, hide, images, images_text, summary, summary_text = drive(data, steps)
    assert (matrix, hide, images, summary) == ("MatrixScreen", False, "ImagesScreen", "SummaryScreen")
    assert "V = cos" in images_text and "V·T" in images_text and "= logit" not in images_text
    accuracy = 100 * float((data.predicted == data.labels).mean())
    assert f"top-1 {accuracy:.2f} %" in summary_text


def _every_screen(pilot, app):
    async def run():
        texts = []
        for keys in (["1"], ["z", "t", "down", "right"], ["2", "down"], ["3"], ["question_mark"]):
            await pilot.press(*keys)
            await pilot.pause()
            texts.append(await settled_text(pilot, app))
        return texts
    return run()


def _assert_shown_literally(texts):
    screen = "\n".join(texts)
    assert "\x1b" not in screen and "\x07" not in screen and "\u202e" not in screen
    assert "[red]x" in screen, "markup in a name is shown as text"
    assert "\\x1b" in screen and "\\u202e" in screen, "control characters are shown as escapes"


def test_hostile_names_in_a_run_are_refused_or_shown_literally(runs, tmp_path):
    """A run directory as someone could send it (the concept list's hash and the run's identity recomputed,
    as a sender would): names holding control characters are refused by the loader in one escaped line;
    names that are rich markup load and are shown literally, never as markup."""
    run = tmp_path / "run"
    shutil.copytree(runs["sparse"], run)
    meta = json.loads((run / "model.json").read_text())
    original = dict(meta)
    meta["classes"] = [HOSTILE + str(k) for k in range(len(meta["classes"]))]
    meta["concepts"] = ["[red]x" + c for c in meta["concepts"][:-1]] + [HOSTILE]
    meta["concept_set"]["sha256"] = names_sha256(meta["concepts"])
    (run / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CbmctlError, match="control character") as refused:
        load(run)
    assert "\x1b" not in str(refused.value) and "\x07" not in str(refused.value)
    markup = dict(original, classes=[f"[bold]class {k}[/]" for k in range(len(original["classes"]))])
    markup["concepts"] = ["[red]x" + c for c in original["concepts"]]
    markup["concept_set"] = dict(original["concept_set"], sha256=names_sha256(markup["concepts"]))
    from safetensors.torch import load_file  # the sender recomputes the run's identity too
    markup["identity"] = model_identity(load_file(str(run / "model.safetensors")), markup)
    (run / "model.json").write_text(json.dumps(markup))
    texts = drive(load(run), _every_screen, size=(120, 40))
    assert any("[bold]class 0[/]" in text for text in texts) and any("[red]x" in text for text in texts)


def test_hostile_class_names_in_a_cache_are_refused_or_shown_literally(tmp_path):
    """Class names read from a cache follow the rules of every class list (cbmctl.names): control characters
    are refused in one escaped line; rich markup loads and is shown as text."""
    for name in ("hostile", "markup"):
        (tmp_path / name).mkdir()
    with pytest.raises(CbmctlError, match="classes/names: class 0 holds the control character") as refused:
        load(_cache_view(tmp_path / "hostile", [HOSTILE + str(k) for k in range(4)]))
    assert "\x1b" not in str(refused.value) and "\x07" not in str(refused.value)
    texts = drive(load(_cache_view(tmp_path / "markup", [f"[red]x class {k}" for k in range(4)])), _every_screen,
                  size=(120, 40))
    assert "[red]x class 1" in "\n".join(texts), "markup in a name is shown as text"


def test_missing_or_empty_run_is_a_clear_message(cli, tmp_path):
    result = cli("inspect", "--runs-root", tmp_path / "runs")
    assert result.exit_code == 1 and "no runs yet under" in result.output and result.output.count("\n") == 1
    (tmp_path / "empty-run").mkdir()
    result = cli("inspect", tmp_path / "empty-run")
    assert result.exit_code == 1 and "holds no trained model" in result.output and result.output.count("\n") == 1


# ---- layout, on hand-made data --------------------------------------------------------------------------

LONG_CLASS = "scarlet pebblecrest of the northern salt marshes"


def sample_data() -> InspectData:
    """A sparse-head run in miniature with fixed numbers: 4 classes, 9 concepts (one unused), 12 images."""
    classes = ["amber sandstrider", "azure glimmerwing", "cobalt frostbeak", LONG_CLASS]
    concepts = ["red", "blue", "striped pattern", "star shape", "grass background", "small size", "wavy pattern",
                "dotted pattern", "circle shape"]
    rng = np.random.default_rng(3)
    k, c, n = len(classes), len(concepts), 12
    head = np.zeros((k, c))  # 2 or 3 weights per class; "wavy pattern" used by none
    for row, weights in enumerate([{"red": 1.8, "grass background": 1.1, "blue": -0.6},
                                   {"blue": 2.1, "striped pattern": 0.9},
                                   {"blue": 1.2, "star shape": 1.5, "small size": -0.7},
                                   {"red": 0.9, "dotted pattern": 1.3, "circle shape": 0.8}]):
        for name, weight in weights.items():
            head[row, concepts.index(name)] = weight
    scores = np.round(rng.normal(10, 6, size=(n, c)), 2)
    activations = np.round(0.8 * scores + 1, 2)
    inputs = np.round((activations - activations.mean(0)) / activations.std(0), 3)
    bias = np.round(rng.normal(size=k), 2)
    logits = inputs @ head.T + bias
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    labels = np.arange(n) % k
    metrics = {
        "test": {"top1": 0.75, "top5": 1.0, "mean_per_class": 0.75, "ece": 0.081, "nll": 0.71, "images": n,
                 "l0_mean": 8.5, "nec": 2.0, "concept_precision@5": 0.8},
        "val": {"top1": 0.7, "top5": 1.0, "mean_per_class": 0.7, "ece": 0.1, "nll": 0.8, "images": 8},
        "dense": {"test": {"top1": 0.8, "top5": 1.0, "mean_per_class": 0.8, "ece": 0.12, "nll": 0.6}},
        "sparse": {"nec": 2, "test": {"top1": 0.75, "top5": 1.0, "mean_per_class": 0.75, "ece": 0.081, "nll": 0.71}},
        "nec_accuracy": {"5": 0.75, "10": 0.8}, "anec": 0.775, "best_epoch": 12, "epochs_run": 40,
        "cbl_change": 0.31}
    summary = {"run": "runs/sample", "method": "gumbel (paper, τ=1)", "metrics": metrics,
               "train_config": {"loss": "gumbel", "head": "sparse", "nec": 2, "lr": 0.001, "hard": False,
                                "epochs": 1000, "seed": 0, "device": "auto"},
               "backbone": {"backbone_model": "demo", "backbone_pretrained": "shipped"},
               "concept_set": {"name": "demo", "size": c, "source": "builtin:demo"},
               "dataset": {"dataset_name": "w", "val_fraction": 0.1}}
    paths = [f"images/{classes[label].split()[0]}_{i:04d}.jpg" for i, label in enumerate(labels)]
    faithful = np.round(np.linspace(0.95, 0.55, c), 3)
    faithful[concepts.index("wavy pattern")] = 0.31  # the one unit no class uses: below the cutoff
    truth = np.zeros((n, c), bool)
    truth[:, 0] = labels % 2 == 0  # ground truth for "red" only
    units = UnitsReport("runs/sample", "test", n, 0.5, "sparse", build_units(
        concepts, classes, activations, scores, head, labels, paths, faithful, 0.5, truth, 4))
    return InspectData("sample — gumbel (paper, τ=1), sparse head, NEC 2", Path("runs/sample"), "run", concepts,
                       classes, {"head": head, "head × CBL (on ψ)": np.round(head * 0.1, 3)}, paths=paths,
                       labels=labels, predicted=logits.argmax(1), confidence=probabilities.max(1),
                       activations=activations, scores=scores, head=head, inputs=inputs, head_kind="sparse",
                       summary=summary, biases={"head": bias}, units=units)


def test_names_use_the_width_there_is():
    data = sample_data()

    async def steps(pilot, app):
        await pilot.press("down", "down", "down")  # the long class (classes sorted by name)
        await pilot.pause()
        return app.screen.view.label_width, await settled_text(pilot, app)

    wide_label, wide = drive(data, steps, size=(200, 30))
    narrow_label, narrow = drive(data, steps, size=(80, 30))
    assert LONG_CLASS in wide and wide_label > len(LONG_CLASS)       # room: every name whole
    assert "…" not in wide and "background" in wide  # concept headers whole too (over two lines at most)
    assert narrow_label < len(LONG_CLASS) and LONG_CLASS not in narrow
    rows = [line[:narrow_label] for line in narrow.splitlines()]
    assert any(row.startswith("scarlet") and row.rstrip().endswith("…") for row in rows)
    assert any(row.rstrip() == "amber sandstrider" for row in rows)  # names that fit stay whole
    panel = " ".join(line.split("│", 1)[1] for line in narrow.splitlines() if "│" in line)
    assert LONG_CLASS in " ".join(panel.split()), "the side panel shows the selected class's full name"


def test_help_never_breaks_a_phrase_at_80_columns():
    async def steps(pilot, app):
        await pilot.press("question_mark")
        await pilot.pause()
        return await settled_text(pilot, app)

    text = drive(sample_data(), steps, size=(80, 45))
    for _, keys in HELP:
        for key, action in keys:
            assert any(key in line and action in line for line in text.splitlines()), action


def test_summary_is_tables_not_python_reprs(runs):
    async def steps(pilot, app):
        await pilot.press("3")
        await pilot.pause()
        return await settled_text(pilot, app)

    text = drive(load(runs["sparse"]), steps, size=(120, 120))
    for reprs in ("{'", "':", "[{", "True", "None"):
        assert reprs not in text
    for heading in ("results on the test split", "both heads", "sparse head by NEC", "the run's head",
                    "configuration", "backbone", "concept set", "dataset", "ANEC"):
        assert heading in text
    metrics = json.loads((runs["sparse"] / "metrics.json").read_text())
    assert f"{100 * metrics['dense']['test']['top1']:.2f} %" in text  # the dense head's test top-1
    nec = metrics["sparse"]["nec"]
    assert isinstance(nec, float) and nec.is_integer()  # measured, written as a float ...
    assert f"sparse NEC {int(nec)} *" in text and f"NEC {nec}" not in text  # ... shown as the budget it is


def snapshot_facts(name: str, data: InspectData) -> list[str]:
    """Text each snapshot screen must hold, computed from the hand-made data: the matrix's counts and the
    selected class's weights and bias, the selected image's logit (inputs · head + bias), the summary's
    percentages, each unit's faithfulness."""
    k, c = len(data.classes), len(data.concepts)
    used = int((data.head != 0).any(axis=0).sum())
    by_name = sorted(range(k), key=lambda i: data.classes[i])
    bias = data.biases["head"]

    def weights(row):
        return [f"{data.concepts[j]} {data.head[row, j]:+.3f}" for j in np.flatnonzero(data.head[row])]

    def logit(image):
        predicted = int(data.predicted[image])
        return f"logit {data.inputs[image] @ data.head[predicted] + bias[predicted]:+.3f}"

    accuracy = float((data.predicted == data.labels).mean())
    test = data.summary["metrics"]["test"]
    return {
        "matrix-120x30": [f"{k} classes × {used} of {c} concepts", f"{c - used} all-zero hidden",
                          *weights(by_name[0]), f"bias {bias[by_name[0]]:+.3f}"],
        "matrix-all-80x24": [f"{k} classes × {c} concepts", f"{c - used} all-zero (z hides)", *weights(by_name[3])],
        "images-120x30": [f"{len(data.labels)} of {len(data.labels)} images", f"accuracy {accuracy:.3f}", logit(1)],
        "images-80x30": [logit(0)],
        "summary-100x50": [f"{100 * test[key]:.2f} %" for key in ("top1", "top5", "mean_per_class")]
                          + [f"ANEC {100 * data.summary['metrics']['anec']:.2f} %"],
        "help-80x40": [],  # every key and action: test_help_never_breaks_a_phrase_at_80_columns
        "concepts-120x30": [f"{c} concept units"] + [
            f"{unit.concept} {unit.faithfulness:.2f} {unit.classes_using}" for unit in data.units.units],
    }[name]


SNAPSHOT_SCREENS = {  # name: (keys, size)
    "matrix-120x30": ([], (120, 30)),
    "matrix-all-80x24": (["z", "down", "down", "down"], (80, 24)),
    "images-120x30": (["2", "down"], (120, 30)),
    "images-80x30": (["2"], (80, 30)),
    "summary-100x50": (["3"], (100, 50)),
    "help-80x40": (["question_mark"], (80, 40)),
    "concepts-120x30": (["4", "down"], (120, 30)),
}


@pytest.mark.parametrize("name", SNAPSHOT_SCREENS)
def test_snapshots(name):
    keys, size = SNAPSHOT_SCREENS[name]

    async def steps(pilot, app):
        if keys:
            await pilot.press(*keys)
        await pilot.pause()
        return await settled_text(pilot, app)

    data = sample_data()
    text = drive(data, steps, size=size)
    # what the screen must show whatever the layout, computed from the data (not read off the snapshot)
    width, height = size
    assert text.count("\n") <= height and max(cell_len(line) for line in text.splitlines()) <= width
    flat = " ".join(text.split())
    for fact in snapshot_facts(name, data):
        assert fact in flat, (name, fact)
    snapshot = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("UPDATE_SNAPSHOTS"):
        snapshot.write_text(text, encoding="utf-8")
    assert snapshot.exists(), f"no snapshot {snapshot}; create it with UPDATE_SNAPSHOTS=1"
    expected = snapshot.read_text(encoding="utf-8")
    diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), "snapshot", "now"))
    assert text == expected, (f"the {name} screen changed (UPDATE_SNAPSHOTS=1 python -m pytest "
                              f"tests/test_tui.py updates it if intended):\n{diff}")
