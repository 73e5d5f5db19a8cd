"""Building a CLIP from a model name and a pretrained name (cbmctl.backbones.model_names reads them): open_clip
builds the architecture, cbmctl finds and loads the weights itself (offline first) and records what a cache
needs to refuse mixing two backbones."""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from cbmctl.backbones.backbone import Backbone, resolve_device
from cbmctl.backbones.hub import check_reachable, ensure_tag_index, hub_model_name, known_zoo, tag_weights
from cbmctl.backbones.model_names import (
    HUB_WEIGHTS,
    RANDOM_WEIGHTS,
    SHIPPED_WEIGHTS,
    ModelKind,
    ModelName,
    WeightsKind,
    WeightsName,
    parse_model_name,
    parse_weights,
    recorded_pretrained,
)
from cbmctl.backbones.registry import ShippedModel, providers
from cbmctl.backbones.weights import load_weights, sha256_file, state_dict_sha256
from cbmctl.errors import CbmctlError
from cbmctl.identity import backbone_difference
from cbmctl.plugins import call_plugin

PREPROCESS_OVERRIDES = (("mean", "image_mean"), ("std", "image_std"), ("interpolation", "image_interpolation"),
                        ("resize_mode", "image_resize_mode"))  # a zoo tag's config key -> open_clip's argument


@dataclass
class _Build:
    """What open_clip is asked to build: its name for the model, the weights file to load (None: random init,
    or the hub repo's own), a zoo tag's config, what a cache records as pretrained, and for a model-config
    file its hash (part of the identity: the same weights under another config differ)."""

    create_name: str
    pretrained: str
    weights_path: str | None = None
    tag_cfg: dict = field(default_factory=dict)
    config_source: str = ""


def register_config(path: Path) -> str:
    """Register an open_clip model-config file with open_clip; the name open_clip then knows it by."""
    import open_clip

    from cbmctl.data_files import MAX_STRUCTURED_BYTES, read_text_capped
    try:
        json.loads(read_text_capped(path, MAX_STRUCTURED_BYTES))
    except (ValueError, RecursionError) as error:
        raise CbmctlError(f"{path}: not a readable open_clip model config ({error})") from None
    open_clip.add_model_config(str(path))
    return path.stem


def shipped_model(model: ModelName) -> ShippedModel:
    """A plug-in model's config and shipped weights, as its provider locates them."""
    return call_plugin(model.provider.name, model.provider.locate, model.text)


def shipped_weights(model: ModelName) -> Path:
    """The weights file a plug-in ships for a model, refused in one line when it ships none or it is gone."""
    weights = shipped_model(model).weights
    if weights is None:
        raise CbmctlError(f"{model.provider.title} ships no weights: pass `pretrained` PATH or `pretrained` none")
    if not Path(weights).is_file():
        raise CbmctlError(f"the weights of {model.provider.title} are missing ({weights}); reinstall the package "
                          "that ships them")
    return Path(weights)


def open_clip_name(model: ModelName) -> str:
    """The name open_clip builds a model by, its config registered with open_clip first where it is a file."""
    import open_clip
    if model.kind is ModelKind.PLUGIN:
        return register_config(Path(shipped_model(model).config))
    if model.kind is ModelKind.CONFIG:
        return register_config(Path(model.target))
    if model.kind is ModelKind.HF_HUB:
        return hub_model_name(model.target)
    if model.target not in open_clip.list_models():
        raise CbmctlError(f"unknown model {model.text!r}: see `cbmctl models` (or pass an open_clip config .json)")
    return model.target


def _plan(model: ModelName, weights: WeightsName) -> _Build:
    import open_clip
    build = _Build(open_clip_name(model), weights.text or "")
    if model.kind is ModelKind.CONFIG:
        build.config_source = f"config:{sha256_file(Path(model.target))[:16]}"
    if weights.kind is WeightsKind.SHIPPED:
        build.weights_path, build.pretrained = str(shipped_weights(model)), SHIPPED_WEIGHTS
    elif weights.kind is WeightsKind.HUB:
        build.pretrained = HUB_WEIGHTS
    elif weights.kind is WeightsKind.RANDOM:
        build.pretrained = RANDOM_WEIGHTS
    elif weights.kind is WeightsKind.FILE:
        build.weights_path = str(weights.path)
    else:  # a zoo tag, given or the model's first
        tags = open_clip.list_pretrained_tags_by_model(build.create_name)
        if weights.kind is WeightsKind.DEFAULT and not tags:
            raise CbmctlError(f"{model.text} has no pretrained tags: pass `pretrained` PATH or `pretrained` none")
        build.pretrained = tags[0] if weights.kind is WeightsKind.DEFAULT else weights.text
        build.tag_cfg = open_clip.get_pretrained_cfg(build.create_name, build.pretrained) or {}
        if not build.tag_cfg:
            raise CbmctlError(f"`pretrained` {build.pretrained!r} is neither a tag of {model.text} "
                              f"({', '.join(tags) or 'none'}) nor a file")
        build.weights_path = tag_weights(build.create_name, build.tag_cfg, build.pretrained)
    return build


def _create(build: _Build, model: ModelName):
    """(model, preprocess) from open_clip, random weights seeded so that they are the same in every process."""
    import open_clip
    import torch
    overrides = {arg: build.tag_cfg[key] for key, arg in PREPROCESS_OVERRIDES if key in build.tag_cfg}
    with torch.random.fork_rng(devices=[]), _quiet_logging():
        torch.manual_seed(0)
        try:
            clip, _, preprocess = open_clip.create_model_and_transforms(
                build.create_name, pretrained=None, force_quick_gelu=bool(build.tag_cfg.get("quick_gelu", False)),
                pretrained_text=False, **overrides)
        except (RuntimeError, ValueError, FileNotFoundError) as error:
            raise CbmctlError(f"cannot build {model.text}: {str(error).splitlines()[0][:200]}") from None
    return clip, preprocess


def load_backbone(model: str | None = None, pretrained: str | None = None, device="cpu") -> Backbone:
    """Load a CLIP for embedding.

    model: an open_clip zoo name (ViT-L-14), 'hf-hub:org/repo', a path to an open_clip model-config JSON, or
    a name a plug-in serves ('demo'). pretrained: a zoo tag, a local .pt/.bin/.safetensors file, or 'none'
    (random weights, seeded, for tests and benchmarks)."""
    name = parse_model_name(model, known_zoo())
    weights = parse_weights(pretrained, name)
    check_reachable(name, weights)
    import open_clip
    import torch
    ensure_tag_index()
    if not isinstance(device, torch.device):
        device = resolve_device(device)
    build = _plan(name, weights)
    clip, preprocess = _create(build, name)
    if build.weights_path:
        load_weights(clip, build.weights_path, name.text)
        weights_sha256, weights_source = sha256_file(Path(build.weights_path)), build.weights_path
    else:
        weights_sha256 = state_dict_sha256(clip)
        weights_source = build.create_name if build.pretrained == HUB_WEIGHTS else "random-init(seed=0)"
    source = f"{build.config_source} + {weights_source}" if build.config_source else weights_source
    clip.eval().to(device)
    with _quiet_logging():  # get_tokenizer logs through the root logger too
        tokenizer = open_clip.get_tokenizer(build.create_name)
    from open_clip.model import get_model_preprocess_cfg
    preprocess_cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in get_model_preprocess_cfg(clip).items()}
    return Backbone(name=name.text, pretrained=str(build.pretrained or RANDOM_WEIGHTS), model=clip,
                    preprocess=preprocess, tokenizer=tokenizer, weights_sha256=weights_sha256,
                    preprocess_cfg=preprocess_cfg, device=device, source=str(source))


def load_tokenizer(model: str | None = None):
    """(tokenizer, context length) of a model without building it or loading weights."""
    import open_clip
    tokenizer = open_clip.get_tokenizer(open_clip_name(parse_model_name(model, known_zoo())))
    return tokenizer, int(getattr(tokenizer, "context_length", 77))


def load_recorded_backbone(record: dict, where, device="auto") -> Backbone:
    """The backbone a cache or run recorded (backbone_model, backbone_pretrained, weights_sha256), refused if
    the weights found now are not the ones it was made with."""
    backbone = load_backbone(record["backbone_model"], recorded_pretrained(record["backbone_pretrained"]), device)
    found = {"backbone_model": record["backbone_model"], "weights_sha256": backbone.weights_sha256}
    if backbone_difference(record, found) is not None:
        raise CbmctlError(f"{where} was made with other weights for {record['backbone_model']} "
                          f"(sha256 {record['weights_sha256'][:12]}, found {backbone.weights_sha256[:12]})")
    return backbone


def load_backbone_of_cache(cache, device="auto") -> Backbone:
    return load_recorded_backbone(cache.attrs, cache.path, device)


def list_models() -> dict[str, list[str]]:
    """open_clip's zoo, name -> pretrained tags, plus the models plug-ins serve by name."""
    import open_clip
    tags: dict[str, list[str]] = {p.name: ["(shipped)"] for p in providers() if not p.prefix}
    for name in open_clip.list_models():
        tags.setdefault(name, [])
    for name, tag in open_clip.list_pretrained():
        tags.setdefault(name, []).append(tag)
    return tags


@contextlib.contextmanager
def _quiet_logging():
    """open_clip says "no pretrained weights loaded" through logging.warning while we load the weights
    ourselves. Drop open_clip's own records for the duration and nothing else (logging is not switched
    off); and since logging.warning on a root logger without handlers would install one for good
    (basicConfig), stand in for it meanwhile with a handler that passes records to logging's last resort."""
    import logging

    import open_clip
    package = str(Path(open_clip.__file__).parent)

    def not_open_clip(record: logging.LogRecord) -> bool:
        return not str(record.pathname).startswith(package)

    class LastResort(logging.Handler):
        def emit(self, record):
            if logging.lastResort is not None and record.levelno >= logging.lastResort.level:
                logging.lastResort.handle(record)

    root = logging.getLogger()
    stand_in = LastResort() if not root.handlers else None
    root.addFilter(not_open_clip)
    if stand_in:
        root.addHandler(stand_in)
    try:
        yield
    finally:
        root.removeFilter(not_open_clip)
        if stand_in:
            root.removeHandler(stand_in)
