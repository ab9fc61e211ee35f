"""API keys: every route but /healthz needs one; the WebSocket takes the header or ?token=."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from callagent.settings import Settings

from .conftest import body

KEYS = ("key-alpha-1", "key-beta-2")


@pytest.fixture
async def secured(make_client: Any) -> Any:
    return await make_client(Settings(upstream="local", store="memory://", api_keys=KEYS))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/chat"), ("POST", "/set_info"), ("GET", "/get_info"), ("GET", "/readyz"), ("GET", "/metrics")],
)
async def test_routes_need_a_key(secured: Any, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic key-alpha-1"}):
        resp = await secured.request(method, path, json=body(text="喂", key="k", value="v"), headers=headers)
        assert resp.status == 401
        assert await resp.json() == {"code": "401", "msg": "missing or invalid API key", "type": "unauthorized"}


async def test_any_configured_key_works_and_healthz_is_open(secured: Any) -> None:
    assert (await secured.get("/healthz")).status == 200
    for key in KEYS:
        resp = await secured.post("/chat", json=body(text="发生了交通事故"), headers={"Authorization": f"Bearer {key}"})
        assert resp.status == 200 and (await resp.json())["nextStageCode"] == "1002"


async def test_websocket_takes_the_header_or_a_token(secured: Any) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await secured.ws_connect("/ws")
    assert refused.value.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await secured.ws_connect("/ws?token=nope")
    for ws in (
        await secured.ws_connect("/ws", headers={"Authorization": f"Bearer {KEYS[0]}"}),
        await secured.ws_connect(f"/ws?token={KEYS[1]}"),
    ):
        await ws.send_json({"type": "ping", "t": 1})
        assert (await ws.receive_json())["type"] == "pong"
        await ws.close()


async def test_keys_never_reach_the_logs(secured: Any) -> None:
    with capture_logs() as logs:
        await secured.post("/chat", json=body(text="喂"), headers={"Authorization": "Bearer key-alpha-1"})
        await secured.post("/chat", json=body(text="喂"), headers={"Authorization": "Bearer guessed-key"})
    assert logs, "turns are logged"
    assert "key-alpha-1" not in repr(logs) and "guessed-key" not in repr(logs)
