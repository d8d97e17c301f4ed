"""Hostile input against every route of the service: a client's mistake is a 4xx that says what is wrong,
never a 5xx, and every JSON answer is strict JSON (no NaN, no lone surrogate) in valid UTF-8.

The app is the real one (``create_app`` over a :class:`Recommender` whose snapshot is loaded by the real
``snapshot.load`` from a real Milvus Lite collection), on a small index written here in the index stage's
schema: building it takes about a second, where the pipeline fixtures of test_serve.py take minutes, and
what is under test is the HTTP boundary, not the scores (test_serve.py checks those on the real pipeline).
Requests are handed to the app as ASGI calls (no socket), with the scope uvicorn builds from a request line,
at a fraction of the cost of HTTP, so that Hypothesis can send thousands of requests per route.

The explicit regression tests name each case of issue #25 item 1; the generated ones count 5xx answers per
route, print the counts (visible with ``-s``) and assert there are none.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import quote, unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from persona4rec import schemas
from persona4rec.config import load_config
from persona4rec.infra import milvus
from persona4rec.serve.app import create_app
from persona4rec.serve.recommender import Recommender
from persona4rec.serve.snapshot import Watcher, load

MAX_CANDIDATES, MAX_K, DIM = 50, 30, 8
ITEMS = [f"B{n:04d}" for n in range(12)] + ["é-ü item", "item with space", "x" * 200]
SUMMARY_ONLY = "B0011"  # an item explained by its summary row
USERS = ["A001", "A002", "A003", "ünï cödé"]

HOSTILE_CHARS = ["\ud800", "\udfff", "\udc80", "\x00", "\u2028", "\ufeff", "\uffff", "\U0010ffff", '"', "\\", "/", "%"]
#: JSON texts Python's json module would not write from a value: non-finite numbers, overflow, very long
#: integers (more digits than ``int`` parses by default), deep nesting, invalid UTF-8, truncation.
RAW_TOKENS = [
    b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1e-400", b"3e38", b"-3.4e38", b"1" + b"0" * 5000,
    b"-" + b"9" * 400, b"1.0e309", b'"\\ud800"', b'"\\udfff\\ud800"', b'"\xed\xa0\x80"', b'"\xff\xfe"', b'"\\u0000"',
    b"[" * 100_000 + b"]" * 100_000, b"[" * 500 + b"]" * 500, b'{"a":' * 3000 + b"1" + b"}" * 3000, b"[1,", b"{", b"",
    b"tru", b"null", b"true", b"10", b'"10"', b"10.0", b"-0", b"[]", b"{}", b'"' + b"x" * 100_000 + b'"',
]  # fmt: skip
N_EXAMPLES = 1200  # per generated test; each example sends one request per route it targets


# ------------------------------------------------------------------------------------------- the service


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[tuple[Callable[..., Answer], Counter]]:
    """The app on a small real index; yields (a synchronous request function, the per-route tally)."""
    tmp = tmp_path_factory.mktemp("hostile")
    cfg = load_config(
        [f"paths.artifacts={tmp / 'artifacts'}", f"index.uri={tmp / 'milvus.db'}", "index.index_type=FLAT",
         f"serve.max_candidates={MAX_CANDIDATES}", f"serve.max_k={MAX_K}", "serve.unknown_user=error",
         "score.fusion_weight=0.5"],
        dataset="amazon2014-musical-instruments",
    ).config  # fmt: skip
    rng = np.random.default_rng(0)
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731

    rows = []
    for item in ITEMS:
        kinds = ["summary"] if item == SUMMARY_ONLY else ["persona", "persona"]
        for j, kind in enumerate(kinds):
            rows.append({"persona_id": f"{item[:40]}#{j}", "item_id": item, "kind": kind,
                         "name": item if kind == "summary" else f"Persona {j} of {item}",
                         "description": "Plays <b>loud</b> & fast", "rationale": "cites reviews",
                         "evidence": [] if kind == "summary" else [f"r-{item[:20]}-{j}"], "text_sha": "0" * 32,
                         "encoder": "test"})  # fmt: skip
    table = pa.Table.from_pylist(rows).append_column(
        milvus.VECTOR_FIELD, schemas.vectors_to_arrow(unit(rng.normal(size=(len(rows), DIM))))
    )
    folder = tmp / "index-version"
    (folder / "user_profiles").mkdir(parents=True)
    (folder / "item_popularity").mkdir()
    pq.write_table(
        pa.table({"user_id": USERS, "vector": schemas.vectors_to_arrow(unit(rng.normal(size=(len(USERS), DIM)))),
                  "items": [ITEMS[i : i + 3] for i in range(len(USERS))], "n_interactions": [3] * len(USERS)}),
        folder / "user_profiles" / "part-0.parquet",
    )  # fmt: skip
    pq.write_table(
        pa.table({"item_id": ITEMS, "interactions": list(range(len(ITEMS), 0, -1))}),
        folder / "item_popularity" / "part-0.parquet",
    )
    client = milvus.connect(cfg)
    name = milvus.version_name(cfg.index_alias, "0" * 16)
    milvus.create_version(client, name, DIM, cfg.index, {"dataset": cfg.dataset, "artifacts": str(folder)})
    milvus.insert(client, name, table)
    milvus.build_and_load(client, name, cfg.index)
    milvus.move_alias(client, cfg.index_alias, name)

    watcher = Watcher(lambda: milvus.resolve(client, cfg.index_alias), lambda n: load(client, n), 3600)
    assert watcher.refresh(), watcher.last_error
    app = create_app(cfg, Recommender(cfg, watcher, client), manage_watcher=False)
    tally: Counter = Counter()
    try:
        # one event loop for the module, with a root task that outlives each request: sync routes run in
        # anyio's worker threads, which then stay (as under a server) instead of one new thread per request
        with start_blocking_portal() as portal:
            yield Client(app, portal), tally
    finally:
        client.close()
        width = max((len(r) for r, _ in tally), default=0)
        print("\n5xx answers per route (hostile requests):")
        for route in sorted({r for r, _ in tally}):
            print(f"  {route:<{width}}  {tally[route, '5xx']:>4} of {tally[route, 'all']:>6}"
                  f"  ({tally[route, 'seconds']:.1f} s answering)")  # fmt: skip
        print(f"  {'all routes':<{width}}  {sum(v for (_, k), v in tally.items() if k == '5xx'):>4} of "
              f"{sum(v for (_, k), v in tally.items() if k == 'all'):>6}")  # fmt: skip


@dataclass
class Answer:
    status_code: int
    headers: dict[str, str]
    content: bytes
    seconds: float

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


#: One request: method, target (path and query, percent-encoded ASCII), body, headers.
Sent = tuple[str, str, bytes, dict[str, str]]


class Client:
    """Calls the app on the portal's event loop: one request, or a batch of them in one call (a batch
    crosses between threads once, not once per request)."""

    def __init__(self, app, portal) -> None:
        self.app, self.portal = app, portal
        self.contracts = _response_contracts(app.openapi())

    def __call__(self, method: str, target: str, *, content: bytes = b"", json: object = None,
                 headers: dict[str, str] | None = None) -> Answer:  # fmt: skip
        if json is not None:
            content, headers = _dumps(json).encode(), {"content-type": "application/json", **(headers or {})}
        answer = self.many([(method, target, content, headers or {})])[0]
        problem = self.breaks_contract(method, target, answer)
        assert problem is None, problem
        return answer

    def breaks_contract(self, method: str, target: str, answer: Answer) -> str | None:
        """Why a 200 answer does not match the response schema its route declares in /openapi.json."""
        validator = self.contracts.get((method, target.partition("?")[0]))
        if validator is None or answer.status_code != 200:
            return None
        errors = sorted(validator.iter_errors(_strict_json(answer.content)), key=lambda e: list(e.absolute_path))
        return f"{method} {target}: {errors[0].message} at {list(errors[0].absolute_path)}" if errors else None

    def many(self, sent: list[Sent]) -> list[Answer]:
        return self.portal.call(_asgi_many, self.app, sent)


_dumps = json.dumps


def _response_contracts(openapi: dict) -> dict[tuple[str, str], Draft202012Validator]:
    """(method, path) -> a validator of the route's declared 200 response (routes without path parameters)."""
    out = {}
    for path, methods in openapi["paths"].items():
        for method, op in methods.items():
            schema = op.get("responses", {}).get("200", {}).get("content", {}).get("application/json", {}).get("schema")
            if schema and "{" not in path:
                out[method.upper(), path] = Draft202012Validator({**schema, "components": openapi["components"]})
    return out


async def _asgi_many(app, sent: list[Sent]) -> list[Answer]:
    return [await _asgi(app, *one) for one in sent]


async def _asgi(app, method: str, target: str, body: bytes, headers: dict[str, str]) -> Answer:
    """One request as uvicorn hands it to the app: the target split at '?', the path percent-decoded
    (invalid UTF-8 becomes U+FFFD), headers as latin-1 bytes. An exception out of the app is a 500."""
    raw_path, _, query = target.encode("ascii").partition(b"?")
    sent = [(b"host", b"testserver"), (b"content-length", str(len(body)).encode())]
    sent += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": unquote(raw_path.decode("ascii")), "raw_path": raw_path, "query_string": query,
        "root_path": "", "headers": sent, "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
    }  # fmt: skip
    status, out_headers, chunks, received, t0 = 500, {}, [], False, time.perf_counter()

    async def receive() -> dict:
        nonlocal received
        if received:
            return {"type": "http.disconnect"}
        received = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        nonlocal status, out_headers
        if message["type"] == "http.response.start":
            status = message["status"]
            out_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    try:
        await app(scope, receive, send)
    except Exception:  # out of the app (Starlette sends its 500 first, then re-raises): a server error
        status = 500
    return Answer(status, out_headers, b"".join(chunks), time.perf_counter() - t0)


def _strict_json(data: bytes) -> object:
    """Parse as the strictest client would: UTF-8 without surrogates, no NaN/Infinity tokens."""

    def no_constant(token: str) -> object:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(data.decode("utf-8"), parse_constant=no_constant)


def _send(client: Client, tally: Counter, failures: list, batch: list[tuple[str, Sent]]) -> None:
    """Send ``(route, request)`` pairs, counting each under its route; a 5xx, or a JSON answer that is not
    strict JSON, is a failure (the first few are kept to show)."""
    for (route, sent), r in zip(batch, client.many([s for _, s in batch]), strict=True):
        tally[route, "all"] += 1
        tally[route, "seconds"] += r.seconds
        problem = None
        if r.status_code >= 500:
            tally[route, "5xx"] += 1
            problem = f"{r.status_code}: {r.text[:300]}"
        elif sent[0] != "HEAD" and r.headers.get("content-type", "").startswith("application/json"):
            try:
                _strict_json(r.content)
                problem = client.breaks_contract(sent[0], sent[1], r)
            except ValueError as exc:
                problem = f"{r.status_code} with a body that is not strict JSON ({exc})"
        if problem is not None:
            tally[route, "bad"] += 1
            if len(failures) < 5:
                failures.append(f"{sent[0]} {sent[1][:200]} {sent[3]} {sent[2][:200]!r} -> {problem}")


def _assert_none(failures: list, tally: Counter, routes: list[str]) -> None:
    bad = {r: tally[r, "bad"] for r in routes if tally[r, "bad"]}
    assert not failures, f"bad answers per route {bad}; first ones:\n" + "\n".join(failures)


# ------------------------------------------------------------------------------- explicit regressions


def _raw(request, path: str, body: bytes, content_type: str = "application/json") -> Answer:
    return request("POST", path, content=body, headers={"content-type": content_type})


def _says(r: Answer, status: int, *words: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    body = _strict_json(r.content)
    detail = body.get("detail") if isinstance(body, dict) else None
    # what the answer says, not what it echoes back: the words must be in a message or a location
    said = json.dumps([{k: v for k, v in e.items() if k != "input"} for e in detail] if isinstance(detail, list)
                      else body, ensure_ascii=False)  # fmt: skip
    for w in words:
        assert w in said, (w, r.text[:500])
    return body


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"3e38", b"1e39"])
def test_non_finite_or_overflowing_first_stage_scores_are_a_422_naming_the_field(service, token):
    request, _ = service
    body = b'{"user_id": "A001", "candidates": ["B0001", "B0002"], "first_stage_scores": [1.5, ' + token + b"]}"
    r = _raw(request, "/rerank", body)
    _says(r, 422, "first_stage_scores")
    assert not any(t in r.text for t in ("NaN", "Infinity", "inf")), r.text


def test_first_stage_scores_whose_spread_overflows_float32_are_refused(service):
    """Each one fits in float32 but their difference does not: min-max scaling them would give NaN."""
    request, _ = service
    r = request("POST", "/rerank", json={"user_id": "A001", "candidates": ["B0001", "B0002"],
                                         "first_stage_scores": [3e38, -3e38]})  # fmt: skip
    _says(r, 422, "first_stage_scores")


@pytest.mark.parametrize("scores", [["1.5", 2], [True, 2], [None, 2], [[1], 2], [{"a": 1}, 2], [10**400, 2]])
def test_first_stage_scores_must_be_json_numbers(service, scores):
    request, _ = service
    body = {"user_id": "A001", "candidates": ["B0001", "B0002"], "first_stage_scores": scores}
    _says(_raw(request, "/rerank", json.dumps(body).encode()), 422, "first_stage_scores")


@pytest.mark.parametrize("raw", [False, True], ids=["escaped", "raw-bytes"])
@pytest.mark.parametrize("path", ["/rerank", "/recommend"])
def test_a_lone_surrogate_in_user_id_is_a_422(service, path, raw):
    request, _ = service
    body = {"user_id": "A0\ud800"} | ({"candidates": ["B0001"]} if path == "/rerank" else {"k": 3})
    data = json.dumps(body, ensure_ascii=not raw).encode("utf-8", "surrogatepass")
    _says(_raw(request, path, data), 422, "user_id", "surrogate")


@pytest.mark.parametrize("raw", [False, True], ids=["escaped", "raw-bytes"])
def test_a_lone_surrogate_in_a_candidate_is_a_422(service, raw):
    request, _ = service
    body = {"user_id": "A001", "candidates": ["B0001", "\udfffB0002"]}
    data = json.dumps(body, ensure_ascii=not raw).encode("utf-8", "surrogatepass")
    _says(_raw(request, "/rerank", data), 422, "candidates", "surrogate")


def test_a_lone_surrogate_in_an_unknown_key_is_a_422_that_serialises(service):
    request, _ = service
    r = _raw(request, "/rerank", b'{"user_id": "A001", "candidates": ["B0001"], "\\ud800": NaN}')
    _says(r, 422, "surrogate")


@pytest.mark.parametrize("k", ["10", True, False, 10.0, 1e400, None, [10], 10**30, -(10**30)])
def test_k_must_be_a_json_integer_in_range(service, k):
    request, _ = service
    data = json.dumps({"user_id": "A001", "k": k}).encode()
    _says(_raw(request, "/recommend", data), 422, "k")


@pytest.mark.parametrize("ids", [[1, 2], ["B0001", None], ["B0001", ["B0002"]], ["B0001", True], ["x" * 257]])
def test_candidates_must_be_short_strings(service, ids):
    request, _ = service
    _says(request("POST", "/rerank", json={"user_id": "A001", "candidates": ids}), 422, "candidates")


@pytest.mark.parametrize("user", [7, None, True, ["A001"], "", "u" * 257])
def test_user_id_must_be_a_short_string(service, user):
    request, _ = service
    _says(request("POST", "/recommend", json={"user_id": user, "k": 3}), 422, "user_id")


def test_a_validation_error_never_echoes_a_huge_input(service):
    request, _ = service
    r = request("POST", "/rerank", json={"user_id": "u" * 300_000, "candidates": ["B0001"]})
    _says(r, 422, "user_id")
    assert len(r.content) < 10_000


def test_many_invalid_items_give_a_bounded_list_of_errors(service):
    request, _ = service
    r = request("POST", "/rerank", json={"user_id": "A001", "candidates": list(range(MAX_CANDIDATES))})
    body = _says(r, 422, "candidates")
    assert len(body["detail"]) <= 21 and len(r.content) < 20_000


@pytest.mark.parametrize(
    ("body", "content_type", "status", "says"),
    [
        (b"{not json", "application/json", 422, "JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "nested too deeply"),
        (b'{"user_id": "A001", "candidates": ["B0001"]}', "text/plain", 415, "application/json"),
        (b'{"user_id": "A001", "candidates": ["B0001"]}', "", 415, "application/json"),
        (b"user_id=A001", "application/x-www-form-urlencoded", 415, "application/json"),
        (b"\xff\xfe\x00", "application/json", 400, "UTF-8"),
        (b'{"user_id": 1' + b"0" * 5000 + b"}", "application/json", 400, "digits"),
        (b"", "application/json", 422, "body"),
        (b"[]", "application/json", 422, "object"),
        (b"null", "application/json", 422, "body"),
    ],
)
def test_malformed_bodies_and_content_types_are_4xx(service, body, content_type, status, says):
    request, _ = service
    for path in ("/rerank", "/recommend"):
        _says(_raw(request, path, body, content_type), status, says)


def test_valid_requests_still_answer(service):
    request, _ = service
    r = request("POST", "/rerank", json={"user_id": "ünï cödé", "candidates": ["é-ü item", "B0002", SUMMARY_ONLY],
                                         "first_stage_scores": [1e38, -2, -1e38]})  # fmt: skip
    body = _says(r, 200)
    assert sorted(i["item_id"] for i in body["items"]) == sorted(["é-ü item", "B0002", SUMMARY_ONLY])
    assert all(math.isfinite(i["score"]) for i in body["items"])
    r = request("POST", "/recommend", json={"user_id": "A002", "k": MAX_K})
    assert len(_says(r, 200)["items"]) == len(ITEMS) - 3  # every item but the user's three
    _says(request("POST", "/recommend", json={"user_id": "nobody", "k": 1}), 404, "unknown user")
    _says(request("POST", "/rerank", json={"user_id": "A001", "candidates": ["NOPE"]}), 422, "NOPE")
    _says(request("GET", f"/items/{quote('é-ü item')}/personas"), 200)
    assert request("GET", f"/ui/users/{quote('ünï cödé')}").status_code == 200


@pytest.mark.parametrize(
    "path",
    ["/items/%ED%A0%80/personas", "/items/%FF/personas", "/items/%/personas", "/items/%00/personas",
     "/items/..%2F..%2Fetc/personas", "/ui/items/%ED%A0%80", "/ui/users/%FF%FE", "/ui/plots/..%2F..%2Fetc%2Fpasswd",
     "/ui/items?q=%ED%A0%80&status=%FF", "/ui/users?q=%00", "/ready?x=%ED%A0%80",
     "/items/" + "x" * 20_000 + "/personas"],
)  # fmt: skip
def test_odd_path_parameters_are_4xx(service, path):
    request, _ = service
    r = request("GET", path)
    assert r.status_code in (200, 404), (r.status_code, r.text[:300])


# ------------------------------------------------------------------------------------ generated requests

HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
SETTINGS = settings(
    max_examples=N_EXAMPLES, derandomize=True, deadline=None, database=None, suppress_health_check=HEALTH,
    phases=[Phase.explicit, Phase.generate],
)  # fmt: skip

hostile_text = st.text(st.one_of(st.characters(codec=None, exclude_categories=()), st.sampled_from(HOSTILE_CHARS)))
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(10**400), 10**400), st.floats(), hostile_text,
    st.sampled_from(ITEMS + USERS),
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(hostile_text, inner, max_size=5),
    max_leaves=12,
)
ids = st.one_of(st.sampled_from(ITEMS + USERS), hostile_text, json_scalars)
#: First-stage scores: in range (up to the +-1e38 the service takes), past it, non-finite, huge integers.
numbers = st.one_of(st.floats(-1e38, 1e38), st.floats(), st.integers(-(10**40), 10**40), st.sampled_from([1e38, -1e38]))
#: A raw fragment: any value written by json.dumps (NaN and Infinity included), or a raw token above.
fragments = st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.sampled_from(RAW_TOKENS))


def _encode(value: object, how: str) -> bytes:
    """A body for ``value``: ASCII JSON (\\uXXXX escapes), or UTF-8 with any surrogate written as raw bytes."""
    return json.dumps(value, ensure_ascii=how == "ascii").encode("utf-8", "surrogatepass")


@st.composite
def rerank_bodies(draw) -> object:
    """Near-valid /rerank bodies: the right keys (some left out, some extra), values of any type; often
    valid enough to be scored, so that extreme first-stage scores reach the fusion."""
    candidates = draw(st.one_of(
        st.lists(st.sampled_from(ITEMS), min_size=1, unique=True),
        st.lists(st.one_of(st.sampled_from(ITEMS), ids), max_size=8),
        st.just([f"i{n}" for n in range(MAX_CANDIDATES + 1)]),
        json_values,
    ))  # fmt: skip
    n = len(candidates) if isinstance(candidates, list) else draw(st.integers(0, 3))
    body: dict = {
        "user_id": draw(st.one_of(st.sampled_from(USERS), ids)),
        "candidates": candidates,
        "first_stage_scores": draw(st.one_of(
            st.none(), st.lists(numbers, min_size=n, max_size=n), st.lists(json_scalars, max_size=n + 1), json_values
        )),
    }  # fmt: skip
    for key in draw(st.sets(st.sampled_from(list(body)), max_size=2)):
        del body[key]
    if draw(st.integers(0, 3)) == 0:
        body[draw(hostile_text)] = draw(json_values)
    return body


@st.composite
def recommend_bodies(draw) -> object:
    body: dict = {
        "user_id": draw(st.one_of(st.sampled_from(USERS), ids)),
        "k": draw(st.one_of(st.integers(-5, MAX_K + 5), st.integers(), numbers, st.sampled_from(["10", True, 10.0]),
                            json_values)),
    }  # fmt: skip
    for key in draw(st.sets(st.sampled_from(list(body)), max_size=1)):
        del body[key]
    if draw(st.integers(0, 3)) == 0:
        body[draw(hostile_text)] = draw(json_values)
    return body


@st.composite
def raw_bodies(draw, keys: list[str]) -> bytes:
    """A body text built from raw fragments under the route's keys: NaN, 1e400, deep nesting, bad UTF-8..."""
    parts = []
    for key in draw(st.lists(st.sampled_from(keys), max_size=len(keys) + 1)):
        parts.append(json.dumps(key).encode() + b": " + draw(fragments))
    return b"{" + b", ".join(parts) + b"}"


CONTENT_TYPES = [
    "application/json", "application/json", "application/json", "application/json; charset=utf-8",
    "application/problem+json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/json; charset=\x7f", "application", ";;;", "",
]  # fmt: skip
POSTS = ["POST /rerank", "POST /recommend"]
JSON = {"content-type": "application/json"}


def test_generated_json_bodies_never_get_a_5xx(service):
    """Arbitrary JSON values, and near-valid bodies of each route, in both encodings and any content type."""
    client, tally = service
    failures: list[str] = []

    @SETTINGS
    @given(
        anything=json_values, rerank=rerank_bodies(), recommend=recommend_bodies(),
        how=st.sampled_from(["ascii", "utf-8"]), content_type=st.sampled_from(CONTENT_TYPES),
    )  # fmt: skip
    def run(anything, rerank, recommend, how, content_type):
        batch = []
        for route, value in (("POST /rerank", rerank), ("POST /recommend", recommend)):
            batch.append((route, ("POST", route[5:], _encode(value, how), JSON)))
            batch.append((route, ("POST", route[5:], _encode(anything, how), {"content-type": content_type})))
        _send(client, tally, failures, batch)

    run()
    _assert_none(failures, tally, POSTS)


def test_generated_raw_bodies_never_get_a_5xx(service):
    """Bodies no JSON library writes: non-finite numbers, overflow, lone surrogates, deep nesting, bad bytes."""
    client, tally = service
    failures: list[str] = []

    @SETTINGS
    @given(
        rerank=raw_bodies(["user_id", "candidates", "first_stage_scores"]), recommend=raw_bodies(["user_id", "k"]),
        bare=fragments, method=st.sampled_from(["POST", "POST", "POST", "PUT", "GET", "DELETE", "PATCH"]),
    )  # fmt: skip
    def run(rerank, recommend, bare, method):
        batch = []
        for route, body in (("POST /rerank", rerank), ("POST /recommend", recommend)):
            batch.append((route, ("POST", route[5:], body, JSON)))
            batch.append((route, (method, route[5:], bare, JSON)))
        _send(client, tally, failures, batch)

    run()
    _assert_none(failures, tally, POSTS)


PATH_ROUTES = {
    "GET /items/{item_id}/personas": "/items/{}/personas",
    "GET /ui/items/{item_id}": "/ui/items/{}",
    "GET /ui/users/{user_id}": "/ui/users/{}",
    "GET /ui/plots/{name}": "/ui/plots/{}",
}
QUERY_ROUTES = {
    "GET /ui/items": "/ui/items?q={}&status={}",
    "GET /ui/users": "/ui/users?q={}",
}
#: Routes without parameters: any query string on them (and on a known user's page, which runs a search).
FIXED_ROUTES = ["/health", "/ready", "/metrics", "/openapi.json", "/docs", "/ui", "/ui/", "/ui/index",
                "/ui/static/ui.css"]  # fmt: skip
KNOWN_USER_PAGE = f"/ui/users/{quote(USERS[0])}"
RAW_SEGMENTS = ["%ED%A0%80", "%FF", "%", "%%", "%zz", "%00", "..", "%2E%2E%2F", "%2F", "~", "%E2%80%A8", "%EF%BB%BF"]


@st.composite
def segments(draw) -> str:
    """A path segment as a client would send it: any text percent-encoded (surrogates as their UTF-8 bytes),
    raw escapes that decode to nothing valid, or a mixture."""
    text = draw(st.one_of(hostile_text, st.sampled_from(ITEMS + USERS)))
    text = quote(text.encode("utf-8", "surrogatepass"), safe="")
    raw = "".join(draw(st.lists(st.sampled_from(RAW_SEGMENTS), max_size=4)))
    long = "a" * draw(st.sampled_from([0, 0, 0, 300, 5000]))
    return "".join(draw(st.permutations([text, raw, long])))


def test_generated_paths_and_queries_never_get_a_5xx(service):
    """Odd path parameters and query strings on every GET route (and other methods on them)."""
    client, tally = service
    failures: list[str] = []

    @SETTINGS
    @given(a=segments(), b=segments(), search=st.integers(0, 4),
           method=st.sampled_from(["GET", "GET", "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS"]))  # fmt: skip
    def run(a, b, search, method):
        query = f"{a}={b}&generator={b}&q={a}&status={b}&{b}"
        batch = [(route, ("GET", path.format(x), b"", {})) for route, path in PATH_ROUTES.items() for x in (a, b)]
        batch += [(route, ("GET", template.format(a, b), b"", {})) for route, template in QUERY_ROUTES.items()]
        batch += [(f"GET {fixed}", (method, f"{fixed}?{query}", b"", {})) for fixed in FIXED_ROUTES]
        if search == 0:  # a fifth of the examples: this page costs a search
            batch.append((f"GET {KNOWN_USER_PAGE}", ("GET", f"{KNOWN_USER_PAGE}?{query}", b"", {})))
        batch.append(("GET /{anything}", (method, f"/{a}/{b}", b"", {})))
        _send(client, tally, failures, batch)

    run()
    _assert_none(failures, tally, [r for r, k in tally if k == "bad"])
