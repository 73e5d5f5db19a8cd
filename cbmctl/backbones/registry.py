"""The model registry: backbones that open_clip's zoo does not know, brought by plug-ins.

A provider serves one model name (or, with prefix=True, every name that starts with it) and says where
the model's open_clip config and its shipped weights are; cbmctl builds, hashes and records it like any
other CLIP. Providers register themselves through the `cbmctl.backbones` entry-point group
(cbmctl.plugins), loaded the first time a name is not otherwise known."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cbmctl.errors import CbmctlError
from cbmctl.plugins import BACKBONES, failures, load_group
from cbmctl.sanitize import has_control, safe_text


@dataclass(frozen=True)
class ShippedModel:
    """What a provider serves for a name: an open_clip model-config JSON, and the weights that ship with it
    (None: none ship; the user passes a weights file or --pretrained none)."""

    config: Path
    weights: Path | None = None


@dataclass(frozen=True)
class BackboneProvider:
    """A model family a plug-in brings. `locate(model name)` returns its ShippedModel. `knows(class names)`,
    when given, tells whether the model's embeddings mean anything for a dataset of those classes (a toy CLIP
    trained on one generated world does not know birds); `label` and `domain` name the model and what it
    knows in the one line that says so."""

    name: str
    locate: Callable[[str], ShippedModel]
    prefix: bool = False
    label: str = ""
    knows: Callable[[list[str]], bool] | None = None
    domain: str = ""

    def serves(self, model: str) -> bool:
        return model.startswith(self.name) if self.prefix else model == self.name

    @property
    def title(self) -> str:
        return self.label or f"the {self.name} model"


_PROVIDERS: dict[str, BackboneProvider] = {}


def register_backbone(provider: BackboneProvider) -> None:
    """Add a provider (again under the same name: replace it). A name that open_clip's zoo knows, or that
    reads as an hf-hub: repo or a config .json, is never looked up here (cbmctl.backbones.model_names)."""
    if not isinstance(provider.name, str) or not provider.name.strip() or has_control(provider.name) \
            or len(provider.name) > 200:
        raise CbmctlError(f"a backbone plug-in needs a printable model name of at most 200 characters, not "
                          f"{safe_text(repr(provider.name))[:200]}")
    _PROVIDERS[provider.name] = provider


def unregister_backbone(name: str) -> None:
    _PROVIDERS.pop(name, None)


def _registered(model: str) -> BackboneProvider | None:
    exact = _PROVIDERS.get(model)
    if exact is not None:
        return exact
    prefixed = [p for p in _PROVIDERS.values() if p.prefix and p.serves(model)]
    return max(prefixed, key=lambda p: len(p.name)) if prefixed else None  # the most specific prefix


def find_provider(model: str) -> BackboneProvider | None:
    """The provider serving a model name; the plug-ins are loaded the first time a name is not registered."""
    found = _registered(model)
    if found is None:
        load_group(BACKBONES)
        found = _registered(model)
    return found


def providers() -> list[BackboneProvider]:
    """Every provider, the plug-ins loaded."""
    load_group(BACKBONES)
    return sorted(_PROVIDERS.values(), key=lambda p: p.name)


def plugin_failures() -> str:
    return failures(BACKBONES)
