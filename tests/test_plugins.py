"""Plug-ins and names: a third party's model through the backbone registry, the one model-name parser, ground
truth only where the dataset brings it, and the demo declared as a plug-in in pyproject.toml."""
import importlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cbmctl.backbones import (
    BackboneProvider,
    ModelKind,
    ShippedModel,
    backbone_request,
    load_backbone,
    meaningless_backbone,
    parse_model_name,
    parse_weights,
    register_backbone,
    unregister_backbone,
)
from cbmctl.backbones.model_names import WeightsKind
from cbmctl.concept_truth import truth_matrix
from cbmctl.errors import CbmctlError

ROOT = Path(__file__).parent.parent


@pytest.fixture
def acme(tmp_path, tiny_model, tiny_backbone):
    """A third party's model 'acme-tiny': its own open_clip config and shipped weights, registered by hand as
    its entry point would."""
    from safetensors.torch import save_file
    config = tmp_path / "acme-tiny.json"
    shutil.copy(tiny_model, config)
    weights = tmp_path / "acme-tiny.safetensors"
    save_file({k: (v * 0.5 if v.is_floating_point() else v).contiguous()
               for k, v in tiny_backbone.model.state_dict().items()}, str(weights))
    register_backbone(BackboneProvider("acme-tiny", lambda name: ShippedModel(config, weights), label="the acme CLIP",
                                       knows=lambda classes: set(classes) <= {"anvil", "rocket"},
                                       domain="the acme catalogue"))
    yield weights
    unregister_backbone("acme-tiny")


def test_a_third_party_model_loads_by_its_registered_name(acme):
    from cbmctl.backbones.weights import sha256_file
    backbone = load_backbone("acme-tiny", None, "cpu")
    assert (backbone.name, backbone.pretrained) == ("acme-tiny", "shipped")
    assert backbone.weights_sha256 == sha256_file(acme) == backbone_request("acme-tiny", None).weights_sha256
    assert torch.allclose(backbone.encode_texts(["a rocket"]).norm(dim=1), torch.ones(1), atol=1e-5)
    random = load_backbone("acme-tiny", "none", "cpu")
    assert random.weights_sha256 != backbone.weights_sha256 and random.pretrained == "none"
    with pytest.raises(CbmctlError, match="for the acme CLIP: leave it out"):
        backbone_request("acme-tiny", "laion2b")
    assert meaningless_backbone("acme-tiny", "shipped", ["anvil"]) is None
    assert "the acme CLIP knows only the acme catalogue, not birds" in meaningless_backbone(
        "acme-tiny", "shipped", ["albatross"], "birds")


def test_the_parser_decides_each_kind_once(acme, tiny_model, tmp_path):
    assert parse_model_name("hf-hub:org/repo").kind is ModelKind.HF_HUB
    assert parse_model_name("hf-hub:org/repo/").target == "org/repo"
    assert parse_model_name(tiny_model).kind is ModelKind.CONFIG
    zoo = {"ViT-B-32"}
    assert parse_model_name("ViT-B-32", zoo).kind is ModelKind.ZOO
    assert parse_model_name(None, {"ViT-L-14"}).text == "ViT-L-14"  # the default model
    plugin = parse_model_name("acme-tiny", zoo)
    assert plugin.kind is ModelKind.PLUGIN and plugin.provider.label == "the acme CLIP"
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    zoo_model = parse_model_name("ViT-B-32", zoo)
    assert parse_weights(str(weights), zoo_model).kind is WeightsKind.FILE
    assert parse_weights("laion2b_s34b_b79k", zoo_model).kind is WeightsKind.TAG
    assert parse_weights("none", zoo_model).kind is WeightsKind.RANDOM
    assert parse_weights(None, zoo_model).kind is WeightsKind.DEFAULT
    assert parse_weights(None, plugin).kind is WeightsKind.SHIPPED
    assert parse_weights(None, parse_model_name("hf-hub:org/repo")).kind is WeightsKind.HUB


@pytest.mark.parametrize("name, message", [
    (" ", "is not a model name"), ("ViT-B-32\x1b[2J", "is not a model name"), ("x" * 2000, "is not a model name"),
    ("hf-hub:", "hf-hub:ORG/REPO"), ("hf-hub:a/b/c", "hf-hub:ORG/REPO"), ("missing/model.json", "no such model config"),
    ("ViT-Q-99", "unknown model 'ViT-Q-99'")])
def test_the_parser_refuses_garbage_in_one_line(name, message):
    with pytest.raises(CbmctlError, match=message) as error:
        parse_model_name(name, {"ViT-B-32"})
    assert "\n" not in str(error.value) and "\x1b" not in str(error.value)


def test_weights_names_that_cannot_be_are_refused():
    zoo_model = parse_model_name("ViT-B-32", {"ViT-B-32"})
    with pytest.raises(CbmctlError, match="no such weights file"):
        parse_weights("gone/weights.safetensors", zoo_model)
    with pytest.raises(CbmctlError, match="does not apply to hf-hub"):
        parse_weights("openai", parse_model_name("hf-hub:org/repo"))


def test_a_dataset_that_brings_no_ground_truth_has_none(tmp_path):
    from cbmctl.datasets import load_dataset
    from cbmctl.datasets.synthetic import make_cub
    dataset = load_dataset(make_cub(tmp_path / "cub", classes=2, per_class=4))
    names, attributes = dataset.attribute_names, dataset.attributes["train"]
    assert names and len(attributes)
    concepts = ["red", "striped pattern", "small size", "curved bill"]
    assert truth_matrix(names, attributes, concepts) is None  # not the demo's vocabulary: no default
    mapped = truth_matrix(names, attributes, concepts, {"curved bill": [names[0]]})  # its own concept map
    assert mapped is not None and mapped[:, 3].tolist() == attributes[:, 0].astype(bool).tolist()
    # a dataset's own attribute that happens to share a demo value's name does not make it a demo world
    mixed = ["has_color::red", "has_bill_shape::curved"]
    assert truth_matrix(mixed, np.array([[1, 0], [0, 1]]), ["red", "red star"]) is None
    demo_names = ["has_color::red", "has_shape::star"]  # a demo world's annotations read themselves
    demo_truth = truth_matrix(demo_names, np.array([[1, 1], [1, 0]]), ["red star", "red", "hexagon"])
    assert demo_truth.tolist() == [[True, True, False], [False, True, False]]


def test_pyproject_declares_the_demo_as_a_plug_in():
    """The entry points the installed metadata will carry: each names a function that registers the demo."""
    tomllib = pytest.importorskip("tomllib")
    from cbmctl.backbones.registry import _PROVIDERS
    from cbmctl.concept_truth import _VOCABULARIES
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    for group, registry, name in (("cbmctl.backbones", _PROVIDERS, "demo"),
                                  ("cbmctl.ground_truth", _VOCABULARIES, "demo world")):
        module, _, function = groups[group]["demo"].partition(":")
        saved = registry.pop(name, None)
        try:
            getattr(importlib.import_module(module), function)()
            assert name in registry
        finally:
            registry.pop(name, None)
            if saved is not None:
                registry[name] = saved


def test_hub_names_that_read_as_paths_and_unprintable_plugin_names_are_refused():
    from cbmctl.backbones.model_names import parse_model_name
    from cbmctl.backbones.registry import BackboneProvider, register_backbone
    for name in ("hf-hub:../x", "hf-hub:a/..", "hf-hub:./b", "hf-hub:a b/c"):
        with pytest.raises(CbmctlError, match="hf-hub:ORG/REPO"):
            parse_model_name(name)
    assert parse_model_name("hf-hub:org-1/repo.v2_x").kind.name == "HF_HUB"
    with pytest.raises(CbmctlError, match="printable model name"):
        register_backbone(BackboneProvider(name="ev\x1bil", locate=lambda name: None))


def test_a_plug_in_whose_code_raises_is_named_in_one_line_not_a_traceback():
    from cbmctl.concept_truth import AttributeVocabulary, register_vocabulary, unregister_vocabulary

    def broken(*_):
        raise ZeroDivisionError("division by zero\nin acme's code")
    register_backbone(BackboneProvider("acme-broken", broken, knows=broken))
    register_vocabulary(AttributeVocabulary("acme-vocabulary", claims=broken, ways=broken))
    try:
        with pytest.raises(CbmctlError, match=r"^the plug-in 'acme-broken' failed: division by zero$"):
            load_backbone("acme-broken", None, "cpu")
        with pytest.raises(CbmctlError, match=r"^the plug-in 'acme-broken' failed: division by zero$"):
            meaningless_backbone("acme-broken", "shipped", ["anvil"])
        with pytest.raises(CbmctlError, match=r"^the plug-in 'acme-vocabulary' failed: division by zero$"):
            truth_matrix(["acme_sheen::matte"], np.ones((2, 1)), ["matte"])
    finally:
        unregister_backbone("acme-broken")
        unregister_vocabulary("acme-vocabulary")


def test_a_plug_in_that_fails_to_load_is_named_by_models_and_by_the_name_it_would_have_brought(
        cli, tmp_path, monkeypatch):
    import cbmctl.plugins as plugins
    # an installed distribution whose entry point names a module that is not there (a broken install)
    info = tmp_path / "acme_clip-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-clip\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[cbmctl.backbones]\nacme = acme_clip_missing.cbmctl:register\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_loaded", set())
    monkeypatch.setattr(plugins, "_failed", {})
    result = cli("models")
    assert result.exit_code == 0
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert warning == ["warning: plug-ins that failed to load: acme = acme_clip_missing.cbmctl:register: "
                       "No module named 'acme_clip_missing'"]
    assert "demo: (shipped)" in result.stdout.splitlines()  # the others still load
    with pytest.raises(CbmctlError, match="plug-ins that failed to load: acme = acme_clip_missing"):
        parse_model_name("acme-tiny-v2", zoo={"ViT-B-32"})  # a name neither the zoo nor a plug-in serves


def test_a_third_party_vocabulary_that_claims_a_dataset_is_named_as_its_ground_truth(tmp_path):
    from cbmctl.concept_truth import AttributeVocabulary, register_vocabulary, unregister_vocabulary
    from cbmctl.training.data import truth_source
    assert truth_source(["acme_sheen::matte"]) is None  # nobody claims these attributes: no ground truth
    assert truth_source(None) is None
    register_vocabulary(AttributeVocabulary("acme", claims=lambda names: True, ways=lambda concept: [[concept]]))
    try:
        assert truth_source(["acme_sheen::matte"]) == "the acme attribute vocabulary (a plug-in)"
        assert truth_source(["acme_sheen::matte"], tmp_path / "map.yaml") == f"the concept map {tmp_path / 'map.yaml'}"
    finally:
        unregister_vocabulary("acme")
