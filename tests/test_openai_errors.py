"""The OpenAI-compatible route's auth and bad input: OpenAI error bodies, never a 5xx, no SDK retry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from callagent.settings import Settings

from .conftest import MakeClient
from .openai_support import Sdk, sdk_clients


@pytest.fixture
async def sdk() -> AsyncIterator[Sdk]:
    async with sdk_clients() as make:
        yield make


# -- auth and bad bodies --------------------------------------------------------------------


async def test_auth_accepts_bearer_and_bare_keys_on_these_routes_only(make_client: MakeClient, sdk: Sdk) -> None:
    client = await make_client(Settings(upstream="local", store="memory://", api_keys=("sk-test",)))
    assert [m.id for m in (await sdk(client, api_key="sk-test").models.list()).data] == ["callagent"]
    with pytest.raises(openai.AuthenticationError) as refused:
        await sdk(client, api_key="sk-wrong").chat.completions.create(
            model="x", messages=[{"role": "user", "content": "喂"}]
        )
    assert refused.value.code == "unauthorized" and refused.value.type == "authentication_error"
    bare = {"Authorization": "sk-test"}
    data = {"model": "x", "messages": [{"role": "user", "content": "喂"}], "user": "auth1"}
    assert (await client.post("/v1/chat/completions", json=data, headers=bare)).status == 200
    # Other routes keep their own scheme and error body.
    other = await client.get("/get_info", params={"sessionId": "auth1"}, headers=bare)
    assert other.status == 401 and (await other.json())["type"] == "unauthorized"


BAD_BODIES: list[tuple[bytes, int, str, str]] = [
    (b"{not json", 400, "malformed_json", "malformed JSON"),
    (b"[]", 400, "malformed_json", "JSON object"),
    (b'{"model": "x"}', 422, "invalid_request", "messages"),
    (b'{"messages": []}', 422, "invalid_request", "messages"),
    (b'{"messages": ["hi"]}', 422, "invalid_request", "messages[0]"),
    (b'{"messages": [{"role": "user", "content": 5}]}', 422, "invalid_request", "messages[0].content"),
    (b'{"messages": [{"role": "user", "content": [{"type": "text"}]}]}', 422, "invalid_request", "text"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', 422, "invalid_request", "stream"),
    (
        b'{"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}',
        422,
        "invalid_request",
        "tools[0]",
    ),
    (b'{"messages": [{"role": "user", "content": "hi"}], "session_id": "a b"}', 422, "invalid_request", "session_id"),
    (
        b'{"messages": [{"role": "user", "content": "hi"}], "metadata": {"segment": "words"}}',
        422,
        "invalid_request",
        "segment",
    ),
]


@pytest.mark.parametrize(("raw", "status", "code", "says"), BAD_BODIES)
async def test_bad_bodies_get_clear_openai_errors(client: Any, raw: bytes, status: int, code: str, says: str) -> None:
    resp = await client.post("/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"})
    body = await resp.json()
    assert resp.status == status and resp.headers["x-should-retry"] == "false"
    assert body["error"]["code"] == code and body["error"]["type"] == "invalid_request_error"
    assert says in body["error"]["message"]


async def test_body_limit_is_larger_here_and_configurable(make_client: MakeClient) -> None:
    client = await make_client(Settings(upstream="local", store="memory://", openai_route_max_body_bytes=300_000))

    def body(system_chars: int) -> dict[str, Any]:
        system = {"role": "system", "content": "x" * system_chars}
        return {"model": "x", "messages": [system, {"role": "user", "content": "喂"}], "user": "big"}

    assert (await client.post("/v1/chat/completions", json=body(200_000))).status == 200  # over 64 KiB
    too_big = await client.post("/v1/chat/completions", json=body(400_000))
    body = await too_big.json()
    assert too_big.status == 413 and body["error"]["code"] == "payload_too_large"
    assert "300000" in body["error"]["message"]
    assert (await client.post("/chat", json={"sessionId": "a", "text": "x" * 200_000})).status == 413


async def test_wrong_method_and_sdk_errors_do_not_retry(client: Any, sdk: Sdk) -> None:
    resp = await client.get("/v1/chat/completions")
    assert resp.status == 405 and (await resp.json())["error"]["code"] == "method_not_allowed"
    with pytest.raises(openai.UnprocessableEntityError) as bad:
        await sdk(client).chat.completions.create(model="x", messages=[])
    assert "messages" in bad.value.message
