"""Merge near-duplicate personas of one item by embedding similarity.

The prompt asks for distinct personas, but small models repeat themselves ("Budget Beginner" and
"Beginner On A Budget"). Two personas whose name+description embeddings have cosine >= threshold are
merged: the first one stays, cites the union of both evidence lists, and counts what it absorbed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from persona4rec.reasoning.answers import Persona

#: texts -> L2-normalised vectors, one row per text
EmbedFn = Callable[[list[str]], np.ndarray]


def persona_key_text(p: Persona) -> str:
    return f"{p.name}. {p.description}"


def merge_near_duplicates(personas: Sequence[Persona], vectors: np.ndarray, threshold: float) -> list[Persona]:
    """Greedy, order-preserving merge: each persona joins the first earlier kept one it is too close to."""
    kept: list[int] = []
    out: list[Persona] = []
    for i, p in enumerate(personas):
        match = next((k for k, j in enumerate(kept) if float(vectors[i] @ vectors[j]) >= threshold), None)
        if match is None:
            kept.append(i)
            out.append(Persona(p.name, p.description, p.rationale, list(p.evidence), p.merged_from))
        else:
            target = out[match]
            target.evidence = sorted(set(target.evidence) | set(p.evidence))
            target.merged_from += p.merged_from
    return out


def dedup_many(groups: Sequence[Sequence[Persona]], embed: EmbedFn, threshold: float) -> list[list[Persona]]:
    """Merge within each group, embedding every persona of every group in one batch."""
    texts = [persona_key_text(p) for g in groups for p in g]
    if not texts:
        return [list(g) for g in groups]
    vectors = embed(texts)
    out, start = [], 0
    for g in groups:
        out.append(merge_near_duplicates(g, vectors[start : start + len(g)], threshold))
        start += len(g)
    return out
