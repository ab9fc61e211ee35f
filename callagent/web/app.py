"""The application factory: settings in, a ready ``web.Application`` out.

Resources are opened and closed by cleanup contexts, in this order: store, upstream (with
the process's one pooled HTTP client session), turn engine. Shutdown first lets running
turns finish (up to ``CALLAGENT_SHUTDOWN_TIMEOUT``), then closes every WebSocket with 1001.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from aiohttp import WSCloseCode, web
from aiohttp.typedefs import Middleware

from ..commands import SessionCommands
from ..console import views as console
from ..console.access import ConsoleAccess
from ..events import dumps
from ..metrics import Metrics
from ..settings import ConfigError, Settings
from ..stages import StageTable
from ..store import create_store
from ..turns import TurnEngine
from ..upstream.base import Upstream
from . import conversation_relay, http, openai_compat, openapi, transcript, twilio, ws
from .keys import COMMANDS, ENGINE, METRICS, SETTINGS, SOCKETS, STAGES, STORE, UPSTREAM
from .middlewares import add_request_id, api_key_auth, console_auth, json_errors, request_context


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or Settings.from_env()
    middlewares: list[Middleware] = [request_context, json_errors, console_auth(ConsoleAccess.from_settings(settings))]
    if settings.api_keys:
        # A Twilio signature, when checked, authenticates the Twilio routes instead of a key.
        signed = twilio.PATHS if settings.twilio_auth_token else frozenset()
        middlewares.append(api_key_auth(tuple(k.value for k in settings.api_keys), open_paths=signed))
    app = web.Application(
        middlewares=middlewares, client_max_size=settings.max_body_bytes, handler_args=server_options(settings)
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[STAGES] = StageTable.load(settings.stages_file or None)
    app[SOCKETS] = weakref.WeakSet()
    if settings.upstream == "local":
        app[UPSTREAM] = local_agent(settings)
    app.cleanup_ctx.extend([store_ctx, upstream_ctx, engine_ctx, console.feed_ctx])
    app.on_shutdown.append(drain_then_close_sockets)
    app.on_shutdown.append(console.disconnect_viewers)
    app.on_response_prepare.append(add_request_id)
    app.router.add_routes(http.routes)
    app.router.add_get("/ws", ws.websocket)
    app.router.add_routes(twilio.routes)
    app.router.add_get(twilio.RELAY_PATH, conversation_relay.websocket)
    app.router.add_get("/openapi.json", openapi.serve)
    app.router.add_get("/transcript", transcript.transcript)
    console.add_routes(app)
    openai_compat.setup(app)
    return app


LINGER = 1.0


def server_options(settings: Settings) -> dict[str, Any]:
    """How the HTTP server reads requests (the app's ``handler_args``, so every runner uses them).

    aiohttp's keep-alive timer also runs while a request's headers are arriving, so it is the
    bound on header read time: a client trickling headers is closed after it, like an idle one.
    After an error answer to an unfinished body, the rest is read ("lingering") only briefly.
    Bodies are read as sent and decoded by ``validation.json_body``.
    """
    return {"keepalive_timeout": settings.request_read_timeout, "lingering_time": LINGER, "auto_decompress": False}


def local_agent(settings: Settings) -> Upstream:
    from ..upstream.local import LocalAgent

    try:
        return LocalAgent(settings.local_script or None, chunk_delay=settings.local_chunk_delay)
    except ValueError as e:
        raise ConfigError(f"CALLAGENT_LOCAL_SCRIPT: {e}") from None


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = create_store(settings.store, transcript_ttl=settings.transcript_ttl, timeout=settings.store_timeout)
    await store.open()
    app[STORE] = store
    yield
    await store.close()


async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if settings.upstream == "local":
        yield  # the local agent was built (and its script checked) by create_app
        return
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
    async with aiohttp.ClientSession(connector=connector, json_serialize=dumps) as session:
        if settings.upstream == "fastgpt":
            from ..upstream.fastgpt import FastGPTClient

            app[UPSTREAM] = FastGPTClient(
                session,
                base_url=settings.fastgpt_base_url,
                api_key=settings.fastgpt_api_key.value,
                app_id=settings.fastgpt_app_id,
                paths=settings.fastgpt_paths,
                connect_timeout=settings.connect_timeout,
                request_timeout=settings.upstream_request_timeout,
            )
            yield
        elif settings.upstream == "dify":
            from ..upstream.dify import DifyClient

            dify = DifyClient(
                session,
                base_url=settings.dify_base_url,
                api_key=settings.dify_api_key.value,
                silence_text=settings.silence_text,
                connect_timeout=settings.connect_timeout,
                request_timeout=settings.upstream_request_timeout,
            )
            app[UPSTREAM] = dify
            yield
            await dify.close()  # barge-in stop calls still under way
        else:
            app[UPSTREAM] = openai_compat_upstream(settings, session)
            yield


def openai_compat_upstream(settings: Settings, session: aiohttp.ClientSession) -> Upstream:
    from ..upstream.openai_compat import OpenAICompatClient
    from ..upstream.openai_messages import PromptTemplate

    return OpenAICompatClient(
        session,
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key.value,
        model=settings.openai_model,
        prompt=PromptTemplate.load(settings.prompt_file),
        extra_body=orjson.loads(settings.openai_extra_body) if settings.openai_extra_body else None,
        history_turns=settings.openai_history_turns,
        silence_text=settings.silence_text,
        drop_interrupted=settings.interrupt_records == "delete",
        connect_timeout=settings.connect_timeout,
        request_timeout=settings.upstream_request_timeout,
    )


async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
    engine = TurnEngine(app[SETTINGS], app[STORE], app[UPSTREAM], app[STAGES], app[METRICS])
    engine.open()
    app[ENGINE] = engine
    app[COMMANDS] = SessionCommands(engine, app[STORE], app[UPSTREAM], app[SETTINGS])
    yield
    await engine.close()


async def drain_then_close_sockets(app: web.Application) -> None:
    if ENGINE in app:
        await app[ENGINE].close(grace=app[SETTINGS].shutdown_timeout)
    sockets = app[SOCKETS]
    snapshot = [ws for ws in sockets]  # the set shrinks while sockets close
    await asyncio.gather(
        *(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown") for ws in snapshot),
        return_exceptions=True,
    )
