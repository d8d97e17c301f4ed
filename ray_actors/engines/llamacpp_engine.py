"""llama.cpp in-process (``llama_cpp.Llama``): GGUF weights, one request after the other.

Faster than vLLM for a single sequence on a small CPU and light on memory; no batching. JSON schemas become
a llama.cpp grammar through ``response_format={"type": "json_object", "schema": ...}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llama_cpp import Llama

from persona4rec.config import LLMConfig
from persona4rec.errors import ConfigError
from persona4rec.ray_actors.engines.base import ChatRequest, Completion, Engine


class LlamaCppEngine(Engine):
    """``llm.model`` is a local ``.gguf`` file, or a hub repository with ``llm.llamacpp.filename`` in it."""

    name = "llamacpp"

    def __init__(self, cfg: LLMConfig):
        opts = cfg.llamacpp
        self.model_id = cfg.model if opts.filename is None else f"{cfg.model}/{opts.filename}"
        self._seed = cfg.seed
        kwargs: dict[str, Any] = {
            "n_ctx": cfg.max_model_len,
            "seed": cfg.seed,
            "n_gpu_layers": opts.n_gpu_layers,
            "verbose": False,
        }
        if opts.n_threads is not None:
            kwargs["n_threads"] = opts.n_threads
        path = Path(cfg.model).expanduser()
        if path.is_file():
            self._llm: Llama | None = Llama(model_path=str(path), **kwargs)
        elif path.suffix == ".gguf" or path.is_dir():
            raise ConfigError(f"llm.model: {cfg.model} is not a GGUF file (llama.cpp reads .gguf files only)")
        elif opts.filename is None:
            raise ConfigError(
                f"llm.model: {cfg.model!r} is not a local file; to load it from the hub set llm.llamacpp.filename "
                "to the GGUF file inside the repository (a glob such as '*Q4_K_M.gguf' is fine)"
            )
        else:
            self._llm = Llama.from_pretrained(repo_id=cfg.model, filename=opts.filename, **kwargs)

    def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        return [self._complete_one(req) for req in requests]

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()

    def _complete_one(self, req: ChatRequest) -> Completion:
        if self._llm is None:
            raise RuntimeError("engine is closed")
        extra: dict[str, Any] = {}
        if req.schema is not None:
            extra["response_format"] = {"type": "json_object", "schema": req.schema}
        try:
            # Neutral sampling filters (llama.cpp's defaults are top_k=40, top_p=0.95, min_p=0.05) so that a
            # temperature means what it means in vLLM and the OpenAI API. The seed is set on every call:
            # answers then do not depend on what was generated before, and seed 0 is a real seed (the
            # constructor reads 0 as "random").
            resp = self._llm.create_chat_completion(
                messages=[dict(m) for m in req.messages],
                temperature=req.temperature,
                top_p=1.0,
                top_k=0,
                min_p=0.0,
                max_tokens=req.max_tokens,
                seed=self._seed,
                **extra,
            )
        except Exception as exc:  # llama.cpp raises ValueError for a prompt longer than n_ctx
            return Completion(key=req.key, text="", error=f"{type(exc).__name__}: {exc}")
        choice = resp["choices"][0]
        usage = resp.get("usage") or {}
        return Completion(
            key=req.key,
            text=choice["message"].get("content") or "",
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            finish_reason=choice.get("finish_reason"),
        )
