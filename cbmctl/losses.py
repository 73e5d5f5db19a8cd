"""Concept Bottleneck Layer objectives (docs/method.md, "CBL objectives"). Z is the batch of CBL activations, B×C, or S×B×C
for S models trained together (one loss value per model). Every loss works in log-space (log-softmax,
never the log of a softmax), so tiny τ and hard samples stay finite."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cbmctl.errors import CbmctlError
from cbmctl.spec import GUMBEL_FORMS, L1_LAMBDA, LOSSES, check_loss_options  # noqa: F401  (the names live in spec)


def _diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The m = min(B, C) diagonal entries [k, k] of the last two dimensions."""
    return torch.diagonal(matrix, dim1=-2, dim2=-1)


def _diagonal_log_probs(log_probs_batch: torch.Tensor, log_probs_concepts: torch.Tensor) -> torch.Tensor:
    """−½ [mean_k log p_batch[k,k] + mean_k log p_concepts[k,k]] over the m = min(B, C) diagonal entries."""
    return -0.5 * (_diagonal(log_probs_batch).mean(-1) + _diagonal(log_probs_concepts).mean(-1))


def contrastive_loss(z: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with diagonal positives: row k of the batch <-> concept k. The batch-axis softmax
    runs down each column, the concept-axis softmax along each row over all C concepts."""
    return _diagonal_log_probs(F.log_softmax(z, dim=-2), F.log_softmax(z, dim=-1))


def gumbel_noise(shape, device, generator=None) -> torch.Tensor:
    uniform = torch.rand(shape, device=device, generator=generator)
    tiny = torch.finfo(uniform.dtype).tiny
    exponential = -torch.log(uniform.clamp_min(tiny))
    return -torch.log(exponential.clamp_min(tiny))


def _member_noise(z: torch.Tensor, generators) -> torch.Tensor:
    """Gumbel noise shaped like z. With a list of generators (one per model of an S×B×C stack), each
    model draws its own noise from its own stream, exactly as it would when trained alone."""
    if isinstance(generators, (list, tuple)):
        if z.dim() != 3 or len(generators) != z.shape[0]:
            raise ValueError("one generator per stacked model is needed")
        return torch.stack([gumbel_noise(z.shape[1:], z.device, g) for g in generators])
    return gumbel_noise(z.shape, z.device, generators)


def gumbel_paper_loss(z: torch.Tensor, tau: float = 1.0, hard: bool = False, generator=None) -> torch.Tensor:
    """The paper's Sparse-CBM loss: the contrastive loss on (Z + G)/τ, G ~ Gumbel(0, 1), i.e. −log of the
    diagonal of Gumbel-Softmax samples along each axis (one noise draw shared by both axes). The paper
    writes log s inside the softmax; CBL outputs can be negative, so Z itself is read as the log-score.

    hard=True: straight-through samples. The forward value of a hard sample's diagonal is 0 or 1, whose
    −log is infinite, so the hard loss is the miss rate ½ [mean_k (1 − y_batch[k,k]) + mean_k (1 −
    y_concepts[k,k])] with the soft sample's gradient (straight-through) — finite in value and gradient."""
    if tau <= 0:
        raise CbmctlError(f"`tau` must be positive, got {tau}")
    noisy = (z + _member_noise(z, generator)) / tau
    log_batch, log_concepts = F.log_softmax(noisy, dim=-2), F.log_softmax(noisy, dim=-1)
    if not hard:
        return _diagonal_log_probs(log_batch, log_concepts)
    misses = []
    for log_probs, axis in ((log_batch, -2), (log_concepts, -1)):
        soft = log_probs.exp()
        index = soft.argmax(dim=axis, keepdim=True)
        hard_sample = torch.zeros_like(soft).scatter_(axis, index, 1.0)
        straight_through = hard_sample - soft.detach() + soft
        misses.append((1.0 - _diagonal(straight_through)).mean(-1))
    return 0.5 * (misses[0] + misses[1])


def gumbel_reference_loss(z: torch.Tensor, tau: float = 1.0, generator=None) -> torch.Tensor:
    """What the public code computes: ½ [mean over all B·C entries of −log GS_batch(Z) + mean over all
    entries of −log GS_concepts(Z)], with fresh Gumbel noise per axis. (Its gradient pushes every row
    towards uniform; kept for comparison.)"""
    if tau <= 0:
        raise CbmctlError(f"`tau` must be positive, got {tau}")
    down = F.log_softmax((z + _member_noise(z, generator)) / tau, dim=-2)
    across = F.log_softmax((z + _member_noise(z, generator)) / tau, dim=-1)
    return -0.5 * (down.mean((-2, -1)) + across.mean((-2, -1)))


def l1_loss(weight: torch.Tensor, strength: float = L1_LAMBDA) -> torch.Tensor:
    """(λ / C) · Σ|W| for the C×C CBL weight (or each of an S×C×C stack)."""
    return strength / weight.shape[-1] * weight.abs().sum((-2, -1))


def cos3_loss(scores: torch.Tensor, z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Label-free CBM's cos³ similarity between the concept scores P = ψ (target) and Q = Z: centre each
    column over the batch, cube it, L2-normalise each column over the batch; L = −mean_j Σ_i P_ij Q_ij."""
    def prepare(x):
        x = x - x.mean(dim=-2, keepdim=True)
        x = x ** 3
        return x / x.norm(dim=-2, keepdim=True).clamp_min(eps)
    return -(prepare(scores.detach()) * prepare(z)).sum(dim=-2).mean(-1)


def cbl_loss(name: str, *, z, scores, cbl_weight, gumbel_form="paper", tau=1.0, hard=False, l1_lambda=L1_LAMBDA,
             generator=None) -> torch.Tensor:
    """The chosen CBL objective for one batch (zero for 'none'): a scalar for B×C input, one value per
    model for an S×B×C stack (then `generator` may be a list with one generator per model)."""
    check_loss_options(name, gumbel_form, hard)
    if name == "gumbel":
        if gumbel_form == "paper":
            return gumbel_paper_loss(z, tau, hard, generator)
        return gumbel_reference_loss(z, tau, generator)
    if name == "contrastive":
        return contrastive_loss(z)
    if name == "l1":
        return l1_loss(cbl_weight, l1_lambda)
    if name == "cos3":
        return cos3_loss(scores, z)
    return z.new_zeros(z.shape[:-2])
