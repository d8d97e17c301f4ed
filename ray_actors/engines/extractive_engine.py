"""Extractive personas, no LLM: a named baseline persona source (``llm.engine: extractive``).

It answers a persona prompt from the prompt's own reviews: persona k restates sampled review k and cites
it, the summary restates the first review. Deterministic, instant and grounded in real review text, it
answers the question "what do LLM-written personas add over raw review snippets?" and lets the stages
downstream of ``reason`` run on a whole real catalogue on a machine where no LLM fits the time. It is
not an LLM and says nothing about what one would write; reports name it as the persona source. It
answers only persona prompts (efficient mode), never a listwise ranking or a judge.
"""

from __future__ import annotations

import json
import re
from typing import Any

from persona4rec.ray_actors.engines.base import ChatRequest, Completion, Engine

_REVIEW = re.compile(r"^\[R(\d+)\] \(([\d.]+)★\) (.*)$", re.MULTILINE)
_COUNT = re.compile(r"(?:exactly (\d+)|between (\d+) and (\d+))")
GIST_WORDS = 24


def extractive_answer(request: ChatRequest) -> str:
    """A persona answer (JSON) built from the prompt's numbered reviews; every shown review is cited once."""
    prompt = "\n".join(m["content"] for m in request.messages)
    reviews = [(int(n), float(r), text) for n, r, text in _REVIEW.findall(prompt)]
    m = _COUNT.search(prompt[prompt.rfind("</reviews>") :]) or _COUNT.search(prompt)
    high = int(m.group(1) or m.group(3)) if m else len(reviews)
    personas = []
    for k, (number, rating, text) in enumerate(reviews[:high]):
        words = re.sub(r"[^\w\s'-]", " ", text).split()
        gist = " ".join(words[:GIST_WORDS]) or "the item"
        cited = [number] + [n for n, *_ in reviews[high + k :: high]]
        personas.append(
            {
                "name": f"R{number} {'fan' if rating >= 4 else 'critic'}: {' '.join(words[:3])}"[:38],
                "description": f"A buyer who says: {gist}.",
                "rationale": f"Review R{number} rates it {rating:g} stars.",
                "evidence": cited,
            }
        )
    first = " ".join(reviews[0][2].split()[:20]) if reviews else "no reviews"
    return json.dumps({"summary": f"An item its reviewers describe: {first}.", "personas": personas})


class ExtractiveEngine(Engine):
    name = "extractive"
    model_id = "extractive-v1"

    def __init__(self, cfg: Any = None) -> None:
        self.calls = 0

    def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        self.calls += len(requests)
        out = []
        for r in requests:
            text = extractive_answer(r)
            words = sum(len(m["content"].split()) for m in r.messages)
            out.append(Completion(r.key, text, prompt_tokens=words, completion_tokens=len(text.split()),
                                  finish_reason="stop"))  # fmt: skip
        return out
