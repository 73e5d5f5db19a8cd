"""The sparse final layer of LF-CBM / VLG-CBM (docs/method.md, "The final layer and the NEC protocol"),
for S models at once.

Multinomial logistic regression with a bias on standardised concept activations x (train mean and std),
penalised by the elastic net λ [α‖F‖₁ + ½(1 − α)‖F‖₂²], solved by accelerated proximal gradient (FISTA
with adaptive restart; the proximal step soft-thresholds F, the bias is not penalised) along a path of λ
from λ_max, where every weight is zero, downwards, each point warm-started from the previous one.

Every path point is certified at the weights returned: no optimality condition (optimality_violation) is
violated by more than max(tolerance·λα, tolerance_floor·λ_max·α) — 5 % of the l1 strength, or 0.5 % of
the largest one from λ < 0.1·λ_max on (what that floor costs and changes: docs/method.md). A point the
iteration cap stopped first is reported (SparsePath.points_at_cap), never passed off as solved. A model's
path ends at the first point with max_nec weights per class or 99.9 % of its null deviance explained
(glmnet's rule), else at λ_max·lambda_min_ratio.

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

import torch

from cbmctl.errors import CbmctlError
from cbmctl.proximal import Fista, penalised, proximal_gradient

ABSOLUTE_TOLERANCE = 1e-6  # no path point is asked for an optimality violation below this (float32's reach)


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
        if self.max_iterations < 1 or self.refit_iterations < 1:
            raise CbmctlError("the sparse solver needs at least one iteration per path point and refit")
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
    """Per model, how well its path was solved: the tolerance and its floor (a point is solved when its
    violation, in units of λα, is at most max(tolerance, tolerance_floor·λ_max/λ): past λ = 0.1·λ_max the
    floor rules, so a far point may be solved above `tolerance`), the cap, its points, the points the cap
    stopped and its largest violation, for metrics.json."""
    return [{"tolerance": config.tolerance, "tolerance_floor": config.tolerance_floor, "violation_unit": "λα",
             "max_iterations": config.max_iterations, "points": len(points),
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
    model still on the path holds, of the largest budget (no time estimate: the path's dense end takes far
    longer per weight than its start), then the NEC budgets refitted, with an estimate of the time left."""
    from cbmctl.logs import Progress
    config.validate()
    first = next(train.chunks())[0]
    s, c = first.shape[0], first.shape[-1]
    levels = sorted({min(int(level), c) for level in levels})
    walked = Progress(log, max(max(levels), min(config.max_nec, c)), f"sparse path of {s} model{'s' * (s > 1)}",
                      "weights per class reached by the slowest model", progress_every, estimate=None)
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
    point with stop_at non-zeros or with the share config.deviance_explained of its null deviance explained.
    Every model walks its own path: an iteration advances each model still on the path by one FISTA step at
    its own current point, and a model whose point is solved moves on to its next λ at once rather than
    waiting for the slowest, so a pass always carries every model still walking (a model's iterates are
    those it would have alone). `walked` (cbmctl.logs.Progress) advances as the slowest model goes."""
    first = next(train.chunks())[0]
    s, c, device = first.shape[0], first.shape[-1], first.device
    lam_max, bias = lambda_max(train, k, config.alpha)
    lipschitz = lipschitz_estimate(train)
    weight = torch.zeros(s, k, c, device=device)
    null = validation_loss(train, weight, bias)  # the intercept-only fit at λ_max
    ratios = torch.logspace(0, math.log10(config.lambda_min_ratio), config.path_points, device=device)
    walk = _Walk(lam_max, config, ratios)
    stop_at = max(max(levels), min(config.max_nec, c)) * k
    fit_target = math.log(1 - config.deviance_explained)
    points: list[list[dict]] = [[] for _ in range(s)]
    snapshots: dict[int, list[tuple[torch.Tensor, torch.Tensor] | None]] = {level: [None] * s for level in levels}
    # the step search starts each point from the model's last curvature
    state = Fista(weight, bias, lipschitz)
    value = penalised(cross_entropy(train), walk.l2)
    previous = weight.clone(), bias.clone()  # each model's point before the one it is solving
    on_path = torch.ones(s, dtype=torch.bool, device=device)
    reached = torch.zeros(s, dtype=torch.long, device=device)  # non-zeros at each model's last point
    while bool(on_path.any()):
        solved = state.step(value, walk.l1, walk.tolerance, on_path)
        capped = on_path & ~solved & (state.iterations >= config.max_iterations)
        if bool(capped.any()):
            state.certify(value, walk.l1, capped)
        finished = solved | capped
        if not bool(finished.any()):
            walked.advance(0)  # a long point still says how far the path is
            continue
        members = finished.nonzero().flatten()
        point_w, point_b = state.x_w[members], state.x_b[members]
        nonzeros = (point_w != 0).sum((1, 2))
        left = (validation_loss(train, point_w, point_b, members) / null[members]).clamp_min(1e-30).log()
        accuracy = {name: top1(design, point_w, point_b, members)
                    for name, design in (("val", val), ("test", test)) if design is not None}
        _record_point(points, snapshots, members, state, point_w, point_b, walk, nonzeros, k, levels, accuracy)
        reached[members] = nonzeros
        goes_on = (nonzeros < stop_at) & (left > fit_target) & walk.has_next(members)
        on_path[members] = goes_on
        walking = torch.zeros_like(on_path).index_fill_(0, members[goes_on], True)
        if bool(walking.any()):
            walk.advance(walking)
            start = _predict(state.x_w, state.x_b, *previous)
            previous = (torch.where(walking[:, None, None], state.x_w, previous[0]),
                        torch.where(walking[:, None], state.x_b, previous[1]))
            state.restart(walking, *start)
        if bool(on_path.any()):
            walked.advance(max(int(reached[on_path].min()) // k - walked.done, 0))
    walked.advance(walked.total - walked.done)
    return points, snapshots, lipschitz, (state.x_w, state.x_b)


class _Walk:
    """Where each model is on the λ grid (λ_max · ratios): its point, λ, the l1 and l2 strengths there and
    the tolerance its point is solved to (max(tolerance·λα, tolerance_floor·λ_max·α)). The strengths are
    changed in place, so a penalised objective built on them follows every model's own point."""

    def __init__(self, lam_max: torch.Tensor, config: SparseConfig, ratios: torch.Tensor):
        self.lam_max, self.config, self.ratios = lam_max, config, ratios
        self.point = torch.zeros_like(lam_max, dtype=torch.long)
        # an absolute floor where λ_max is 0 (a design that carries nothing): the start is the solution, up to
        # the float32 rounding of its gradient, which a tolerance of exactly 0 would chase to the cap
        self.floor = (config.tolerance_floor * lam_max * config.alpha).clamp_min(ABSOLUTE_TOLERANCE)
        self.lam, self.l1, self.l2, self.tolerance = (torch.empty_like(lam_max) for _ in range(4))
        self._set(torch.ones_like(lam_max, dtype=torch.bool))

    def has_next(self, members: torch.Tensor) -> torch.Tensor:
        return self.point[members] + 1 < len(self.ratios)

    def advance(self, which: torch.Tensor) -> None:
        self.point += which.long()
        self._set(which)

    def _set(self, which: torch.Tensor) -> None:
        lam = self.lam_max * self.ratios[self.point]
        l1, l2 = lam * self.config.alpha, lam * (1 - self.config.alpha)
        for target, new in ((self.lam, lam), (self.l1, l1), (self.l2, l2),
                            (self.tolerance, torch.maximum(self.config.tolerance * l1, self.floor))):
            target.copy_(torch.where(which, new, target))


def _predict(weight: torch.Tensor, bias: torch.Tensor, previous_w: torch.Tensor, previous_b: torch.Tensor):
    """Where the path goes next, from its last two points (equal steps in log λ), as the next point's start:
    a weight that kept its sign moves on by its last change (stopping at zero rather than crossing it), the
    bias likewise; a weight that just appeared or is zero stays. Starting nearer the solution halves the
    iterations a point takes (predictor-corrector path following)."""
    steady = (weight != 0) & (weight.sign() == previous_w.sign())
    moved = 2 * weight - previous_w
    moved = torch.where(moved.sign() == weight.sign(), moved, torch.zeros_like(moved))
    return torch.where(steady, moved, weight), 2 * bias - previous_b


def _record_point(points, snapshots, members, state: Fista, weight, bias, walk: _Walk, nonzeros, k: int, levels,
                  accuracy):
    """Append the point just solved to each of the models' `members` paths (`weight`, `bias`, `nonzeros`
    and `accuracy` hold those models only) and keep it as the start of every NEC level it is the first to
    reach."""
    rows = {"lam": walk.lam[members].tolist(), "nonzeros": nonzeros.tolist(),
            "iterations": state.iterations[members].tolist(),
            # in units of λα; where λα is 0 (λ_max = 0) the violation itself
            "violation": torch.where(walk.l1[members] > 0, state.violation[members] / walk.l1[members],
                                     state.violation[members]).tolist(),
            "converged": (state.violation[members] <= walk.tolerance[members]).tolist(),
            **{f"{name}_top1": values.tolist() for name, values in accuracy.items()}}
    for row, m in enumerate(members.tolist()):
        point = {name: column[row] for name, column in rows.items()}
        points[m].append({"lam": point.pop("lam"), "nonzeros": point["nonzeros"], "nec": point.pop("nonzeros") / k,
                          **point})
        for level in levels:
            if snapshots[level][m] is None and points[m][-1]["nonzeros"] >= level * k:
                snapshots[level][m] = (weight[row].clone(), bias[row].clone())


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
