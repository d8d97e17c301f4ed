"""LLM engines behind one interface (:class:`Engine`): vLLM, llama.cpp, or any OpenAI-compatible server
(and ``extractive``, a named no-LLM baseline persona source).

``build_engine`` picks the engine named by ``llm.engine`` and imports its module only then, so importing
this package never pulls in vLLM (or torch) on a machine that runs another engine.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import NamedTuple

from persona4rec.config import LLMConfig
from persona4rec.errors import StageUnavailable
from persona4rec.models import resolve_model_ref
from persona4rec.ray_actors.engines.base import ChatRequest, Completion, Engine

__all__ = ["ChatRequest", "Completion", "Engine", "build_engine"]


class _EngineSpec(NamedTuple):
    module: str
    cls: str
    package: str  # the import name whose absence means "not installed"
    extra: str  # how to install it


_ENGINES: dict[str, _EngineSpec] = {
    "vllm": _EngineSpec(
        "persona4rec.ray_actors.engines.vllm_engine",
        "VLLMEngine",
        "vllm",
        "pip install 'persona4rec[llm-cpu]' (CPU) or 'persona4rec[llm-gpu]' (NVIDIA GPU)",
    ),
    "llamacpp": _EngineSpec(
        "persona4rec.ray_actors.engines.llamacpp_engine",
        "LlamaCppEngine",
        "llama_cpp",
        "pip install 'persona4rec[llm-cpu]'",
    ),
    "extractive": _EngineSpec(
        "persona4rec.ray_actors.engines.extractive_engine",
        "ExtractiveEngine",
        "persona4rec",
        "(part of persona4rec)",
    ),
    "openai": _EngineSpec(
        "persona4rec.ray_actors.engines.openai_engine",
        "OpenAIEngine",
        "httpx",
        "pip install 'persona4rec[llm-http]'",
    ),
}


def build_engine(cfg: LLMConfig) -> Engine:
    """Load the engine ``cfg.engine`` with ``cfg.model``; ``StageUnavailable`` when its package is missing."""
    spec = _ENGINES.get(cfg.engine)
    if spec is None:
        raise StageUnavailable(f"llm.engine: unknown engine {cfg.engine!r}; known: {', '.join(_ENGINES)}")
    if importlib.util.find_spec(spec.package) is None:
        raise StageUnavailable(
            f"llm.engine={cfg.engine} needs the {spec.package!r} package, which is not installed: {spec.extra}"
        )
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise StageUnavailable(
            f"llm.engine={cfg.engine}: {spec.package!r} is installed but fails to import ({exc}); "
            f"reinstall it: {spec.extra}"
        ) from exc
    engine_cls: type[Engine] = getattr(module, spec.cls)
    if cfg.engine not in ("openai", "extractive"):  # an HTTP endpoint names its models itself
        cfg = cfg.model_copy(update={"model": resolve_model_ref(cfg.model)})
    return engine_cls(cfg)
