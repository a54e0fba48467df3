"""Training losses for noisy labels: ``training.noise`` in a recipe.

FSDKaggle2018's leaders each answered its unverified labels differently; the per-batch ones are
here (self-verification, which retrains in rounds, is a command). Every strategy applies to the
*untrusted* samples of a batch: the clips a person did not verify when the manifest says which
were verified (``manually_verified``), every clip otherwise. Trusted samples always get the
plain loss (softmax cross-entropy on soft targets, or per-label binary cross-entropy).

========== ==============================================================================
strategy   untrusted samples
========== ==============================================================================
none       the plain loss
mask       loss masking (Jeong & Lim, 1st place): the ``mask_fraction`` of them with the
           largest loss leave the gradient (per label for multi-label data), after
           ``warmup_epochs`` epochs
gce        generalised cross-entropy (Zhang & Sabuncu 2018): ``(1 - p_y^q) / q``; q -> 0 is
           cross-entropy, q = 1 the mean absolute error
sce        symmetric cross-entropy (Wang et al. 2019): ``alpha CE + beta RCE``, the reverse
           cross-entropy taking log 0 as log 1e-4
bootstrap  soft bootstrapping (Reed et al. 2015): the target becomes
           ``beta y + (1 - beta) p`` with the model's own detached prediction ``p``
========== ==============================================================================

Mixup mixes a batch before the loss: a mixed sample is trusted only when both of its sources
are (:func:`mixed_trust`), and every loss here takes soft targets. Under DDP each process ranks
its own share of the batch, so masking leaves out the fraction of each process's untrusted samples.

Written here rather than taken from a library: the robust-loss packages take hard class
indices and no per-sample trust, and none masks a batch by rank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from soundtag.errors import ParameterError

__all__ = [
    "STRATEGIES",
    "bootstrap_loss",
    "gce_loss",
    "loss_mask",
    "mixed_trust",
    "noisy_label_loss",
    "plain_loss",
    "sce_loss",
]

STRATEGIES = ("none", "mask", "gce", "sce", "bootstrap")
LOG_FLOOR = 1e-4  # Wang et al.'s A = log 1e-4 for log 0 in the reverse cross-entropy


def plain_loss(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Per-element loss: ``(batch,)`` softmax cross-entropy on soft targets, or ``(batch, classes)``
    binary cross-entropy for multi-label data.

    >>> logits, y = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    >>> round(plain_loss(logits, y, False).item(), 4)  # -log softmax = log(1 + e^-2)
    0.1269
    """
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)


def gce_loss(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool, *, q: float = 0.7) -> torch.Tensor:
    """Generalised cross-entropy ``(1 - sum_c y_c p_c^q) / q``, per element as :func:`plain_loss`.

    >>> logits, y = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    >>> round(gce_loss(logits, y, False, q=1.0).item(), 4)  # q = 1: 1 - p_y, the MAE
    0.5
    """
    if not 0 < q <= 1:
        raise ParameterError(f"gce q={q} must be in (0, 1]")
    if multilabel:
        p = torch.sigmoid(logits).clamp(min=1e-7, max=1 - 1e-7)
        return (targets * (1 - p**q) + (1 - targets) * (1 - (1 - p) ** q)) / q
    p = torch.softmax(logits, dim=1).clamp(min=1e-7)
    return (1 - (targets * p**q).sum(dim=1)) / q


def sce_loss(
    logits: torch.Tensor, targets: torch.Tensor, multilabel: bool, *, alpha: float = 0.1, beta: float = 1.0
) -> torch.Tensor:
    """Symmetric cross-entropy ``alpha CE(y, p) + beta CE(p, y)``, per element as :func:`plain_loss`.

    >>> logits, y = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    >>> round(sce_loss(logits, y, False, alpha=0.0, beta=1.0).item(), 4)  # -0.5 log 1e-4
    4.6052
    """
    ce = plain_loss(logits, targets, multilabel)
    floor = torch.log(torch.tensor(LOG_FLOOR, dtype=logits.dtype, device=logits.device))
    if multilabel:
        p = torch.sigmoid(logits)
        rce = -(p * torch.log(targets).clamp(min=floor) + (1 - p) * torch.log(1 - targets).clamp(min=floor))
    else:
        p = torch.softmax(logits, dim=1)
        rce = -(p * torch.log(targets).clamp(min=floor)).sum(dim=1)
    return alpha * ce + beta * rce


def bootstrap_loss(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool, *, beta: float = 0.8) -> torch.Tensor:
    """Cross-entropy against ``beta y + (1 - beta) p`` (``p`` detached: the target moves toward
    what the model believes, the gradient does not chase it), per element as :func:`plain_loss`."""
    if not 0 <= beta <= 1:
        raise ParameterError(f"bootstrap beta={beta} must be in [0, 1]")
    p = (torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)).detach()
    return plain_loss(logits, beta * targets + (1 - beta) * p, multilabel)


def loss_mask(losses: torch.Tensor, trusted: torch.Tensor, fraction: float) -> torch.Tensor:
    """Which elements of ``losses`` stay in the gradient: all trusted ones, and the untrusted ones
    but the ``round(fraction x untrusted)`` largest.

    ``losses`` is ``(batch,)`` or ``(batch, labels)``; for the latter each label column is ranked
    apart (per-label masking) among the untrusted rows. Ties go to the earlier sample.

    >>> losses = torch.tensor([5.0, 1.0, 4.0, 3.0, 2.0])
    >>> trusted = torch.tensor([True, False, False, False, False])
    >>> loss_mask(losses, trusted, 0.5).tolist()  # 2 of 4 untrusted left out: 4.0 and 3.0
    [True, True, False, False, True]
    """
    if not 0 <= fraction <= 1:
        raise ParameterError(f"mask fraction={fraction} must be in [0, 1]")
    column = losses if losses.ndim == 2 else losses[:, None]
    untrusted = ~trusted.to(torch.bool)
    # Ranks rather than topk: the count stays a tensor, so a GPU step needs no host sync.
    # Trusted rows rank after every untrusted one, so only untrusted rows fall below n_drop.
    n_drop = torch.round(fraction * untrusted.sum())
    ranked = column.detach().masked_fill(~untrusted[:, None], float("-inf"))
    order = ranked.argsort(dim=0, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(
        0, order, torch.arange(len(column), device=column.device).view(-1, 1).expand_as(order).contiguous()
    )
    keep = rank >= n_drop
    return keep if losses.ndim == 2 else keep[:, 0]


def mixed_trust(trusted: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Trust of mixup's mixed samples ``lam x + (1 - lam) x[perm]``: both sources trusted."""
    return trusted & trusted[perm]


def noisy_label_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    trusted: torch.Tensor | None,
    noise,
    *,
    multilabel: bool,
    epoch: int = 0,
) -> torch.Tensor:
    """The batch's mean loss under the recipe's ``training.noise`` (a
    :class:`~soundtag.recipe.NoiseConfig`). ``trusted`` None: every sample untrusted."""
    strategy = noise.strategy
    if strategy == "none":  # the fused kernels (soft targets for cross-entropy): the mean of plain_loss
        if multilabel:
            return F.binary_cross_entropy_with_logits(logits, targets)
        return F.cross_entropy(logits, targets)
    if trusted is None:
        trusted = torch.zeros(len(logits), dtype=torch.bool, device=logits.device)
    plain = plain_loss(logits, targets, multilabel)
    if strategy == "mask":
        if epoch < noise.warmup_epochs:
            return plain.mean()
        keep = loss_mask(plain, trusted, noise.mask_fraction)
        return (plain * keep).sum() / keep.sum().clamp(min=1)
    robust = {
        "gce": lambda: gce_loss(logits, targets, multilabel, q=noise.gce_q),
        "sce": lambda: sce_loss(logits, targets, multilabel, alpha=noise.sce_alpha, beta=noise.sce_beta),
        "bootstrap": lambda: bootstrap_loss(logits, targets, multilabel, beta=noise.bootstrap_beta),
    }
    if strategy not in robust:
        raise ParameterError(f"training.noise.strategy={strategy!r} is not one of {', '.join(STRATEGIES)}")
    row_trusted = trusted.view(-1, *([1] * (plain.ndim - 1)))
    return torch.where(row_trusted, plain, robust[strategy]()).mean()
