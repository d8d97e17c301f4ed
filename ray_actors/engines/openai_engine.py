"""Any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM's server, llama.cpp's, a hosted API), over httpx.

Requests of a batch run concurrently (at most ``llm.openai.max_concurrency`` in flight). Transport failures,
429 and 5xx are retried with exponential backoff (``Retry-After`` honoured), at most ``llm.openai.max_retries``
times; any other 4xx is final at once. A request that fails for good comes back with ``error`` set and
``extra["attempts"]``; the batch itself never raises.
"""

from __future__ import annotations

import email.utils
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from persona4rec.config import LLMConfig
from persona4rec.ray_actors.engines.base import ChatRequest, Completion, Engine

#: first backoff, doubled at each retry, capped, plus up to 10% jitter so that parallel retries spread out
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
#: the longest ``Retry-After`` obeyed; a server asking for more is waited on for this long
RETRY_AFTER_MAX_S = 60.0


class _Failure(Exception):
    """One failed attempt: ``retryable`` says whether another try may succeed."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None, wait_s: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.wait_s = wait_s


class OpenAIEngine(Engine):
    """A client of an OpenAI-compatible chat-completions server; ``model`` is sent as ``llm.model``."""

    name = "openai"

    def __init__(self, cfg: LLMConfig):
        opts = cfg.openai
        self.model_id = cfg.model
        self._opts = opts
        headers = {"Content-Type": "application/json"}
        api_key = os.environ.get(opts.api_key_env)
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        limits = httpx.Limits(max_connections=opts.max_concurrency, max_keepalive_connections=opts.max_concurrency)
        self._client = httpx.Client(
            base_url=opts.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(opts.timeout_s),
            limits=limits,
        )
        self._pool = ThreadPoolExecutor(max_workers=opts.max_concurrency, thread_name_prefix="p4r-openai")
        self._closed = threading.Event()

    def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        if self._closed.is_set():
            raise RuntimeError("engine is closed")
        return list(self._pool.map(self._complete_one, requests))

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    # ------------------------------------------------------------------------------------------ internals

    def _payload(self, req: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": [dict(m) for m in req.messages],
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
        }
        if req.schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": req.schema, "strict": True},
            }
        return body

    def _complete_one(self, req: ChatRequest) -> Completion:
        body = self._payload(req)
        attempts_allowed = 1 + self._opts.max_retries
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._attempt(req, body, attempt)
            except _Failure as failure:
                if not failure.retryable or attempt >= attempts_allowed or self._closed.is_set():
                    plural = "s" if attempt != 1 else ""
                    return Completion(
                        key=req.key,
                        text="",
                        error=f"{failure} (after {attempt} attempt{plural})",
                        extra={"attempts": attempt, "status": failure.status},
                    )
                time.sleep(self._backoff(attempt, failure.wait_s))

    def _attempt(self, req: ChatRequest, body: dict[str, Any], attempt: int) -> Completion:
        try:
            resp = self._client.post("chat/completions", json=body)
        except httpx.TimeoutException as exc:
            raise _Failure(f"timeout after {self._opts.timeout_s:g}s ({type(exc).__name__})", retryable=True) from None
        except httpx.UnsupportedProtocol as exc:
            raise _Failure(f"bad base_url {self._opts.base_url!r}: {exc}", retryable=False) from None
        except httpx.TransportError as exc:
            raise _Failure(f"transport error: {type(exc).__name__}: {exc}", retryable=True) from None

        status = resp.status_code
        if status != 200:
            retryable = status == 429 or status >= 500
            wait_s = _retry_after(resp.headers.get("retry-after")) if retryable else None
            raise _Failure(f"HTTP {status}: {_error_detail(resp)}", retryable=retryable, status=status, wait_s=wait_s)

        try:
            doc = resp.json()
            choice = doc["choices"][0]
            text = choice["message"].get("content") or ""
            finish_reason = choice.get("finish_reason")
            usage = doc.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise _Failure(
                f"HTTP 200 with an unexpected body: {resp.text[:200]!r}", retryable=False, status=status
            ) from None
        return Completion(
            key=req.key,
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=finish_reason,
            extra={"attempts": attempt, "status": status},
        )

    @staticmethod
    def _backoff(attempt: int, retry_after_s: float | None) -> float:
        """Seconds to wait before attempt ``attempt + 1``: the server's ``Retry-After`` or exponential backoff."""
        if retry_after_s is not None:
            return min(retry_after_s, RETRY_AFTER_MAX_S)
        base = min(BACKOFF_BASE_S * 2 ** (attempt - 1), BACKOFF_MAX_S)
        return base * (1.0 + 0.1 * random.random())


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: either delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_detail(resp: httpx.Response, limit: int = 300) -> str:
    """The server's own error message when it sent the OpenAI error shape, else the start of the body."""
    try:
        doc = resp.json()
        err = doc.get("error", doc) if isinstance(doc, dict) else doc
        message = err.get("message") if isinstance(err, dict) else None
        if message:
            return str(message)[:limit]
    except ValueError:
        pass
    return resp.text[:limit] or resp.reason_phrase
