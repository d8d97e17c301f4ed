"""A scripted stand-in for an LLM engine, named as such.

It answers from a script instead of a model, to exercise what a real model cannot be made to do on
demand: cite a review that was not shown, return too many personas, leave a field empty. The real
engines (vLLM, llama.cpp, the OpenAI-compatible server) are tested in test_engines.py and drive the
reasoning job in test_reason_job.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from persona4rec.ray_actors.engines.base import ChatRequest, Completion, Engine


class ScriptedEngine(Engine):
    name = "scripted"
    model_id = "scripted-test-engine"

    def __init__(self, answer: Callable[[ChatRequest, int], str]) -> None:
        """``answer(request, attempt)`` gives the text for a request; attempt counts from 1 per key."""
        self.answer = answer
        self.requests: list[ChatRequest] = []
        self._attempts: dict[str, int] = {}

    def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        out = []
        for r in requests:
            self.requests.append(r)
            attempt = self._attempts[r.key] = self._attempts.get(r.key, 0) + 1
            text = self.answer(r, attempt)
            out.append(Completion(r.key, text, prompt_tokens=100, completion_tokens=50, finish_reason="stop"))
        return out


_REVIEW = re.compile(r"^\[R(\d+)\] \(([\d.]+)★\) (.*)$", re.MULTILINE)
_COUNT = re.compile(r"(?:exactly (\d+)|between (\d+) and (\d+))")


def extractive_answer(request: ChatRequest, attempt: int) -> str:
    """A persona answer built from the prompt's own reviews: persona k restates review k and cites it.

    Deterministic, instant and grounded in real review text, so stages downstream of `reason` can be
    tested on a whole real catalogue; it says nothing about what an LLM would write.
    """
    prompt = "\n".join(m["content"] for m in request.messages)
    reviews = [(int(n), float(r), text) for n, r, text in _REVIEW.findall(prompt)]
    m = _COUNT.search(prompt[prompt.rfind("</reviews>") :]) or _COUNT.search(prompt)
    high = int(m.group(1) or m.group(3)) if m else len(reviews)
    personas = []
    for k, (number, rating, text) in enumerate(reviews[:high]):
        words = re.sub(r"[^\w\s'-]", " ", text).split()
        gist = " ".join(words[:24]) or "the item"
        cited = [number] + [n for n, *_ in reviews[high + k :: high]]  # every shown review is cited once
        personas.append(
            {
                "name": f"R{number} {'fan' if rating >= 4 else 'critic'}: {' '.join(words[:3])}"[:38],
                "description": f"A buyer who says: {gist}.",
                "rationale": f"Review R{number} rates it {rating:g} stars.",
                "evidence": cited,
            }
        )
    return json.dumps(
        {"summary": f"An item its reviewers describe: {' '.join(reviews[0][2].split()[:20])}.", "personas": personas}
    )
