"""The sparse final layer's solver against closed forms, optimality conditions and the NEC protocol."""
import math

import pytest
import torch

from cbmctl.proximal import Fista, penalised, proximal_gradient
from cbmctl.sparse import Design, SparseConfig, cross_entropy, fit_path, lambda_max, lipschitz_estimate, truncate


def design_of(x: torch.Tensor, y: torch.Tensor, chunk: int = 1000, materialise: bool = True) -> Design:
    """x: S×N×C (one design per stacked model) or N×C."""
    x = x if x.dim() == 3 else x[None]
    return Design(lambda start, stop: x[:, start:stop], y, chunk, materialise)


def orthogonal_design(n=64, p=4, seed=0):
    """Centred columns with XᵀX/n = I, so least squares with an elastic net has a closed form."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, p + 1, generator=generator, dtype=torch.float64))
    ones = torch.ones(n, 1, dtype=torch.float64) / math.sqrt(n)
    basis = q[:, 1:] - ones @ (ones.T @ q[:, 1:])  # orthogonal to the constant column
    basis, _ = torch.linalg.qr(basis)
    return (basis * math.sqrt(n)).float()


def test_proximal_gradient_matches_the_elastic_net_closed_form_on_an_orthogonal_design():
    x = orthogonal_design().double()  # float64: the closed form is compared to 1e-6
    y = torch.tensor([3.0, -1.0, 0.2, -0.05], dtype=torch.float64) @ x.T + 0.7  # z = Xᵀy/n = the coefficients above, mean 0.7
    z = x.T @ y / len(y)

    def least_squares(weight, bias, gradient, members):  # ½·mean((x w + b − y)²) and its gradient, K = 1
        residual = (x @ weight[:, 0, :].T).T + bias - y[None]  # S×N
        value = 0.5 * (residual * residual).mean(dim=1)
        if not gradient:
            return value
        return value, (residual @ x / len(y))[:, None, :], residual.mean(dim=1, keepdim=True)

    lams, alpha = torch.tensor([0.0, 0.1, 0.5, 2.0], dtype=torch.float64), 0.7
    s = len(lams)
    # the step search starts far too long (L = 0.01 against the true 1 + λ(1 − α)) and must find its way
    weight, bias, iterations, *_ = proximal_gradient(
        least_squares, torch.zeros(s, 1, 4, dtype=torch.float64), torch.zeros(s, 1, dtype=torch.float64),
        torch.full((s,), 0.01, dtype=torch.float64), lams * alpha, lams * (1 - alpha), 5000, 1e-9)
    assert (iterations < 5000).all()
    for m, lam in enumerate(lams.tolist()):
        expected = torch.sign(z) * (z.abs() - lam * alpha).clamp_min(0) / (1 + lam * (1 - alpha))
        assert torch.allclose(weight[m, 0], expected, atol=1e-7), (lam, weight[m, 0], expected)
        assert float(bias[m, 0]) == pytest.approx(0.7, abs=1e-7)
    # the largest λ zeroes every coefficient below λα = 1.4 (|z| = 3 survives, the others do not)
    assert (weight[3, 0] != 0).tolist() == [True, False, False, False]


def classification_problem(n=240, c=6, k=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    centres = torch.randn(k, c, generator=generator) * 1.5
    x = centres[labels] + torch.randn(n, c, generator=generator)
    x = (x - x.mean(0)) / x.std(0)
    return x, labels


def test_a_restarted_model_steps_as_a_fresh_solver_would_while_its_neighbour_runs_on():
    x, y = classification_problem(seed=4)
    design = design_of(torch.stack([x, x]), y)
    value = penalised(cross_entropy(design), torch.tensor([0.001, 0.001]))
    l1, tolerance = torch.tensor([0.02, 0.05]), torch.zeros(2)  # a zero tolerance: no model stops by itself
    both = torch.ones(2, dtype=torch.bool)
    state = Fista(torch.zeros(2, 3, 6), torch.zeros(2, 3), torch.ones(2))
    for _ in range(6):  # model 0 gathers momentum, iterations and a shrunk step
        state.step(value, l1, tolerance, both)
    start_w, start_b = torch.full((2, 3, 6), 0.1), torch.full((2, 3), -0.2)
    neighbour = state.x_w[1].clone(), state.t[1].clone()
    state.restart(torch.tensor([True, False]), start_w, start_b)
    assert torch.equal(state.x_w[1], neighbour[0]) and torch.equal(state.t[1], neighbour[1])  # untouched
    assert int(state.iterations[0]) == 0 and math.isinf(float(state.violation[0]))
    fresh = Fista(start_w[:1], start_b[:1], state.curvature[:1])
    fresh_value = penalised(cross_entropy(design_of(x, y)), torch.tensor([0.001]))
    for _ in range(5):
        state.step(value, l1, tolerance, both)
        fresh.step(fresh_value, l1[:1], tolerance[:1], torch.ones(1, dtype=torch.bool))
        assert torch.allclose(state.x_w[0], fresh.x_w[0], atol=1e-6) and torch.equal(state.t[:1], fresh.t)
    assert int(state.iterations[0]) == 5 and int(state.iterations[1]) == 11


def test_logistic_solution_satisfies_the_elastic_net_optimality_conditions():
    x, y = classification_problem()
    design = design_of(x, y)
    lam, alpha = 0.05, 0.9
    weight, bias, iterations, *_ = proximal_gradient(cross_entropy(design), torch.zeros(1, 3, 6), torch.zeros(1, 3),
                                                    torch.tensor([50.0]), torch.tensor([lam * alpha]),
                                                    torch.tensor([lam * (1 - alpha)]), 20000, 1e-7)
    _, grad_w, grad_b = cross_entropy(design)(weight, bias, True, None)
    smooth = grad_w + lam * (1 - alpha) * weight
    zero = weight == 0
    assert zero.any() and (~zero).any()  # a real mix of active and inactive weights
    # subgradient conditions: |∇| ≤ λα where w = 0, ∇ + λα·sign(w) = 0 where w ≠ 0; ∇_b = 0
    assert (smooth[zero].abs() <= lam * alpha + 1e-5).all()
    assert torch.allclose(smooth[~zero] + lam * alpha * weight[~zero].sign(), torch.zeros(1), atol=1e-5)
    assert grad_b.abs().max() < 1e-5 and int(iterations[0]) < 20000


def test_lambda_max_is_exactly_where_the_first_weight_appears():
    x, y = classification_problem()
    design = design_of(x, y)
    top, bias = lambda_max(design, 3, 0.99)
    start_w = torch.zeros(1, 3, 6)
    for factor, expect_zero in ((1.001, True), (0.9, False)):
        lam = top * factor
        weight, *_ = proximal_gradient(cross_entropy(design), start_w, bias.clone(), torch.tensor([1.0]),
                                            lam * 0.99, lam * 0.01, 5000, 1e-7)
        assert bool((weight == 0).all()) == expect_zero
    # at λ_max the bias alone is optimal: the log class frequencies
    assert torch.allclose(bias[0], torch.log(torch.full((3,), 1 / 3)), atol=1e-6)


def one_feature_per_class(n=320, c=8, k=4, seed=0):
    """Feature j carries class j mod k with a strength falling with j: concepts join the path one by one."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    strength = torch.linspace(2.5, 0.5, c)
    x = (labels[:, None] == (torch.arange(c) % k)[None]).float() * strength + torch.randn(n, c, generator=generator)
    return (x - x.mean(0)) / x.std(0), labels


def test_path_is_monotone_and_the_nec_budget_is_exact():
    x, y = one_feature_per_class()
    design = design_of(x, y)
    path = fit_path(design, 4, [1, 2, 3, 30], SparseConfig(max_nec=8), design, design)
    points = path.points[0]
    lams = [p["lam"] for p in points]
    nonzeros = [p["nonzeros"] for p in points]
    assert lams == sorted(lams, reverse=True) and nonzeros[0] == 0
    # in the sparse regime the budgets use (up to NEC 3 here) weights only join as λ falls; near the dense
    # end a multinomial path may drop a weight again (the softmax lets weights shift between classes)
    sparse_part = nonzeros[:next(i for i, n in enumerate(nonzeros) if n >= 3 * 4) + 1]
    assert sparse_part == sorted(sparse_part) and len(sparse_part) > 10
    assert nonzeros[-1] >= 3 * 4
    for level in (1, 2, 3):
        weight, bias = path.heads[level]
        assert int((weight != 0).sum()) == level * 4  # exactly NEC × K after truncation and refit
    # a budget above C concepts per class is capped at C: all the weights the path reached
    assert int((path.heads[8][0] != 0).sum()) == nonzeros[-1]
    for refit in path.refit.values():
        assert refit[0]["chosen_iteration"] <= refit[0]["iterations"]
    # sparser heads cannot fit the training data better: validation here is the train split itself
    accuracy = [p["val_top1"] for p in points]
    assert accuracy[-1] > accuracy[1] > 0.25


def test_truncation_keeps_the_largest_magnitudes_exactly():
    weight = torch.tensor([[0.5, -3.0, 0.0], [2.0, -0.5, 1.0]])
    kept = truncate(weight, 3)
    assert kept.tolist() == [[0.0, -3.0, 0.0], [2.0, 0.0, 1.0]]
    ties = truncate(torch.tensor([[1.0, -1.0], [1.0, 1.0]]), 2)
    assert ties.tolist() == [[1.0, -1.0], [0.0, 0.0]]  # equal magnitudes: the first in row-major order win


def test_stacked_models_get_their_solo_paths_and_streaming_equals_materialised():
    (x1, y), (x2, _) = classification_problem(seed=1), classification_problem(seed=2)
    config = SparseConfig(path_points=15, max_nec=6)
    stacked = fit_path(design_of(torch.stack([x1, x2]), y), 3, [2], config)
    for m, x in enumerate((x1, x2)):
        alone = fit_path(design_of(x, y), 3, [2], config)
        # each model walks its own λ grid at its own pace: the same points, each solved in the same iterations
        assert [(p["lam"], p["nonzeros"], p["iterations"]) for p in stacked.points[m]] == \
            [(p["lam"], p["nonzeros"], p["iterations"]) for p in alone.points[0]]
        # the same path, solved to the same tolerance: a stack rounds its sums in another order, so a model's
        # refit may stop an iteration apart from its solo run (agreement to 1e-4 relative, far below the tolerance)
        assert torch.allclose(stacked.heads[2][0][m], alone.heads[2][0][0], rtol=1e-4, atol=1e-5)
    streamed = fit_path(design_of(x1, y, chunk=50, materialise=False), 3, [2], config)
    materialised = fit_path(design_of(x1, y), 3, [2], config)
    assert torch.allclose(streamed.heads[2][0], materialised.heads[2][0], atol=1e-5)


def elastic_net_objective(design: Design, weight, bias, l1, l2) -> float:
    smooth = cross_entropy(design)(weight, bias, False, torch.arange(1))
    return float(smooth + l1 * weight.abs().sum() + 0.5 * l2 * (weight * weight).sum())


def test_a_path_point_is_certified_within_the_stated_tolerance_against_a_tight_float64_solve():
    x, y = classification_problem(seed=3)
    design, exact = design_of(x, y), design_of(x.double(), y)
    tolerance, alpha = SparseConfig().tolerance, 0.99
    top, bias = lambda_max(design, 3, alpha)
    # a path point as fit_path solves it: warm-started from the point before (λ one step larger), in float32
    before = proximal_gradient(cross_entropy(design), torch.zeros(1, 3, 6), bias, lipschitz_estimate(design),
                               top * 0.3 * alpha, top * 0.3 * (1 - alpha), 5000, tolerance * top * 0.3 * alpha)
    lam = top * 0.27
    l1, l2 = float(lam * alpha), float(lam * (1 - alpha))
    point = proximal_gradient(cross_entropy(design), before.weight, before.bias, before.curvature, lam * alpha,
                              lam * (1 - alpha), 5000, tolerance * lam * alpha)
    assert bool(point.converged[0]) and float(point.violation[0]) <= tolerance * l1
    # its optimality conditions, recomputed from scratch in float64: |∇ + l1·sign F| where F ≠ 0,
    # (|∇| − l1)₊ where F = 0, |∇_b| — none beyond the tolerance
    weight, bias64 = point.weight.double(), point.bias.double()
    _, grad_w, grad_b = cross_entropy(exact)(weight, bias64, True, torch.arange(1))
    grad_w = grad_w + l2 * weight
    nonzero = weight != 0
    subgradient = torch.where(nonzero, grad_w + l1 * weight.sign(), torch.sign(grad_w) * (grad_w.abs() - l1).clamp_min(0))
    violation = max(float(subgradient.abs().max()), float(grad_b.abs().max()))
    assert violation <= tolerance * l1 + 1e-6  # float32's rounding of the gradient, far below tolerance·l1 ≈ 1e-3
    # a float64 solve to 1e-10 of l1: the same support, and the objective within what the certificate
    # promises by convexity, F(point) − F* ≤ ⟨s, point − F*⟩ ≤ violation·‖point − F*‖₁
    reference = proximal_gradient(cross_entropy(exact), torch.zeros(1, 3, 6, dtype=torch.float64),
                                  bias.double(), lipschitz_estimate(design).double(), torch.tensor([l1], dtype=torch.float64),
                                  torch.tensor([l2], dtype=torch.float64), 100000, 1e-10 * l1)
    assert bool(reference.converged[0])
    assert torch.equal(nonzero, reference.weight != 0)
    gap = elastic_net_objective(exact, weight, bias64, l1, l2) - elastic_net_objective(
        exact, reference.weight, reference.bias, l1, l2)
    distance = float((weight - reference.weight).abs().sum() + (bias64 - reference.bias).abs().sum())
    assert -1e-12 <= gap <= violation * distance + 1e-12


def test_every_path_point_is_solved_to_the_tolerance_and_one_stopped_by_the_cap_says_so():
    x, y = classification_problem()
    design = design_of(x, y)
    solved = fit_path(design, 3, [2], SparseConfig(path_points=10, max_nec=2))
    assert solved.points_at_cap(0) == []
    assert all(p["converged"] and p["violation"] <= SparseConfig().tolerance for p in solved.points[0])
    capped = fit_path(design, 3, [2], SparseConfig(path_points=10, max_nec=2, max_iterations=2))
    at_cap = capped.points_at_cap(0)
    assert at_cap  # two iterations cannot solve a point after the first weights appear
    assert all(point["iterations"] <= 2 for point in capped.points[0])  # the cap counts each point's own
    for index in at_cap:
        point = capped.points[0][index]
        assert point["iterations"] == 2 and not point["converged"] and point["violation"] > SparseConfig().tolerance


def test_the_path_reports_its_progress_point_by_point_and_refit_by_refit():
    x, y = classification_problem()
    design = design_of(x, y)
    lines = []
    path = fit_path(design, 3, [1, 2], SparseConfig(path_points=12, max_nec=2), design, log=lines.append,
                    progress_every=0)
    walked = [line.split(": ")[1].split(" weights")[0].split(" of ") for line in lines
              if line.startswith("sparse path of 1 model:")]
    refitted = [line.split(": ")[1].split(" (")[0] for line in lines if line.startswith("sparse heads refitted")]
    # the weights per class the model holds, of the largest budget (2), never going back, then the refits
    reached = [int(done) for done, _ in walked]
    assert reached == sorted(reached) and {total for _, total in walked} == {"2"} and reached[-1] == 2
    # no guess of the time left on the path (its pace changes by orders of magnitude)
    assert not any("left" in line for line in lines if line.startswith("sparse path of"))
    assert max(p["nonzeros"] for p in path.points[0]) >= 2 * 3
    assert refitted == ["1 of 2 budgets", "2 of 2 budgets"] and lines[-1].startswith("sparse heads refitted")
    silent = fit_path(design, 3, [1, 2], SparseConfig(path_points=12, max_nec=2), design)
    assert torch.equal(silent.heads[2][0], path.heads[2][0])  # reporting changes nothing


def test_a_budget_of_every_concept_is_every_weight_even_where_the_path_ends_early():
    x, y = classification_problem()
    design = design_of(x, y)
    short = fit_path(design, 3, [2, 6], SparseConfig(path_points=3, lambda_min_ratio=0.5))  # C = 6
    assert short.points[0][-1]["nonzeros"] < 3 * 6  # the path's last point still holds zeros
    assert bool((short.heads[6][0] != 0).all())
    assert int((short.heads[2][0] != 0).sum()) <= 2 * 3
