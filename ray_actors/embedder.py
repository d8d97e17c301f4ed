"""Sentence embeddings: the one way every part of the system turns text into unit vectors.

:func:`load_embedder` is used in-process (persona de-duplication); :class:`BatchEmbedder` is the same
model as a Ray actor (one model per actor, batches of texts in, vectors out) for `p4r embed`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from persona4rec.errors import StageUnavailable
from persona4rec.models import resolve_model_ref


def load_embedder(
    ref: str, *, device: str = "cpu", batch_size: int = 64, max_length: int | None = None
) -> Callable[[list[str]], np.ndarray]:
    """texts -> float32 L2-normalised vectors, one row per text."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise StageUnavailable("embeddings need sentence-transformers: pip install 'persona4rec[embed]'") from None
    model = SentenceTransformer(resolve_model_ref(ref), device=device)
    if max_length is not None:
        model.max_seq_length = min(max_length, model.max_seq_length or max_length)

    def embed(texts: list[str]) -> np.ndarray:
        vectors = model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)

    return embed


class BatchEmbedder:
    """The embedder as a Ray actor (one model each): chunks of (keys, texts) in, (keys, vectors) out."""

    def __init__(self, ref: str, max_length: int, batch_size: int, use_gpu: bool) -> None:
        self.embed = load_embedder(
            ref, device="cuda" if use_gpu else "cpu", batch_size=batch_size, max_length=max_length
        )

    def embed_chunk(self, keys: list[str], texts: list[str]) -> tuple[list[str], np.ndarray]:
        return keys, self.embed(texts)
