"""A backbone as asked for, told apart from a cache's without importing torch or open_clip: enough to refuse
a cache made with another one before anything slow happens, and to warn when a backbone's results will
mean nothing for a dataset."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cbmctl.backbones.hub import installed_version, known_zoo, normalise_tag, read_index, zoo_weights_file
from cbmctl.backbones.loading import shipped_weights
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
)
from cbmctl.backbones.registry import find_provider
from cbmctl.backbones.weights import sha256_file
from cbmctl.errors import CbmctlError
from cbmctl.plugins import call_plugin

# the packages whose versions decide what is not pinned by a weights file's hash: the model's
# architecture and preprocessing come from open_clip; random-init weights also from torch
_VERSIONED = ("open_clip_torch", "torch")


def recorded_versions(pretrained: str | None) -> dict:
    """Cache attributes naming the package versions a backbone's identity depends on, with today's values."""
    packages = _VERSIONED if str(pretrained).lower() == RANDOM_WEIGHTS else _VERSIONED[:1]
    return {f"{package.split('_')[0]}_version": installed_version(package) for package in packages}


@dataclass
class BackboneRequest:
    """A backbone as asked for (--model/--pretrained, or the dataset's cbmctl.yaml), resolved as far as
    possible without building it: enough to refuse a cache made with another one, and, when every part is
    pinned (weights hash, or random init under the same versions), to know a cache was made with this one."""

    model: str
    pretrained: str | None  # as a cache records it; None for a weights file (compared by hash) or unknown
    weights_sha256: str | None = None  # None when only building the model tells (random init, hf-hub)
    config_sha16: str | None = None  # a model-config .json is compared by content, not by its path
    label: str = ""  # how to name it in messages

    def conflicts(self, attrs: dict) -> list[tuple[str, str, str]]:
        """(what, the cache has, this request has) for every part that contradicts the cache."""
        found = []
        if self.config_sha16:
            if not str(attrs.get("backbone_source", "")).startswith(f"config:{self.config_sha16}"):
                found.append(("model config", str(attrs.get("backbone_model")), self.model))
        elif str(attrs.get("backbone_model")) != self.model:
            found.append(("model", str(attrs.get("backbone_model")), self.model))
        if self.pretrained is not None and \
                normalise_tag(attrs.get("backbone_pretrained")) != normalise_tag(self.pretrained):
            found.append(("pretrained", str(attrs.get("backbone_pretrained")), self.pretrained))
        if self.weights_sha256 and str(attrs.get("weights_sha256")) != self.weights_sha256:
            found.append(("weights sha256", str(attrs.get("weights_sha256"))[:12], self.weights_sha256[:12]))
        return found

    def settles(self, attrs: dict) -> bool:
        """True when the cache was certainly made with this backbone, weights and preprocessing."""
        if self.conflicts(attrs):
            return False
        random_init = str(self.pretrained).lower() == "none"
        if not (self.weights_sha256 or random_init):
            return False
        versions = recorded_versions(self.pretrained)
        return all(value is not None and str(attrs.get(key)) == value for key, value in versions.items())



def _zoo_request(name: ModelName, weights: WeightsName, label: str) -> BackboneRequest:
    """A zoo model's request: the default tag made explicit, a tag the index does not know refused, and the
    weights pinned by hash when their file is on disk."""
    index = read_index()
    tags = (index or {}).get("tags", {}).get(name.target, {})
    pretrained = weights.text
    if weights.kind is WeightsKind.DEFAULT and tags:
        pretrained = next(iter(tags))
        label = f"{name.text}/{pretrained}"
    if weights.kind is not WeightsKind.TAG and weights.kind is not WeightsKind.DEFAULT:
        return BackboneRequest(name.text, pretrained, label=label)
    entry = tags.get(normalise_tag(pretrained)) if pretrained else None
    if index and weights.kind is WeightsKind.TAG and not entry:
        raise CbmctlError(f"`pretrained` {pretrained!r} is neither a tag of {name.text} "
                          f"({', '.join(tags) or 'none'}) nor a file")
    pinned = zoo_weights_file(entry) if entry else None
    return BackboneRequest(name.text, pretrained, sha256_file(Path(pinned)) if pinned else None, label=label)


def backbone_request(model: str | None, pretrained: str | None) -> BackboneRequest:
    """Validate --model/--pretrained and resolve them without importing torch or open_clip: a missing
    model-config file, a zoo name or tag open_clip does not have, and --pretrained on an hf-hub model are
    one-line errors here, before anything slow happens."""
    name = parse_model_name(model, known_zoo())
    weights = parse_weights(pretrained, name)
    label = f"{name.text}/{pretrained or 'default'}"
    if weights.kind is WeightsKind.HUB:
        return BackboneRequest(name.text, HUB_WEIGHTS, label=name.text)
    config_sha16 = sha256_file(Path(name.target))[:16] if name.kind is ModelKind.CONFIG else None
    if weights.kind is WeightsKind.FILE:
        return BackboneRequest(name.text, None, sha256_file(weights.path), config_sha16, label)
    if weights.kind is WeightsKind.SHIPPED:
        return BackboneRequest(name.text, SHIPPED_WEIGHTS, sha256_file(shipped_weights(name)),
                               label=f"{name.text}/{SHIPPED_WEIGHTS}")
    if name.kind is ModelKind.ZOO:
        return _zoo_request(name, weights, label)
    return BackboneRequest(name.text, weights.text, config_sha16=config_sha16, label=label)


def meaningless_backbone(model: str, pretrained: str | None, classes, dataset_name: str = "this dataset"
                         ) -> str | None:
    """One line when a backbone's results will mean nothing for this data, else None."""
    if str(pretrained).lower() == RANDOM_WEIGHTS:
        return (f"{model} with `pretrained` none has random weights: its embeddings, and every result built on "
                f"them, carry no meaning (fine for tests and benchmarks)")
    provider = find_provider(str(model))
    if provider is not None and provider.knows is not None and \
            not call_plugin(provider.name, provider.knows, list(classes or [])):
        return (f"{provider.title} knows only {provider.domain}, not {dataset_name}: its results there are "
                f"meaningless (choose a real backbone with `model`, see `cbmctl models`)")
    return None
