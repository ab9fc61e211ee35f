"""The scripted calls of tests/calls, spoken to callagent's HTTP API with the local agent behind it.

Each call is a list of (caller text, expected stage code, phrases the reply must contain) and the
variables expected at the end; ``tests/calls/README.md`` describes the format.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

CALLS_DIR = Path(__file__).parent / "calls"


def load_calls() -> list[Any]:
    calls = []
    for path in sorted(CALLS_DIR.glob("*.toml")):
        for index, call in enumerate(tomllib.loads(path.read_text(encoding="utf-8"))["call"]):
            session_id = f"{path.stem}-{index}"
            calls.append(pytest.param(session_id, call, id=f"{path.stem}: {call['name']}"))
    return calls


def body(session_id: str, **fields: Any) -> dict[str, Any]:
    return {"sessionId": session_id, "timeStamp": "1", **fields}


async def post(client: Any, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(path, json=payload)
    assert response.status == 200, await response.text()
    data: dict[str, Any] = await response.json()
    assert data["code"] == "200", data
    return data


@pytest.mark.parametrize(("session_id", "call"), load_calls())
async def test_scripted_call(client: Any, session_id: str, call: dict[str, Any]) -> None:
    for key, value in call.get("preset", {}).items():
        await post(client, "/set_info", body(session_id, key=key, value=value))
    for text, code, *phrases in call["turns"]:
        reply = await post(client, "/chat", body(session_id, text=text))
        assert reply["nextStageCode"] == code, f"{text!r} -> {reply}"
        assert "<state>" not in reply["text"], reply
        for phrase in phrases:
            assert phrase in reply["text"], f"{text!r} -> {reply}"
    info = (await post(client, "/get_info", body(session_id)))["info"]
    assert {key: value for key, value in info.items() if not key.startswith("_")} == call["expect"]
