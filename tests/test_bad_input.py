"""Bad input from a gateway: a clear JSON error, never a 5xx, and the process keeps serving."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import body

LONG = "长" * 5000


@pytest.mark.parametrize(
    ("path", "payload", "status", "type_", "msg"),
    [
        ("/chat", b"{not json", 400, "malformed_json", "malformed JSON"),
        ("/chat", b"", 400, "malformed_json", "JSON object"),
        ("/chat", b"[1, 2]", 400, "malformed_json", "JSON object"),
        ("/chat", {"timeStamp": "1", "text": "x"}, 422, "invalid_request", "sessionId: field required"),
        ("/chat", {"sessionId": "a1", "timeStamp": "1"}, 422, "invalid_request", "text: field required"),
        ("/chat", {"sessionId": "a1", "text": 5}, 422, "invalid_request", "text: must be a string"),
        ("/chat", {"sessionId": "a 1", "text": "x"}, 422, "invalid_request", "sessionId"),
        ("/chat", {"sessionId": "x" * 129, "text": "x"}, 422, "invalid_request", "sessionId"),
        ("/chat", {"sessionId": ["a"], "text": "x"}, 422, "invalid_request", "sessionId"),
        ("/chat", {"sessionId": "a1", "text": "x", "stream": "yes"}, 422, "invalid_request", "stream"),
        ("/chat", {"sessionId": "a1", "text": "x", "timeStamp": {}}, 422, "invalid_request", "timeStamp"),
        ("/chat", {"sessionId": "a1", "text": LONG}, 422, "invalid_request", "text: longer than"),
        ("/set_info", {"sessionId": "a1", "value": "v"}, 422, "invalid_request", "key: field required"),
        ("/set_info", {"sessionId": "a1", "key": "k"}, 422, "invalid_request", "value: field required"),
        ("/set_info", {"sessionId": "a1", "key": "k", "value": {"a": 1}}, 422, "invalid_request", "value: must be"),
        ("/get_info", {"sessionId": "never-seen"}, 404, "session_not_found", "unknown session"),
        ("/delete_last_turn", {"sessionId": "never-seen"}, 404, "session_not_found", "unknown session"),
        ("/cancel", {"sessionId": "never-seen"}, 404, "session_not_found", "unknown session"),
    ],
)
async def test_bad_requests_get_the_documented_error(
    fastgpt_client: Any, path: str, payload: Any, status: int, type_: str, msg: str
) -> None:
    if isinstance(payload, bytes):
        resp = await fastgpt_client.post(path, data=payload, headers={"Content-Type": "application/json"})
    else:
        resp = await fastgpt_client.post(path, json=payload)
    assert resp.status == status
    assert resp.headers["Content-Type"].startswith("application/json")
    error = await resp.json()
    assert set(error) == {"code", "msg", "type"}
    assert error["code"] == str(status) and error["type"] == type_
    assert msg in error["msg"]


async def test_oversized_body_is_413(fastgpt_client: Any) -> None:
    resp = await fastgpt_client.post("/chat", data=b'{"text": "' + b"a" * 200_000 + b'"}')
    assert resp.status == 413
    assert (await resp.json())["type"] == "payload_too_large"


async def test_unknown_route_and_method(fastgpt_client: Any) -> None:
    resp = await fastgpt_client.get("/nope")
    assert resp.status == 404 and (await resp.json())["type"] == "not_found"
    resp = await fastgpt_client.put("/chat", json=body(text="x"))
    assert resp.status == 405 and (await resp.json())["type"] == "method_not_allowed"
    assert "POST" in resp.headers["Allow"]


async def test_process_keeps_serving_and_data_is_kept(fastgpt_client: Any) -> None:
    await fastgpt_client.post("/set_info", json=body(key="hphm1", value="沪A8939"))
    for junk in (b"{", b"null", b'{"sessionId": 1}', b"\xff\xfe"):
        resp = await fastgpt_client.post("/set_info", data=junk)
        assert 400 <= resp.status < 500
    resp = await fastgpt_client.post("/get_info", json=body(key="hphm1"))
    assert (await resp.json())["value"] == "沪A8939"
    resp = await fastgpt_client.post("/chat", json=body(text="还在吗"))
    assert resp.status == 200 and (await resp.json())["nextStageCode"] == "1002"
