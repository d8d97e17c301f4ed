"""The one interface every LLM engine honours: a batch of chat requests in, completions out.

Engines only generate. Whether an answer is *valid* (schema, evidence ids, persona counts) is decided by
the caller (``persona4rec.reasoning``), which also owns the retry budget; engines retry only transport
failures (the HTTP engine) and never loop on bad content.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ChatRequest:
    """One conversation to complete. ``schema`` (a JSON Schema) constrains the answer when given."""

    key: str
    messages: tuple[dict[str, str], ...]
    schema: dict[str, Any] | None = None
    max_tokens: int = 512
    temperature: float = 0.0


@dataclass(frozen=True)
class Completion:
    """An engine's answer to one request. ``error`` is set (and ``text`` empty) when no answer came back."""

    key: str
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    def json(self) -> Any:
        """The answer parsed as JSON; raises ``ValueError`` with a short reason when it is not JSON."""
        if self.error:
            raise ValueError(f"no answer: {self.error}")
        if self.truncated:
            raise ValueError("answer cut off at max_tokens")
        try:
            return json.loads(self.text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON ({exc.msg} at char {exc.pos})") from None


class Engine(ABC):
    """A loaded model. Build with :func:`persona4rec.ray_actors.engines.build_engine`; ``close()`` frees it."""

    #: "vllm", "llamacpp" or "openai"
    name: str
    #: what the answers came from: the configured model id or path, part of every cache key
    model_id: str
    #: the dtype the model computes in, where the engine chooses one (recorded in the stage manifest)
    dtype: str | None = None

    @abstractmethod
    def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        """Answer every request, in order. A failure of one request is its ``error``, not an exception."""

    def close(self) -> None:  # noqa: B027 - engines without resources need nothing
        """Release the model (memory, threads, connections)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
