"""The sparse final layer of LF-CBM / VLG-CBM (shared/METHOD.md, "Final layer"), for S models at once.

Multinomial logistic regression with a bias on standardised concept activations x (train mean and std),
penalised by the elastic net λ [α‖F‖₁ + ½(1 − α)‖F‖₂²], solved by accelerated proximal gradient (FISTA
with adaptive restart; the proximal step soft-thresholds F, the bias is not penalised) along a path of λ
from λ_max, where every weight is zero, downwards, each point warm-started from the previous one.

A budget of N effective concepts per class (NEC = N) is met exactly as VLG-CBM does: the first path point
with at least N·K non-zero weights is truncated globally to its N·K largest |F| and the kept weights are
refitted with the support fixed and no penalty, keeping the refit iterate with the lowest validation loss.

Every step is a full-batch gradient accumulated over row chunks of the design, so the same code runs with
the design materialised on the device (when it fits) or produced chunk by chunk from the cached embeddings
(bounded memory, one extra CBL product per chunk and pass). Models are stacked on a leading dimension S
(seeds, methods): each one follows its own λ path, step size and stopping rule, so a stack gives the
models' solo results."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from cbmctl.errors import CbmctlError

STEP_SHRINK = 0.8     # the step search tries a 1/0.8 longer step every iteration ...
MAX_BACKTRACKS = 60   # ... and halves it until the bound holds (2^60: from any start to any curvature)


@dataclass
class SparseConfig:
    alpha: float = 0.99              # share of the penalty that is l1
    path_points: int = 100          # λ values from λ_max to λ_max · lambda_min_ratio, geometric
    lambda_min_ratio: float = 1e-4
    max_nec: int = 30                # the path stops once every model has this many weights per class
    max_iterations: int = 2000       # per path point
    tolerance: float = 1e-3          # on the largest entry of the gradient mapping (optimality, in gradient units)
    refit_iterations: int = 500
    check_every: int = 1             # refit: validation loss checked this often

    def validate(self) -> None:
        if not 0 < self.alpha <= 1:
            raise CbmctlError(f"the elastic-net alpha must be in (0, 1], got {self.alpha}")
        if self.path_points < 2 or not 0 < self.lambda_min_ratio < 1:
            raise CbmctlError("the λ path needs at least 2 points and a ratio in (0, 1)")


class Design:
    """Standardised activations of S models on one split: chunks of (x: S×n×C, y: n) on the device.

    `produce(start, stop)` gives rows [start, stop) for every model; with `materialise` the whole split is
    produced once and kept (the full-batch fast path), otherwise every pass produces it again."""

    def __init__(self, produce: Callable[[int, int], torch.Tensor], labels: torch.Tensor, chunk: int,
                 materialise: bool):
        self.labels, self.chunk = labels, max(1, int(chunk))
        self._produce = produce
        self._stored = produce(0, len(labels)) if materialise and len(labels) else None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def chunks(self, members: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) chunks; `members` (indices) restricts x to those models."""
        for start in range(0, len(self), self.chunk):
            stop = min(start + self.chunk, len(self))
            x = self._stored[:, start:stop] if self._stored is not None else self._produce(start, stop)
            yield (x if members is None else x[members]), self.labels[start:stop]

    def logits(self, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """S×N×K logits of the split under heads (weight S×K×C, bias S×K)."""
        return torch.cat([torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2)) for x, _ in self.chunks()],
                         dim=1)


def _loss_and_gradient(design: Design, weight: torch.Tensor, bias: torch.Tensor, members=None):
    """Mean cross-entropy of every model (S) and its gradient with respect to weight (S×K×C) and bias (S×K);
    with `members`, weight and bias belong to those models of the design only."""
    s = weight.shape[0]
    grad_w, grad_b = torch.zeros_like(weight), torch.zeros_like(bias)
    loss = torch.zeros(s, dtype=torch.float64, device=weight.device)
    for x, y in design.chunks(members):
        logits = torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2))
        index = y.expand(s, -1)[..., None]
        log_p = logits.log_softmax(dim=-1)
        loss -= log_p.gather(-1, index).sum((1, 2)).double()
        residual = log_p.exp_()
        residual.scatter_add_(-1, index, -torch.ones_like(residual[..., :1]).expand_as(index))
        grad_w.baddbmm_(residual.transpose(1, 2), x)
        grad_b += residual.sum(dim=1)
    n = max(len(design), 1)
    return (loss / n).float(), grad_w / n, grad_b / n


def validation_loss(design: Design, weight: torch.Tensor, bias: torch.Tensor, members=None) -> torch.Tensor:
    """Mean cross-entropy of every model on a split (S), without the gradient."""
    s = weight.shape[0]
    loss = torch.zeros(s, dtype=torch.float64, device=weight.device)
    for x, y in design.chunks(members):
        logits = torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2))
        loss -= logits.log_softmax(dim=-1).gather(-1, y.expand(s, -1)[..., None]).sum((1, 2)).double()
    return (loss / max(len(design), 1)).float()


def curvature_estimate(design: Design, iterations: int = 20) -> torch.Tensor:
    """Per model, where the step search starts: the mean cross-entropy's gradient is Lipschitz with
    λ_max([X 1]ᵀ[X 1] / N) / 2 (the softmax Hessian is at most ½ I); λ_max by power iteration, one pass
    over the design per iteration and no (C+1)² matrix. An estimate from below is safe: the search doubles
    the curvature wherever the quadratic bound fails. (The start matters: the refit that follows the path
    keeps the iterate with the lowest validation loss, so its trajectory is part of the result.)"""
    first = next(design.chunks())[0]
    s, c = first.shape[0], first.shape[-1]
    generator = torch.Generator().manual_seed(0)
    vector = torch.randn(s, c + 1, generator=generator, dtype=torch.float64).to(first.device)
    estimate = torch.ones(s, dtype=torch.float64, device=first.device)
    n = max(len(design), 1)
    for _ in range(iterations):
        vector = vector / vector.norm(dim=1, keepdim=True).clamp_min(1e-30)
        product = torch.zeros_like(vector)
        for x, _ in design.chunks():
            x = x.double()
            projected = torch.bmm(x, vector[:, :-1, None])[..., 0] + vector[:, -1:]  # [X 1] v, S×n
            product[:, :-1] += torch.bmm(projected[:, None, :], x)[:, 0]
            product[:, -1] += projected.sum(1)
        product /= n
        estimate = (product * vector).sum(1)
        vector = product
    return (estimate.clamp_min(1e-12) / 2).float()


def soft_threshold(values: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return values.sign() * (values.abs() - threshold).clamp_min(0)


def proximal_gradient(smooth: Callable, weight: torch.Tensor, bias: torch.Tensor, lipschitz: torch.Tensor,
                      l1: torch.Tensor, l2: torch.Tensor, max_iterations: int, tolerance: float,
                      support: torch.Tensor | None = None, on_check: Callable | None = None, check_every: int = 0):
    """FISTA for min_F,b f(F, b) + l1·‖F‖₁ + ½ l2·‖F‖² (weight S×K×C, bias S×K, not penalised; lipschitz, l1,
    l2 are S-vectors), with a backtracking step per model and gradient-based adaptive restart.

    `smooth(F, b, gradient, members)` gives f per model and, when `gradient`, its gradients, for the models
    `members` (indices; F and b hold just those), so models that have stopped cost nothing. The step 1/L starts
    from `lipschitz`, shrinks a little every iteration and doubles until the quadratic upper bound holds
    at the new point (Beck & Teboulle), so it follows the local curvature, which for a softmax is far below
    the global bound once the classes separate. `support` (S×K×C booleans) fixes the non-zero pattern.
    A model stops when the largest entry of its gradient mapping L·(y − x⁺) falls under `tolerance`;
    stopped models stay frozen, so each model's iterates are the ones it would have alone.
    `on_check(iteration, F, b)` is called every `check_every` iterations and once at the end.
    Returns (weight, bias, iterations per model, final L per model)."""
    s = weight.shape[0]
    x_w, x_b = weight.clone(), bias.clone()
    y_w, y_b = weight.clone(), bias.clone()
    t = torch.ones(s, device=weight.device, dtype=weight.dtype)
    lipschitz = lipschitz.clone().to(weight.dtype)
    active = torch.ones(s, dtype=torch.bool, device=weight.device)
    iterations = torch.zeros(s, dtype=torch.long, device=weight.device)

    def value(w, b, grad, members):
        """f + ½ l2‖F‖² (and its gradients) of the models `members`, computed for those only."""
        sub_w, sub_b, sub_l2 = w[members], b[members], l2[members]
        penalty = 0.5 * sub_l2 * (sub_w * sub_w).sum((1, 2))
        full = torch.zeros(s, dtype=w.dtype, device=w.device)
        if not grad:
            return full.index_copy(0, members, (smooth(sub_w, sub_b, False, members) + penalty).to(w.dtype))
        f, grad_w, grad_b = smooth(sub_w, sub_b, True, members)
        return (full.index_copy(0, members, (f + penalty).to(w.dtype)),
                torch.zeros_like(w).index_copy(0, members, grad_w + sub_l2[:, None, None] * sub_w),
                torch.zeros_like(b).index_copy(0, members, grad_b))

    iteration = 0
    for iteration in range(1, max_iterations + 1):
        members = active.nonzero().flatten()
        f_y, grad_w, grad_b = value(y_w, y_b, True, members)
        lipschitz = torch.where(active, lipschitz * STEP_SHRINK, lipschitz)
        new_w, new_b = y_w.clone(), y_b.clone()
        pending = active.clone()
        for _ in range(MAX_BACKTRACKS):
            step = 1.0 / lipschitz
            candidate_w = soft_threshold(y_w - step[:, None, None] * grad_w, (step * l1)[:, None, None])
            if support is not None:
                candidate_w = candidate_w * support
            candidate_b = y_b - step[:, None] * grad_b
            d_w, d_b = candidate_w - y_w, candidate_b - y_b
            bound = f_y + (grad_w * d_w).sum((1, 2)) + (grad_b * d_b).sum(1) + \
                lipschitz / 2 * ((d_w * d_w).sum((1, 2)) + (d_b * d_b).sum(1))
            f_x = value(candidate_w, candidate_b, False, pending.nonzero().flatten())
            # rounding in f itself must not reject the true step (or accept a far too long one)
            fits = f_x <= bound + 8 * torch.finfo(f_x.dtype).eps * torch.maximum(f_x.abs(), f_y.abs())
            accept = pending & fits
            new_w = torch.where(accept[:, None, None], candidate_w, new_w)
            new_b = torch.where(accept[:, None], candidate_b, new_b)
            pending = pending & ~fits
            if not bool(pending.any()):
                break
            lipschitz = torch.where(pending, lipschitz * 2, lipschitz)
        # the gradient mapping L·(y − x⁺) is zero exactly at a solution: its size measures optimality
        mapping = torch.maximum((y_w - new_w).abs().amax((1, 2)), (y_b - new_b).abs().amax(1)) * lipschitz
        # restart the momentum where the step went against it (O'Donoghue & Candès)
        against = ((y_w - new_w) * (new_w - x_w)).sum((1, 2)) + ((y_b - new_b) * (new_b - x_b)).sum(1) > 0
        t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        momentum = torch.where(against, torch.zeros_like(t), (t - 1) / t_next)
        t = torch.where(active, torch.where(against, torch.ones_like(t), t_next), t)
        keep = active[:, None, None]
        moved_w = new_w + momentum[:, None, None] * (new_w - x_w)
        moved_b = new_b + momentum[:, None] * (new_b - x_b)
        y_w, y_b = torch.where(keep, moved_w, y_w), torch.where(active[:, None], moved_b, y_b)
        x_w, x_b = torch.where(keep, new_w, x_w), torch.where(active[:, None], new_b, x_b)
        iterations += active.long()
        active = active & (mapping > tolerance)
        if not bool(active.any()):
            break
        if on_check is not None and check_every and iteration % check_every == 0:
            on_check(iteration, x_w, x_b)
    if on_check is not None:
        on_check(iteration, x_w, x_b)
    return x_w, x_b, iterations, lipschitz


def cross_entropy(design: Design) -> Callable:
    """The `smooth` callable of proximal_gradient for the mean cross-entropy on a design."""
    def smooth(weight, bias, gradient, members=None):
        if gradient:
            return _loss_and_gradient(design, weight, bias, members)
        return validation_loss(design, weight, bias, members)
    return smooth


def lambda_max(design: Design, num_classes: int, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per model, the smallest λ at which every weight is zero, and the intercept-only bias (log class
    frequencies) that is the solution there: max |∂CE/∂F| at (0, b*) / α."""
    counts = torch.bincount(design.labels, minlength=num_classes).float()
    frequencies = counts / counts.sum()
    bias0 = torch.log(frequencies.clamp_min(1e-12))
    first = next(design.chunks())[0]
    s, c = first.shape[0], first.shape[-1]
    weight0 = torch.zeros(s, num_classes, c, device=first.device)
    bias0 = bias0.to(first.device).expand(s, -1).clone()
    _, grad_w, _ = _loss_and_gradient(design, weight0, bias0)
    return grad_w.abs().amax((1, 2)) / alpha, bias0


@dataclass
class SparsePath:
    """The λ path of S models: per model a list of points {lam, nonzeros, nec, iterations, val_top1, test_top1},
    and per NEC level the truncated-and-refitted heads (weight S×K×C, bias S×K)."""
    points: list[list[dict]]
    heads: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    refit: dict[int, list[dict]] = field(default_factory=dict)


def truncate(weight: torch.Tensor, budget: int) -> torch.Tensor:
    """The weight (K×C) keeping exactly its `budget` largest magnitudes (ties: lower flat index first)."""
    flat = weight.flatten()
    budget = min(int(budget), flat.numel())
    order = torch.sort(flat.abs(), descending=True, stable=True).indices[:budget]
    kept = torch.zeros_like(flat)
    kept[order] = flat[order]
    return kept.view_as(weight)


def fit_path(train: Design, num_classes: int, levels: list[int], config: SparseConfig,
             val: Design | None = None, test: Design | None = None, log=None,
             progress_every: float | None = None) -> SparsePath:
    """The elastic-net path of every model, then for every NEC level the budgeted head (exactly
    level·K non-zero weights, or all C·K when level ≥ C). `log` gets a progress line at most every
    `progress_every` seconds (cbmctl.logs.Progress; None: its default) with the share of the path and of the
    refits done and an estimate of the time left; the path's total is its most points (it usually stops
    earlier, once every model holds the largest budget)."""
    from cbmctl.logs import Progress
    config.validate()
    first = next(train.chunks())[0]
    s, c = first.shape[0], first.shape[-1]
    device = first.device
    k = num_classes
    lam_max, bias = lambda_max(train, k, config.alpha)
    lipschitz = curvature_estimate(train)
    curvature = lipschitz.clone()  # the step search starts each point from the last point's step
    weight = torch.zeros(s, k, c, device=device)
    ratios = torch.logspace(0, math.log10(config.lambda_min_ratio), config.path_points, device=device)
    levels = sorted({min(int(level), c) for level in levels})
    stop_at = max(max(levels), min(config.max_nec, c)) * k
    snapshots: dict[int, list[tuple[torch.Tensor, torch.Tensor] | None]] = {lv: [None] * s for lv in levels}
    points: list[list[dict]] = [[] for _ in range(s)]
    walked = Progress(log, len(ratios), f"sparse path of {s} model{'s' * (s > 1)}", "λ points", progress_every)
    for ratio in ratios:
        lam = lam_max * ratio
        l1, l2 = lam * config.alpha, lam * (1 - config.alpha)
        weight, bias, iterations, curvature = proximal_gradient(cross_entropy(train), weight, bias, curvature,
                                                                l1, l2, config.max_iterations, config.tolerance)
        nonzeros = (weight != 0).sum((1, 2))
        accuracy = {name: top1(design, weight, bias) for name, design in (("val", val), ("test", test))
                    if design is not None}
        for m in range(s):
            points[m].append({"lam": float(lam[m]), "nonzeros": int(nonzeros[m]), "nec": float(nonzeros[m]) / k,
                              "iterations": int(iterations[m]),
                              **{f"{name}_top1": float(values[m]) for name, values in accuracy.items()}})
            for level in levels:
                if snapshots[level][m] is None and int(nonzeros[m]) >= level * k:
                    snapshots[level][m] = (weight[m].clone(), bias[m].clone())
        walked.advance(1)
        if bool((nonzeros >= stop_at).all()):
            break
    path = SparsePath(points)
    refits = Progress(log, len(levels), "sparse heads refitted to their NEC budgets", "budgets", progress_every)
    for level in levels:
        # a model whose path never reached the budget (level ≥ its non-zeros at λ_min) keeps its last point
        chosen = [snap if snap is not None else (weight[m].clone(), bias[m].clone())
                  for m, snap in enumerate(snapshots[level])]
        truncated = torch.stack([truncate(w, level * k) for w, _ in chosen])
        start_bias = torch.stack([b for _, b in chosen])
        path.heads[level], path.refit[level] = refit(train, truncated, start_bias, lipschitz, config, val)
        refits.advance(1)
    return path


def refit(train: Design, weight: torch.Tensor, bias: torch.Tensor, lipschitz: torch.Tensor,
          config: SparseConfig, val: Design | None = None):
    """Refit the non-zero weights (support fixed, no penalty), keeping per model the iterate with the
    lowest validation loss (every check_every iterations, and the starting point); without a validation
    split, the last iterate."""
    support = weight != 0
    s = weight.shape[0]
    zeros = torch.zeros(s, device=weight.device)
    if val is None or len(val) == 0:
        weight, bias, iterations, _ = proximal_gradient(cross_entropy(train), weight, bias, lipschitz, zeros, zeros,
                                                        config.refit_iterations, config.tolerance, support)
        return (weight, bias), [{"iterations": int(i), "chosen_iteration": int(i)} for i in iterations]
    best_loss = validation_loss(val, weight, bias)
    best_w, best_b = weight.clone(), bias.clone()
    chosen = torch.zeros(s, dtype=torch.long, device=weight.device)

    def keep_best(iteration, current_w, current_b):
        nonlocal best_w, best_b, best_loss
        loss = validation_loss(val, current_w, current_b)
        better = loss < best_loss
        best_loss = torch.where(better, loss, best_loss)
        best_w = torch.where(better[:, None, None], current_w, best_w)
        best_b = torch.where(better[:, None], current_b, best_b)
        chosen.copy_(torch.where(better, torch.full_like(chosen, iteration), chosen))

    _, _, iterations, _ = proximal_gradient(cross_entropy(train), weight, bias, lipschitz, zeros, zeros,
                                            config.refit_iterations, config.tolerance, support, on_check=keep_best,
                                            check_every=config.check_every)
    return (best_w, best_b), [{"iterations": int(i), "chosen_iteration": int(c), "val_loss": float(v)}
                              for i, c, v in zip(iterations, chosen, best_loss)]


def top1(design: Design, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    if len(design) == 0:
        return torch.zeros(weight.shape[0])
    predicted = design.logits(weight, bias).argmax(dim=-1)
    return (predicted == design.labels[None]).float().mean(dim=1)
