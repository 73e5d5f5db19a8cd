import json
import time

import pytest
import torch
from makers import picture

from cbmctl.backbones import load_backbone
from cbmctl.errors import CbmctlError


def _seed_hf_cache(hub_dir, repo_id, files: dict):
    """Lay files out as huggingface_hub's cache does: models--org--name/snapshots/<rev>/ + refs/main."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for name, writer in files.items():
        writer(snapshot / name)
    return snapshot


def test_tiny_config_encodes_normalised_embeddings(tiny_backbone):
    texts = tiny_backbone.encode_texts(["a red bird", "a blue bird", "a red bird"])
    assert texts.shape == (3, 32)
    assert torch.allclose(texts.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(texts[0], texts[2]) and not torch.equal(texts[0], texts[1])
    pixels = torch.stack([tiny_backbone.preprocess(picture(0, i)) for i in range(2)])
    images = tiny_backbone.encode_images(pixels)
    assert images.shape == (2, 32) and torch.allclose(images.norm(dim=1), torch.ones(2), atol=1e-5)
    assert tiny_backbone.embed_dim == 32 and tiny_backbone.preprocess_cfg["size"] in (32, [32, 32])


def test_random_weights_are_the_same_in_every_load(tiny_model, tiny_backbone):
    again = load_backbone(tiny_model, "none", "cpu")
    assert again.weights_sha256 == tiny_backbone.weights_sha256
    assert torch.equal(again.encode_texts(["x"]), tiny_backbone.encode_texts(["x"]))


def test_missing_zoo_weights_fail_fast_offline_with_the_fix():
    started = time.perf_counter()
    with pytest.raises(CbmctlError) as error:
        load_backbone("ViT-B-32", "laion2b_s34b_b79k", "cpu")
    assert time.perf_counter() - started < 10  # the contract is ~1 s; generous for a loaded CI machine
    message = str(error.value)
    assert "\n" not in message
    assert "HF_HUB_OFFLINE is set" in message and "`pretrained` /path/to/weights" in message  # the CLI shows it as --pretrained
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in message


def test_zoo_tag_seeded_by_hand_in_the_hf_cache_loads_offline(isolated_home):
    import open_clip
    from safetensors.torch import save_file
    torch.manual_seed(3)
    reference = open_clip.create_model("RN50", force_quick_gelu=True)
    state = {k: v.half().contiguous() for k, v in reference.state_dict().items()}
    _seed_hf_cache(isolated_home / "hf" / "hub", "timm/resnet50_clip.openai",
                   {"open_clip_model.safetensors": lambda path: save_file(state, str(path))})
    backbone = load_backbone("RN50", "openai", "cpu")
    loaded = backbone.model.state_dict()
    assert torch.equal(loaded["visual.conv1.weight"], state["visual.conv1.weight"].float())
    assert backbone.preprocess_cfg["interpolation"] == "bicubic"
    assert backbone.weights_sha256 != load_backbone("RN50", "none", "cpu").weights_sha256


def test_hf_hub_repo_seeded_in_the_cache_loads_offline(isolated_home, tiny_model, tiny_backbone):
    from safetensors.torch import save_file
    config = {"model_cfg": json.loads(open(tiny_model).read()), "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    state = {k: v.contiguous() for k, v in tiny_backbone.model.state_dict().items()}
    _seed_hf_cache(isolated_home / "hf" / "hub", "someone/tiny-clip", {
        "open_clip_config.json": lambda p: p.write_text(json.dumps(config)),
        "open_clip_model.safetensors": lambda p: save_file(state, str(p)),
    })
    backbone = load_backbone("hf-hub:someone/tiny-clip", None, "cpu")
    assert backbone.preprocess_cfg["mean"] == [0.5, 0.5, 0.5]
    assert torch.allclose(backbone.encode_texts(["a bird"]), tiny_backbone.encode_texts(["a bird"]), atol=1e-6)
    with pytest.raises(CbmctlError, match="hf-hub:someone/missing is not in the HF cache"):
        load_backbone("hf-hub:someone/missing", None, "cpu")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_weight_files(tmp_path, tiny_model, tiny_backbone, suffix):
    from safetensors.torch import save_file
    state = {k: (v * 0.5 if v.is_floating_point() else v).contiguous() for k, v in tiny_backbone.model.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    backbone = load_backbone(tiny_model, str(path), "cpu")
    assert torch.equal(backbone.model.state_dict()["text_projection"], state["text_projection"])
    assert backbone.source.endswith(str(path)) and backbone.source.startswith("config:")


def test_wrong_architecture_checkpoint_is_a_clear_error(tmp_path, tiny_backbone):
    import open_clip
    path = tmp_path / "rn50.pt"
    torch.save(open_clip.create_model("RN50").state_dict(), path)
    with pytest.raises(CbmctlError, match=r"does not fit architecture .*tiny-clip"):
        load_backbone(str(tiny_backbone_config()), str(path), "cpu")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not weights at all")
    with pytest.raises(CbmctlError, match="cannot read weights"):
        load_backbone(str(tiny_backbone_config()), str(garbage), "cpu")


def tiny_backbone_config():
    from conftest import TINY_MODEL
    return TINY_MODEL


def test_unknown_model_and_tag():
    with pytest.raises(CbmctlError, match="unknown model 'ViT-Q-99'"):
        load_backbone("ViT-Q-99", None, "cpu")
    with pytest.raises(CbmctlError, match="neither a tag of ViT-B-32"):
        load_backbone("ViT-B-32", "not-a-tag", "cpu")


def test_models_command_lists_zoo_and_demo(cli):
    result = cli("models", "--json")
    models = json.loads(result.stdout)
    assert "openai" in models["ViT-L-14"] and "demo" in models
    assert cli("embed", "--list-models").output.count("\n") == len(models)


def test_missing_weights_are_diagnosed_before_torch_is_imported(tmp_path):
    import subprocess
    import sys
    code = ("import sys\nfrom cbmctl.backbones import check_weights_reachable\nfrom cbmctl.errors import CbmctlError\n"
            "try:\n    check_weights_reachable('ViT-B-32', 'laion2b_s34b_b79k')\nexcept CbmctlError as e:\n"
            "    print('ERROR', e)\nprint('torch' in sys.modules, 'open_clip' in sys.modules)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = run.stdout.strip().splitlines()
    assert lines[0].startswith("ERROR ViT-B-32/laion2b_s34b_b79k is not in the HF cache") and lines[-1] == "False False"
    hub = subprocess.run([sys.executable, "-c", code.replace("'ViT-B-32', 'laion2b_s34b_b79k'", "'hf-hub:org/none', None")],
                         capture_output=True, text=True, timeout=60).stdout.strip().splitlines()
    assert hub[0].startswith("ERROR hf-hub:org/none is not in the HF cache") and hub[-1] == "False False"


def test_tag_index_agrees_with_the_installed_open_clip_and_a_stale_one_is_ignored(tmp_path):
    """The index cbmctl reads before importing open_clip (the shipped one when it is this open_clip's, else
    one written under $CBMCTL_HOME) names, for every zoo tag, what open_clip's own registry names; an index
    of another open_clip version is never read. Checked against open_clip itself, so it holds across
    open_clip upgrades."""
    import importlib.metadata

    import open_clip
    from open_clip.pretrained import HF_WEIGHTS_NAME

    from cbmctl.backbones.hub import _tag_index_paths, ensure_tag_index, known_zoo, read_index, write_tag_index
    installed = importlib.metadata.version("open_clip_torch")
    ensure_tag_index()
    index = read_index()
    assert index is not None and index["open_clip"] == installed
    registry = open_clip.list_pretrained()
    assert sorted((m, t) for m, tags in index["tags"].items() for t in tags) == sorted(registry)
    for name, tag in registry:
        cfg, entry = open_clip.get_pretrained_cfg(name, tag), index["tags"][name][tag]
        assert entry["url"] == cfg.get("url", ""), (name, tag)
        if cfg.get("hf_hub"):
            repo, _, file = cfg["hf_hub"].rpartition("/")  # "org/repo/" (the default file) or "org/repo/file"
            assert entry["repo"] == repo and (file or HF_WEIGHTS_NAME) in entry["files"], (name, tag)
    assert {name for name, _ in registry} <= known_zoo() <= set(open_clip.list_models())
    home, shipped = _tag_index_paths()
    fresh = tmp_path / "tags.json"
    write_tag_index(fresh)
    payload = json.loads(shipped.read_text())
    if payload["open_clip"] == installed:  # the shipped copy, when it claims this open_clip, is its registry
        assert payload == json.loads(fresh.read_text())
    stale = {**payload, "open_clip": "0.0.0", "tags": {"ViT-B-32": {"stale": {"url": "https://example.invalid/x"}}}}
    home.parent.mkdir(parents=True, exist_ok=True)
    home.write_text(json.dumps(stale))
    now = read_index()
    assert now is None or (now["open_clip"] == installed and "stale" not in now["tags"]["ViT-B-32"])
