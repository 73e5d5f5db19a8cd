"""Accelerated proximal gradient (FISTA with a backtracking step per model and adaptive restart) for a stack
of S elastic-net problems min f(F, b) + l1·‖F‖₁ + ½ l2·‖F‖², each certified by its optimality conditions.
The solver of the sparse head's λ path (cbmctl.sparse) and of the linear probe (cbmctl.probe, l1 = 0); it
knows nothing of designs or classes: f comes as a callable.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

STEP_SHRINK = 0.8     # the step search tries a 1/0.8 longer step every iteration ...
MAX_BACKTRACKS = 60   # ... and halves it until the bound holds (2^60: from any start to any curvature)


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


class Fista:
    """The iterates of FISTA for a stack of S problems: x (the last proximal step), y (where the next step is
    taken from), t, the curvature 1/step and, per model, the iterations since its start and the
    optimality_violation and penalised objective at x where they were last certified. `step` advances the
    models it is given by one iteration; `restart` hands models a new start (a new problem of the same
    shape: a path's next λ) keeping their curvature, so models need not move in lockstep."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, curvature: torch.Tensor):
        s = weight.shape[0]
        self.x_w, self.x_b = weight.clone(), bias.clone()
        self.y_w, self.y_b = weight.clone(), bias.clone()
        self.t = torch.ones(s, device=weight.device, dtype=weight.dtype)
        self.curvature = curvature.clone().to(weight.dtype)
        self.iterations = torch.zeros(s, dtype=torch.long, device=weight.device)
        self.violation = torch.full((s,), math.inf, dtype=weight.dtype, device=weight.device)
        self.objective = torch.full((s,), math.nan, dtype=weight.dtype, device=weight.device)

    def restart(self, which: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Models `which` (booleans) start again from (weight, bias) (S-shaped; other rows are ignored)."""
        w, b = which[:, None, None], which[:, None]
        self.x_w, self.x_b = torch.where(w, weight, self.x_w), torch.where(b, bias, self.x_b)
        self.y_w, self.y_b = torch.where(w, weight, self.y_w), torch.where(b, bias, self.y_b)
        self.t = torch.where(which, torch.ones_like(self.t), self.t)
        self.iterations = torch.where(which, torch.zeros_like(self.iterations), self.iterations)
        self.violation = torch.where(which, torch.full_like(self.violation, math.inf), self.violation)
        self.objective = torch.where(which, torch.full_like(self.objective, math.nan), self.objective)

    def step(self, value: Callable, l1: torch.Tensor, tolerance: torch.Tensor, active: torch.Tensor,
             support: torch.Tensor | None = None) -> torch.Tensor:
        """One iteration of the `active` models (booleans); returns those now certified at x: the gradient
        at x is computed only for models whose step was already that small (L·|y − x⁺| ≤ tolerance), so
        certifying costs one pass now and then."""
        f_y, grad_w, grad_b = value(self.y_w, self.y_b, True, active.nonzero().flatten())
        self.curvature = torch.where(active, self.curvature * STEP_SHRINK, self.curvature)
        new_w, new_b, self.curvature = _backtrack(value, self.y_w, self.y_b, f_y, grad_w, grad_b, self.curvature,
                                                  l1, support, active)
        # the gradient mapping L·(y − x⁺) vanishes at a solution: a small one says the check is worth a pass
        mapping = torch.maximum((self.y_w - new_w).abs().amax((1, 2)),
                                (self.y_b - new_b).abs().amax(1)) * self.curvature
        (self.x_w, self.x_b), (self.y_w, self.y_b), self.t = _momentum_step(
            (self.x_w, self.x_b), (new_w, new_b), (self.y_w, self.y_b), self.t, active)
        self.iterations += active.long()
        candidates = active & (mapping <= tolerance)
        if not bool(candidates.any()):
            return candidates
        self.certify(value, l1, candidates, support)
        return candidates & (self.violation <= tolerance)

    def certify(self, value: Callable, l1: torch.Tensor, which: torch.Tensor,
                support: torch.Tensor | None = None) -> None:
        """The optimality_violation and objective at x of the models `which` (one gradient pass)."""
        f_x, grad_w, grad_b = value(self.x_w, self.x_b, True, which.nonzero().flatten())
        self.violation = torch.where(which, optimality_violation(self.x_w, grad_w, grad_b, l1, support),
                                     self.violation)
        self.objective = torch.where(which, f_x, self.objective)


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
    one per model; Fista.step says when it is checked). Stopped models stay frozen, so each model's iterates
    are the ones it would have alone. `on_check(iteration, F, b)` is called every `check_every` iterations
    and once at the end."""
    s = weight.shape[0]
    tolerance = torch.as_tensor(tolerance, dtype=weight.dtype, device=weight.device).expand(s)
    state = Fista(weight, bias, curvature)
    active = torch.ones(s, dtype=torch.bool, device=weight.device)
    value = penalised(smooth, l2)
    iteration = 0
    for iteration in range(1, max_iterations + 1):
        active = active & ~state.step(value, l1, tolerance, active, support)
        if not bool(active.any()):
            break
        if on_check is not None and check_every and iteration % check_every == 0:
            on_check(iteration, state.x_w, state.x_b)
    if bool(active.any()):  # stopped by the cap: certify what is returned all the same
        state.certify(value, l1, active, support)
    if on_check is not None:
        on_check(iteration, state.x_w, state.x_b)
    return Solution(state.x_w, state.x_b, state.iterations, state.curvature, state.violation,
                    state.violation <= tolerance)


def _momentum_step(x, new, y, t, active):
    """FISTA's extrapolation for the active models: ((x, its bias) ← new, y ← new + momentum·(new − x), t),
    the momentum restarted where the step went against it (O'Donoghue & Candès)."""
    (x_w, x_b), (new_w, new_b), (y_w, y_b) = x, new, y
    against = ((y_w - new_w) * (new_w - x_w)).sum((1, 2)) + ((y_b - new_b) * (new_b - x_b)).sum(1) > 0
    t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
    momentum = torch.where(against, torch.zeros_like(t), (t - 1) / t_next)
    t = torch.where(active, torch.where(against, torch.ones_like(t), t_next), t)
    moved_w = new_w + momentum[:, None, None] * (new_w - x_w)
    moved_b = new_b + momentum[:, None] * (new_b - x_b)
    y = torch.where(active[:, None, None], moved_w, y_w), torch.where(active[:, None], moved_b, y_b)
    x = torch.where(active[:, None, None], new_w, x_w), torch.where(active[:, None], new_b, x_b)
    return x, y, t


def penalised(smooth: Callable, l2: torch.Tensor) -> Callable:
    """f + ½ l2‖F‖² of the models `members` (and its gradients), computed for those only; the other models'
    entries are zero. `l2` is read at every call, so a caller may change it in place between calls."""
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
