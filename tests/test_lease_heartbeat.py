"""The session lease with a short TTL: renewed by the instance's heartbeat whatever the upstream
does, and never in the way of the session's next turn when a release is lost."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from callagent.settings import Settings
from callagent.web.keys import STORE
from scripts.emulators import fastgpt as fe

from .conftest import body, parse_sse
from .test_bargein_http import first_frame


async def test_a_turn_whose_upstream_is_slower_than_the_ttl_keeps_its_lease(
    make_client: Any, fastgpt_settings: Settings, emulator: Any, redis_url: str
) -> None:
    emulator.brain = fe.ScriptedBrain(["<state>1002</state>好的，请您稍等一下，马上为您处理。"])
    emulator.chunk_chars = 20  # two chunks, with a gap of three lease TTLs between them
    emulator.chunk_delay = 1.5
    client = await make_client(fastgpt_settings.with_(store=redis_url, lease_ttl=0.5))
    store = client.app[STORE]
    resp = await client.post("/chat?stream=true", json=body("h1", text="喂"))
    await first_frame(resp, "text_delta")
    owner = await store.lease_owner("h1")
    (stream,) = emulator.streams
    checks = 0
    async with asyncio.timeout(5):
        while True:
            seen = await store.lease_owner("h1")
            if stream.outcome != "running":  # the reply is complete: the lease may go now
                break
            assert seen == owner is not None
            checks += 1
            await asyncio.sleep(0.05)
    assert checks > 10
    assert parse_sse(await resp.read())[-1][1]["status"] == "completed"


async def test_a_lost_lease_release_does_not_block_the_next_turn(make_client: Any, redis_url: str) -> None:
    settings = Settings(upstream="local", store=redis_url, local_chunk_delay=0.05, lease_ttl=30, store_timeout=0.3)
    client = await make_client(settings)
    resp = await client.post("/chat?stream=true", json=body("h2", text="发生了交通事故"))
    await first_frame(resp, "text_delta")
    redis = Redis.from_url(redis_url)
    try:
        # A stall: writes wait, longer than the rest of the reply takes, so the turn's release
        # certainly falls inside it (and times out: lost).
        await redis.execute_command("CLIENT", "PAUSE", 2500, "WRITE")
        frames = parse_sse(await asyncio.wait_for(resp.read(), 5))
        assert frames[-1][0] == "done"
        # The stall ends; the lease is still the finished turn's (its release was lost).
        async with asyncio.timeout(6):
            while (await client.post("/set_info", json=body("h2", key="k", value="v"))).status != 200:
                pass
        assert await client.app[STORE].lease_owner("h2") == frames[-1][1]["turnId"]
    finally:
        await redis.aclose()
    reply = await asyncio.wait_for(client.post("/chat", json=body("h2", text="还在")), 3)
    assert (await reply.json())["status"] == "completed"
