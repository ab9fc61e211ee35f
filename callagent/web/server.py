"""The HTTP server under the app, and running it until SIGINT or SIGTERM.

aiohttp answers a request it cannot parse (a request line or header over its size limits,
broken chunked encoding, a malformed request line) itself, before any middleware runs, in
plain text that may name the library. ``JSONErrorHandler`` answers those in callagent's one
JSON error shape instead. aiohttp builds its connection handler inside its ``Server``, so the
runner hands out a ``Server`` whose handler is that one; everything else is aiohttp's.

``run(app, ...)`` is ``web.run_app`` with that server: the same start-up, signal handling and
graceful shutdown (``on_shutdown`` drains turns and closes sockets, then the cleanup contexts).
"""

from __future__ import annotations

import asyncio
import gc
import sys
from contextlib import suppress
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_runner import GracefulExit

from ..events import dumps

_MESSAGES = {
    400: "the request is not valid HTTP (request line, headers or chunked body)",
    413: "the request is too large",
    414: "the request line is too long",
    431: "the request headers are too large",
}


class JSONErrorHandler(RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs it; refuses once a response started
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        body = {
            "code": str(status),
            "msg": _MESSAGES.get(status, "internal error" if status >= 500 else "the request could not be read"),
            "type": "internal_error" if status >= 500 else phrase.lower().replace(" ", "_").replace("-", "_"),
        }
        response = web.json_response(body, status=status, dumps=dumps)
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return JSONErrorHandler(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # the same server, handing out the handler above
        return server


def tune_collector() -> None:
    """The garbage collector for a server whose requests and turns make no reference cycles
    (tests/test_gc_cycles.py): what start-up made (modules, the app, its pools) lives as long as
    the process, so it is moved out of the collector's sight; and the youngest generation is
    collected every 10,000 net allocations instead of 700, so the objects of the calls in flight
    are not promoted, and walked again, by collections that find nothing to free."""
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def run(
    app: web.Application, *, host: str, port: int, shutdown_timeout: float, loop: asyncio.AbstractEventLoop
) -> None:
    runner = _Runner(
        app, handle_signals=True, handler_cancellation=True, access_log=None, shutdown_timeout=shutdown_timeout
    )

    async def serve() -> None:
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        tune_collector()
        print(f"======== Running on http://{host}:{port} ========", file=sys.stderr)
        await asyncio.Event().wait()  # until a signal: the runner's handler raises GracefulExit

    main = loop.create_task(serve())
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main.done():
            main.cancel()
            with suppress(asyncio.CancelledError, GracefulExit):
                loop.run_until_complete(main)
        loop.run_until_complete(runner.cleanup())
        rest = asyncio.all_tasks(loop)
        for task in rest:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
