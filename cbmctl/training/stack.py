"""The training state of several CBMs stacked into one tensor program.

Several models — the seeds and CBL objectives of a comparison — train together: their CBLs (S×C×C) and
heads (S×K×C) are stacked, each model draws its own batch order and Gumbel noise from its own seeded
generators (owned by the stack, never torch's global one) and stops on its own validation loss, so a stack
gives every model exactly what it would get alone (to float rounding), at the cost of little more than one
run."""
from __future__ import annotations

import math

import torch

from cbmctl.errors import CbmctlError
from cbmctl.model import ConceptBottleneckModel
from cbmctl.spec import BASELINES, TrainConfig


def member_configs(base: TrainConfig, members: list[tuple[str, int]]) -> list[TrainConfig]:
    """The TrainConfig of each (loss, seed) member of a stack, each checked; a baseline is no member."""
    configs = [base.for_method(loss, seed) for loss, seed in members]
    for config in configs:
        config.validate()
        if config.loss in BASELINES:
            raise CbmctlError(f"{config.loss} is a baseline, not a CBM")
    return configs


def stack_forward(scores: torch.Tensor, cbl: torch.Tensor, head: torch.Tensor):
    """Activations (S×B×C) and dense-head logits (S×B×K) of S stacked models; `scores` is S×B×C, or B×C
    shared by every model."""
    if scores.dim() == 2:
        scores = scores.expand(cbl.shape[0], -1, -1)
    activations = torch.bmm(scores, cbl.transpose(1, 2))
    return activations, torch.bmm(activations, head.transpose(1, 2))


def _initial_cbl(concepts: int, classes: int, config: TrainConfig) -> torch.Tensor:
    """A model's CBL before training, drawn (for `cbl_init` random) from torch's generator seeded with the
    model's seed inside a fork: the caller's random state is the same afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(config.seed)
        return ConceptBottleneckModel(concepts, classes, config.cbl_init).cbl.weight.detach()


def _optimizer(name, params, lr, weight_decay):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


class Stack:
    """The training state of S stacked models: parameters, optimizers, generators, early stopping."""

    def __init__(self, concepts: int, classes: int, configs: list[TrainConfig], device: torch.device):
        base = configs[0]
        c, k, s = concepts, classes, len(configs)
        self.configs, self.device = configs, device
        self.initial_cbl = torch.stack([_initial_cbl(c, k, config) for config in configs]).to(device)
        self.cbl = torch.nn.Parameter(self.initial_cbl.clone())
        self.head = torch.nn.Parameter(torch.zeros(s, k, c, device=device))
        self.cbl_optimizer = _optimizer(base.optimizer, [self.cbl], base.cbl_lr, base.weight_decay)
        self.head_optimizer = _optimizer(base.optimizer, [self.head], base.lr, base.weight_decay)
        self.order = [torch.Generator().manual_seed(config.seed) for config in configs]
        self.noise = [torch.Generator(device=device).manual_seed(config.seed + 1) for config in configs]
        self.history: list[list[dict]] = [[] for _ in configs]
        self.best_loss = [math.inf] * s
        self.best_epoch = [0] * s
        self.stopped = [False] * s
        self.best_cbl = self.cbl.detach().clone()
        self.best_head = self.head.detach().clone()
        self.epoch = 0
        groups: dict[tuple, list[int]] = {}
        for m, config in enumerate(configs):
            groups.setdefault((config.loss, config.gumbel_form, config.tau, config.hard, config.l1_lambda), []).append(m)
        # the members that share a CBL objective, computed together: (settings, index on the device, index)
        self.loss_groups = [(key, torch.tensor(index, device=device), index) for key, index in groups.items()]

    def optimizers(self) -> tuple[tuple[str, torch.optim.Optimizer], ...]:
        """Each optimizer under the name a checkpoint stores it by."""
        return ("cbl_optimizer", self.cbl_optimizer), ("head_optimizer", self.head_optimizer)

    def members(self) -> list[list]:
        """[loss, seed] of each model, as a checkpoint records them."""
        return [[c.loss, c.seed] for c in self.configs]
