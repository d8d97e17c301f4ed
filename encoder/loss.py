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


def item_scores(
    users: torch.Tensor,
    personas: torch.Tensor,
    slots: torch.Tensor,
    *,
    aggregation: str = "max",
    smoothing: float = 0.05,
) -> torch.Tensor:
    r"""(B, M) scores of M items for B users from their personas' cosines (the index's score, Eq. 10).

    Inputs: ``users`` (B, d) and ``personas`` (P, d), L2-normalised; ``slots`` (M, W) the rows of each
    item's personas in ``personas``, -1 padded (every item needs one persona).

    - ``max``: :math:`s(u, i) = \max_{p \in \Pi_i} \cos(u, p)`, what serving computes; its gradient
      reaches the winning persona only;
    - ``logsumexp``: :math:`s(u, i) = \sigma \log \sum_{p \in \Pi_i} \exp(\cos(u, p) / \sigma)`, a smooth
      upper bound of the max (within :math:`\sigma \log |\Pi_i|`) that trains every persona in proportion
      to how close it is; :math:`\sigma` = ``smoothing``.
    """
    cos = users @ personas.T  # (B, P)
    grid = cos[:, slots.clamp(min=0)]  # (B, M, W)
    grid = grid.masked_fill((slots < 0)[None], float("-inf"))
    if aggregation == "max":
        return grid.max(dim=2).values
    if aggregation == "logsumexp":
        return smoothing * torch.logsumexp(grid / smoothing, dim=2)
    raise ValueError(f"aggregation {aggregation!r}: expected 'max' or 'logsumexp'")


def item_info_nce(
    scores: torch.Tensor,
    positives: torch.Tensor,
    *,
    temperature: float,
    false_negatives: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""InfoNCE over items: each user's next item against the other candidate items (in-batch items, first-stage
    hard negatives, or the whole catalogue), with item scores from :func:`item_scores`.

    Inputs: ``scores`` (B, M) item scores; ``positives`` (B,) the column of each row's item;
    ``false_negatives`` (B, M) bool, True where a column is one of the user's own training items (never a
    negative; the positive itself is never masked); ``prior`` (M,) an optional logit adjustment
    :math:`\log \pi_j` (e.g. log training popularity) added in training only, so that the learned score
    explains what the prior does not (Menon et al., 2021, "Long-tail learning via logit adjustment").

    .. math::
        \mathcal{L} = -\frac{1}{B}\sum_i \log
            \frac{\exp(s(u_i, i^+)/\tau + \log\pi_{i^+})}{\sum_{j \notin F_i} \exp(s(u_i, j)/\tau + \log\pi_j)}

    Every training interaction with a history gives a row, whether or not a persona cites its review: the
    positive is the item, and the persona that wins its max is whichever the encoder aligns best.
    """
    logits = scores / temperature
    if prior is not None:
        logits = logits + prior[None, :]
    if false_negatives is not None:
        keep = torch.ones_like(false_negatives)
        keep[torch.arange(len(positives)), positives] = False
        logits = logits.masked_fill(false_negatives & keep, float("-inf"))
    return F.cross_entropy(logits, positives)
