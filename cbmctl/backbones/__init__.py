"""CLIP backbones through open_clip: zoo names and tags, hf-hub: repos, local weight files, model-config files,
and models that plug-ins serve by name (the registry). Offline, missing weights fail in about a second with
the fix in one line. Where each part lives: model_names (what a name names), registry (plug-in models),
hub (zoo tags and the HF cache), weights (files and hashes), loading (building a CLIP), request (a backbone
as asked for, compared with a cache's without importing torch)."""
from cbmctl.backbones.backbone import Backbone, resolve_device
from cbmctl.backbones.hub import check_weights_reachable, write_tag_index
from cbmctl.backbones.loading import (
    list_models,
    load_backbone,
    load_backbone_of_cache,
    load_recorded_backbone,
    load_tokenizer,
)
from cbmctl.backbones.model_names import DEFAULT_MODEL, ModelKind, ModelName, parse_model_name, parse_weights
from cbmctl.backbones.registry import BackboneProvider, ShippedModel, register_backbone, unregister_backbone
from cbmctl.backbones.request import BackboneRequest, backbone_request, meaningless_backbone, recorded_versions

__all__ = ["DEFAULT_MODEL", "Backbone", "BackboneProvider", "BackboneRequest", "ModelKind", "ModelName", "ShippedModel",
           "backbone_request", "check_weights_reachable", "list_models", "load_backbone", "load_backbone_of_cache",
           "load_recorded_backbone", "load_tokenizer", "meaningless_backbone", "parse_model_name", "parse_weights",
           "recorded_versions", "register_backbone", "resolve_device", "unregister_backbone", "write_tag_index"]
