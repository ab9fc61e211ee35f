"""The OpenAI-compatible route in the real server process: the same barge-in as under the test server."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import orjson
import pytest
from openai import AsyncOpenAI

from .redis_server import free_port, stop_process
from .test_process import serve

pytestmark = pytest.mark.slow


def transcript(tmp_path: Path) -> list[dict[str, object]]:
    rows = sqlite3.connect(tmp_path / "callagent.db").execute("SELECT record FROM turns").fetchall()
    return [orjson.loads(r[0]) for r in rows]


async def test_a_platform_closing_the_stream_cancels_the_turn_in_the_process(tmp_path: Path) -> None:
    port = free_port()
    # The local agent paced so a reply takes well over a second to stream.
    process = serve(tmp_path, port, CALLAGENT_LOCAL_CHUNK_DELAY="0.1", CALLAGENT_API_KEYS="ck-1")
    try:
        # A bare key, as some platforms send it.
        async with AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key="unused",
            max_retries=0,
            default_headers={"Authorization": "ck-1"},
        ) as oa:
            messages: list[dict[str, str]] = [{"role": "user", "content": "喂"}]
            headers = {"X-Callagent-Session": "proc-barge"}
            stream = await oa.chat.completions.create(model="x", messages=messages, stream=True, extra_headers=headers)
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    heard = chunk.choices[0].delta.content
                    break
            await stream.close()
            async with asyncio.timeout(5):  # the cancelled turn saves its row as it ends
                while not transcript(tmp_path):
                    await asyncio.sleep(0.01)
            (row,) = transcript(tmp_path)
            assert row["status"] == "cancelled" and str(row["reply_text"]).startswith(heard)
            messages += [{"role": "assistant", "content": heard}, {"role": "user", "content": "方便"}]
            reply = await oa.chat.completions.create(model="x", messages=messages, extra_headers=headers)
            assert reply.choices[0].message.content
    finally:
        stop_process(process)
    first, second = transcript(tmp_path)
    assert first["spoken_text"] == heard and second["status"] == "completed"
