"""Training CBMs on cached embeddings, as three visible stages: the memory check, the stacked epochs
(cbmctl.training.epochs) and the head stage (cbmctl.training.heads). The device is resolved once, here or by
the caller, and handed down as a torch.device."""
from __future__ import annotations

import torch

from cbmctl.spec import TrainConfig
from cbmctl.training.checkpoint import CheckpointStore
from cbmctl.training.data import TrainingData
from cbmctl.training.epochs import train_stack
from cbmctl.training.heads import fit_heads
from cbmctl.training.result import TrainResult
from cbmctl.training.stack import member_configs


def train_many(data: TrainingData, base: TrainConfig, members: list[tuple[str, int]],
               checkpoints: CheckpointStore | None = None, log=None, warn=None,
               device: torch.device | None = None) -> list[TrainResult]:
    """Train one CBM per (loss, seed) member, all stacked in one tensor program (cbmctl.training.stack),
    then fit the sparse heads and evaluate; with `checkpoints`, a checkpoint is written there while training
    and resumed from when present. `warn` gets the warning lines (`log` when not given). `device`: where to
    train (`base.device` resolved when not given). torch uses `base.threads` threads meanwhile
    (cbmctl.threads); the caller's thread count and random state are as they were afterwards."""
    from cbmctl.resources import check_training
    from cbmctl.threads import torch_threads
    configs = member_configs(base, members)
    if device is None:
        from cbmctl.backbones import resolve_device
        device = resolve_device(base.device)
    check_training(len(configs), len(data.concepts), len(data.classes), data.sizes(), base.batch_size,
                   int(data.concept_vectors.shape[1]), device)
    with torch_threads(base.threads):
        stack = train_stack(data, configs, device, checkpoints, log)
        return fit_heads(data, configs, stack, device, log, warn)


def train_cbm(data: TrainingData, config: TrainConfig, checkpoints: CheckpointStore | None = None,
              log=None) -> TrainResult:
    """One CBM: the CBL objective plus cross-entropy, the epoch chosen by validation loss, then its head."""
    config.validate()
    return train_many(data, config, [(config.loss, config.seed)], checkpoints, log)[0]


def describe(config: TrainConfig) -> str:
    """A method's name with the settings that tell its variants apart ("gumbel (paper, τ=1)")."""
    if config.loss == "gumbel":
        return f"gumbel ({config.gumbel_form}, τ={config.tau:g}{', hard' if config.hard else ''})"
    if config.loss == "l1":
        return f"l1 (λ={config.l1_lambda:g})"
    return config.loss
