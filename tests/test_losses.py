"""Each CBL objective against values computed by hand (plain Python loops over math.exp/log)."""
import math

import pytest
import torch

from cbmctl.errors import CbmctlError
from cbmctl.losses import (
    cbl_loss,
    contrastive_loss,
    cos3_loss,
    gumbel_noise,
    gumbel_paper_loss,
    gumbel_reference_loss,
    l1_loss,
)

Z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.5, -0.5]])  # B = 2 images, C = 3 concepts


def log_softmax_entry(values, index):
    top = max(values)  # shifted by the largest, so that logits of 1e10 (a tiny τ) stay finite by hand too
    return values[index] - top - math.log(sum(math.exp(v - top) for v in values))


def hand_contrastive(z):
    rows = z.tolist()
    b, c = len(rows), len(rows[0])
    m = min(b, c)
    down = [log_softmax_entry([rows[i][k] for i in range(b)], k) for k in range(m)]
    across = [log_softmax_entry(rows[k], k) for k in range(m)]
    return -0.5 * (sum(down) / m + sum(across) / m)


def test_contrastive_by_hand():
    assert float(contrastive_loss(Z)) == pytest.approx(hand_contrastive(Z), abs=1e-6)
    # worked on paper: columns 0, 1 give log-probs -0.1269, -0.0789; rows 0, 1 give -0.2413, -0.3063
    # (m = min(B, C) = 2: concept 2 is never a positive)
    assert float(contrastive_loss(Z)) == pytest.approx(0.5 * (0.1029 + 0.2738), abs=1e-3)


def test_gumbel_paper_is_contrastive_on_noisy_scaled_logits():
    tau = 0.5
    noise = gumbel_noise(Z.shape, "cpu", torch.Generator().manual_seed(7))
    expected = hand_contrastive((Z + noise) / tau)
    got = gumbel_paper_loss(Z, tau, generator=torch.Generator().manual_seed(7))
    assert float(got) == pytest.approx(expected, abs=1e-5)


def hand_reference(z, tau, seed):
    """The reference code's loss by hand: −½ the mean log-probability of every entry along each axis, with
    a separate noise draw per axis."""
    generator = torch.Generator().manual_seed(seed)
    first = gumbel_noise(z.shape, "cpu", generator)
    second = gumbel_noise(z.shape, "cpu", generator)
    down, across = ((z + first) / tau).tolist(), ((z + second) / tau).tolist()
    b, c = len(down), len(down[0])
    entries_down = [log_softmax_entry([down[i][j] for i in range(b)], i) for i in range(b) for j in range(c)]
    entries_across = [log_softmax_entry(across[i], j) for i in range(b) for j in range(c)]
    return -0.5 * (sum(entries_down) / (b * c) + sum(entries_across) / (b * c))


def test_gumbel_reference_by_hand():
    got = gumbel_reference_loss(Z, 2.0, generator=torch.Generator().manual_seed(3))
    assert float(got) == pytest.approx(hand_reference(Z, 2.0, 3), abs=1e-5)


def test_gumbel_noise_is_standard_gumbel():
    sample = gumbel_noise((200_000,), "cpu", torch.Generator().manual_seed(0))
    assert float(sample.mean()) == pytest.approx(0.5772, abs=0.01)  # Euler–Mascheroni
    assert float(sample.var()) == pytest.approx(math.pi ** 2 / 6, abs=0.03)


def test_l1_by_hand():
    weight = torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.0, -0.5], [0.0, 3.0, 1.0]])
    assert float(l1_loss(weight, 0.3)) == pytest.approx(0.3 / 3 * 8.0)


def test_cos3_by_hand():
    p = torch.tensor([[1.0, 0.0], [2.0, 1.0], [4.0, -1.0]])
    q = torch.tensor([[0.5, 1.0], [1.0, 0.0], [3.0, 2.0]])

    def column(x, j):
        values = [row[j] for row in x.tolist()]
        mean = sum(values) / len(values)
        cubed = [(v - mean) ** 3 for v in values]
        norm = math.sqrt(sum(v * v for v in cubed))
        return [v / norm for v in cubed]

    sims = [sum(a * b for a, b in zip(column(p, j), column(q, j))) for j in range(2)]
    assert float(cos3_loss(p, q)) == pytest.approx(-sum(sims) / 2, abs=1e-6)
    assert float(cos3_loss(q, q)) == pytest.approx(-1.0, abs=1e-6)  # identical columns: similarity 1


def test_none_is_zero_and_unknown_is_refused():
    assert float(cbl_loss("none", z=Z, scores=Z, cbl_weight=torch.eye(3))) == 0.0
    with pytest.raises(CbmctlError, match="unknown `loss`"):
        cbl_loss("nope", z=Z, scores=Z, cbl_weight=torch.eye(3))


def test_hard_samples_are_finite_and_only_for_the_paper_form():
    z = (Z * 50).requires_grad_()
    loss = gumbel_paper_loss(z, 1e-4, hard=True, generator=torch.Generator().manual_seed(0))
    # by hand: the hard sample is the argmax of Z + G along each axis; the loss is the diagonal's miss rate
    noisy = (Z * 50 + gumbel_noise(Z.shape, "cpu", torch.Generator().manual_seed(0))).tolist()
    down = [max(range(2), key=lambda i: noisy[i][k]) != k for k in range(2)]
    across = [max(range(3), key=lambda j: noisy[k][j]) != k for k in range(2)]
    assert float(loss.detach()) == pytest.approx(0.5 * (sum(down) / 2 + sum(across) / 2))
    loss.backward()
    assert torch.isfinite(z.grad).all()
    with pytest.raises(CbmctlError, match="`hard` applies only"):
        cbl_loss("gumbel", z=Z, scores=Z, cbl_weight=torch.eye(3), gumbel_form="reference", hard=True)


@pytest.mark.parametrize("form", ["paper", "reference"])
def test_tiny_tau_and_extreme_logits_stay_finite_and_exact(form):
    z = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0]], requires_grad=True)
    loss = cbl_loss("gumbel", z=z, scores=z.detach(), cbl_weight=torch.eye(3), gumbel_form=form, tau=1e-6,
                    generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert torch.isfinite(z.grad).all()
    # the value, not only its finiteness: the hand computation at logits of order 1e10 (shifted log-sum-exp)
    if form == "paper":
        noise = gumbel_noise(z.shape, "cpu", torch.Generator().manual_seed(1))
        expected = hand_contrastive((z.detach() + noise) / 1e-6)
    else:
        expected = hand_reference(z.detach(), 1e-6, 1)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4, abs=1e-3)
    # the diagonal leads both axes by 2e4/τ: the paper's loss (the diagonal only) is 0, the reference's (every
    # entry as a positive) is of the order of the scaled logits
    assert float(loss.detach()) == 0.0 if form == "paper" else expected > 1e9
    with pytest.raises(CbmctlError, match="`tau` must be positive"):
        cbl_loss("gumbel", z=z, scores=z, cbl_weight=torch.eye(3), gumbel_form=form, tau=0.0)
