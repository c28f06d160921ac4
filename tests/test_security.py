"""API keys, request ids, CORS, readiness, drain, and error messages that stay short, through the in-process app
(docs/security.md). The guarded app runs with two API keys, CORS for one origin, trusted proxy 127.0.0.1 (the
in-process client's address), two streams per client and ARSERVE_REQUIRE_ALL_MODELS (the test artifacts hold
two folders the registry skips)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from conftest import service_settings

pytestmark = pytest.mark.anyio

KEYS = ("key-one", "key-two")
NADE_X = [0, 1, 0, 1, 1, 0, 0, 1]
ORIGIN = "https://playground.example"

# Every model route, with a request that succeeds given a key
MODEL_ROUTES = [
    ("GET", "/models", None),
    ("POST", "/logprob", {"model": "tiny-nade", "inputs": [NADE_X]}),
    ("GET", "/sample", {"model": "tiny-nade", "seed": 1}),
    ("POST", "/sample", {"model": "tiny-nade", "seed": 1}),
]
OPEN_ROUTES = ["/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/redoc"]


@pytest.fixture(scope="module")
async def guarded(artifacts, tmp_path_factory):
    from app.main import create_app

    keys_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys_file.write_text(f"# one key per line\n{KEYS[1]}\n\n")
    settings = service_settings(artifacts, api_keys=KEYS[0], api_keys_file=keys_file, cors_origins=ORIGIN,
                                trusted_proxies="127.0.0.1", max_streams_per_client=2, require_all_models=True)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.loading
        yield app


@pytest.fixture
async def http(guarded):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded), base_url="http://arserve",
                                 timeout=60) as c:
        yield c


async def call(http: httpx.AsyncClient, method: str, path: str, body, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if method == "GET":
        return await http.get(path, params=body, headers=headers)
    return await http.post(path, json=body, headers=headers)


# ----- API keys ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,path,body", MODEL_ROUTES, ids=[f"{m} {p}" for m, p, _ in MODEL_ROUTES])
async def test_model_route_needs_a_key(http, method, path, body):
    r = await call(http, method, path, body)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"]["code"] == "unauthorized"
    r = await call(http, method, path, body, key="not-a-key")
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    for key in KEYS:  # from ARSERVE_API_KEYS and from ARSERVE_API_KEYS_FILE
        r = await call(http, method, path, body, key=key)
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("path", OPEN_ROUTES)
async def test_open_route_needs_no_key(http, path):
    r = await http.get(path)
    assert r.status_code != 401, r.text
    assert r.status_code == (503 if path == "/readyz" else 200)  # /readyz: see test_readiness_requires_all_models


async def test_every_route_but_the_open_ones_needs_a_key(guarded, http):
    """Routes added later (the /v1 API, /tokenize, ...) are protected without being listed anywhere."""
    from app.http.security import APIKeyMiddleware

    allow = APIKeyMiddleware(guarded, list(KEYS), metrics_open=True, docs_open=True)
    checked = 0
    for path, methods in guarded.openapi()["paths"].items():
        for method in methods:
            if allow.is_open({"type": "http", "path": path, "method": method.upper()}):
                continue
            r = await http.request(method.upper(), path.replace("{", "").replace("}", ""))
            assert r.status_code == 401, f"{method} {path}: {r.status_code}"
            checked += 1
    assert checked >= len(MODEL_ROUTES)


async def test_metrics_and_docs_can_be_closed(artifacts):
    from app.main import create_app

    app = create_app(service_settings(artifacts, api_keys="k", metrics_require_key=True, docs=False))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://arserve") as c:
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/metrics", headers={"Authorization": "Bearer k"})).status_code == 200
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await c.get(path, headers={"Authorization": "Bearer k"})).status_code == 404
        assert (await c.get("/healthz")).status_code == 200


async def test_the_client_sends_its_key(guarded):
    from app.client import ArserveError, AsyncArserveClient

    transport = httpx.ASGITransport(app=guarded)
    async with AsyncArserveClient("http://arserve", api_key=KEYS[0], transport=transport) as c:
        assert [e.event async for e in c.sample("tiny-nade", seed=2)][-1] == "done"
        assert (await c.logprob("tiny-nade", [NADE_X]))["results"][0]["num_positions"] == 8
    async with AsyncArserveClient("http://arserve", transport=transport) as c:
        with pytest.raises(ArserveError, match="unauthorized"):
            await c.models()


def test_the_sync_client_sends_its_key():
    from app.client import ArserveClient

    with ArserveClient("http://127.0.0.1:9", api_key="key-one", headers={"X-Request-ID": "mine"}) as c:
        assert c.http.headers["authorization"] == "Bearer key-one" and c.http.headers["x-request-id"] == "mine"
    with ArserveClient("http://127.0.0.1:9") as c:
        assert "authorization" not in c.http.headers


# ----- request ids, CORS, client addresses -------------------------------------------------------------


async def test_request_id_on_every_response(http):
    mine = await http.get("/healthz", headers={"X-Request-ID": "abc-123.x:y"})
    assert mine.headers["x-request-id"] == "abc-123.x:y"
    for bad in ("x" * 200, "a b", "<script>"):
        r = await http.get("/healthz", headers={"X-Request-ID": bad})
        assert r.headers["x-request-id"] != bad and len(r.headers["x-request-id"]) == 32
    r = await http.post("/logprob", json={})  # errors too
    assert r.status_code == 401 and len(r.headers["x-request-id"]) == 32


async def test_cors_only_for_the_configured_origin(http, client):
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    r = await http.options("/logprob", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    r = await http.options("/logprob", headers={**preflight, "Origin": "https://evil.example"})
    assert r.headers.get("access-control-allow-origin") != "https://evil.example"
    # the default app: CORS off, no header for anyone
    r = await client.get("/healthz", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in r.headers


def test_client_address_trusts_only_the_configured_proxies():
    from app.http.security import client_address, parse_networks

    def scope(peer: str, xff: str | None) -> dict:
        headers = [(b"x-forwarded-for", xff.encode())] if xff else []
        return {"client": (peer, 1), "headers": headers}

    proxies = parse_networks(["10.0.0.0/8"])
    assert client_address(scope("10.1.2.3", "1.1.1.1, 2.2.2.2"), proxies) == "2.2.2.2"
    assert client_address(scope("10.1.2.3", "1.1.1.1, 10.9.9.9"), proxies) == "1.1.1.1"  # proxies skipped
    assert client_address(scope("8.8.8.8", "1.1.1.1"), proxies) == "8.8.8.8"  # not a proxy: header ignored
    assert client_address(scope("10.1.2.3", "1.1.1.1"), ()) == "10.1.2.3"  # no proxies configured
    assert client_address(scope("10.1.2.3", None), proxies) == "10.1.2.3"


async def test_streams_per_client(guarded, http):
    """Two streams per client, the client told by X-Forwarded-For from the trusted proxy 127.0.0.1: with two held,
    that client's next stream gets 429, another client's does not."""
    auth = {"Authorization": f"Bearer {KEYS[0]}"}
    held = [guarded.state.slots.acquire("long-lstm", "203.0.113.1") for _ in range(2)]
    try:
        r = await http.post("/sample", json={"model": "tiny-nade"}, headers={**auth, "X-Forwarded-For": "203.0.113.1"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_client_streams"
        assert "ARSERVE_MAX_STREAMS_PER_CLIENT=2" in r.json()["error"]["message"]
        r = await http.post("/sample", json={"model": "tiny-nade"}, headers={**auth, "X-Forwarded-For": "203.0.113.2"})
        assert r.status_code == 200
        r = await http.post("/sample", json={"model": "tiny-nade"}, headers={**auth, "X-Forwarded-For": "1.2.3.4, "
                                                                             "203.0.113.1"})  # the left is not read
        assert r.status_code == 429
    finally:
        for release in held:
            release()
    assert guarded.state.slots.by_client == {}


# ----- readiness, drain ---------------------------------------------------------------------------------


async def test_readiness_requires_all_models(http, artifacts):
    r = await http.get("/readyz")
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["error"]["code"] == "not_ready" and "ARSERVE_REQUIRE_ALL_MODELS" in body["error"]["message"]
    assert set(body["skipped"]) == {"zz-corrupt", "zz-empty"}
    assert str(artifacts) not in r.text and "/tmp" not in r.text, "server paths in /readyz"


async def test_readyz_never_shows_paths(client, artifacts):
    r = await client.get("/readyz")
    assert r.status_code == 200 and str(artifacts) not in r.text
    assert "zz-corrupt" in r.json()["skipped"]


async def test_draining_turns_new_requests_away(artifacts):
    from app.main import create_app

    app = create_app(service_settings(artifacts, drain_s=30))
    async with app.router.lifespan_context(app):
        await app.state.loading
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://arserve") as c:
            assert (await c.get("/readyz")).status_code == 200
            app.state.drain.begin()
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
            r = await c.post("/logprob", json={"model": "tiny-nade", "inputs": [NADE_X]})
            assert r.status_code == 503 and r.headers["connection"] == "close"
            assert (await c.get("/healthz")).status_code == 200 and (await c.get("/metrics")).status_code == 200


async def test_drain_deadline_ends_running_requests(artifacts):
    """A POST /sample still running when the drain deadline passes answers 503 shutting_down."""
    from app.main import create_app

    app = create_app(service_settings(artifacts, drain_s=0.3, max_length=65536))
    async with app.router.lifespan_context(app):
        await app.state.loading
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://arserve") as c:
            running = asyncio.ensure_future(c.post("/sample", json={"model": "long-lstm", "seed": 1}))
            await asyncio.sleep(0.3)
            app.state.drain.begin()
            r = await asyncio.wait_for(running, 30)
            assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down", r.text


# ----- error messages stay short, the documented error shape --------------------------------------------


async def test_unknown_fields_in_one_line(client):
    body = {"model": "tiny-nade", "inputs": [NADE_X], **{f"extra{i}": i for i in range(200)}}
    r = await client.post("/logprob", json=body)
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert message.startswith("unknown fields extra0, extra1") and "and 195 more" in message and len(r.text) < 500


async def test_too_many_fields_refused_before_parsing(client):
    body = json.dumps({f"k{i}": 1 for i in range(100_000)})
    r = await client.post("/logprob", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_fields" and len(r.text) < 300


@pytest.mark.parametrize("field,value", [("model", "m" * 100_000), ("prompt", "z" * 100_000),
                                          ("temperature", "hot" * 30_000)])
async def test_errors_quote_a_short_prefix(client, field, value):
    body = {"model": "tiny-lstm", field: value} if field != "model" else {"model": value}
    r = await client.post("/sample", json=body)
    assert 400 <= r.status_code < 500 and len(r.text) < 600, r.text[:300]


@pytest.mark.parametrize("inputs", [[[0, "x" * 100_000, 0, 1, 1, 0, 0, 1]], [[0, 1, 0, 1, 1, 0, 0, 10**4000]],
                                    [[[0, 1, 0, 1], "y" * 100_000]]], ids=["string token", "huge int", "string row"])
async def test_engine_errors_quote_a_short_prefix(client, inputs):
    r = await client.post("/logprob", json={"model": "tiny-nade", "inputs": inputs})
    assert r.status_code == 422 and len(r.text) < 300, r.text[:300]


async def test_a_text_body_is_not_echoed(client):
    r = await client.post("/logprob", content=b"\0" * 1_000_000, headers={"content-type": "text/plain"})
    assert r.status_code == 422 and len(r.content) < 600, r.text[:300]


async def test_deep_nesting_is_a_4xx(client):
    r = await client.post("/logprob", content="[" * 100_000, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text[:300]


async def test_openapi_documents_the_native_errors_and_text_metrics(client):
    spec = (await client.get("/openapi.json")).json()
    assert "HTTPValidationError" not in json.dumps(spec)
    for path, method in (("/logprob", "post"), ("/sample", "get"), ("/sample", "post"), ("/models", "get")):
        responses = spec["paths"][path][method]["responses"]
        assert responses["4XX"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "text/plain" in spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


async def test_timings_never_negative(client):
    for params in ({"model": "tiny-lstm", "seed": 1}, {"model": "tiny-lstm", "seed": 1, "prompt": "ab"}):
        done = (await client.post("/sample", json=params)).json()
        assert all(v >= 0 for v in done["timings"].values()), done["timings"]
