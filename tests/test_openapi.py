"""The OpenAPI description against the live server: schemathesis over a real socket.

callagent (local upstream, memory store) runs in a thread with its own event loop, on a
free loopback port, and serves ``GET /openapi.json``. Every operation gets its documented
examples, schemathesis' coverage cases and a bounded, derandomized number of generated ones,
each checked for: no 5xx, a documented status, a documented content type, and a body that
matches the documented schema (SSE streams event by event, each ``data`` against its JSON
schema). Hand-made requests cover what generation cannot reach (malformed and oversized
bodies, API keys, the stream) and are checked against the schema loaded from the server.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import yaml
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from callagent.settings import Settings
from callagent.web import openapi
from callagent.web.app import create_app

ROOT = Path(__file__).resolve().parent.parent
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
KNOWN_SESSION = "a1002"  # the sessionId of the documented examples


class LiveServer:
    """callagent on a real port, served by an event loop in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="callagent-live", daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"callagent did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "callagent did not stop"

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported by __enter__
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner = web.AppRunner(create_app(self.settings), handler_cancellation=True, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            self.url = f"http://{host}:{port}"
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()


@pytest.fixture(scope="module")
def live_server() -> Iterator[LiveServer]:
    with LiveServer(Settings(upstream="local", store="memory://")) as server:
        yield server


@pytest.fixture(scope="module")
def http(live_server: LiveServer) -> Iterator[requests.Session]:
    with requests.Session() as session:
        # The documented examples name this session: let them find it.
        response = session.post(
            f"{live_server.url}/set_info", json={"sessionId": KNOWN_SESSION, "key": "hphm1", "value": "沪A8939"}
        )
        assert response.status_code == 200, response.text
        yield session


@pytest.fixture(scope="module")
def api_schema(live_server: LiveServer, http: requests.Session) -> Any:
    schema = schemathesis.openapi.from_url(f"{live_server.url}/openapi.json", timeout=10)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    return schema


# -- the document ---------------------------------------------------------------------------


def test_the_packaged_json_is_the_rendering_of_docs_openapi_yaml() -> None:
    source = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text(encoding="utf-8"))
    shipped = (ROOT / "callagent" / "data" / openapi.RESOURCE).read_text(encoding="utf-8")
    assert shipped == openapi.render(source), (
        "callagent/data/openapi.json is stale: run `python -m callagent.web.openapi` after editing docs/openapi.yaml"
    )
    assert openapi.packaged() == source


def test_every_route_is_described() -> None:
    app = create_app(Settings(upstream="local", store="memory://"))
    served = {
        (resource.canonical, route.method)
        for resource in app.router.resources()
        for route in resource
        # WebSockets; the console's own routes need a console key and are described in docs/console.md.
        if route.method != "HEAD"
        and resource.canonical not in ("/ws", "/conversation-relay")
        and not resource.canonical.startswith("/console")
    }
    paths = openapi.packaged()["paths"]
    described = {(path, method.upper()) for path, item in paths.items() for method in item}
    assert served == described


def test_the_live_server_serves_the_packaged_document(live_server: LiveServer, http: requests.Session) -> None:
    response = http.get(f"{live_server.url}/openapi.json")
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    assert response.json() == openapi.document(Settings().max_text_chars) == openapi.packaged()


async def test_the_served_document_carries_the_text_limit(make_client: Any) -> None:
    client = await make_client(Settings(upstream="local", store="memory://", max_text_chars=100))
    resp = await client.get("/openapi.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    doc = await resp.json()
    assert doc["components"]["schemas"]["Text"]["maxLength"] == 100
    doc["components"]["schemas"]["Text"]["maxLength"] = 4000
    assert doc == openapi.packaged()


# -- hand-made requests that generated data does not reach ----------------------------------


def _check(schema: Any, method: str, path: str, response: requests.Response) -> None:
    operation = schema[path][method]
    assert str(response.status_code) in operation.responses.status_codes
    operation.validate_response(response)


def test_documented_errors_and_streams_conform(
    api_schema: Any, live_server: LiveServer, http: requests.Session
) -> None:
    url = live_server.url
    chat = f"{url}/chat"
    streamed = http.post(chat, params={"stream": "true", "segment": "clause"}, json={"sessionId": "s1", "text": "有"})
    cases: list[tuple[str, str, requests.Response, int]] = [
        ("POST", "/chat", http.post(chat, data=b"{not json"), 400),
        ("POST", "/chat", http.post(chat, data=b"[1]"), 400),
        ("POST", "/chat", http.post(chat, data=b'{"text": "' + b"a" * 70_000 + b'"}'), 413),
        ("POST", "/chat", http.post(chat, json={"sessionId": "a 1", "text": "x"}), 422),
        ("POST", "/get_info", http.post(f"{url}/get_info", json={"sessionId": "never-seen"}), 404),
        ("GET", "/get_info", http.get(f"{url}/get_info", params={"timeStamp": "1"}), 422),
        ("DELETE", "/delete_session", http.delete(f"{url}/delete_session"), 400),
        ("DELETE", "/delete_session", http.delete(f"{url}/delete_session", params={"sessionId": "nobody"}), 404),
        ("POST", "/chat", http.post(chat, json={"sessionId": "s1", "timeStamp": 20250331, "text": "你好"}), 200),
        ("POST", "/chat", streamed, 200),
        ("POST", "/chat", http.post(chat, json={"sessionId": "s1", "text": "没有", "stream": True}), 200),
        ("GET", "/get_info", http.get(f"{url}/get_info", params={"sessionId": "s1"}), 200),
        ("POST", "/delete_last_turn", http.post(f"{url}/delete_last_turn", json={"sessionId": "s1"}), 200),
        ("POST", "/cancel", http.post(f"{url}/cancel", json={"sessionId": "s1", "spokenText": "您好"}), 200),
        ("DELETE", "/delete_session", http.delete(f"{url}/delete_session", params={"sessionId": "s1"}), 200),
    ]
    for method, path, response, status in cases:
        assert response.status_code == status, (method, path, response.text)
        _check(api_schema, method, path, response)
    assert streamed.headers["Content-Type"].startswith("text/event-stream")
    assert "event: done" in streamed.text


def test_unauthorized_conforms(api_schema: Any) -> None:
    keyed = Settings(upstream="local", store="memory://", api_keys=("k1",))  # type: ignore[arg-type]
    with LiveServer(keyed) as server, requests.Session() as session:
        for method, path in [("POST", "/chat"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/openapi.json")]:
            response = session.request(method, f"{server.url}{path}", json={"sessionId": "a1", "text": "x"})
            assert response.status_code == 401
            _check(api_schema, method, path, response)
        assert session.get(f"{server.url}/healthz").status_code == 200
        response = session.get(f"{server.url}/openapi.json", headers={"Authorization": "Bearer k1"})
        assert response.status_code == 200 and response.json()["openapi"].startswith("3.1")


def test_unknown_routes_and_methods_match_the_documented_errors(
    live_server: LiveServer, http: requests.Session
) -> None:
    components = openapi.packaged()["components"]["responses"]
    for response, name in [
        (http.get(f"{live_server.url}/nope"), "NotFound"),
        (http.put(f"{live_server.url}/chat", json={}), "MethodNotAllowed"),
        (http.get(f"{live_server.url}/cancel"), "MethodNotAllowed"),
    ]:
        schema = components[name]["content"]["application/json"]["schema"]
        assert response.status_code == int(schema["properties"]["code"]["const"])
        body = response.json()
        assert set(body) == {"code", "msg", "type"}
        assert body["type"] == schema["properties"]["type"]["const"] and body["code"] == str(response.status_code)
    assert "POST" in http.get(f"{live_server.url}/cancel").headers["Allow"]


# -- generated requests ---------------------------------------------------------------------

# Generation needs the schema at collection time, before any server runs, so it is built from
# the very document the server serves (``openapi.document``, with the default text limit; the
# tests above check that the live server serves exactly that). ``schemathesis.pytest.from_fixture``
# would load it from the live server instead, but schemathesis 4.32 sets ``node._nodeid``, which
# pytest 9.2 no longer has.
schema = schemathesis.openapi.from_dict(openapi.document(Settings().max_text_chars))


@settings(
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@schema.parametrize()
def test_api_conforms_to_its_description(case: Any, live_server: LiveServer, http: requests.Session) -> None:
    case.call_and_validate(base_url=live_server.url, session=http, checks=CHECKS, timeout=30)


def test_an_undecodable_compressed_body_is_a_documented_400(api_schema: Any, live_server: LiveServer) -> None:
    with requests.Session() as session:
        response = session.post(f"{live_server.url}/chat", data=b"xx", headers={"Content-Encoding": "gzip"})
    assert response.status_code == 400, response.text
    _check(api_schema, "POST", "/chat", response)
