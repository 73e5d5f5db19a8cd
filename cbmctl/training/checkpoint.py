"""The checkpoint of a stack of models in training: its format, its identity and its validation.

A checkpoint is tensors (safetensors) and plain values (JSON), never a pickle. Training writes it through a
CheckpointStore it is handed and never knows where that keeps it (a run's directory: cbmctl.runs.
CheckpointFiles, joined to training by cbmctl.experiment). A checkpoint read back may have been sent by
anyone, or copied in from another run: every value is checked before any is used, and a bad one is a
one-line error naming where it was read."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from typing import Protocol

import torch

from cbmctl.errors import CbmctlError
from cbmctl.identity import BACKBONE_FIELDS, DATA_FIELDS
from cbmctl.model import MAX_WEIGHT
from cbmctl.spec import TrainConfig
from cbmctl.training.data import TrainingData
from cbmctl.training.stack import Stack

# the per-parameter state each optimizer keeps (what a checkpoint's optimizer tensors must be)
OPTIMIZER_STATE = {"adam": ("step", "exp_avg", "exp_avg_sq"), "adamw": ("step", "exp_avg", "exp_avg_sq"),
                   "sgd": ("momentum_buffer",)}
HISTORY_KEYS = {"epoch", "loss", "cbl_loss", "ce", "train_top1", "val_loss", "val_top1", "lr"}
WEIGHTS = ("cbl", "head", "best_cbl", "best_head")
# the data's split (not in its fingerprint) is part of what a checkpoint belongs to
SPLIT_FIELDS = ("val_fraction", "val_seed")


class CheckpointStore(Protocol):
    """Where a training run keeps its checkpoint: `load` gives (tensors, plain values) or None when there
    is none; `save` replaces it whole; `where` names it in messages."""

    where: str

    def load(self) -> tuple[dict[str, torch.Tensor], dict] | None: ...

    def save(self, tensors: dict[str, torch.Tensor], plain: dict) -> None: ...


def checkpoint_identity(data: TrainingData, configs: list[TrainConfig]) -> str:
    """What a checkpoint belongs to: the data (dataset fingerprint and split), backbone, concepts, classes and
    every training option of every member but the device and thread count (which a resume may change, and
    which do not change the result) and the epoch limit (the library may continue a run for longer). A
    checkpoint copied in from another run or dataset does not match."""
    record = data.record
    dataset, backbone = record.get("dataset", {}), record.get("backbone", {})
    identity = {
        "dataset": [dataset.get(k) for k in (*DATA_FIELDS, *SPLIT_FIELDS)],
        "backbone": [backbone.get(k) for k in BACKBONE_FIELDS],
        "concepts": data.concepts, "classes": data.classes, "logit_scale": data.logit_scale,
        "sizes": data.sizes(),
        "configs": [{k: v for k, v in asdict(config).items() if k not in ("device", "epochs", "threads")}
                    for config in configs],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def checkpoint_state(stack: Stack, identity: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The stack as (tensors, plain values), the tensors on the CPU."""
    tensors = {name: getattr(stack, name).detach() for name in WEIGHTS}
    tensors.update(_generator_states(stack))
    plain = {"epoch": stack.epoch, "history": stack.history, "best_loss": stack.best_loss,
             "best_epoch": stack.best_epoch, "stopped": stack.stopped, "members": stack.members(),
             "identity": identity}
    for name, optimizer in stack.optimizers():
        state = optimizer.state_dict()
        for index, values in state["state"].items():
            for key, value in values.items():
                tensors[f"{name}.{index}.{key}"] = torch.as_tensor(value)
        plain[name] = {"param_groups": state["param_groups"],
                       "keys": {str(i): sorted(v) for i, v in state["state"].items()}}
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, plain


def restore(stack: Stack, tensors: dict[str, torch.Tensor], plain: dict, identity: str,
            where: str = "the checkpoint") -> None:
    """Continue `stack` from a checkpoint, every value of which is checked first: a one-line error naming
    `where` when one is wrong."""
    def refuse(problem: str):
        raise CbmctlError(f"{where}: {problem}; remove the run's checkpoint.* files to restart it")
    _check_plain(stack, plain, identity, refuse)
    expected = {name: getattr(stack, name) for name in WEIGHTS}
    expected.update(_generator_states(stack))
    optimizer_states = {name: _expected_optimizer(stack, name, optimizer, plain.get(name), expected, refuse)
                        for name, optimizer in stack.optimizers()}
    for key, like in expected.items():
        _check_tensor(key, tensors.get(key), like, refuse)
    try:
        _apply(stack, tensors, optimizer_states)
    except (RuntimeError, ValueError, TypeError) as error:
        refuse(f"damaged ({str(error).splitlines()[0][:80]})")
    stack.epoch = plain["epoch"]
    stack.history = plain["history"]
    stack.best_loss = [float(v) for v in plain["best_loss"]]
    stack.best_epoch = list(plain["best_epoch"])
    stack.stopped = list(plain["stopped"])


def _generator_states(stack: Stack) -> dict[str, torch.Tensor]:
    states = {f"order_rng.{m}": g.get_state() for m, g in enumerate(stack.order)}
    states.update({f"noise_rng.{m}": g.get_state() for m, g in enumerate(stack.noise)})
    return states


def _check_plain(stack: Stack, plain: dict, identity: str, refuse) -> None:
    """The JSON half: whose checkpoint it is, the epoch, and a history the best epoch agrees with."""
    if plain.get("identity") != identity:
        refuse("written for another dataset, concept set, backbone or training configuration (or by an "
               "older cbmctl)")
    if plain.get("members") != stack.members():
        refuse("written for other methods or seeds")
    s, epochs = len(stack.configs), stack.configs[0].epochs
    epoch = plain.get("epoch")
    if not _is_int(epoch) or not 0 <= epoch <= epochs:
        refuse(f"'epoch' must be a whole number in [0, {epochs}], got {_short(epoch)}")
    history, stopped = plain.get("history"), plain.get("stopped")
    if not _is_list_of(stopped, s, lambda v: isinstance(v, bool)):
        refuse(f"'stopped' must be {s} true/false values")
    # a model trains every epoch until it stops: epochs 1..epoch, or 1..n < epoch for a stopped one
    if not (isinstance(history, list) and len(history) == s and all(
            isinstance(rows, list) and all(_is_history_row(row) for row in rows)
            and [row["epoch"] for row in rows] == list(range(1, len(rows) + 1))
            and (len(rows) == epoch or (halted and len(rows) < epoch))
            for rows, halted in zip(history, stopped))):
        refuse(f"'history' must hold, per model, one row of named plain numbers for each of its epochs "
               f"(1..{epoch}, fewer only for a model that stopped)")
    # the best epoch is the first with the lowest validation loss, as training chose it
    best_loss, best_epoch = plain.get("best_loss"), plain.get("best_epoch")
    wanted_epoch = [min(range(len(rows)), key=lambda i: (rows[i]["val_loss"], i)) + 1 if rows else 0
                    for rows in history]
    if best_epoch != wanted_epoch or not _is_list_of(best_loss, s, _is_number) or any(
            (best_loss[m] != history[m][best_epoch[m] - 1]["val_loss"]) if best_epoch[m] else best_loss[m] < 1e308
            for m in range(s)):
        refuse("'best_loss'/'best_epoch' do not match the history's lowest validation loss")


def _expected_optimizer(stack: Stack, name: str, optimizer, saved, expected: dict, refuse) -> dict:
    """Check an optimizer's saved settings against the run's own, add the tensors its state must hold to
    `expected` (key -> a tensor of the wanted shape) and return its state as optimizer index -> key ->
    the checkpoint's tensor name."""
    fresh = optimizer.state_dict()
    keys = saved.get("keys") if isinstance(saved, dict) else None
    allowed = sorted(OPTIMIZER_STATE[stack.configs[0].optimizer])
    if not (isinstance(keys, dict) and (keys == {} or keys == {"0": allowed})):
        refuse(f"'{name}.keys' must be {{}} or {{\"0\": {allowed}}}")
    groups = saved.get("param_groups")
    if not (isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], dict)
            and all(_plain(groups[0].get(k)) == _plain(v) for k, v in fresh["param_groups"][0].items()
                    if k != "lr")):  # the learning rate is set again every epoch
        refuse(f"'{name}.param_groups' differ from the run's optimizer settings")
    parameter = optimizer.param_groups[0]["params"][0]
    for key in keys.get("0", []):
        expected[f"{name}.0.{key}"] = torch.zeros(()) if key == "step" else parameter.detach()
    return {0: {key: f"{name}.0.{key}" for key in keys.get("0", [])}} if keys else {}


def _check_tensor(key: str, tensor: torch.Tensor | None, like: torch.Tensor, refuse) -> None:
    """One stored tensor: present, of the live one's shape, finite, and within what its kind may hold."""
    if tensor is None:
        refuse(f"checkpoint.safetensors lacks {key}")
    if tuple(tensor.shape) != tuple(like.shape) or (like.dtype == torch.uint8) != (tensor.dtype == torch.uint8):
        refuse(f"checkpoint.safetensors: {key} has shape {tuple(tensor.shape)} ({tensor.dtype}), expected "
               f"{tuple(like.shape)}")
    if tensor.dtype != torch.uint8 and not bool(torch.isfinite(tensor.float()).all()):
        refuse(f"checkpoint.safetensors: {key} holds NaN or infinite values")
    if key in WEIGHTS and float(tensor.abs().max()) > MAX_WEIGHT:
        refuse(f"checkpoint.safetensors: {key} holds weights beyond ±{MAX_WEIGHT:g}, which a model may not hold")
    if key.endswith(".step") and not (float(tensor) >= 0 and float(tensor) == int(tensor)):
        refuse(f"checkpoint.safetensors: {key} must be a whole number ≥ 0")
    if key.endswith("exp_avg_sq") and float(tensor.min()) < 0:
        refuse(f"checkpoint.safetensors: {key} holds negative second moments")


def _apply(stack: Stack, tensors: dict[str, torch.Tensor], optimizer_states: dict) -> None:
    """Copy the checked tensors into the stack: weights, generators, optimizer state."""
    with torch.no_grad():
        for name in WEIGHTS:
            getattr(stack, name).copy_(tensors[name])
    for m, g in enumerate(stack.order):
        g.set_state(tensors[f"order_rng.{m}"])
    for m, g in enumerate(stack.noise):
        g.set_state(tensors[f"noise_rng.{m}"].to(g.device) if g.device.type != "cpu" else tensors[f"noise_rng.{m}"])
    for name, optimizer in stack.optimizers():
        state = {i: {key: tensors[stored].float() if key == "step" else tensors[stored].to(stack.device)
                     for key, stored in values.items()} for i, values in optimizer_states[name].items()}
        # the hyperparameters are the run's own (checked equal above), never taken from the file
        optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_list_of(value, length: int, check) -> bool:
    return isinstance(value, list) and len(value) == length and all(check(v) for v in value)


def _is_history_row(row) -> bool:
    return isinstance(row, dict) and set(row) == HISTORY_KEYS and all(
        _is_number(v) and math.isfinite(v) for v in row.values())


def _plain(value):
    """A value as JSON stores it (tuples become lists), for comparing a file's settings with the live ones."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _short(value) -> str:
    return repr(value)[:40]
