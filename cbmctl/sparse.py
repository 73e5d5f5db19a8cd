"""The sparse final layer of LF-CBM / VLG-CBM (docs/method.md, "The final layer and the NEC protocol"), for S models at once.

Multinomial logistic regression with a bias on standardised concept activations x (train mean and std),
penalised by the elastic net λ [α‖F‖₁ + ½(1 − α)‖F‖₂²], solved by accelerated proximal gradient (FISTA
with adaptive restart; the proximal step soft-thresholds F, the bias is not penalised) along a path of λ
from λ_max, where every weight is zero, downwards, each point warm-started from the previous one.

Every path point is solved to a stated tolerance, certified at the weights returned: no optimality
condition is violated by more than max(tolerance·λα, tolerance_floor·λ_max·α) (defaults 5 % of the l1
strength, and 0.5 % of the largest one, which rules from λ < 0.1·λ_max on: solving the far end of the
path to 5 % of its tiny λ costs 4–10× the whole path's time and moves no NEC head's accuracy beyond seed
noise, as measured in docs/method.md) — |∇ + λα·sign F| where F ≠ 0, |∇| − λα where F = 0, |∇_b|
(optimality_violation). Each point records its violation (in units of λα) and whether it converged; a
point stopped by the iteration cap (max_iterations) instead is reported (SparsePath.points_at_cap), never
passed off as solved. A model's path ends at the first point with max_nec weights per class or that
explains 99.9 % of its null deviance (glmnet's rule: beyond it the training data are fitted and a point
only costs iterations), else at λ_max·lambda_min_ratio.

A budget of N effective concepts per class (NEC = N): the first path point with at least N·K non-zero
weights is truncated globally to its N·K largest |F| (as VLG-CBM's code does), then — unlike VLG-CBM,
which evaluates the truncated point as it is — the kept weights are refitted with the support fixed and no
penalty, keeping the refit iterate with the lowest validation loss.

Every step is a full-batch gradient accumulated over row chunks of the design, so the same code runs with
the design materialised on the device (when it fits) or produced chunk by chunk from the cached embeddings
(bounded memory, one extra CBL product per chunk and pass). Models are stacked on a leading dimension S
(seeds, methods): each one follows its own λ path, step size and stopping rule, so a stack gives the
models' solo results."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from cbmctl.errors import CbmctlError

STEP_SHRINK = 0.8     # the step search tries a 1/0.8 longer step every iteration ...
MAX_BACKTRACKS = 60   # ... and halves it until the bound holds (2^60: from any start to any curvature)
HEARTBEAT_ITERATIONS = 25  # a path point reports progress this often while it is solved


@dataclass
class SparseConfig:
    alpha: float = 0.99              # share of the penalty that is l1
    path_points: int = 100          # λ values from λ_max to λ_max · lambda_min_ratio, geometric
    lambda_min_ratio: float = 1e-4
    max_nec: int = 30                # a model's path stops once it has this many weights per class ...
    deviance_explained: float = 0.999  # ... or explains this share of its null deviance (glmnet's rule)
    max_iterations: int = 2000       # per path point; a point stopped here is reported as not converged
    tolerance: float = 5e-2          # per path point: the largest optimality violation, as a share of λα ...
    tolerance_floor: float = 5e-3    # ... or of λ_max·α where that is larger (the path's far end)
    refit_iterations: int = 500
    refit_tolerance: float = 1e-3    # the refit (no penalty): the largest gradient entry on the support
    check_every: int = 1             # refit: validation loss checked this often

    def validate(self) -> None:
        if not 0 < self.alpha <= 1:
            raise CbmctlError(f"the elastic-net alpha must be in (0, 1], got {self.alpha}")
        if not (0 < self.tolerance and 0 < self.tolerance_floor):
            raise CbmctlError("the sparse path's tolerances must be positive")
        if not 0 < self.deviance_explained < 1:
            raise CbmctlError(f"the share of deviance that ends the λ path must be in (0, 1), got {self.deviance_explained}")
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
            # members are sorted indices: as many as there are models means every one (no copy)
            yield (x if members is None or len(members) == x.shape[0] else x[members]), self.labels[start:stop]

    def logits(self, weight: torch.Tensor, bias: torch.Tensor, members=None) -> torch.Tensor:
        """S×N×K logits of the split under heads (weight S×K×C, bias S×K; of the models `members` if given)."""
        return torch.cat([torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2))
                          for x, _ in self.chunks(members)], dim=1)


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
    return (loss / n).to(weight.dtype), grad_w / n, grad_b / n


def validation_loss(design: Design, weight: torch.Tensor, bias: torch.Tensor, members=None) -> torch.Tensor:
    """Mean cross-entropy of every model on a split (S), without the gradient."""
    s = weight.shape[0]
    loss = torch.zeros(s, dtype=torch.float64, device=weight.device)
    for x, y in design.chunks(members):
        logits = torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2))
        loss -= logits.log_softmax(dim=-1).gather(-1, y.expand(s, -1)[..., None]).sum((1, 2)).double()
    return (loss / max(len(design), 1)).to(weight.dtype)


def lipschitz_estimate(design: Design, iterations: int = 20) -> torch.Tensor:
    """Per model, where the step search starts (its curvature): the mean cross-entropy's gradient is Lipschitz with
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


class Solution(NamedTuple):
    """What proximal_gradient returns, per model (the leading dimension S)."""
    weight: torch.Tensor      # S×K×C
    bias: torch.Tensor        # S×K
    iterations: torch.Tensor  # iterations run
    curvature: torch.Tensor   # the local curvature L (step 1/L) the step search ended on
    violation: torch.Tensor   # optimality_violation at (weight, bias)
    converged: torch.Tensor   # violation ≤ tolerance; False where the iteration cap stopped the model


def optimality_violation(weight: torch.Tensor, grad_w: torch.Tensor, grad_b: torch.Tensor, l1: torch.Tensor,
                         support: torch.Tensor | None = None) -> torch.Tensor:
    """Per model, how far (F, b) is from the optimality conditions of min f + l1·‖F‖₁ given the gradient of
    the smooth part f (its l2 term included): the largest entry of the smallest subgradient — ∇ + l1·sign(F)
    where F ≠ 0, max(|∇| − l1, 0) where F = 0, ∇ for the bias. It is 0 exactly at the solution and is
    measured at the point itself, so a bound on it certifies the point whatever the step size was."""
    l1 = l1[:, None, None]
    entries = torch.where(weight != 0, (grad_w + l1 * weight.sign()).abs(), (grad_w.abs() - l1).clamp_min(0))
    if support is not None:
        entries = entries * support  # weights a fixed support holds at zero are not free to move
    return torch.maximum(entries.amax((1, 2)), grad_b.abs().amax(1))


def _backtrack(value: Callable, y_w, y_b, f_y, grad_w, grad_b, curvature, l1, support, active):
    """The proximal step from y of every active model, its curvature doubled until the quadratic upper bound
    holds at the new point (Beck & Teboulle). Returns (x⁺ weight, x⁺ bias, curvature)."""
    new_w, new_b = y_w.clone(), y_b.clone()
    pending = active.clone()
    for _ in range(MAX_BACKTRACKS):
        step = 1.0 / curvature
        candidate_w = soft_threshold(y_w - step[:, None, None] * grad_w, (step * l1)[:, None, None])
        if support is not None:
            candidate_w = candidate_w * support
        candidate_b = y_b - step[:, None] * grad_b
        d_w, d_b = candidate_w - y_w, candidate_b - y_b
        bound = f_y + (grad_w * d_w).sum((1, 2)) + (grad_b * d_b).sum(1) + \
            curvature / 2 * ((d_w * d_w).sum((1, 2)) + (d_b * d_b).sum(1))
        f_x = value(candidate_w, candidate_b, False, pending.nonzero().flatten())
        # rounding in f itself must not reject the true step (or accept a far too long one)
        fits = f_x <= bound + 8 * torch.finfo(f_x.dtype).eps * torch.maximum(f_x.abs(), f_y.abs())
        accept = pending & fits
        new_w = torch.where(accept[:, None, None], candidate_w, new_w)
        new_b = torch.where(accept[:, None], candidate_b, new_b)
        pending = pending & ~fits
        if not bool(pending.any()):
            break
        curvature = torch.where(pending, curvature * 2, curvature)
    return new_w, new_b, curvature


def proximal_gradient(smooth: Callable, weight: torch.Tensor, bias: torch.Tensor, curvature: torch.Tensor,
                      l1: torch.Tensor, l2: torch.Tensor, max_iterations: int, tolerance,
                      support: torch.Tensor | None = None, on_check: Callable | None = None,
                      check_every: int = 0) -> Solution:
    """FISTA for min_F,b f(F, b) + l1·‖F‖₁ + ½ l2·‖F‖² (weight S×K×C, bias S×K, not penalised; curvature, l1,
    l2 are S-vectors), with a backtracking step per model and gradient-based adaptive restart.

    `smooth(F, b, gradient, members)` gives f per model and, when `gradient`, its gradients, for the models
    `members` (indices; F and b hold just those), so models that have stopped cost nothing. The step 1/L starts
    from `curvature`, shrinks a little every iteration and is halved until the quadratic upper bound holds, so
    it follows the local curvature, which for a softmax is far below the global bound once the classes
    separate. `support` (S×K×C booleans) fixes the non-zero pattern.
    A model stops once its optimality_violation at the current iterate is at most `tolerance` (a number, or
    one per model): the gradient there is computed only for models whose last step was already that small
    (L·|y − x⁺| ≤ tolerance), so the check costs one pass now and then. Stopped models stay frozen, so each
    model's iterates are the ones it would have alone. `on_check(iteration, F, b)` is called every
    `check_every` iterations and once at the end."""
    s = weight.shape[0]
    tolerance = torch.as_tensor(tolerance, dtype=weight.dtype, device=weight.device).expand(s)
    x_w, x_b = weight.clone(), bias.clone()
    y_w, y_b = weight.clone(), bias.clone()
    t = torch.ones(s, device=weight.device, dtype=weight.dtype)
    curvature = curvature.clone().to(weight.dtype)
    active = torch.ones(s, dtype=torch.bool, device=weight.device)
    iterations = torch.zeros(s, dtype=torch.long, device=weight.device)
    violation = torch.full((s,), math.inf, dtype=weight.dtype, device=weight.device)
    value = _penalised(smooth, l2)

    def violation_at(w, b, which):
        _, grad_w, grad_b = value(w, b, True, which.nonzero().flatten())
        return torch.where(which, optimality_violation(w, grad_w, grad_b, l1, support), violation)

    iteration = 0
    for iteration in range(1, max_iterations + 1):
        f_y, grad_w, grad_b = value(y_w, y_b, True, active.nonzero().flatten())
        curvature = torch.where(active, curvature * STEP_SHRINK, curvature)
        new_w, new_b, curvature = _backtrack(value, y_w, y_b, f_y, grad_w, grad_b, curvature, l1, support, active)
        # the gradient mapping L·(y − x⁺) vanishes at a solution: a small one says the check is worth a pass
        mapping = torch.maximum((y_w - new_w).abs().amax((1, 2)), (y_b - new_b).abs().amax(1)) * curvature
        # restart the momentum where the step went against it (O'Donoghue & Candès)
        against = ((y_w - new_w) * (new_w - x_w)).sum((1, 2)) + ((y_b - new_b) * (new_b - x_b)).sum(1) > 0
        t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        momentum = torch.where(against, torch.zeros_like(t), (t - 1) / t_next)
        t = torch.where(active, torch.where(against, torch.ones_like(t), t_next), t)
        moved_w = new_w + momentum[:, None, None] * (new_w - x_w)
        moved_b = new_b + momentum[:, None] * (new_b - x_b)
        y_w, y_b = torch.where(active[:, None, None], moved_w, y_w), torch.where(active[:, None], moved_b, y_b)
        x_w, x_b = torch.where(active[:, None, None], new_w, x_w), torch.where(active[:, None], new_b, x_b)
        iterations += active.long()
        candidates = active & (mapping <= tolerance)
        if bool(candidates.any()):
            violation = violation_at(x_w, x_b, candidates)
            active = active & ~(candidates & (violation <= tolerance))
        if not bool(active.any()):
            break
        if on_check is not None and check_every and iteration % check_every == 0:
            on_check(iteration, x_w, x_b)
    if bool(active.any()):  # stopped by the cap: certify what is returned all the same
        violation = violation_at(x_w, x_b, active)
    if on_check is not None:
        on_check(iteration, x_w, x_b)
    return Solution(x_w, x_b, iterations, curvature, violation, violation <= tolerance)


def _penalised(smooth: Callable, l2: torch.Tensor) -> Callable:
    """f + ½ l2‖F‖² of the models `members` (and its gradients), computed for those only; the other models'
    entries are zero."""
    def value(w, b, grad, members):
        s = w.shape[0]
        sub_w, sub_b, sub_l2 = w[members], b[members], l2[members]
        penalty = 0.5 * sub_l2 * (sub_w * sub_w).sum((1, 2))
        full = torch.zeros(s, dtype=w.dtype, device=w.device)
        if not grad:
            return full.index_copy(0, members, (smooth(sub_w, sub_b, False, members) + penalty).to(w.dtype))
        f, grad_w, grad_b = smooth(sub_w, sub_b, True, members)
        return (full.index_copy(0, members, (f + penalty).to(w.dtype)),
                torch.zeros_like(w).index_copy(0, members, grad_w + sub_l2[:, None, None] * sub_w),
                torch.zeros_like(b).index_copy(0, members, grad_b))
    return value


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
    """The λ path of S models: per model a list of points {lam, nonzeros, nec, iterations, violation, converged,
    val_top1, test_top1} (violation in units of λα: the point is solved when it is at most the tolerance),
    and per NEC level the truncated-and-refitted heads (weight S×K×C, bias S×K)."""
    points: list[list[dict]]
    heads: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    refit: dict[int, list[dict]] = field(default_factory=dict)

    def points_at_cap(self, model: int) -> list[int]:
        """Indices of the model's path points that the iteration cap stopped before the tolerance."""
        return [index for index, point in enumerate(self.points[model]) if not point["converged"]]


def solver_record(path: SparsePath, config: SparseConfig) -> list[dict]:
    """Per model, how well its path was solved: the tolerance and cap it was solved with, its points, the
    points the cap stopped and its largest violation (in units of λα), for metrics.json."""
    return [{"tolerance": config.tolerance, "max_iterations": config.max_iterations, "points": len(points),
             "points_at_cap": path.points_at_cap(m),
             "largest_violation": max((p["violation"] for p in points), default=0.0)}
            for m, points in enumerate(path.points)]


def cap_warning(path: SparsePath, config: SparseConfig, names: list[str]) -> str | None:
    """One sentence when any model's path point stopped at the iteration cap (`names`: the models'), else None."""
    capped = [m for m in range(len(path.points)) if path.points_at_cap(m)]
    if not capped:
        return None
    worst = max(capped, key=lambda m: max(p["violation"] for p in path.points[m]))
    points = sum(len(path.points_at_cap(m)) for m in capped)
    violation = max(p["violation"] for p in path.points[worst])
    return (f"{points} sparse path point{'s' * (points > 1)} of {len(capped)} model{'s' * (len(capped) > 1)} "
            f"stopped at the iteration cap ({config.max_iterations}) before the tolerance ({config.tolerance:g}·λα; "
            f"worst {violation:.3g}·λα, {names[worst]}): their accuracies and any NEC head taken from them are "
            "approximate (metrics.json: sparse_solver)")


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
    `progress_every` seconds (cbmctl.logs.Progress; None: its default): the weights per class that the slowest
    model still on the path holds, of the largest budget, then the NEC budgets refitted, each with an
    estimate of the time left."""
    from cbmctl.logs import Progress
    config.validate()
    first = next(train.chunks())[0]
    s, c = first.shape[0], first.shape[-1]
    levels = sorted({min(int(level), c) for level in levels})
    walked = Progress(log, max(max(levels), min(config.max_nec, c)), f"sparse path of {s} model{'s' * (s > 1)}",
                      "weights per class reached by the slowest model", progress_every)
    points, snapshots, lipschitz, (weight, bias) = _path(train, num_classes, levels, config, val, test, walked)
    path, k = SparsePath(points), num_classes
    refits = Progress(log, len(levels), "sparse heads refitted to their NEC budgets", "budgets", progress_every)
    for level in levels:
        # a model whose path never reached the budget (level ≥ its non-zeros at λ_min) keeps its last point
        chosen = [snapshot if snapshot is not None else (weight[m].clone(), bias[m].clone())
                  for m, snapshot in enumerate(snapshots[level])]
        truncated = torch.stack([truncate(w, level * k) for w, _ in chosen])
        start_bias = torch.stack([b for _, b in chosen])
        # a budget of every concept is every weight, also those the path's last point still holds at zero
        support = torch.ones_like(truncated, dtype=torch.bool) if level >= c else None
        path.heads[level], path.refit[level] = refit(train, truncated, start_bias, lipschitz, config, val, support)
        refits.advance(1)
    return path


def _path(train: Design, k: int, levels: list[int], config: SparseConfig, val, test, walked):
    """The λ path itself: (points per model, per level each model's first point that reached it or None,
    the Lipschitz estimate, each model's last point as (weight, bias)). A model's path ends at the first
    point with stop_at non-zeros or with the share config.deviance_explained of its null deviance explained;
    the models still on the path are solved together, the others cost nothing. `walked` (cbmctl.logs.Progress)
    advances by each point and hears from a long point while it is solved."""
    first = next(train.chunks())[0]
    s, c, device = first.shape[0], first.shape[-1], first.device
    lam_max, bias = lambda_max(train, k, config.alpha)
    lipschitz = lipschitz_estimate(train)
    curvature = lipschitz.clone()  # the step search starts each point from the last point's curvature
    weight = torch.zeros(s, k, c, device=device)
    null = validation_loss(train, weight, bias)  # the intercept-only fit at λ_max
    tolerance_floor = config.tolerance_floor * lam_max * config.alpha
    ratios = torch.logspace(0, math.log10(config.lambda_min_ratio), config.path_points, device=device)
    stop_at = max(max(levels), min(config.max_nec, c)) * k
    fit_target = math.log(1 - config.deviance_explained)
    points: list[list[dict]] = [[] for _ in range(s)]
    snapshots: dict[int, list[tuple[torch.Tensor, torch.Tensor] | None]] = {level: [None] * s for level in levels}
    on_path = torch.ones(s, dtype=torch.bool, device=device)
    previous = None
    for index, ratio in enumerate(ratios):
        members = on_path.nonzero().flatten()
        lam = lam_max * ratio
        l1, l2 = lam * config.alpha, lam * (1 - config.alpha)
        start = (weight, bias) if previous is None else _predict(weight, bias, *previous)
        previous = weight.clone(), bias.clone()
        # a long point still says how far the path is
        heartbeat = (lambda *_: walked.advance(0)) if index else None
        solution = proximal_gradient(_restricted(cross_entropy(train), members), start[0][members],
                                     start[1][members], curvature[members], l1[members], l2[members],
                                     config.max_iterations, torch.maximum(config.tolerance * l1, tolerance_floor)[members],
                                     on_check=heartbeat, check_every=HEARTBEAT_ITERATIONS)
        weight[members], bias[members], curvature[members] = solution.weight, solution.bias, solution.curvature
        nonzeros = (weight != 0).sum((1, 2))
        left = (validation_loss(train, weight, bias) / null).clamp_min(1e-30).log()
        _record_point(points, snapshots, members, solution, lam, l1, nonzeros, k, levels,
                      {name: top1(design, weight[members], bias[members], members)
                       for name, design in (("val", val), ("test", test)) if design is not None})
        on_path &= (nonzeros < stop_at) & (left > fit_target)
        if index + 1 == len(ratios) or not bool(on_path.any()):
            break
        walked.advance(max(int(nonzeros[on_path].min()) // k - walked.done, 0))
    walked.advance(walked.total - walked.done)
    return points, snapshots, lipschitz, (weight, bias)


def _predict(weight: torch.Tensor, bias: torch.Tensor, previous_w: torch.Tensor, previous_b: torch.Tensor):
    """Where the path goes next, from its last two points (equal steps in log λ), as the next point's start:
    a weight that kept its sign moves on by its last change (stopping at zero rather than crossing it), the
    bias likewise; a weight that just appeared or is zero stays. Starting nearer the solution halves the
    iterations a point takes (predictor-corrector path following)."""
    steady = (weight != 0) & (weight.sign() == previous_w.sign())
    moved = 2 * weight - previous_w
    moved = torch.where(moved.sign() == weight.sign(), moved, torch.zeros_like(moved))
    return torch.where(steady, moved, weight), 2 * bias - previous_b


def _restricted(smooth: Callable, members: torch.Tensor) -> Callable:
    """`smooth` for a stack made of the design's models `members` (its own indices map to theirs)."""
    return lambda weight, bias, gradient, which: smooth(weight, bias, gradient, members[which])


def _record_point(points, snapshots, members, solution: Solution, lam, l1, nonzeros, k: int, levels, accuracy):
    """Append the point to each solved model's path (`solution` and `accuracy` hold those models only) and
    keep it as the start of every NEC level it is the first to reach."""
    for row, m in enumerate(members.tolist()):
        points[m].append({
            "lam": float(lam[m]), "nonzeros": int(nonzeros[m]), "nec": float(nonzeros[m]) / k,
            "iterations": int(solution.iterations[row]), "violation": float(solution.violation[row] / l1[m]),
            "converged": bool(solution.converged[row]),
            **{f"{name}_top1": float(values[row]) for name, values in accuracy.items()}})
        for level in levels:
            if snapshots[level][m] is None and int(nonzeros[m]) >= level * k:
                snapshots[level][m] = (solution.weight[row].clone(), solution.bias[row].clone())


def refit(train: Design, weight: torch.Tensor, bias: torch.Tensor, lipschitz: torch.Tensor,
          config: SparseConfig, val: Design | None = None, support: torch.Tensor | None = None):
    """Refit the non-zero weights (or those `support` marks; support fixed, no penalty), keeping per model the iterate with the
    lowest validation loss (every check_every iterations, and the starting point); without a validation
    split, the last iterate."""
    support = weight != 0 if support is None else support
    s = weight.shape[0]
    zeros = torch.zeros(s, device=weight.device)
    if val is None or len(val) == 0:
        solution = proximal_gradient(cross_entropy(train), weight, bias, lipschitz, zeros, zeros,
                                     config.refit_iterations, config.refit_tolerance, support)
        return (solution.weight, solution.bias), [{"iterations": int(i), "chosen_iteration": int(i)}
                                                  for i in solution.iterations]
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

    solution = proximal_gradient(cross_entropy(train), weight, bias, lipschitz, zeros, zeros, config.refit_iterations,
                                 config.refit_tolerance, support, on_check=keep_best, check_every=config.check_every)
    return (best_w, best_b), [{"iterations": int(i), "chosen_iteration": int(c), "val_loss": float(v)}
                              for i, c, v in zip(solution.iterations, chosen, best_loss)]


def top1(design: Design, weight: torch.Tensor, bias: torch.Tensor, members=None) -> torch.Tensor:
    """Top-1 accuracy of every model (or of the design's models `members`, whose heads weight and bias are)."""
    if len(design) == 0:
        return torch.zeros(weight.shape[0])
    predicted = design.logits(weight, bias, members).argmax(dim=-1)
    return (predicted == design.labels[None]).float().mean(dim=1)
