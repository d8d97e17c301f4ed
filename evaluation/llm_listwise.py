"""Zero-shot listwise LLM reranking (Hou et al., "LLMs are zero-shot rankers"): the online-LLM baseline.

For one user at a time, as a service would, the local LLM reads the user's latest items (each as its
summary, with the user's rating) and the numbered candidates, and answers ``{"ranking": [numbers]}``.
Candidates are shown in a random order, seeded by the user, not in first-stage order: LLM rankers are
biased towards the order they are shown (Hou et al.), and a small model often hands it back unchanged
(counted as ``echoed``); shuffling keeps the first stage from winning through that bias.
An answer is accepted when every number names a candidate; repeats are dropped and unranked candidates
follow in first-stage order (counted as ``completed``). An answer that is not valid is retried up to
``max_attempts`` times, then recorded as failed and the user keeps the first-stage order. Answers are
cached by content hash with their latency, so a rerun reuses them (and reports the latency measured).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from persona4rec.ray_actors.engines.base import ChatRequest, Engine
from persona4rec.reasoning.cache import ResultCache, content_key

PROMPT_VERSION = "listwise-v2"
ITEM_CHARS = 160

SYSTEM = (
    "You are a recommender system. Given what a user bought and rated, rank candidate items by how likely "
    "the user is to buy each one next. Answer with JSON only."
)


@dataclass
class ListwiseResult:
    ranking: dict[str, list[int]] = field(default_factory=dict)  # user -> candidate columns, best first
    latency_ms: dict[str, float] = field(default_factory=dict)  # user -> wall time of its calls
    counts: dict[str, int] = field(
        default_factory=lambda: {"ok": 0, "failed": 0, "completed": 0, "echoed": 0, "cached": 0}
    )
    failures: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=lambda: {"prompt": 0, "completion": 0})


def prompt(history: list[tuple[str, float]], candidates: list[str]) -> list[dict[str, str]]:
    """``history``: (item text, rating) oldest first; ``candidates``: item texts in first-stage order."""
    hist = "\n".join(f"- ({r:g}/5) {_clip(t)}" for t, r in history) or "- (no history)"
    cands = "\n".join(f"[{k + 1}] {_clip(t)}" for k, t in enumerate(candidates))
    user = (
        f"The user's latest items, oldest first:\n{hist}\n\nCandidates:\n{cands}\n\n"
        f"Rank all {len(candidates)} candidates, most likely first. "
        f'Answer as {{"ranking": [candidate numbers]}} using each number from 1 to {len(candidates)} once.'
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def schema(n: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "ranking": {
                "type": "array",
                "items": {"type": "integer", "minimum": 1, "maximum": n},
                "minItems": n,
                "maxItems": n,
            }
        },
        "required": ["ranking"],
        "additionalProperties": False,
    }


def parse(text: str, n: int) -> tuple[list[int], int]:
    """(columns best first, how many were appended); raises ValueError for an invalid answer."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg})") from None
    ranking = doc.get("ranking") if isinstance(doc, dict) else None
    if not isinstance(ranking, list) or not ranking:
        raise ValueError("no 'ranking' list")
    if any(not isinstance(x, int) or isinstance(x, bool) or not 1 <= x <= n for x in ranking):
        raise ValueError("a ranking entry is not a candidate number")
    seen: list[int] = []
    for x in ranking:
        if x - 1 not in seen:
            seen.append(x - 1)
    rest = [c for c in range(n) if c not in seen]
    return seen + rest, len(rest)


def rerank_users(
    engine: Engine,
    users: list[str],
    history: dict[str, list[tuple[str, float]]],
    candidates: dict[str, list[str]],
    texts: dict[str, str],
    cache: ResultCache,
    *,
    max_tokens: int,
    max_attempts: int,
    progress: bool = False,
) -> ListwiseResult:
    """Rerank each user's candidates (item ids, first-stage order) with one LLM call at a time."""
    from tqdm.auto import tqdm

    stored = cache.load()
    out = ListwiseResult()
    for user in tqdm(users, desc="evaluate: LLM listwise", unit="user", disable=not progress):
        cands = candidates[user]
        shown = shown_order(user, len(cands))
        messages = prompt([(texts[i], r) for i, r in history[user]], [texts[cands[c]] for c in shown])
        key = content_key(
            "listwise", prompt=PROMPT_VERSION, messages=messages, model=engine.model_id, max_tokens=max_tokens
        )
        if key in stored and stored[key]["status"] == "ok":
            row = stored[key]
            out.ranking[user] = json.loads(row["payload"])
            out.latency_ms[user] = row["seconds"] * 1000
            out.counts["ok"] += 1
            out.counts["cached"] += 1
            out.counts["echoed"] += out.ranking[user] == shown
            continue
        request = ChatRequest(key, tuple(messages), schema(len(cands)), max_tokens, 0.0)
        error, ranking, calls, pt, ct = "", None, 0, 0, 0
        t0 = time.perf_counter()
        for _ in range(max_attempts):
            done = engine.complete([request])[0]
            calls, pt, ct = calls + 1, pt + done.prompt_tokens, ct + done.completion_tokens
            try:
                if done.error:
                    raise ValueError(f"no answer: {done.error}")
                if done.truncated:
                    raise ValueError("answer cut off at max_tokens")
                ranking, appended = parse(done.text, len(cands))
                out.counts["echoed"] += ranking == list(range(len(cands)))
                ranking = [shown[x] for x in ranking]  # presented positions -> first-stage columns
                break
            except ValueError as exc:
                error = str(exc)
        seconds = time.perf_counter() - t0
        out.tokens["prompt"] += pt
        out.tokens["completion"] += ct
        out.latency_ms[user] = seconds * 1000
        if ranking is None:
            out.counts["failed"] += 1
            reason = error.split(" (")[0]
            out.failures[reason] = out.failures.get(reason, 0) + 1
            out.ranking[user] = list(range(len(cands)))
        else:
            out.counts["ok"] += 1
            out.counts["completed"] += appended > 0
            out.ranking[user] = ranking
        cache.append(
            [
                {
                    "key": key, "subject": user, "status": "failed" if ranking is None else "ok",
                    "payload": json.dumps(out.ranking[user]), "error": error if ranking is None else None,
                    "attempts": calls, "calls": calls, "prompt_tokens": pt, "completion_tokens": ct,
                    "seconds": seconds, "model": engine.model_id, "engine": engine.name,
                }
            ]
        )  # fmt: skip
    return out


def shown_order(user: str, n: int) -> list[int]:
    """The first-stage columns in the order the LLM sees them: a permutation seeded by the user id."""
    seed = int.from_bytes(hashlib.sha256(user.encode()).digest()[:8], "big")
    return np.random.default_rng(seed).permutation(n).tolist()


def scores_from(ranking: list[int], width: int) -> np.ndarray:
    """A score row that orders the candidates as ``ranking`` does (best first)."""
    row = np.full(width, -np.inf, dtype=np.float32)
    row[np.asarray(ranking, dtype=np.int64)] = -np.arange(len(ranking), dtype=np.float32)
    return row


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ITEM_CHARS else text[: ITEM_CHARS - 1] + "…"
