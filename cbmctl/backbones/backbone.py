"""A loaded CLIP (Backbone: the model, its preprocessing and tokenizer, and the identity a cache records),
and the device it runs on."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from cbmctl.errors import CbmctlError


@dataclass
class Backbone:
    """A loaded CLIP: the model in eval mode, its image preprocessing and its tokenizer."""

    name: str
    pretrained: str
    model: object
    preprocess: object
    tokenizer: object
    weights_sha256: str
    preprocess_cfg: dict
    device: object
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def embed_dim(self) -> int:
        if "embed_dim" not in self.extra:
            # towers differ in where they keep the projection width; one tiny forward is always right
            self.extra["embed_dim"] = int(self.encode_texts(["a"]).shape[1])
        return self.extra["embed_dim"]

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().item())

    def identity(self) -> dict:
        """What a cache records to refuse mixing two backbones."""
        return {
            "backbone_model": self.name,
            "backbone_pretrained": self.pretrained,
            "backbone_source": self.source,
            "weights_sha256": self.weights_sha256,
            "preprocess": json.dumps(self.preprocess_cfg, sort_keys=True),
        }

    def _autocast(self):
        import contextlib

        import torch
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        return contextlib.nullcontext()

    def encode_images(self, pixels):
        """L2-normalised float32 image embeddings for a preprocessed batch."""
        import torch
        import torch.nn.functional as F
        with torch.inference_mode(), self._autocast():
            features = self.model.encode_image(pixels.to(self.device, non_blocking=True))
        return F.normalize(features.float(), dim=-1)

    def encode_texts(self, texts: list[str], batch_size: int = 256):
        """L2-normalised float32 text embeddings (a CPU tensor), one row per text."""
        import torch
        import torch.nn.functional as F
        rows = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(list(texts[start:start + batch_size])).to(self.device)
                rows.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        return torch.cat(rows) if rows else torch.zeros(0, 0)

    def encode_prompts(self, names: list[str], templates: list[str]):
        """One embedding per name: the normalised mean over prompt templates ("a photo of a {}.")."""
        import torch.nn.functional as F
        texts = [template.format(name) for name in names for template in templates]
        embeddings = self.encode_texts(texts).reshape(len(names), len(templates), -1)
        return F.normalize(embeddings.mean(dim=1), dim=-1)


def resolve_device(spec: str | None = "auto"):
    import torch
    spec = (spec or "auto").lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    from cbmctl.sanitize import safe_text
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise CbmctlError(f"`device` {safe_text(spec)!r} is not a device (auto, cpu, cuda, cuda:1, mps)") from None
    # every kind is checked here: torch itself fails only later, with a traceback, on the first tensor moved
    available = {"cpu": lambda: 1, "cuda": lambda: torch.cuda.device_count() if torch.cuda.is_available() else 0,
                 "mps": lambda: int(getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()),
                 "xpu": lambda: torch.xpu.device_count() if hasattr(torch, "xpu") and torch.xpu.is_available() else 0}
    if device.type not in available:
        raise CbmctlError(f"`device` {safe_text(spec)!r}: cbmctl runs on cpu, cuda, mps or xpu, not {device.type}")
    count = available[device.type]()
    if count == 0:
        raise CbmctlError(f"`device` {safe_text(spec)} was asked for but this machine has no usable {device.type} "
                          "device; use `device` cpu (or auto)")
    if device.type != "cpu" and device.index is not None and device.index >= count:
        raise CbmctlError(f"`device` {safe_text(spec)}: there are only {count} {device.type} devices (0-{count - 1})")
    return device
