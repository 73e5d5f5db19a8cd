"""The Concept Bottleneck Model: concept scores ψ (C) -> CBL W (C×C, no bias) -> activations a -> head
F (K×C, no bias) -> class logits. Unit j of the CBL is read as concept j; the contribution of concept j
to class c for one image is a_j · F[c, j]. Saved as model.safetensors + model.json."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from cbmctl.errors import CbmctlError

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


class ConceptBottleneckModel(nn.Module):
    def __init__(self, num_concepts: int, num_classes: int, cbl_init: str = "identity"):
        super().__init__()
        self.cbl = nn.Linear(num_concepts, num_concepts, bias=False)
        self.head = nn.Linear(num_concepts, num_classes, bias=False)
        if cbl_init == "identity":
            # unit j starts as concept j, so the "unit = concept" reading holds from the first step
            with torch.no_grad():
                self.cbl.weight.copy_(torch.eye(num_concepts))
        elif cbl_init != "random":
            raise CbmctlError(f"unknown CBL init {cbl_init!r} (identity or random)")
        nn.init.zeros_(self.head.weight)

    @property
    def num_concepts(self) -> int:
        return self.cbl.in_features

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def forward(self, scores: torch.Tensor):
        """(activations, logits) for concept scores ψ of shape (B, C)."""
        activations = self.cbl(scores)
        return activations, self.head(activations)

    def contributions(self, activations: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(B, C) contribution of each concept to the given class of each image: a_j · F[c, j]."""
        return activations * self.head.weight[classes]


def save_model(directory: Path, model: ConceptBottleneckModel, metadata: dict, vectors: dict | None = None) -> None:
    """Weights, plus the text embeddings the model was trained with (concept_vectors, class_vectors), so a
    run is self-contained for explanation and browsing."""
    from safetensors.torch import save_file
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    for name, tensor in (vectors or {}).items():
        state[name] = torch.as_tensor(tensor).detach().float().cpu().contiguous()
    save_file(state, str(directory / WEIGHTS_FILE))
    (directory / META_FILE).write_text(json.dumps(metadata, indent=1) + "\n")


def load_model(directory: Path) -> tuple[ConceptBottleneckModel, dict]:
    """(model, metadata); metadata["vectors"] holds the saved text embeddings (concept_vectors, ...)."""
    from safetensors.torch import load_file
    directory = Path(directory)
    if not (directory / WEIGHTS_FILE).is_file() or not (directory / META_FILE).is_file():
        raise CbmctlError(f"{directory} holds no trained model ({WEIGHTS_FILE} + {META_FILE})")
    metadata = json.loads((directory / META_FILE).read_text())
    state = load_file(str(directory / WEIGHTS_FILE))
    weights = {k: state.pop(k) for k in ("cbl.weight", "head.weight")}
    model = ConceptBottleneckModel(weights["cbl.weight"].shape[0], weights["head.weight"].shape[0], "random")
    model.load_state_dict(weights)
    metadata["vectors"] = state
    return model.eval(), metadata
