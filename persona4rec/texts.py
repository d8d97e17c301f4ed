"""The texts the encoder reads: one template per side, shared by training, indexing and serving.

The authors' release used different user-side texts for training and inference (paper-notes §9.3); here
every consumer builds texts through these functions only, and ``TEXTS_VERSION`` is part of every
fingerprint and registered model, so a change of template is a new version everywhere at once.

- persona side (paper-notes §2.6, field set "N,D,I,R"): name, description, item summary, rationale;
- user side (Eq. 6, concat(s_i, a_{u,i})): the interacted item's summary plus the user's own review
  (efficient mode) or the aspect tuple extracted from it (paper mode, when one was kept).
"""

from __future__ import annotations

import json
from typing import Any

TEXTS_VERSION = "t1"

#: Characters kept of a user's review in an interaction text (long reviews say their point early).
REVIEW_CHARS = 400


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def item_text(item_id: str, summary: str | None, title: str | None = None) -> str:
    """What an item is: its LLM summary, else its title, else its id (never empty)."""
    return " ".join((summary or title or f"Item {item_id}").split())


def persona_text(persona: dict[str, Any], item: str) -> str:
    """A persona as one passage; ``item`` is :func:`item_text` of its item."""
    return (
        f"Persona: {persona['name'].strip()}\n"
        f"Description: {persona['description'].strip()}\n"
        f"Item: {item}\n"
        f"Why: {persona['rationale'].strip()}"
    )


def interaction_text(item: str, *, review_title: str | None, review_text: str, aspects_json: str | None = None) -> str:
    """One interaction of a user's history: the item, then what this user said about it.

    ``aspects_json`` (paper mode) replaces the review by the non-null aspect slots extracted from it
    (their reasons are left out: they restate the review).
    """
    said = ""
    if aspects_json:
        slots = json.loads(aspects_json)
        said = "; ".join(
            f"{k.replace('_', ' ')}: {v.strip()}"
            for k, v in slots.items()
            if not k.endswith("_reason") and isinstance(v, str) and v.strip()
        )
    if not said:
        parts = [p.strip() for p in (review_title or "", review_text) if p and p.strip()]
        said = _clip(". ".join(parts), REVIEW_CHARS) if parts else "(no review text)"
    return f"Item: {item}\nUser said: {said}"
