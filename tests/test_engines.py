"""The three LLM engines, for real, on SmolLM2-135M: vLLM in-process, llama.cpp, and vLLM's OpenAI server.

Every engine must answer a batch in order under a JSON schema, turn a prompt that cannot fit the context into
that request's ``error`` (the rest of the batch still answered), and report a cut-off answer as truncated.
The HTTP engine must also retry transport failures, 429 and 5xx a bounded number of times, and no other 4xx.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from persona4rec.config import LLMConfig, OpenAIOptions
from persona4rec.errors import ConfigError
from persona4rec.ray_actors.engines import ChatRequest, Completion, Engine, build_engine
from persona4rec.ray_actors.engines.openai_engine import _retry_after
from persona4rec.reasoning import answers
from tests.conftest import free_port

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "count": {"type": "integer", "minimum": 0, "maximum": 1000},
    },
    "required": ["name", "count"],
    "additionalProperties": False,
}
SYSTEM = {"role": "system", "content": "You answer with one JSON object and nothing else."}
ENGINES = ["vllm_engine", "llamacpp_engine", "openai_engine"]


def ask(key: str, question: str, **kw) -> ChatRequest:
    user = {"role": "user", "content": f"{question} Answer as JSON with keys name (a word) and count (a number)."}
    return ChatRequest(key=key, messages=(SYSTEM, user), schema=SCHEMA, **{"max_tokens": 48, **kw})


def too_long(key: str) -> ChatRequest:
    """A prompt of ~3000 tokens: more than the 2048-token context of every engine here."""
    return ChatRequest(key=key, messages=({"role": "user", "content": "apple " * 3000},), schema=SCHEMA)


def assert_valid(c: Completion) -> None:
    assert c.error is None, c.error
    assert c.finish_reason == "stop", (c.finish_reason, c.text)
    assert c.prompt_tokens > 0 and c.completion_tokens > 0
    doc = c.json()
    assert isinstance(doc, dict) and set(doc) == {"name", "count"}, doc
    assert isinstance(doc["name"], str) and len(doc["name"]) <= 20, doc
    assert isinstance(doc["count"], int) and not isinstance(doc["count"], bool) and 0 <= doc["count"] <= 1000, doc


@pytest.fixture(scope="module")
def openai_engine(vllm_server: str):
    cfg = LLMConfig(
        engine="openai",
        model="smollm2",
        max_model_len=2048,
        openai=OpenAIOptions(base_url=vllm_server, api_key_env="P4R_TEST_UNSET_KEY", max_concurrency=3, max_retries=2),
    )
    engine = build_engine(cfg)
    yield engine
    engine.close()


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Engine:
    return request.getfixturevalue(request.param)


# ------------------------------------------------------------------------------------------- all engines


@pytest.mark.slow
def test_batch_answers_in_order_under_the_schema(engine: Engine) -> None:
    requests = [
        ask("apple", "Name a fruit and how many seeds it has."),
        ask("dog", "Name a pet and how many legs it has."),
        ask("car", "Name a vehicle and how many wheels it has."),
    ]
    out = engine.complete(requests)
    assert [c.key for c in out] == ["apple", "dog", "car"]
    for c in out:
        assert_valid(c)


@pytest.mark.slow
def test_prompt_longer_than_the_context_is_that_request_error(engine: Engine) -> None:
    out = engine.complete([ask("before", "Name a color and a number."), too_long("long"), ask("after", "Name a city.")])
    assert [c.key for c in out] == ["before", "long", "after"]
    assert out[1].error and out[1].text == ""
    with pytest.raises(ValueError, match="no answer"):
        out[1].json()
    assert_valid(out[0])
    assert_valid(out[2])
    if engine.name == "openai":  # the server's 400, not retried
        assert out[1].extra == {"attempts": 1, "status": 400}, out[1]


@pytest.mark.slow
def test_tiny_max_tokens_is_truncated(engine: Engine) -> None:
    (c,) = engine.complete([ask("short", "Name a fruit.", max_tokens=3)])
    assert c.error is None, c.error
    assert c.truncated and c.completion_tokens == 3
    with pytest.raises(ValueError, match="cut off"):
        c.json()


@pytest.mark.slow
def test_the_retry_schema_keeps_a_text_from_ending_on_a_comma(engine: Engine) -> None:
    """What ``answers.without_early_ends`` asks of a decoder, which every engine must enforce."""
    user = {"role": "user", "content": 'Answer as JSON: {"name": "Red, ", "count": 3}. Copy it exactly.'}
    schema = answers.without_early_ends(SCHEMA)
    free, (tight,) = (
        engine.complete([ChatRequest("free", (SYSTEM, user), SCHEMA, max_tokens=48)]),
        engine.complete([ChatRequest("tight", (SYSTEM, user), schema, max_tokens=48)]),
    )
    name = tight.json()["name"]
    assert name and not name.endswith((" ", ",")), tight.text
    assert free[0].json()["name"].endswith(", "), free[0].text  # the model does copy it when it may


NULLABLE = {
    "type": "object",
    "properties": {k: {"anyOf": [{"type": "string", "maxLength": 40}, {"type": "null"}]} for k in ("fruit", "colour")},
    "required": ["fruit", "colour"],
    "additionalProperties": False,
}


@pytest.mark.slow
def test_vllm_writes_nullable_schemas_with_one_space_after_separators_and_others_compact(vllm_engine) -> None:
    from persona4rec.ray_actors.engines.vllm_engine import allows_null

    assert allows_null(NULLABLE) and not allows_null(SCHEMA)
    user = {"role": "user", "content": "A banana is yellow. Give its fruit name and colour as JSON."}
    spaced, compact = vllm_engine.complete([
        ChatRequest(key="n", messages=(SYSTEM, user), schema=NULLABLE, max_tokens=40),
        ask("c", "Name a fruit and how many seeds it has."),
    ])  # fmt: skip
    assert spaced.error is None and spaced.finish_reason == "stop", spaced
    assert set(spaced.json()) == {"fruit", "colour"}
    assert spaced.text.startswith('{"fruit": ') and ', "colour": ' in spaced.text, spaced.text
    assert_valid(compact)
    assert '": ' not in compact.text and ", " not in compact.text.replace(compact.json()["name"], "")


ICE_LAKE = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni avx512_bitalg\n"
SAPPHIRE_RAPIDS = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
GRAVITON3 = "Features\t: fp asimd sve bf16 i8mm\n"


def test_native_bf16_is_read_off_the_cpu_flags() -> None:
    from persona4rec.ray_actors.engines.vllm_engine import cpu_has_native_bf16

    assert not cpu_has_native_bf16(ICE_LAKE)
    assert cpu_has_native_bf16(SAPPHIRE_RAPIDS) and cpu_has_native_bf16(GRAVITON3)
    assert cpu_has_native_bf16(None) and cpu_has_native_bf16("no flags line\n")  # unknown: keep the model's dtype


@pytest.mark.slow
def test_vllm_auto_dtype_is_float32_on_a_cpu_without_native_bf16(vllm_engine) -> None:
    import torch
    from vllm.platforms import current_platform

    from persona4rec.ray_actors.engines.vllm_engine import _read_cpuinfo, cpu_has_native_bf16

    loaded = vllm_engine._llm.llm_engine.model_config.dtype  # what the running engine computes in
    if not current_platform.is_cpu() or cpu_has_native_bf16(_read_cpuinfo()):
        assert vllm_engine.dtype == "auto" and loaded != torch.float32  # SmolLM2 ships bfloat16
    else:
        assert vllm_engine.dtype == "float32" and loaded == torch.float32


# ------------------------------------------------------------------------------------------ HTTP engine


def test_unreachable_server_is_retried_a_bounded_number_of_times() -> None:
    port = free_port()  # nothing listens there: every attempt is refused at once
    cfg = LLMConfig(
        engine="openai",
        model="any",
        openai=OpenAIOptions(base_url=f"http://127.0.0.1:{port}/v1", max_retries=2, timeout_s=5, max_concurrency=2),
    )
    with build_engine(cfg) as engine:
        start = time.monotonic()
        out = engine.complete([ask("a", "Hi."), ask("b", "Hi.")])
        elapsed = time.monotonic() - start
    assert [c.key for c in out] == ["a", "b"]
    for c in out:
        assert c.text == "" and c.extra["attempts"] == 3, c
        assert "after 3 attempts" in c.error and "ConnectError" in c.error, c.error
    # two backoffs (0.5 s, then 1 s, up to 10% jitter) between the three attempts, in parallel for a and b
    assert 1.5 <= elapsed < 4, elapsed


@pytest.mark.slow
def test_client_error_from_the_server_is_not_retried(vllm_server: str) -> None:
    cfg = LLMConfig(engine="openai", model="no-such-model", openai=OpenAIOptions(base_url=vllm_server, max_retries=3))
    with build_engine(cfg) as engine:
        start = time.monotonic()
        (c,) = engine.complete([ask("x", "Hi.")])
        elapsed = time.monotonic() - start
    assert c.extra == {"attempts": 1, "status": 404}, c
    assert c.error.startswith("HTTP 404") and "no-such-model" in c.error, c.error
    assert elapsed < 5


class ScriptedServer:
    """A real HTTP server on loopback that answers ``/v1/chat/completions`` from a script of responses.

    Each entry is ``(status, headers)``; a 200 carries a valid chat completion. It records every request's
    headers so a test can see what the engine sent. (It stands in for a flaky provider, not for the engine.)
    """

    OK_BODY = {
        "choices": [{"message": {"role": "assistant", "content": '{"name":"fig","count":3}'}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7},
    }

    def __init__(self, script: list[tuple[int, dict[str, str]]]):
        self.script = list(script)
        self.seen: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.seen.append(dict(self.headers))
                status, headers = server.script.pop(0) if server.script else (200, {})
                body = json.dumps(server.OK_BODY if status == 200 else {"error": {"message": f"scripted {status}"}})
                self.send_response(status)
                for name, value in {**headers, "Content-Type": "application/json"}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def scripted_engine(server: ScriptedServer, max_retries: int, **opts) -> Engine:
    return build_engine(
        LLMConfig(
            engine="openai",
            model="scripted",
            openai=OpenAIOptions(base_url=server.base_url, max_retries=max_retries, timeout_s=5, **opts),
        )
    )


def test_429_and_5xx_are_retried_with_backoff_and_retry_after() -> None:
    script = [(503, {}), (429, {"Retry-After": "1"}), (200, {})]
    with ScriptedServer(script) as server, scripted_engine(server, max_retries=3) as engine:
        start = time.monotonic()
        (c,) = engine.complete([ask("x", "Hi.")])
        elapsed = time.monotonic() - start
    assert c.error is None and c.json() == {"name": "fig", "count": 3}
    assert (c.prompt_tokens, c.completion_tokens, c.finish_reason) == (11, 7, "stop")
    assert c.extra == {"attempts": 3, "status": 200}
    assert 1.5 <= elapsed < 3, elapsed  # 0.5 s backoff after the 503, then the server's 1 s


def test_retries_are_bounded_and_the_last_status_reported() -> None:
    with ScriptedServer([(500, {})] * 5) as server, scripted_engine(server, max_retries=1) as engine:
        (c,) = engine.complete([ask("x", "Hi.")])
    assert c.extra == {"attempts": 2, "status": 500} and len(server.seen) == 2
    assert c.error == "HTTP 500: scripted 500 (after 2 attempts)"


def test_api_key_comes_from_the_named_variable_and_is_never_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P4R_TEST_API_KEY", "sk-test-secret")
    with ScriptedServer([(401, {})]) as server, scripted_engine(server, 2, api_key_env="P4R_TEST_API_KEY") as engine:
        (c,) = engine.complete([ask("x", "Hi.")])
    assert server.seen[0]["Authorization"] == "Bearer sk-test-secret"
    assert c.extra == {"attempts": 1, "status": 401}  # a 4xx other than 429 is final
    assert "sk-test-secret" not in c.error


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("soon", None),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
    ],
)
def test_retry_after_header(header: str | None, expected: float | None) -> None:
    assert _retry_after(header) == expected


# ------------------------------------------------------------------------------------- building engines


def test_importing_the_engines_package_does_not_import_vllm() -> None:
    code = "import sys, persona4rec.ray_actors.engines; sys.exit('vllm' in sys.modules or 'llama_cpp' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_llamacpp_needs_a_gguf_file_or_a_hub_filename(tmp_path) -> None:
    with pytest.raises(ConfigError, match="missing.gguf' does not exist"):
        build_engine(LLMConfig(engine="llamacpp", model=str(tmp_path / "missing.gguf")))
    (tmp_path / "hf-folder").mkdir()  # a Hugging Face folder is for vLLM
    with pytest.raises(ConfigError, match="not a GGUF file"):
        build_engine(LLMConfig(engine="llamacpp", model=str(tmp_path / "hf-folder")))
    with pytest.raises(ConfigError, match="llm.llamacpp.filename"):
        build_engine(LLMConfig(engine="llamacpp", model="someone/some-model-GGUF"))


def test_the_extractive_baseline_is_an_engine_that_restates_the_shown_reviews() -> None:
    engine = build_engine(LLMConfig(engine="extractive", model="unused"))
    prompt = (
        "<reviews>\n[R1] (5★) Bright strings, they stay in tune for weeks.\n[R2] (2★) Broke on the second day.\n"
        "</reviews>\nWrite between 2 and 3 personas."
    )
    done = engine.complete([ChatRequest("k", ({"role": "user", "content": prompt},))])[0]
    answer = done.json()
    assert engine.name == "extractive" and done.finish_reason == "stop"
    assert [p["evidence"] for p in answer["personas"]] == [[1], [2]]
    assert answer["personas"][0]["name"].startswith("R1 fan") and answer["personas"][1]["name"].startswith("R2 critic")
    assert "Bright strings" in answer["personas"][0]["description"] and answer["summary"]
