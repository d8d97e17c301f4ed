"""A scripted stand-in for an LLM engine, named as such.

It answers from a script instead of a model, to exercise what a real model cannot be made to do on
demand: cite a review that was not shown, return too many personas, leave a field empty. The real
engines (vLLM, llama.cpp, the OpenAI-compatible server) are tested in test_engines.py and drive the
reasoning job in test_reason_job.py.
"""

from __future__ import annotations

from collections.abc import Callable

from persona4rec.ray_actors.engines.base import ChatRequest, Completion, Engine
from persona4rec.ray_actors.engines.extractive_engine import extractive_answer as _extractive


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


def extractive_answer(request: ChatRequest, attempt: int) -> str:
    """The extractive baseline's answer (``llm.engine: extractive``), as a script."""
    return _extractive(request)
