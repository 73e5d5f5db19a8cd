"""Concept Bottleneck Layer objectives (shared/METHOD.md). Z is the batch of CBL activations (B×C).
Every loss works in log-space (log-softmax, never the log of a softmax), so tiny τ and hard samples
stay finite."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cbmctl.errors import CbmctlError

LOSSES = ("gumbel", "contrastive", "l1", "cos3", "none")
GUMBEL_FORMS = ("paper", "reference")


def _diagonal_log_probs(log_probs_batch: torch.Tensor, log_probs_concepts: torch.Tensor) -> torch.Tensor:
    """−½ [mean_k log p_batch[k,k] + mean_k log p_concepts[k,k]] over the m = min(B, C) diagonal entries."""
    m = min(log_probs_batch.shape[0], log_probs_batch.shape[1])
    k = torch.arange(m, device=log_probs_batch.device)
    return -0.5 * (log_probs_batch[k, k].mean() + log_probs_concepts[k, k].mean())


def contrastive_loss(z: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with diagonal positives: row k of the batch <-> concept k. The batch-axis softmax
    runs down each column, the concept-axis softmax along each row over all C concepts."""
    return _diagonal_log_probs(F.log_softmax(z, dim=0), F.log_softmax(z, dim=1))


def gumbel_noise(shape, device, generator=None) -> torch.Tensor:
    uniform = torch.rand(shape, device=device, generator=generator)
    tiny = torch.finfo(uniform.dtype).tiny
    exponential = -torch.log(uniform.clamp_min(tiny))
    return -torch.log(exponential.clamp_min(tiny))


def gumbel_paper_loss(z: torch.Tensor, tau: float = 1.0, hard: bool = False, generator=None) -> torch.Tensor:
    """The paper's Sparse-CBM loss: the contrastive loss on (Z + G)/τ, G ~ Gumbel(0, 1), i.e. −log of the
    diagonal of Gumbel-Softmax samples along each axis (one noise draw shared by both axes).

    hard=True: straight-through samples. The forward value of a hard sample's diagonal is 0 or 1, whose
    −log is infinite, so the hard loss is the miss rate ½ [mean_k (1 − y_batch[k,k]) + mean_k (1 −
    y_concepts[k,k])] with the soft sample's gradient (straight-through) — finite in value and gradient."""
    if tau <= 0:
        raise CbmctlError(f"--tau must be positive, got {tau}")
    noisy = (z + gumbel_noise(z.shape, z.device, generator)) / tau
    log_batch, log_concepts = F.log_softmax(noisy, dim=0), F.log_softmax(noisy, dim=1)
    if not hard:
        return _diagonal_log_probs(log_batch, log_concepts)
    m = min(z.shape)
    k = torch.arange(m, device=z.device)
    misses = []
    for log_probs, axis in ((log_batch, 0), (log_concepts, 1)):
        soft = log_probs.exp()
        index = soft.argmax(dim=axis, keepdim=True)
        hard_sample = torch.zeros_like(soft).scatter_(axis, index, 1.0)
        straight_through = hard_sample - soft.detach() + soft
        misses.append((1.0 - straight_through[k, k]).mean())
    return 0.5 * (misses[0] + misses[1])


def gumbel_reference_loss(z: torch.Tensor, tau: float = 1.0, generator=None) -> torch.Tensor:
    """What the public code computes: ½ [mean over all B·C entries of −log GS_batch(Z) + mean over all
    entries of −log GS_concepts(Z)], with fresh Gumbel noise per axis. (Its gradient pushes every row
    towards uniform; kept for comparison.)"""
    if tau <= 0:
        raise CbmctlError(f"--tau must be positive, got {tau}")
    down = F.log_softmax((z + gumbel_noise(z.shape, z.device, generator)) / tau, dim=0)
    across = F.log_softmax((z + gumbel_noise(z.shape, z.device, generator)) / tau, dim=1)
    return -0.5 * (down.mean() + across.mean())


def l1_loss(weight: torch.Tensor, strength: float = 1e-3) -> torch.Tensor:
    """(λ / C) · Σ|W| for the C×C CBL weight."""
    return strength / weight.shape[0] * weight.abs().sum()


def cos3_loss(scores: torch.Tensor, z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Label-free CBM's cos³ similarity between the concept scores P = ψ (target) and Q = Z: centre each
    column over the batch, cube it, L2-normalise each column over the batch; L = −mean_j Σ_i P_ij Q_ij."""
    def prepare(x):
        x = x - x.mean(dim=0, keepdim=True)
        x = x ** 3
        return x / x.norm(dim=0, keepdim=True).clamp_min(eps)
    return -(prepare(scores.detach()) * prepare(z)).sum(dim=0).mean()


def cbl_loss(name: str, *, z, scores, cbl_weight, gumbel_form="paper", tau=1.0, hard=False, l1_lambda=1e-3,
             generator=None) -> torch.Tensor:
    """The chosen CBL objective for one batch (zero for 'none')."""
    if hard and not (name == "gumbel" and gumbel_form == "paper"):
        raise CbmctlError("--hard applies only to --loss gumbel --gumbel-form paper (the reference form's "
                          "−log of a hard sample is infinite)")
    if name == "gumbel":
        if gumbel_form == "paper":
            return gumbel_paper_loss(z, tau, hard, generator)
        if gumbel_form == "reference":
            return gumbel_reference_loss(z, tau, generator)
        raise CbmctlError(f"unknown --gumbel-form {gumbel_form!r} ({', '.join(GUMBEL_FORMS)})")
    if name == "contrastive":
        return contrastive_loss(z)
    if name == "l1":
        return l1_loss(cbl_weight, l1_lambda)
    if name == "cos3":
        return cos3_loss(scores, z)
    if name == "none":
        return z.new_zeros(())
    raise CbmctlError(f"unknown --loss {name!r} ({', '.join(LOSSES)})")
