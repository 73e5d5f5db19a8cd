"""The linear probe: each strength of the grid solves its own L2-regularised logistic regression, and the
strength kept is the one with the lowest validation loss."""
import numpy as np
import torch

from cbmctl.probe import fit_linear_probe

CENTRES = np.random.default_rng(99).normal(size=(4, 6))


def blobs(seed, per_class, spread=1.2, centres=CENTRES):
    """Samples around fixed class centres (train and validation share them; only the noise differs)."""
    rng = np.random.default_rng(seed)
    classes, dim = centres.shape
    labels = np.repeat(np.arange(classes), per_class)
    features = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    return features.astype(np.float32), labels


def validation_nll(probe, features, labels):
    logits = probe.logits(features).astype(np.float64)
    logits -= logits.max(1, keepdims=True)
    log_probabilities = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return float(-log_probabilities[np.arange(len(labels)), labels].mean())


def test_each_strength_is_stationary_and_the_lowest_validation_loss_is_kept():
    train_x, train_y = blobs(0, 30)
    val_x, val_y = blobs(1, 10)
    grid = (1e-4, 1e-2, 1.0)
    solo = {l2: fit_linear_probe(train_x, train_y, val_x, val_y, 4, l2_grid=(l2,)) for l2 in grid}
    for l2, probe in solo.items():
        # the gradient of mean CE + l2·‖W‖² vanishes at the solution (the bias is not penalised)
        weight = torch.tensor(probe.weight, requires_grad=True)
        bias = torch.tensor(probe.bias, requires_grad=True)
        objective = torch.nn.functional.cross_entropy(torch.as_tensor(train_x) @ weight.T + bias,
                                                      torch.as_tensor(train_y)) + l2 * (weight ** 2).sum()
        objective.backward()
        assert float(weight.grad.abs().max()) < 1e-3 and float(bias.grad.abs().max()) < 1e-3
        assert abs(probe.val_loss - validation_nll(probe, val_x, val_y)) < 1e-5
    losses = {l2: validation_nll(probe, val_x, val_y) for l2, probe in solo.items()}
    assert len({round(v, 3) for v in losses.values()}) == 3  # the grid's strengths really differ on val
    chosen = fit_linear_probe(train_x, train_y, val_x, val_y, 4, l2_grid=grid)
    best = min(losses, key=losses.get)
    assert chosen.l2 == best
    np.testing.assert_allclose(chosen.weight, solo[best].weight, atol=2e-4)


def test_a_strength_that_wins_on_validation_accuracy_but_not_loss_is_not_kept():
    # with a strong penalty the probe predicts the same classes but with near-uniform probabilities
    train_x, train_y = blobs(2, 40, spread=0.8)
    val_x, val_y = blobs(104, 5, spread=0.8)  # 20 validation images: accuracy moves in steps of 5 points
    weak, strong = 1e-3, 10.0
    fits = {l2: fit_linear_probe(train_x, train_y, val_x, val_y, 4, l2_grid=(l2,)) for l2 in (weak, strong)}
    assert fits[strong].val_accuracy > fits[weak].val_accuracy  # one lucky image
    assert fits[strong].val_loss > fits[weak].val_loss + 0.5
    assert fit_linear_probe(train_x, train_y, val_x, val_y, 4, l2_grid=(weak, strong)).l2 == weak
