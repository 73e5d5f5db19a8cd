"""The Concept Bottleneck Model: concept scores ψ (C) -> CBL W (C×C, no bias) -> activations a -> head ->
class logits. Unit j of the CBL is read as concept j.

Two heads (docs/method.md, "The final layer"): the paper's dense head (F, K×C, no bias, on the activations themselves) and
the sparse head of LF-CBM / VLG-CBM (F with a few non-zero weights per class and a bias b, on standardised
activations x = (a − μ)/σ, μ and σ from the train split). Both are z = F x + b with x = (a − μ)/σ: the dense
head has μ = 0, σ = 1, b = 0. The contribution of concept j to class c for one image is x_j · F[c, j], so a
class's logit is the sum of its concepts' contributions plus its bias.

model_tensors / model_from_tensors convert to and from what cbmctl.runs stores (safetensors + JSON); the
conversion back checks every shape and dtype, that every value is finite and within bounds no trained model
comes near (so no forward pass overflows), that names follow cbmctl.names, that the concept list matches its
recorded hash and that both files still carry the identity they were saved with (model_identity), so a
damaged or tampered run directory is a one-line error, never a silently wrong model or a NaN printed as a
result."""
from __future__ import annotations

import hashlib

import torch
from torch import nn

from cbmctl.errors import CbmctlError
from cbmctl.identity import concepts_difference
from cbmctl.sanitize import safe_text
from cbmctl.spec import HEADS


class ConceptBottleneckModel(nn.Module):
    def __init__(self, num_concepts: int, num_classes: int, cbl_init: str = "identity", head: str = "dense"):
        super().__init__()
        if head not in HEADS:
            raise CbmctlError(f"unknown head {head!r} ({', '.join(HEADS)})")
        self.head_kind = head
        # "none": weights left uninitialised, for a model whose weights are about to be loaded
        make = (lambda *a, **k: nn.utils.skip_init(nn.Linear, *a, **k)) if cbl_init == "none" else nn.Linear
        self.cbl = make(num_concepts, num_concepts, bias=False)
        self.head = make(num_concepts, num_classes, bias=True)
        self.register_buffer("activation_mean", torch.zeros(num_concepts))
        self.register_buffer("activation_std", torch.ones(num_concepts))
        if cbl_init == "identity":
            # unit j starts as concept j, so the "unit = concept" reading holds from the first step
            with torch.no_grad():
                self.cbl.weight.copy_(torch.eye(num_concepts))
        elif cbl_init not in ("random", "none"):
            raise CbmctlError(f"unknown CBL init {cbl_init!r} (identity or random)")
        if cbl_init != "none":
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @property
    def num_concepts(self) -> int:
        return self.cbl.in_features

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def head_inputs(self, activations: torch.Tensor) -> torch.Tensor:
        """x = (a − μ)/σ, what the head weighs (a itself for the dense head)."""
        return (activations - self.activation_mean) / self.activation_std

    def forward(self, scores: torch.Tensor):
        """(activations, logits) for concept scores ψ of shape (B, C)."""
        activations = self.cbl(scores)
        return activations, self.head(self.head_inputs(activations))

    def logits_from_activations(self, activations: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_inputs(activations))

    def contributions(self, activations: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(B, C) contribution of each concept to the given class of each image: x_j · F[c, j]."""
        return self.head_inputs(activations) * self.head.weight[classes]

    def class_concept_weights(self) -> torch.Tensor:
        """F (K×C): the head's weight on each concept."""
        return self.head.weight.detach()

    def effective_weights(self) -> torch.Tensor:
        """The linear map from concept scores ψ to logits (K×C): F diag(1/σ) W."""
        return (self.head.weight.detach() / self.activation_std) @ self.cbl.weight.detach()

    def set_head(self, kind: str, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> ConceptBottleneckModel:
        if kind not in HEADS:
            raise CbmctlError(f"unknown head {kind!r} ({', '.join(HEADS)})")
        self.head_kind = kind
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias if bias is not None else torch.zeros(self.num_classes))
            self.activation_mean.copy_(mean if mean is not None else torch.zeros(self.num_concepts))
            self.activation_std.copy_(std if std is not None else torch.ones(self.num_concepts))
        return self


def model_tensors(model: ConceptBottleneckModel, vectors: dict | None = None) -> dict[str, torch.Tensor]:
    """Everything a saved model holds as tensors: weights, standardisation, and the text embeddings it was
    trained with (concept_vectors, class_vectors), so a run is self-contained for explanation and browsing."""
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    for name, tensor in (vectors or {}).items():
        state[name] = torch.as_tensor(tensor).detach().float().cpu().contiguous()
    return state


# Bounds on what a run directory may hold (it may have been sent by someone else). Trained values sit far
# inside them (CBL and head weights are O(1)-O(10), activation std O(0.1)-O(10), CLIP's logit scale is
# clamped at 100); within them no forward pass can overflow float32 (|ψ| ≤ 1e3·‖v‖, |a| ≤ C·1e4·|ψ|,
# |x| ≤ |a|/1e-8, logits ≤ C·1e4·|x| stay below 1e38 for any C under a million), so every number an
# explanation or an evaluation prints is finite.
MAX_WEIGHT = 1e4            # |cbl.weight|, |head.weight|, |concept_vectors|, |class_vectors|
MAX_OFFSET = 1e8            # |head.bias|, |activation_mean|
STD_RANGE = (1e-8, 1e8)     # activation_std
MAX_LOGIT_SCALE = 1000.0    # CLIP clamps its learned scale at 100
BOUNDS = {"cbl.weight": MAX_WEIGHT, "head.weight": MAX_WEIGHT, "concept_vectors": MAX_WEIGHT,
          "class_vectors": MAX_WEIGHT, "head.bias": MAX_OFFSET, "activation_mean": MAX_OFFSET}
TEXT_VECTORS = ("concept_vectors", "class_vectors")
# what a model's identity covers besides its tensors: the lists and settings that give them their meaning
IDENTITY_FIELDS = ("concepts", "classes", "head", "logit_scale")


def _names(metadata: dict, key: str, where: str) -> list[str]:
    from cbmctl.names import validate_class_names, validate_concept_names
    names = metadata.get(key)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise CbmctlError(f"{where}: '{key}' must be a non-empty list of names")
    return (validate_concept_names if key == "concepts" else validate_class_names)(names, where)


def model_identity(tensors: dict[str, torch.Tensor], metadata: dict) -> str:
    """The SHA-256 that ties a saved model together: every tensor (name, dtype, shape, bytes: the CBL, the
    head, its standardisation, the text embeddings) with the concept and class lists, the head kind and the
    logit scale that give them their meaning. Recorded in model.json when the model is saved and checked
    when it is loaded, so that editing any one of them (reversing the class list, swapping a tensor) is
    refused instead of silently explaining with the wrong names. Not a signature against someone who
    rewrites the record as well; a check that the files still belong together."""
    import json
    digest = hashlib.sha256(json.dumps({k: metadata.get(k) for k in IDENTITY_FIELDS}, sort_keys=True).encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"\n{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_identity(state: dict[str, torch.Tensor], metadata: dict, where: str) -> None:
    recorded = metadata.get("identity")
    if not isinstance(recorded, str):
        raise CbmctlError(f"{where}: the model description records no identity (edited, or written by a cbmctl "
                          "before runs had one), so its files cannot be checked against each other; retrain the run")
    if recorded != model_identity(state, metadata):
        raise CbmctlError(f"{where}: model.json and model.safetensors no longer match the run's identity: its "
                          "classes, concepts, head or weights were edited or damaged since training; retrain or "
                          "restore the run")


def logit_scale_of(metadata: dict, where: str) -> float:
    """The CLIP logit scale a run recorded: a finite number in (0, MAX_LOGIT_SCALE]."""
    value = metadata.get("logit_scale")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_LOGIT_SCALE:
        raise CbmctlError(f"{where}: the model description's logit_scale {safe_text(repr(value))[:40]} is not a "
                          f"number in (0, {MAX_LOGIT_SCALE:g}]")
    return float(value)


def _check_magnitudes(tensors: dict[str, torch.Tensor], where: str) -> None:
    for name, tensor in tensors.items():
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise CbmctlError(f"{where}: {name} holds NaN, infinite or non-numeric values")
        if tensor.numel() == 0:
            continue
        if name == "activation_std":
            low, high = STD_RANGE
            if not ((tensor >= low) & (tensor <= high)).all():
                raise CbmctlError(f"{where}: activation_std must lie in [{low:g}, {high:g}] (it holds "
                                  f"{float(tensor.min()):.3g} to {float(tensor.max()):.3g})")
        elif name in BOUNDS and float(tensor.abs().max()) > BOUNDS[name]:
            raise CbmctlError(f"{where}: {name} holds a value of magnitude {float(tensor.abs().max()):.3g}, beyond "
                              f"the ±{BOUNDS[name]:g} a trained model stays within")


def model_from_tensors(state: dict[str, torch.Tensor], metadata: dict, where: str):
    """(model, metadata) from saved tensors and description, every shape and value checked (they come from
    a run directory, which may have been damaged or sent by someone else). metadata["vectors"] gets the
    saved text embeddings."""
    if not isinstance(metadata, dict):
        raise CbmctlError(f"{where}: the model description is not a JSON object")
    concepts, classes = _names(metadata, "concepts", where), _names(metadata, "classes", where)
    c, k = len(concepts), len(classes)
    # the hash is required: without it a renamed concept would be explained under the wrong name
    record = metadata.get("concept_set")
    recorded = record.get("sha256") if isinstance(record, dict) else None
    if not isinstance(recorded, str):
        raise CbmctlError(f"{where}: the model description lacks its concept_set hash (edited or damaged); retrain "
                          "or restore the run")
    if concepts_difference(record, concepts):
        raise CbmctlError(f"{where}: the model's concept list does not match its recorded hash (edited or "
                          "damaged); retrain or restore the run")
    if "logit_scale" in metadata:
        logit_scale_of(metadata, where)
    head = metadata.get("head", "dense")
    if head not in HEADS:
        raise CbmctlError(f"{where}: unknown head {head!r}")
    saved, state = state, dict(state)
    expected = {"cbl.weight": (c, c), "head.weight": (k, c), "head.bias": (k,), "activation_mean": (c,),
                "activation_std": (c,)}
    optional = {"head.bias": torch.zeros(k), "activation_mean": torch.zeros(c), "activation_std": torch.ones(c)}
    weights = {}
    for name, shape in expected.items():
        tensor = state.pop(name, optional.get(name))
        if tensor is None:
            raise CbmctlError(f"{where}: the model file lacks {name}")
        if tuple(tensor.shape) != shape:
            raise CbmctlError(f"{where}: {name} has shape {tuple(tensor.shape)}, expected {shape} for {c} concepts "
                              f"and {k} classes")
        weights[name] = tensor.float()
    unexpected = sorted(set(state) - set(TEXT_VECTORS))
    if unexpected:
        raise CbmctlError(f"{where}: the model file holds an unexpected tensor {safe_text(unexpected[0])[:80]!r}")
    stored = next((name for name, tensor in saved.items() if tensor.dtype != torch.float32), None)
    if stored is not None:
        raise CbmctlError(f"{where}: {stored} is stored as {saved[stored].dtype}, not the float32 cbmctl writes")
    _check_magnitudes({**weights, **state}, where)
    for name, rows in (("concept_vectors", c), ("class_vectors", k)):
        if name in state and (state[name].dim() != 2 or state[name].shape[0] != rows):
            raise CbmctlError(f"{where}: {name} has shape {tuple(state[name].shape)}, expected {rows} rows")
    _check_identity(saved, metadata, where)
    model = ConceptBottleneckModel(c, k, "none", head)
    model.load_state_dict(weights)
    metadata = {**metadata, "vectors": {name: state[name].float() for name in state}}
    return model.eval(), metadata
