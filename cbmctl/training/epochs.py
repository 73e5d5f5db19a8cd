"""The stacked epoch loop: every model of a Stack trained on the CBL objective plus cross-entropy, its best
epoch kept by validation loss, each stopped on its own; checkpoints written through a store while it runs."""
from __future__ import annotations

import contextlib
import math
import time

import torch
import torch.nn.functional as F

from cbmctl import metrics as M
from cbmctl.errors import CbmctlError
from cbmctl.losses import cbl_loss
from cbmctl.spec import TrainConfig
from cbmctl.training.checkpoint import CheckpointStore, checkpoint_identity, checkpoint_state, restore
from cbmctl.training.data import ScoreSource, TrainingData
from cbmctl.training.stack import Stack, stack_forward

# a checkpoint is written after the first epoch and then at most this often (an epoch of a small dataset
# takes milliseconds; writing every epoch would cost more than the training)
CHECKPOINT_SECONDS = 10.0


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


def train_stack(data: TrainingData, configs: list[TrainConfig], device: torch.device,
                checkpoints: CheckpointStore | None = None, log=None) -> Stack:
    """The epochs of train_many: the stacked CBLs and dense heads, each model stopped on its validation loss;
    continued from `checkpoints` when it holds one, and written there while training."""
    from cbmctl.files import fault_point
    from cbmctl.logs import sayer
    log = sayer(log)
    base = configs[0]
    train, val = ScoreSource(data, "train", device), ScoreSource(data, "val", device)
    stack = Stack(len(data.concepts), len(data.classes), configs, device)
    identity = checkpoint_identity(data, configs)
    saved = checkpoints.load() if checkpoints is not None else None
    if saved is not None:
        restore(stack, *saved, identity, where=checkpoints.where)
        log(f"resuming after epoch {stack.epoch}")
    saved_at, saved_epoch = -1.0, stack.epoch
    for epoch in range(stack.epoch + 1, base.epochs + 1):
        if all(stack.stopped):
            break
        factor = _learning_rate_factor(base, epoch)
        for optimizer, lr in ((stack.cbl_optimizer, base.cbl_lr), (stack.head_optimizer, base.lr)):
            for group in optimizer.param_groups:
                group["lr"] = lr * factor
        sums = _train_epoch(stack, train, epoch)
        _end_epoch(stack, epoch, sums, val, base.lr * factor)
        log(_epoch_line(epoch, configs, stack))
        if checkpoints is not None and (time.monotonic() - saved_at >= CHECKPOINT_SECONDS or saved_at < 0):
            checkpoints.save(*checkpoint_state(stack, identity))
            saved_at, saved_epoch = time.monotonic(), epoch
            fault_point("train:checkpoint-written")
    if checkpoints is not None and saved_epoch != stack.epoch:
        # the trained CBLs survive a crash in the sparse fit that follows
        checkpoints.save(*checkpoint_state(stack, identity))
    return stack


def _train_epoch(stack: Stack, train: ScoreSource, epoch: int) -> list[list[float]]:
    """One pass over the train split in each model's own batch order; per model, the epoch's mean loss, CBL
    loss, cross-entropy and top-1."""
    s, n, device = len(stack.configs), len(train), stack.device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    permutations = torch.stack([torch.randperm(n, generator=g) for g in stack.order]).to(device)
    sums = torch.zeros(s, 4, dtype=torch.float64, device=device)  # loss, cbl loss, ce, correct
    for start, stop in batch_bounds(n, stack.configs[0].batch_size):
        index = permutations[:, start:stop]
        scores, labels = train.gather(index), train.labels[index]
        with autocast:
            activations, logits = stack_forward(scores, stack.cbl, stack.head)
        activations, logits = activations.float(), logits.float()
        objective = _cbl_objective(stack, activations, scores)
        cross_entropy = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(s, -1).mean(1)
        total = objective + cross_entropy
        _check_finite(stack.configs, total, epoch)
        stack.cbl_optimizer.zero_grad(set_to_none=True)
        stack.head_optimizer.zero_grad(set_to_none=True)
        total.sum().backward()
        stack.cbl_optimizer.step()
        stack.head_optimizer.step()
        count = labels.shape[1]
        with torch.no_grad():
            sums += torch.stack([total, objective, cross_entropy,
                                 (logits.argmax(-1) == labels).double().sum(1) / count], 1).double() * count
    return (sums / n).tolist()


def _cbl_objective(stack: Stack, activations: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Each model's CBL loss on a batch, the members sharing an objective computed together."""
    s = len(stack.configs)
    objective = torch.zeros(s, device=stack.device)
    for (loss, form, tau, hard, l1_lambda), index_tensor, index_list in stack.loss_groups:
        every = len(index_list) == s  # one objective for all: no gathering of the stack
        value = cbl_loss(loss, z=activations if every else activations[index_tensor],
                         scores=scores if every else scores[index_tensor],
                         cbl_weight=stack.cbl if every else stack.cbl[index_tensor], gumbel_form=form,
                         tau=tau, hard=hard, l1_lambda=l1_lambda,
                         generator=[stack.noise[m] for m in index_list])
        objective = value if every else objective.index_put((index_tensor,), value)
    return objective


def _check_finite(configs: list[TrainConfig], total: torch.Tensor, epoch: int) -> None:
    if bool(torch.isfinite(total).all()):
        return
    bad = [configs[m] for m in range(len(configs)) if not torch.isfinite(total[m])]
    raise CbmctlError(f"the {bad[0].loss} loss (seed {bad[0].seed}) became "
                      f"{float(total[configs.index(bad[0])].detach())} at epoch {epoch}; lower "
                      "`lr`/`cbl_lr`" + (" or raise `tau`" if bad[0].loss == "gumbel" else ""))


def _end_epoch(stack: Stack, epoch: int, sums: list[list[float]], val: ScoreSource, lr: float) -> None:
    """Validate every model, record the epoch in each running model's history, keep a new best epoch's
    weights, and stop the models whose validation loss stopped falling."""
    s = len(stack.configs)
    with torch.no_grad():
        val_activations, val_logits = stack_forward(val.rows(0, len(val)), stack.cbl, stack.head)
        val_losses = [float(F.cross_entropy(val_logits[m].float(), val.labels)) if len(val) else 0.0
                      for m in range(s)]
        val_top1 = [M.topk_accuracy(val_logits[m].float(), val.labels, 1) for m in range(s)]
    for m, config in enumerate(stack.configs):
        if stack.stopped[m]:
            continue
        row = {"epoch": epoch, "loss": sums[m][0], "cbl_loss": sums[m][1], "ce": sums[m][2],
               "train_top1": sums[m][3], "val_loss": val_losses[m], "val_top1": val_top1[m], "lr": lr}
        stack.history[m].append(row)
        if val_losses[m] < stack.best_loss[m]:
            stack.best_loss[m], stack.best_epoch[m] = val_losses[m], epoch
            with torch.no_grad():
                stack.best_cbl[m].copy_(stack.cbl[m])
                stack.best_head[m].copy_(stack.head[m])
        if epoch >= config.first_stop_epoch() and epoch - stack.best_epoch[m] >= config.patience:
            stack.stopped[m] = True
    stack.epoch = epoch


def _epoch_line(epoch: int, configs, stack: Stack) -> str:
    if len(configs) == 1:
        row = stack.history[0][-1] if stack.history[0] else {}
        return (f"epoch {epoch:3d}  loss {row.get('loss', 0):.4f} (cbl {row.get('cbl_loss', 0):.4f}, "
                f"ce {row.get('ce', 0):.4f})  train {row.get('train_top1', 0):.4f}  val loss "
                f"{row.get('val_loss', 0):.4f}  val {row.get('val_top1', 0):.4f}")
    running = sum(not s for s in stack.stopped)
    return f"epoch {epoch:3d}  {running}/{len(configs)} models still training"
