"""User profiles: the recency-weighted mean of a user's last L interaction embeddings (paper Eq. 7).

e_u = sum_l gamma^(l-1) e_{u,l} / sum_l gamma^(l-1), l = 1 the most recent; then L2-normalised so that a
dot product with a unit persona vector is the cosine. Training, evaluation and serving all use these.
"""

from __future__ import annotations

import numpy as np


def recency_weights(n: int, gamma: float) -> np.ndarray:
    """Weights of n interactions in chronological order: the newest gets 1, each older one gamma times less."""
    return (gamma ** np.arange(n - 1, -1, -1, dtype=np.float64)).astype(np.float32)


def history_weights(lengths: np.ndarray, width: int, gamma: float) -> np.ndarray:
    """(n, width) weights for left-aligned chronological histories of the given lengths; 0 on padding."""
    cols = np.arange(width)[None, :]
    lengths = np.asarray(lengths)[:, None]
    exponent = np.clip(lengths - 1 - cols, 0, None).astype(np.float64)
    return np.where(cols < lengths, gamma**exponent, 0.0).astype(np.float32)


def profiles(vectors: np.ndarray, history: np.ndarray, lengths: np.ndarray, gamma: float) -> np.ndarray:
    """Unit profiles from ``vectors`` (N, d) and left-aligned index rows ``history`` (n, width), -1 padded."""
    weights = history_weights(lengths, history.shape[1], gamma)
    gathered = vectors[np.clip(history, 0, None)]  # (n, width, d); padding rows get weight 0
    mean = np.einsum("nw,nwd->nd", weights, gathered) / np.maximum(weights.sum(1, keepdims=True), 1e-12)
    return normalize(mean)


def normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)
