"""The contrastive objective that aligns user profiles with their positive personas."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    users: torch.Tensor,
    personas: torch.Tensor,
    positives: torch.Tensor,
    *,
    temperature: float,
    false_negatives: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""InfoNCE with in-batch negatives (paper Eq. 9, with the positive in the denominator as is standard).

    Inputs: ``users`` (B, d) and ``personas`` (M, d), both L2-normalised (M >= B: the personas of every
    worker's batch, gathered); ``positives`` (B,) the column of each user's positive persona;
    ``false_negatives`` (B, M) bool, True where a column must not count as a negative for that row
    (same persona, same item or same user as the positive); positives themselves are never masked.

    .. math::
        \mathcal{L} = -\frac{1}{B}\sum_i \log
            \frac{\exp(\cos(u_i, p_{i^+})/\tau)}{\sum_{j \notin F_i} \exp(\cos(u_i, p_j)/\tau)}

    where :math:`F_i` is row i's false-negative set; ``label_smoothing`` spreads that much probability
    mass uniformly over the remaining columns, as in :func:`torch.nn.functional.cross_entropy`.
    """
    logits = users @ personas.T / temperature
    if false_negatives is not None:
        keep = torch.ones_like(false_negatives)
        keep[torch.arange(len(positives)), positives] = False
        logits = logits.masked_fill(false_negatives & keep, float("-inf"))
    if label_smoothing and false_negatives is not None:
        # cross_entropy would spread mass onto -inf columns (giving inf); do it over the allowed ones.
        logp = F.log_softmax(logits, dim=1)
        allowed = torch.isfinite(logits)
        nll = -logp[torch.arange(len(positives)), positives]
        uniform = -(logp.masked_fill(~allowed, 0.0).sum(1) / allowed.sum(1))
        return ((1 - label_smoothing) * nll + label_smoothing * uniform).mean()
    return F.cross_entropy(logits, positives, label_smoothing=label_smoothing)


def false_negative_mask(row_keys: list[torch.Tensor], col_keys: list[torch.Tensor]) -> torch.Tensor | None:
    """(B, M) True where any key of a row (e.g. its positive's persona id) equals that key of a column."""
    mask = None
    for rows, cols in zip(row_keys, col_keys, strict=True):
        same = rows[:, None] == cols[None, :]
        mask = same if mask is None else mask | same
    return mask
