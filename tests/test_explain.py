import io
import json
from pathlib import Path

import pytest
import torch
from makers import make_cub, make_synthetic_cache

from cbmctl.errors import CbmctlError
from cbmctl.explain import Explainer, cms_explain
from cbmctl.spec import TrainConfig
from cbmctl.training import prepare_data, train_cbm

CONCEPTS = ["red", "green", "striped pattern", "star shape", "grass background", "small size"]


@pytest.fixture(scope="module", params=["sparse", "dense"])
def explainer(request, tmp_path_factory):
    from cbmctl.cache import open_cache
    from cbmctl.concepts import ConceptSet
    cache = make_synthetic_cache(tmp_path_factory.mktemp("x") / "c.h5", CONCEPTS)
    data = prepare_data(open_cache(cache), ConceptSet("s", CONCEPTS, "test"))
    result = train_cbm(data, TrainConfig(epochs=15, device="cpu", batch_size=64, head=request.param, nec=2))
    return Explainer(result.model, CONCEPTS, data.classes, data.concept_vectors, data.class_vectors,
                     data.logit_scale), data


def test_zeroing_a_concept_changes_the_logits_by_exactly_its_contribution(explainer):
    explainer, data = explainer
    model = explainer.model
    features = data.features["test"][:20]
    before_a, before_logits, after_a, after_logits = explainer.intervene(features, {}, ["striped pattern"])
    j = CONCEPTS.index("striped pattern")
    weight = model.class_concept_weights()
    inputs = model.head_inputs(before_a)
    removed = inputs[:, j:j + 1] * weight[:, j][None, :]
    assert torch.allclose(after_logits, before_logits - removed, atol=1e-5)
    assert removed.abs().max() > 1e-3  # the concept did contribute something
    _, _, set_a, set_logits = explainer.intervene(features, {"red": 2.5}, [])
    k = CONCEPTS.index("red")
    delta = (2.5 - before_a[:, k:k + 1]) / model.activation_std[k] * weight[:, k][None, :]
    assert torch.allclose(set_logits, before_logits + delta, atol=1e-4) and (set_a[:, k] == 2.5).all()
    edited = explainer.without_concepts(["striped pattern"])
    assert torch.allclose(edited(explainer.scores(features))[1], before_logits - removed, atol=1e-5)
    with pytest.raises(CbmctlError, match="must be a finite number"):
        explainer.intervene(features, {"red": float("nan")}, [])
    with pytest.raises(CbmctlError, match="must be a finite number"):
        explainer.intervene(features, {"red": 1e308}, [])


def test_explanation_contributions_sum_to_the_logit(explainer):
    explainer, data = explainer
    model = explainer.model
    features = data.features["test"][:3]
    results = explainer.explain(features, ["a", "b", "c"], top_k=4)
    _, activations, logits = explainer.forward(features)
    inputs = model.head_inputs(activations)
    weight = model.class_concept_weights()
    for i, result in enumerate(results):
        assert result.predicted == data.classes[int(logits[i].argmax())] and result.head == model.head_kind
        c = data.classes.index(result.explained_class)
        contributions = [row.contribution for row in result.concepts]
        assert contributions == sorted(contributions, reverse=True)
        if model.head_kind == "sparse":
            # exactly the concepts the class's row uses, however many top_k would allow
            used = {CONCEPTS[j] for j in (weight[c] != 0).nonzero().flatten().tolist()}
            assert {row.concept for row in result.concepts} == used and len(used) <= 4
        else:
            assert len(contributions) == 4
        for row in result.concepts:
            assert row.contribution == pytest.approx(row.head_input * row.weight, rel=1e-5, abs=1e-7)
        # every concept's contribution to the explained class, plus its bias, is its logit; what top_k left
        # out is accounted for in `unlisted`
        total = float((inputs[i] * weight[c]).sum()) + result.bias
        assert total == pytest.approx(result.logit, abs=1e-4)
        shown = sum(row.contribution for row in result.concepts)
        assert shown + result.unlisted + result.bias == pytest.approx(result.logit, abs=1e-4)
    other = explainer.explain(features, ["a", "b", "c"], class_name="class 3")
    assert all(r.explained_class == "class 3" for r in other)


def test_the_text_table_marks_evidence_from_absence_as_the_png_does(explainer):
    from rich.console import Console

    from cbmctl.render import explanation_table
    explainer, data = explainer
    results = explainer.explain(data.features["test"][:20], [str(i) for i in range(20)], top_k=6)
    marked = 0
    for result in results:
        console = Console(width=200, record=True, file=io.StringIO())
        console.print(explanation_table(result))
        lines = console.export_text().splitlines()
        for row in result.concepts:
            line = next(line for line in lines if line.strip().startswith(row.concept))
            below_mean = result.head == "sparse" and row.head_input < 0
            assert ("(absent)" in line) == below_mean, line
            marked += below_mean
    if explainer.model.head_kind == "sparse":
        assert marked > 0  # the case occurs on these images, so the check above is not vacuous


def test_cms_explanation_ranks_concepts_by_similarity():
    concepts = ["x", "y", "z"]
    features = torch.tensor([[0.9, 0.1, 0.3]])
    results = cms_explain(features, ["img"], concepts, ["a", "b"], torch.eye(3), torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]),
                          100.0, top_k=2)
    assert [r.concept for r in results[0].concepts] == ["x", "z"] and results[0].predicted == "a"


@pytest.fixture
def trained_run(cli, tmp_path, tiny_model):
    cub = make_cub(tmp_path / "data")
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("red wings\nblue feathers\nlong beak\nwhite belly\n")
    runs = tmp_path / "runs"
    result = cli("train", cub, "--model", tiny_model, "--pretrained", "none", "--device", "cpu", "--concepts",
                 concepts, "--epochs", "5", "--out", runs, "--quiet", "--cache", tmp_path / "c.h5")
    assert result.exit_code == 0, result.output
    return cub, runs


def test_explain_command_json_and_bad_images(cli, trained_run, tmp_path):
    cub, runs = trained_run
    images = sorted(str(p) for p in (cub / "images").rglob("*.jpg"))[:2]
    (tmp_path / "notes.jpg").write_text("not an image")
    png = tmp_path / "explained.png"
    result = cli("explain", images[0], tmp_path / "missing.jpg", tmp_path / "notes.jpg", images[1],
                 "--runs-root", runs, "--json", "--png", png, "--top-k", "3", "--device", "cpu")
    assert result.exit_code == 1  # two images failed, the other two were still explained
    payload = json.loads(result.stdout)
    assert payload["method"] == "cbm" and Path(payload["run"]).name.endswith("-gumbel")
    assert [e["image"] for e in payload["explanations"]] == images
    first = payload["explanations"][0]
    assert set(first) >= {"image", "predicted", "probability", "top_classes", "explained_class", "concepts"}
    assert set(first["concepts"][0]) == {"concept", "activation", "head_input", "weight", "contribution", "score"}
    assert len(first["concepts"]) == 3
    assert {e["image"]: e["error"] for e in payload["errors"]} == {
        str(tmp_path / "missing.jpg"): "file not found", str(tmp_path / "notes.jpg"): "not an image"}
    assert png.is_file() and png.stat().st_size > 5000
    for empty in ("", "  "):  # an empty --class is a mistake, not a request for the predicted class
        refused = cli("explain", images[0], "--runs-root", runs, "--class", empty)
        assert refused.exit_code == 2 and "--class needs a class name" in refused.output


def test_explain_interventions_and_edited_runs(cli, trained_run, tmp_path):
    cub, runs = trained_run
    image = sorted(str(p) for p in (cub / "images").rglob("*.jpg"))[0]
    result = cli("explain", image, "--runs-root", runs, "--zero", "long beak", "--set", "red wings=3", "--json",
                 "--device", "cpu")
    explanation = json.loads(result.stdout)["explanations"][0]
    assert explanation["intervention"]["zero"] == ["long beak"] and explanation["intervention"]["set"] == {
        "red wings": 3.0}
    table = cli("explain", image, "--runs-root", runs, "--zero", "long beak", "--device", "cpu")
    assert "intervention: before → after" in table.output
    bad = cli("explain", image, "--runs-root", runs, "--zero", "purple tail", "--device", "cpu")
    assert bad.exit_code == 1 and "'purple tail' is not in the run's concept set" in bad.output
    edited = tmp_path / "edited"
    saved = cli("explain", "--runs-root", runs, "--save-edited", edited, "--zero", "long beak")
    assert saved.exit_code == 0, saved.output
    scored = cli("train", "--evaluate", edited, "--device", "cpu", "--json")
    assert scored.exit_code == 0, scored.output
    metrics = json.loads(scored.stdout)
    assert metrics["evaluated"]["edited"]["removed_concepts"] == ["long beak"]
    from cbmctl.runs import load_model
    model, _ = load_model(edited)
    assert float(model.head.weight.detach()[:, 2].abs().sum()) == 0.0


def test_explain_without_any_run_uses_cms(cli, tmp_path, tiny_model):
    cub = make_cub(tmp_path / "data")
    image = sorted(str(p) for p in (cub / "images").rglob("*.jpg"))[0]
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("red wings\nblue feathers\nlong beak\n")
    classes = tmp_path / "classes.txt"
    classes.write_text("albatross\ngull\n")
    result = cli("explain", image, "--runs-root", tmp_path / "no-runs", "--model", tiny_model, "--pretrained", "none",
                 "--concepts", concepts, "--classes", classes, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["method"] == "cms" and payload["explanations"][0]["predicted"] in ("albatross", "gull")


def test_explain_without_a_run_says_what_it_explains_with(cli, tmp_path):
    cub = make_cub(tmp_path / "data")
    image = sorted(str(p) for p in (cub / "images").rglob("*.jpg"))[0]
    result = cli("explain", image, "--runs-root", tmp_path / "no-runs", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "no run under" in result.stderr
    assert "Concept Matrix Search with backbone demo (shipped), concept set demo (33 concepts) and 30 classes (the " \
           "set's own)" in result.stderr  # what it explains with, said by the library that decided it
    assert json.loads(result.stdout)["method"] == "cms"


def test_cms_on_a_run_uses_the_class_prompts_of_its_cache(cli, tmp_path, tiny_model):
    from cbmctl.backbones import load_backbone
    from cbmctl.explain import embed_images, explain_with_cms
    cub = make_cub(tmp_path / "data")
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("red wings\nblue feathers\nlong beak\nwhite belly\n")
    cache = tmp_path / "c.h5"
    template = "a blurry sketch of the {}, a kind of bird."
    common = ("--model", tiny_model, "--pretrained", "none", "--device", "cpu", "--cache", cache)
    assert cli("embed", cub, *common, "--template", template, "--workers", "0", "-q").exit_code == 0
    result = cli("train", cache, "--device", "cpu", "--concepts", concepts, "--epochs", "2", "--out", tmp_path / "runs",
                 "-q")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "latest"
    images = sorted(str(p) for p in (cub / "images").rglob("*.jpg"))[:3]
    said = []
    explained = explain_with_cms(images, run, device="cpu", top_k=2, log=said.append)
    explainer = Explainer.from_run(run)
    # what it borrowed from the run, said in one line
    assert said == [f"Concept Matrix Search with run {run.resolve().name}'s backbone {tiny_model} (none), its 4 "
                    f"concepts and {len(explainer.classes)} classes"]
    backbone = load_backbone(tiny_model, "none", "cpu")
    features, names, _ = embed_images(backbone, images)
    assert torch.allclose(explainer.class_vectors, backbone.encode_prompts(explainer.classes, [template]), atol=1e-5)
    expected = cms_explain(features, names, explainer.concepts, explainer.classes, explainer.concept_vectors,
                           explainer.class_vectors, backbone.logit_scale, top_k=2)
    assert [r.as_dict() for r in explained.results] == [r.as_dict() for r in expected]
    # CMS options never silently lose to a run: on --run they are refused, beside a run they make a CMS of their own
    refused = cli("explain", images[0], "--cms", "--run", run, "--classes", "/nonexistent.txt")
    assert refused.exit_code == 2 and "drop --classes, or --run" in refused.output
    without_cms = cli("explain", images[0], "--runs-root", tmp_path / "runs", "--concepts", concepts)
    assert without_cms.exit_code == 2 and "--concepts chooses what --cms explains with: add --cms, or drop it " \
        "to explain with the run" in without_cms.output
    own = cli("explain", images[0], "--cms", "--runs-root", tmp_path / "runs", "--model", tiny_model, "--pretrained",
              "none", "--concepts", concepts, "--classes", cub / "classes.txt", "--device", "cpu", "--json")
    assert own.exit_code == 0 and json.loads(own.stdout)["run"] is None, own.output
    assert f"Concept Matrix Search with backbone {tiny_model} (none), concept set concepts (4 concepts)" in own.stderr


def test_predicted_class_leads_the_top_classes_when_classes_tie():
    """Classes whose names the CLIP cannot tell apart have identical text vectors, so the same probability:
    the top-classes list must break the tie as the prediction does, or it names another class first."""
    concepts = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    twin = torch.nn.functional.normalize(torch.randn(8, generator=torch.Generator().manual_seed(1)), dim=0)
    classes = torch.stack([-twin] + [twin] * 8)  # eight identical classes after a different one
    features = twin[None]
    (result,) = cms_explain(features, ["x.jpg"], list("abcd"), [f"class {k}" for k in range(9)], concepts, classes,
                            100.0, top_k=2, top_classes=3)
    assert result.predicted == "class 1"
    assert [name for name, _ in result.top_classes] == ["class 1", "class 2", "class 3"]


def test_explanation_png_keeps_long_names_inside_the_figure(tmp_path, monkeypatch):
    from cbmctl import render
    from cbmctl.explain import ConceptRow, Explanation
    assert render.fit_label("a" * 70, 28).split("\n") == ["a" * 28, "a" * 27 + "…"]
    assert render.fit_label("cost $5\x1b", 28) == r"cost \$5\x1b"  # escaped, as every figure label is
    drawn = []
    monkeypatch.setattr(render, "_save", lambda figure, *args, **kwargs: drawn.append(figure))
    name = tmp_path / ("Black_Dotted_Square_Warbler_" * 2 + "0007.jpg")  # not there: "(no image)" is drawn
    rows = [ConceptRow("pink", -4.2, -0.9, 3.1, -5.7, -3.3), ConceptRow("plain square on sand", -16.7, 0.9, 0.2, -7.8, 0.2)]
    render.explanation_figure([Explanation(str(name), "cbm", "black dotted square warbler of the long name", 0.5,
                                           [], "black dotted square warbler", rows, head="sparse")], tmp_path / "x.png")
    (figure,) = drawn
    renderer = figure.canvas.get_renderer()
    figure.tight_layout()
    frame = figure.bbox
    for axis in figure.axes:
        extent = axis.title.get_window_extent(renderer)
        assert frame.x0 <= extent.x0 and extent.x1 <= frame.x1 and extent.y1 <= frame.y1, axis.title.get_text()
    import matplotlib.pyplot as plt
    plt.close(figure)
