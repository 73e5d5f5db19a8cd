"""Training Concept Bottleneck Models on cached embeddings, and the baselines on the same split.

Embeddings come from the HDF5 cache, never from a backbone forward per step. The split is moved to the
device once and batches are indexed there; concept scores ψ = s · cos(image, concept) are computed once
for every split when they fit, else per batch.

Several models — the seeds and CBL objectives of a comparison — train together as one tensor program:
their CBLs (S×C×C) and heads (S×K×C) are stacked, each model draws its own batch order and Gumbel noise
from its own seeded generators and stops on its own validation loss, so a stack gives every model exactly
what it would get alone (to float rounding), at the cost of little more than one run.

After the CBL is trained, it is frozen and the sparse final layer (cbmctl.sparse) is fitted on its
standardised activations along a regularisation path; every run reports the dense head and the sparse head
at NEC = 5 (and the whole accuracy-sparsity path), whichever head it keeps as its model."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cbmctl import metrics as M
from cbmctl.errors import CbmctlError
from cbmctl.losses import cbl_loss
from cbmctl.model import MAX_WEIGHT, ConceptBottleneckModel
from cbmctl.spec import BASELINES, TrainConfig

# concept scores of every split are precomputed when they take at most this many bytes
PRECOMPUTE_BYTES = 2 << 30
# the sparse head's design matrix (models × train images × concepts) is kept on the device up to this size
SPARSE_MATERIALISE_BYTES = 4 << 30
# a checkpoint is written after the first epoch and then at most this often (an epoch of a small dataset
# takes milliseconds; writing every epoch would cost more than the training)
CHECKPOINT_SECONDS = 10.0


@dataclass
class TrainingData:
    """Everything a run reads: cached image embeddings per split, concept and class text embeddings."""

    features: dict[str, torch.Tensor]   # split -> (N, D) float32, L2-normalised
    labels: dict[str, torch.Tensor]     # split -> (N,) int64
    concept_vectors: torch.Tensor       # (C, D)
    class_vectors: torch.Tensor         # (K, D)
    logit_scale: float
    concepts: list[str]
    classes: list[str]
    truth: dict[str, np.ndarray | None] = field(default_factory=dict)  # split -> (N, C) bool
    record: dict = field(default_factory=dict)  # provenance: cache, backbone, concept set

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """ψ = s · cos(image, concept) for (N, D) normalised features."""
        return self.logit_scale * features @ self.concept_vectors.to(features.device).T


@dataclass
class TrainResult:
    model: ConceptBottleneckModel | None
    metrics: dict
    history: list[dict]
    best_epoch: int
    extra: dict = field(default_factory=dict)


class _Scores:
    """ψ of one split on the device, precomputed when it fits, else computed per request."""

    def __init__(self, data: TrainingData, split: str, device):
        self.data, self.device = data, device
        features = data.features[split]
        self.labels = data.labels[split].to(device)
        size = features.shape[0] * data.concept_vectors.shape[0] * 4
        self.precomputed = data.scores(features.to(device)) if size <= PRECOMPUTE_BYTES else None
        self.features = None if self.precomputed is not None else features.to(device)

    def __len__(self):
        return int(self.labels.shape[0])

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """ψ of the rows `index` (any shape, on the device) -> index.shape + (C,)."""
        if self.precomputed is not None:
            return self.precomputed[index]
        return self.data.scores(self.features[index])

    def rows(self, start: int, stop: int) -> torch.Tensor:
        if self.precomputed is not None:
            return self.precomputed[start:stop]
        return self.data.scores(self.features[start:stop])


def _stack_forward(scores: torch.Tensor, cbl: torch.Tensor, head: torch.Tensor):
    """Activations (S×B×C) and dense-head logits (S×B×K) of S stacked models; `scores` is S×B×C, or B×C
    shared by every model."""
    if scores.dim() == 2:
        scores = scores.expand(cbl.shape[0], -1, -1)
    activations = torch.bmm(scores, cbl.transpose(1, 2))
    return activations, torch.bmm(activations, head.transpose(1, 2))


def _initial_cbl(concepts: int, classes: int, config: TrainConfig) -> torch.Tensor:
    """A model's CBL before training, drawn (for --cbl-init random) from torch's generator seeded with the
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


def member_configs(base: TrainConfig, members: list[tuple[str, int]]) -> list[TrainConfig]:
    configs = [base.for_method(loss, seed) for loss, seed in members]
    for config in configs:
        config.validate()
        if config.loss in BASELINES:
            raise CbmctlError(f"{config.loss} is a baseline, not a CBM")
    return configs


class _Stack:
    """The training state of S stacked models: parameters, optimizers, generators, early stopping."""

    def __init__(self, data: TrainingData, configs: list[TrainConfig], device):
        base = configs[0]
        c, k, s = len(data.concepts), len(data.classes), len(configs)
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
        self.identity = checkpoint_identity(data, configs)
        groups: dict[tuple, list[int]] = {}
        for m, config in enumerate(configs):
            groups.setdefault((config.loss, config.gumbel_form, config.tau, config.hard, config.l1_lambda), []).append(m)
        self.loss_groups = [(key, torch.tensor(index, device=device), index) for key, index in groups.items()]

    # checkpoints: tensors in safetensors, everything else in JSON, never a pickle
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {"cbl": self.cbl.detach(), "head": self.head.detach(), "best_cbl": self.best_cbl,
                   "best_head": self.best_head}
        tensors.update({f"order_rng.{m}": g.get_state() for m, g in enumerate(self.order)})
        tensors.update({f"noise_rng.{m}": g.get_state() for m, g in enumerate(self.noise)})
        plain = {"epoch": self.epoch, "history": self.history, "best_loss": self.best_loss,
                 "best_epoch": self.best_epoch, "stopped": self.stopped,
                 "members": [[c.loss, c.seed] for c in self.configs], "identity": self.identity}
        for name, optimizer in (("cbl_optimizer", self.cbl_optimizer), ("head_optimizer", self.head_optimizer)):
            state = optimizer.state_dict()
            for index, values in state["state"].items():
                for key, value in values.items():
                    tensors[f"{name}.{index}.{key}"] = torch.as_tensor(value)
            plain[name] = {"param_groups": state["param_groups"],
                           "keys": {str(i): sorted(v) for i, v in state["state"].items()}}
        return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, plain

    def load(self, tensors: dict[str, torch.Tensor], plain: dict, where: str = "the checkpoint") -> None:
        """Continue from a checkpoint, every value of which is checked first (a run directory may have been
        sent by anyone, or a checkpoint copied in from another run): a one-line error naming `where`."""
        def refuse(problem: str):
            raise CbmctlError(f"{where}: {problem}; remove the run's checkpoint.* files to restart it")
        if plain.get("identity") != self.identity:
            refuse("written for another dataset, concept set, backbone or training configuration (or by an "
                   "older cbmctl)")
        if plain.get("members") != [[c.loss, c.seed] for c in self.configs]:
            refuse("written for other methods or seeds")
        s, epochs = len(self.configs), self.configs[0].epochs
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
        expected = {"cbl": self.cbl, "head": self.head, "best_cbl": self.best_cbl, "best_head": self.best_head}
        expected.update({f"order_rng.{m}": g.get_state() for m, g in enumerate(self.order)})
        expected.update({f"noise_rng.{m}": g.get_state() for m, g in enumerate(self.noise)})
        optimizer_states = {}
        for name, optimizer in (("cbl_optimizer", self.cbl_optimizer), ("head_optimizer", self.head_optimizer)):
            saved, fresh = plain.get(name), optimizer.state_dict()
            keys = saved.get("keys") if isinstance(saved, dict) else None
            allowed = sorted(OPTIMIZER_STATE[self.configs[0].optimizer])
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
            optimizer_states[name] = {0: {key: f"{name}.0.{key}" for key in keys.get("0", [])}} if keys else {}
        for key, like in expected.items():
            tensor = tensors.get(key)
            if tensor is None:
                refuse(f"checkpoint.safetensors lacks {key}")
            if tuple(tensor.shape) != tuple(like.shape) or (like.dtype == torch.uint8) != (tensor.dtype == torch.uint8):
                refuse(f"checkpoint.safetensors: {key} has shape {tuple(tensor.shape)} ({tensor.dtype}), expected "
                       f"{tuple(like.shape)}")
            if tensor.dtype != torch.uint8 and not bool(torch.isfinite(tensor.float()).all()):
                refuse(f"checkpoint.safetensors: {key} holds NaN or infinite values")
            if key in ("cbl", "head", "best_cbl", "best_head") and float(tensor.abs().max()) > MAX_WEIGHT:
                refuse(f"checkpoint.safetensors: {key} holds weights beyond ±{MAX_WEIGHT:g}, which a model may not "
                       "hold")
            if key.endswith(".step") and not (float(tensor) >= 0 and float(tensor) == int(tensor)):
                refuse(f"checkpoint.safetensors: {key} must be a whole number ≥ 0")
            if key.endswith("exp_avg_sq") and float(tensor.min()) < 0:
                refuse(f"checkpoint.safetensors: {key} holds negative second moments")
        try:
            with torch.no_grad():
                for name in ("cbl", "head", "best_cbl", "best_head"):
                    getattr(self, name).copy_(tensors[name])
            for m, g in enumerate(self.order):
                g.set_state(tensors[f"order_rng.{m}"])
            for m, g in enumerate(self.noise):
                g.set_state(tensors[f"noise_rng.{m}"].to(g.device) if g.device.type != "cpu"
                            else tensors[f"noise_rng.{m}"])
            for name, optimizer in (("cbl_optimizer", self.cbl_optimizer), ("head_optimizer", self.head_optimizer)):
                state = {i: {key: tensors[stored].float() if key == "step" else tensors[stored].to(self.device)
                             for key, stored in values.items()} for i, values in optimizer_states[name].items()}
                # the hyperparameters are the run's own (checked equal above), never taken from the file
                optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
        except (RuntimeError, ValueError, TypeError) as error:
            refuse(f"damaged ({str(error).splitlines()[0][:80]})")
        self.epoch = epoch
        self.history = history
        self.best_loss = [float(v) for v in best_loss]
        self.best_epoch = list(best_epoch)
        self.stopped = list(stopped)


# the per-parameter state each optimizer keeps (what a checkpoint's optimizer tensors must be)
OPTIMIZER_STATE = {"adam": ("step", "exp_avg", "exp_avg_sq"), "adamw": ("step", "exp_avg", "exp_avg_sq"),
                   "sgd": ("momentum_buffer",)}
HISTORY_KEYS = {"epoch", "loss", "cbl_loss", "ce", "train_top1", "val_loss", "val_top1", "lr"}


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


def checkpoint_identity(data: TrainingData, configs: list[TrainConfig]) -> str:
    """What a checkpoint belongs to: the data (dataset fingerprint and split), backbone, concepts, classes and
    every training option of every member but the device and thread count (which --resume may change, and
    which do not change the result) and the epoch limit (the library may continue a run for longer). A
    checkpoint copied in from another run or dataset does not match."""
    import hashlib
    import json
    record = data.record
    dataset, backbone = record.get("dataset", {}), record.get("backbone", {})
    identity = {
        "dataset": [dataset.get(k) for k in ("dataset_fingerprint", "val_fraction", "val_seed")],
        "backbone": [backbone.get(k) for k in ("backbone_model", "weights_sha256")],
        "concepts": data.concepts, "classes": data.classes, "logit_scale": data.logit_scale,
        "sizes": {split: int(labels.shape[0]) for split, labels in data.labels.items()},
        "configs": [{k: v for k, v in asdict(config).items() if k not in ("device", "epochs", "threads")} for config in configs],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) of ceil(n / batch_size) batches of near-equal size (none larger than batch_size): the
    batch-level objectives (contrastive, Gumbel, cos³) never see a tiny leftover batch (150 images in
    batches of 128 become 75 + 75, not 128 + 22)."""
    count = max(1, math.ceil(n / batch_size))
    edges = [round(i * n / count) for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _learning_rate_factor(config: TrainConfig, epoch: int) -> float:
    if config.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (epoch - 1) / max(config.epochs, 1)))
    return 1.0


def train_many(data: TrainingData, base: TrainConfig, members: list[tuple[str, int]],
               checkpoint_dir: Path | None = None, log=None, warn=None) -> list[TrainResult]:
    """Train one CBM per (loss, seed) member, all stacked in one tensor program (see the module docstring),
    then fit the sparse heads and evaluate; with `checkpoint_dir`, a checkpoint there is written while
    training and resumed from when present. `warn` gets the warning lines (`log` when not given). torch
    uses `base.threads` threads meanwhile (cbmctl.threads); the caller's thread count and random state are
    as they were afterwards."""
    from cbmctl.backbones import resolve_device
    from cbmctl.resources import check_training
    from cbmctl.threads import torch_threads
    configs = member_configs(base, members)
    device = resolve_device(base.device)
    check_training(len(configs), len(data.concepts), len(data.classes),
                   {split: int(labels.shape[0]) for split, labels in data.labels.items()}, base.batch_size,
                   int(data.concept_vectors.shape[1]), device)
    with torch_threads(base.threads):
        stack = train_stack(data, configs, device, checkpoint_dir, log)
        return _finish(data, configs, stack, device, log, warn)


def train_stack(data: TrainingData, configs: list[TrainConfig], device, checkpoint_dir: Path | None = None,
                log=None) -> _Stack:
    """The epochs of train_many: the stacked CBLs and dense heads, each model stopped on its validation loss."""
    from cbmctl import runs
    from cbmctl.files import fault_point
    from cbmctl.logs import sayer
    log = sayer(log)
    base = configs[0]
    train, val = _Scores(data, "train", device), _Scores(data, "val", device)
    stack = _Stack(data, configs, device)
    saved = runs.load_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    if saved is not None:
        stack.load(*saved, where=str(Path(checkpoint_dir) / f"{runs.CHECKPOINT}.json"))
        log(f"resuming after epoch {stack.epoch}")
    s, n = len(configs), len(train)
    saved_at, saved_epoch = -1.0, stack.epoch
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    for epoch in range(stack.epoch + 1, base.epochs + 1):
        if all(stack.stopped):
            break
        factor = _learning_rate_factor(base, epoch)
        for optimizer, lr in ((stack.cbl_optimizer, base.cbl_lr), (stack.head_optimizer, base.lr)):
            for group in optimizer.param_groups:
                group["lr"] = lr * factor
        permutations = torch.stack([torch.randperm(n, generator=g) for g in stack.order]).to(device)
        sums = torch.zeros(s, 4, dtype=torch.float64, device=device)  # loss, cbl loss, ce, correct
        for start, stop in batch_bounds(n, base.batch_size):
            index = permutations[:, start:stop]
            scores, labels = train.gather(index), train.labels[index]
            with autocast:
                activations, logits = _stack_forward(scores, stack.cbl, stack.head)
            activations, logits = activations.float(), logits.float()
            objective = torch.zeros(s, device=device)
            for (loss, form, tau, hard, l1_lambda), index_tensor, index_list in stack.loss_groups:
                every = len(index_list) == s  # one objective for all: no gathering of the stack
                value = cbl_loss(loss, z=activations if every else activations[index_tensor],
                                 scores=scores if every else scores[index_tensor],
                                 cbl_weight=stack.cbl if every else stack.cbl[index_tensor], gumbel_form=form,
                                 tau=tau, hard=hard, l1_lambda=l1_lambda,
                                 generator=[stack.noise[m] for m in index_list])
                objective = value if every else objective.index_put((index_tensor,), value)
            cross_entropy = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(s, -1).mean(1)
            total = objective + cross_entropy
            if not bool(torch.isfinite(total).all()):
                bad = [configs[m] for m in range(s) if not torch.isfinite(total[m])]
                raise CbmctlError(f"the {bad[0].loss} loss (seed {bad[0].seed}) became "
                                  f"{float(total[configs.index(bad[0])].detach())} at epoch {epoch}; lower "
                                  "--lr/--cbl-lr" + (" or raise --tau" if bad[0].loss == "gumbel" else ""))
            stack.cbl_optimizer.zero_grad(set_to_none=True)
            stack.head_optimizer.zero_grad(set_to_none=True)
            total.sum().backward()
            stack.cbl_optimizer.step()
            stack.head_optimizer.step()
            count = labels.shape[1]
            with torch.no_grad():
                sums += torch.stack([total, objective, cross_entropy,
                                     (logits.argmax(-1) == labels).double().sum(1) / count], 1).double() * count
        with torch.no_grad():
            val_activations, val_logits = _stack_forward(val.rows(0, len(val)), stack.cbl, stack.head)
            val_losses = [float(F.cross_entropy(val_logits[m].float(), val.labels)) if len(val) else 0.0
                          for m in range(s)]
            val_top1 = [M.topk_accuracy(val_logits[m].float(), val.labels, 1) for m in range(s)]
        sums = (sums / n).tolist()
        for m in range(s):
            if stack.stopped[m]:
                continue
            row = {"epoch": epoch, "loss": sums[m][0], "cbl_loss": sums[m][1], "ce": sums[m][2],
                   "train_top1": sums[m][3], "val_loss": val_losses[m], "val_top1": val_top1[m],
                   "lr": base.lr * factor}
            stack.history[m].append(row)
            if val_losses[m] < stack.best_loss[m]:
                stack.best_loss[m], stack.best_epoch[m] = val_losses[m], epoch
                with torch.no_grad():
                    stack.best_cbl[m].copy_(stack.cbl[m])
                    stack.best_head[m].copy_(stack.head[m])
            if epoch >= configs[m].first_stop_epoch() and epoch - stack.best_epoch[m] >= configs[m].patience:
                stack.stopped[m] = True
        stack.epoch = epoch
        log(_epoch_line(epoch, configs, stack))
        if checkpoint_dir is not None and (time.monotonic() - saved_at >= CHECKPOINT_SECONDS or saved_at < 0):
            runs.save_checkpoint(checkpoint_dir, *stack.state())
            saved_at, saved_epoch = time.monotonic(), epoch
            fault_point("train:checkpoint-written")
    if checkpoint_dir is not None and saved_epoch != stack.epoch:
        # the trained CBLs survive a crash in the sparse fit that follows
        runs.save_checkpoint(checkpoint_dir, *stack.state())
    return stack


def _epoch_line(epoch: int, configs, stack: _Stack) -> str:
    if len(configs) == 1:
        row = stack.history[0][-1] if stack.history[0] else {}
        return (f"epoch {epoch:3d}  loss {row.get('loss', 0):.4f} (cbl {row.get('cbl_loss', 0):.4f}, "
                f"ce {row.get('ce', 0):.4f})  train {row.get('train_top1', 0):.4f}  val loss "
                f"{row.get('val_loss', 0):.4f}  val {row.get('val_top1', 0):.4f}")
    running = sum(not s for s in stack.stopped)
    return f"epoch {epoch:3d}  {running}/{len(configs)} models still training"


def _model(data: TrainingData, cbl: torch.Tensor, kind: str, weight: torch.Tensor, bias=None, mean=None, std=None):
    model = ConceptBottleneckModel(len(data.concepts), len(data.classes), "none", kind)
    model.set_head(kind, weight.cpu(), None if bias is None else bias.cpu(), None if mean is None else mean.cpu(),
                   None if std is None else std.cpu())
    with torch.no_grad():
        model.cbl.weight.copy_(cbl.cpu())
    return model.eval()


def _finish(data: TrainingData, configs: list[TrainConfig], stack: _Stack, device, log, warn=None
            ) -> list[TrainResult]:
    """Best-epoch CBLs -> the sparse path on their activations -> each model's chosen head and metrics."""
    from cbmctl.logs import LOGGER, sayer
    from cbmctl.sparse import SparseConfig, cap_warning, fit_path, solver_record, top1
    warn = warn or (log if log is not None else LOGGER.warning)
    log = sayer(log)
    base = configs[0]
    c = len(data.concepts)
    cbl, dense_head = stack.best_cbl, stack.best_head
    sources = {split: _Scores(data, split, device) for split in ("train", "val", "test")}
    mean, std, faithfulness = _activation_moments(sources["train"], cbl)
    # LF-CBM's interpretability cutoff: a unit whose activation no longer follows its concept's score may not
    # be named by the sparse head as that concept
    usable = faithfulness >= base.faithfulness_cutoff
    offered = usable.sum(1).tolist()
    for m, config in enumerate(configs):
        if not offered[m]:
            warn(f"warning: no CBL unit of {config.loss} (seed {config.seed}) follows its concept with correlation "
                f"≥ {base.faithfulness_cutoff:g}: its sparse head can use no concept (lower --faithfulness-cutoff)")
    if base.nec > min(offered):
        warn(f"warning: --nec {base.nec} asks for more concepts per class than the {min(offered)} units (of {c}) "
            f"that pass the faithfulness cutoff {base.faithfulness_cutoff:g} in some model: its head holds every "
            "weight the path reaches instead (the NEC metrics report the real count)")
    designs = {split: _design(source, cbl, mean, std, usable) for split, source in sources.items()}
    # budgets above C concepts per class are every weight (as VLG-CBM's truncation does)
    levels = sorted({min(level, c) for level in M.NEC_LEVELS} | {min(config.nec, c) for config in configs})
    log(f"fitting the sparse head{'s' * (len(configs) > 1)}: an elastic-net path on the frozen CBL's activations, "
        f"then NEC {', '.join(map(str, levels))} each truncated and refitted")
    started = time.monotonic()
    sparse_config = SparseConfig(alpha=base.sparse_alpha)
    path = fit_path(designs["train"], len(data.classes), levels, sparse_config, designs["val"], designs["test"],
                    log=log)
    log(f"sparse head{'s' * (len(configs) > 1)} fitted in {time.monotonic() - started:.1f} s "
        f"({max(len(points) for points in path.points)} path points)")
    solver = solver_record(path, sparse_config)
    capped = cap_warning(path, sparse_config, [f"{c.loss} seed {c.seed}" for c in configs])
    if capped:
        warn(f"warning: {capped}")
    # test top-1 at every NEC level, for every model at once, from the standardised activations
    level_top1 = {level: top1(designs["test"], weight, bias) for level, (weight, bias) in path.heads.items()}
    results = []
    for m, config in enumerate(configs):
        dense = _model(data, cbl[m], "dense", dense_head[m])
        weight, bias = path.heads[min(config.nec, c)]
        sparse = _model(data, cbl[m], "sparse", weight[m], bias[m], mean[m], std[m])
        chosen = sparse if config.head == "sparse" else dense
        metrics = {split: evaluate_model(chosen, sources[split], data, split, config) for split in ("test", "val")}
        metrics["dense"] = {split: evaluate_head(dense, sources[split]) for split in ("val", "test")}
        metrics["sparse"] = {"nec": M.nec(sparse.class_concept_weights()), "nec_requested": config.nec,
                             "units_offered": int(offered[m]),
                             **{split: evaluate_head(sparse, sources[split]) for split in ("val", "test")}}
        accuracy_at = {level: float(level_top1[min(level, c)][m]) for level in M.NEC_LEVELS}
        reached = {str(level): M.nec(path.heads[min(level, c)][0][m]) for level in M.NEC_LEVELS}
        history, best = stack.history[m], stack.best_epoch[m]
        test = metrics["test"]
        test["dense_top1"] = metrics["dense"]["test"]["top1"]
        test[f"nec{config.nec}_top1"] = metrics["sparse"]["test"]["top1"]
        test["nec5_top1"] = accuracy_at[5]
        test["anec"] = M.anec(accuracy_at)
        metrics.update({
            "head": config.head, "nec_accuracy": {str(k): v for k, v in accuracy_at.items()}, "nec_reached": reached,
            "anec": test["anec"], "path": path.points[m], "refit": {str(k): v[m] for k, v in path.refit.items()},
            "model": {**M.cbl_weight_metrics(cbl[m], stack.initial_cbl[m]),
                      "faithful_units": int(usable[m].sum()),
                      "faithfulness_mean": float(faithfulness[m].mean())},
            "unfaithful_units": [data.concepts[j] for j in (~usable[m]).nonzero().flatten().tolist()],
            "sparse_solver": solver[m],
            "best_epoch": best, "epochs_run": history[-1]["epoch"] if history else 0,
            "stopped_early": bool(stack.stopped[m]),
            "ce_at_best": history[best - 1]["ce"] if best else None,
        })
        results.append(TrainResult(chosen, metrics, history, best, {"dense": dense, "sparse": sparse}))
    return results


def _activation_moments(source: _Scores, cbl: torch.Tensor, chunk: int = 8192):
    """Per model, over the train split: the mean and standard deviation of each CBL activation (σ of a
    constant activation is taken as 1: its standardised value is 0 and the head never uses it), and each
    unit's faithfulness — the correlation of unit j's activation with concept j's own CLIP score ψ_j."""
    s, c = cbl.shape[0], cbl.shape[1]
    sums = {name: torch.zeros(s, c, dtype=torch.float64, device=cbl.device) for name in ("a", "aa", "p", "pp", "ap")}
    with torch.no_grad():
        for start in range(0, len(source), chunk):
            scores = source.rows(start, min(start + chunk, len(source)))
            a = _stack_forward(scores, cbl, cbl[:, :0])[0].double()
            p = scores.double()[None]
            for name, value in (("a", a), ("aa", a * a), ("p", p), ("pp", p * p), ("ap", a * p)):
                sums[name] += value.sum(1)
    n = max(len(source), 1)
    mean, score_mean = sums["a"] / n, sums["p"] / n
    variance = (sums["aa"] / n - mean * mean).clamp_min(0)
    score_variance = (sums["pp"] / n - score_mean * score_mean).clamp_min(0)
    covariance = sums["ap"] / n - mean * score_mean
    faithfulness = covariance / (variance * score_variance).sqrt().clamp_min(1e-30)
    std = variance.sqrt()
    std = torch.where(std > 1e-6 * std.amax(1, keepdim=True).clamp_min(1e-30), std, torch.ones_like(std))
    return mean.float(), std.float(), faithfulness.float()


def _design(source: _Scores, cbl: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, usable: torch.Tensor):
    """The sparse head's input: standardised activations, 0 for the units it may not use (`usable`, S×C)."""
    from cbmctl.sparse import Design
    keep = usable.float()[:, None, :]

    def produce(start, stop):
        with torch.no_grad():
            a = _stack_forward(source.rows(start, stop), cbl, cbl[:, :0])[0]
            return (a - mean[:, None, :]) / std[:, None, :] * keep
    size = cbl.shape[0] * len(source) * cbl.shape[1] * 4
    return Design(produce, source.labels, 8192, materialise=size <= SPARSE_MATERIALISE_BYTES)


def _model_outputs(model: ConceptBottleneckModel, source: _Scores, chunk: int = 8192):
    activations, logits = [], []
    with torch.no_grad():
        for start in range(0, len(source), chunk):
            a, z = model(source.rows(start, min(start + chunk, len(source))))
            activations.append(a.float())
            logits.append(z.float())
    if not activations:
        c, k = model.num_concepts, model.num_classes
        return torch.zeros(0, c, device=source.device), torch.zeros(0, k, device=source.device)
    return torch.cat(activations), torch.cat(logits)


def evaluate_head(model: ConceptBottleneckModel, source: _Scores) -> dict:
    """Accuracy and calibration of a model on one split."""
    _, logits = _model_outputs(model.to(source.device).eval(), source)
    return M.classification_metrics(logits, source.labels, model.num_classes)


def evaluate_model(model: ConceptBottleneckModel, source: _Scores, data: TrainingData, split: str,
                   config: TrainConfig) -> dict:
    """Accuracy, calibration, sparsity and faithfulness of `model` on one split."""
    activations, logits = _model_outputs(model.to(source.device).eval(), source)
    labels = source.labels
    predicted = logits.argmax(dim=1)
    contributions = model.contributions(activations, predicted)
    result = {**M.classification_metrics(logits, labels, model.num_classes), **M.activation_sparsity(activations),
              "nec": M.nec(model.class_concept_weights()),
              "coverage90_mean": float(M.coverage(contributions, 0.9).float().mean())}
    truth = data.truth.get(split)
    if truth is not None:
        truth = torch.as_tensor(truth, device=activations.device)
        k = config.precision_k
        result[f"concept_precision@{k}"] = M.concept_precision_at_k(activations, truth, k)
        result[f"explanation_precision@{k}"] = M.explanation_precision_at_k(
            contributions, model.head_inputs(activations), truth, k)
    return result


def evaluate_splits(model, data: TrainingData, config: TrainConfig, splits=("test", "val")) -> dict:
    """evaluate_model on each split, with the model on the configured device."""
    from cbmctl.backbones import resolve_device
    device = resolve_device(config.device)
    model = model.to(device).eval()
    return {split: evaluate_model(model, _Scores(data, split, device), data, split, config) for split in splits}


def train_cbm(data: TrainingData, config: TrainConfig, checkpoint_dir: Path | None = None, log=None) -> TrainResult:
    """One CBM: the CBL objective plus cross-entropy, the epoch chosen by validation loss, then its head."""
    config.validate()
    return train_many(data, config, [(config.loss, config.seed)], checkpoint_dir, log)[0]


def run_baseline(data: TrainingData, name: str, log=None) -> TrainResult:
    """The linear probe (on image embeddings, L2 chosen by validation loss) or zero-shot CLIP, on the same split;
    `log` hears how far a long probe fit is."""
    from cbmctl.probe import fit_linear_probe
    if name == "zero-shot":
        logits = {s: data.logit_scale * data.features[s] @ data.class_vectors.T for s in ("val", "test")}
        extra = {}
    elif name == "linear-probe":
        probe = fit_linear_probe(data.features["train"].numpy(), data.labels["train"].numpy(),
                                 data.features["val"].numpy(), data.labels["val"].numpy(), len(data.classes),
                                 log=log)
        logits = {s: torch.as_tensor(probe.logits(data.features[s].numpy())) for s in ("val", "test")}
        extra = {"l2": probe.l2}
    else:
        raise CbmctlError(f"unknown baseline {name!r}")
    metrics = {s: M.classification_metrics(logits[s], data.labels[s], len(data.classes)) for s in ("val", "test")}
    metrics.update(extra)
    return TrainResult(None, metrics, [], 0)


def describe(config: TrainConfig) -> str:
    if config.loss == "gumbel":
        return f"gumbel ({config.gumbel_form}, τ={config.tau:g}{', hard' if config.hard else ''})"
    if config.loss == "l1":
        return f"l1 (λ={config.l1_lambda:g})"
    return config.loss


def check_train_labels(labels: np.ndarray, classes: list[str], where, warn=None) -> None:
    """A train split that cannot support a classifier is an error (images of fewer than two classes: it
    would train to chance and report it as a result); classes without a training image are a warning naming
    them (the model cannot predict them, and their test images count as errors)."""
    from cbmctl.cache import name_some, uncovered_classes
    from cbmctl.logs import sayer
    missing = uncovered_classes(labels, classes)
    covered = len(classes) - len(missing)
    if covered < 2:
        raise CbmctlError(f"{where}: the train split holds images of {covered} of the {len(classes)} classes; a "
                          "classifier needs training images of at least two (check the dataset's labels and splits)")
    if missing:
        sayer(warn)(f"warning: {len(missing)} of the {len(classes)} classes have no training image "
                    f"({name_some(missing)}): the model cannot learn them, and their test images count as errors")


def prepare_data(cache, concept_set, random_concepts: bool = False, concept_map=None, device="auto", warn=None
                 ) -> TrainingData:
    """Read a cache and a concept set into TrainingData. Concept text embeddings come from the cache's text
    store; only when they are not there yet is the cache's backbone loaded to encode (and store) them.
    `warn` gets one line per thing the user should know (classes without training images)."""
    from cbmctl.concept_truth import read_mapping, truth_matrix
    from cbmctl.concepts import concept_vectors, random_concept_set
    if random_concepts:
        concept_set = random_concept_set(concept_set)
    splits = {s: cache.split(s) for s in ("train", "val", "test")}
    for name, split in splits.items():
        if len(split.labels) == 0:
            raise CbmctlError(f"{cache.path}: the {name} split is empty")
    classes = cache.classes
    check_train_labels(splits["train"].labels, classes, cache.path, warn)
    vectors = concept_vectors(cache, concept_set, device)
    mapping = read_mapping(concept_map) if concept_map else None
    names = cache.attribute_names
    return TrainingData(
        features={s: torch.from_numpy(d.embeddings.astype(np.float32)) for s, d in splits.items()},
        labels={s: torch.from_numpy(d.labels.astype(np.int64)) for s, d in splits.items()},
        concept_vectors=torch.from_numpy(np.asarray(vectors, np.float32)),
        class_vectors=torch.from_numpy(cache.class_embeddings().astype(np.float32)),
        logit_scale=float(cache.attrs["logit_scale"]),
        concepts=list(concept_set.concepts), classes=classes,
        truth={s: truth_matrix(names, d.attributes, concept_set.concepts, mapping) for s, d in splits.items()},
        record={"cache": str(Path(cache.path).resolve()),
                "backbone": {k: cache.attrs[k] for k in ("backbone_model", "backbone_pretrained", "weights_sha256")},
                "dataset": {k: cache.attrs[k] for k in ("dataset_name", "dataset_root", "dataset_fingerprint",
                                                        "val_fraction", "val_seed")},
                "concept_set": concept_set.record(), "logit_scale": float(cache.attrs["logit_scale"])},
    )
