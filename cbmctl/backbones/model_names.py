"""Model and weights names, read once. What kind of backbone a model name names, and what a pretrained
name names, is decided here and only here; loaders and checks work from the small typed values it returns
(no other module looks at a prefix or a suffix of a name). Nothing here imports torch or open_clip.

  model      hf-hub:org/repo         a Hugging Face repo holding open_clip_config.json and its weights
             path/to/config.json     an open_clip model config (weights from --pretrained)
             ViT-L-14                a name in open_clip's zoo (weights: one of its tags)
             demo                    a name a plug-in serves (cbmctl.backbones.registry)
  pretrained (left out)              the zoo model's first tag, the plug-in's shipped weights
             none                    random weights, seeded: for tests and benchmarks
             path/to/w.safetensors   a local weights file (.safetensors, .pt, .pth, .bin, or any file)
             laion2b_s34b_b79k       a zoo tag"""
from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cbmctl.backbones.registry import BackboneProvider, find_provider, plugin_failures
from cbmctl.errors import CbmctlError
from cbmctl.sanitize import has_control, safe_text

DEFAULT_MODEL = "ViT-L-14"
HF_HUB_PREFIX = "hf-hub:"  # open_clip's own spelling of a hub repo
LOCAL_DIR_PREFIX = "local-dir:"  # open_clip's name for a hub repo already on disk
CONFIG_SUFFIX = ".json"
WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
RANDOM_WEIGHTS = "none"
HUB_WEIGHTS = "hub"  # what a cache records as the pretrained of an hf-hub model
SHIPPED_WEIGHTS = "shipped"  # what a cache records as the pretrained of a plug-in's shipped weights
MAX_NAME_CHARS = 1000
KINDS_HINT = "an open_clip zoo name, hf-hub:org/repo, a model-config .json or a plug-in's model; see `cbmctl models`"


class ModelKind(Enum):
    PLUGIN = "plug-in model"
    HF_HUB = "hf-hub repo"
    CONFIG = "model-config file"
    ZOO = "open_clip zoo name"


@dataclass(frozen=True)
class ModelName:
    """A model name as given (`text`, what caches record) and what it names: `target` is the hub repo id, the
    config file's path, the zoo name or the plug-in's name; `provider` serves a PLUGIN."""

    text: str
    kind: ModelKind
    target: str
    provider: BackboneProvider | None = None


class WeightsKind(Enum):
    DEFAULT = "default"
    RANDOM = "random"
    HUB = "hub"
    SHIPPED = "shipped"
    FILE = "file"
    TAG = "tag"


@dataclass(frozen=True)
class WeightsName:
    text: str | None
    kind: WeightsKind
    path: Path | None = None


def _refuse_garbage(text) -> str:
    if not isinstance(text, str) or not text.strip() or text != text.strip() or len(text) > MAX_NAME_CHARS \
            or has_control(text):
        raise CbmctlError(f"`model` {safe_text(repr(str(text)[:80]))} is not a model name ({KINDS_HINT})")
    return text


def _hub_name(text: str) -> ModelName:
    repo = text[len(HF_HUB_PREFIX):].strip("/")
    owner, _, name = repo.partition("/")
    # hub repo ids are ORG/REPO of letters, digits and -_. ; "." and ".." would name a path, not a repo
    if not owner or not name or "/" in name or {owner, name} & {".", ".."} or \
            not re.fullmatch(r"[\w.-]+/[\w.-]+", repo, re.ASCII):
        raise CbmctlError(f"`model` {safe_text(text)}: an hf-hub model is hf-hub:ORG/REPO")
    return ModelName(text, ModelKind.HF_HUB, repo)


def parse_model_name(text: str | None, zoo: Collection[str] | None = None) -> ModelName:
    """Decide what a model name names. `zoo`: the names open_clip knows, when the caller has them (None: not
    known yet, and a name no plug-in serves is taken for a zoo name for the loader to check)."""
    text = _refuse_garbage(DEFAULT_MODEL if text is None or text == "" else text)
    if text.startswith(HF_HUB_PREFIX):
        return _hub_name(text)
    if text.endswith(CONFIG_SUFFIX):
        if not Path(text).is_file():
            raise CbmctlError(f"`model` {safe_text(text)}: no such model config file")
        return ModelName(text, ModelKind.CONFIG, text)
    if zoo is not None and text in zoo:  # the zoo wins over any plug-in of the same name
        return ModelName(text, ModelKind.ZOO, text)
    provider = find_provider(text)
    if provider is not None:
        return ModelName(text, ModelKind.PLUGIN, text, provider)
    if zoo is None:
        return ModelName(text, ModelKind.ZOO, text)
    raise CbmctlError(f"unknown model {safe_text(repr(text))}: see `cbmctl models` (or pass an open_clip config "
                      f".json){plugin_failures()}")


def parse_weights(text: str | None, model: ModelName) -> WeightsName:
    """Decide what a pretrained name names, for this model."""
    if text is None or text == "":
        default = {ModelKind.PLUGIN: WeightsKind.SHIPPED, ModelKind.HF_HUB: WeightsKind.HUB}
        return WeightsName(None, default.get(model.kind, WeightsKind.DEFAULT))
    text = str(text)
    if model.kind is ModelKind.HF_HUB:
        if text != HUB_WEIGHTS:
            raise CbmctlError("`pretrained` does not apply to hf-hub: models (their repo names the weights)")
        return WeightsName(text, WeightsKind.HUB)
    if text.lower() == RANDOM_WEIGHTS:
        return WeightsName(text, WeightsKind.RANDOM)
    if model.kind is ModelKind.PLUGIN and text in (SHIPPED_WEIGHTS, model.provider.name):
        return WeightsName(text, WeightsKind.SHIPPED)
    path = Path(text).expanduser()
    if path.is_file():
        return WeightsName(text, WeightsKind.FILE, path)
    if text.endswith(WEIGHTS_SUFFIXES) or "/" in text:
        raise CbmctlError(f"`pretrained` {safe_text(text)}: no such weights file")
    if model.kind is ModelKind.PLUGIN:
        raise CbmctlError(f"`pretrained` {safe_text(repr(text))} for {model.provider.title}: leave it out (its shipped "
                          "weights), or give 'none' or a weights file")
    return WeightsName(text, WeightsKind.TAG)


def recorded_pretrained(pretrained: str | None) -> str | None:
    """What to ask for again to load the weights a cache recorded ('shipped' and 'hub' name the default)."""
    return None if pretrained in (SHIPPED_WEIGHTS, HUB_WEIGHTS) else pretrained
