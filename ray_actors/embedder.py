"""A sentence-transformers embedder: the one way every part of the system turns text into unit vectors."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from persona4rec.errors import StageUnavailable
from persona4rec.models import resolve_model_ref


def load_embedder(ref: str, *, device: str = "cpu", batch_size: int = 64) -> Callable[[list[str]], np.ndarray]:
    """texts -> float32 L2-normalised vectors, one row per text."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise StageUnavailable("embeddings need sentence-transformers: pip install 'persona4rec[embed]'") from None
    model = SentenceTransformer(resolve_model_ref(ref), device=device)

    def embed(texts: list[str]) -> np.ndarray:
        vectors = model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)

    return embed
