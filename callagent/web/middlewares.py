"""Middlewares: request context for logs, API-key auth, and the one JSON error format.

Routes that speak another API's conventions (the OpenAI-compatible route) register a
``RouteFamily`` for their paths under ``ROUTE_FAMILIES``: errors on those paths use the
family's error body, and the family may accept a bare ``Authorization: KEY``. Every other
path keeps callagent's own format and the ``Bearer`` scheme.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from ..console.access import OPERATOR, ConsoleAccess
from ..errors import CallagentError, MethodNotAllowed, NotFound, PayloadTooLarge, RequestTimeout, Unauthorized
from ..events import dumps

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = structlog.get_logger(component="callagent.web")

OPEN_PATHS = frozenset({"/healthz"})
# Clients that cannot set a header (a WebSocket in a browser, a voice platform calling a URL)
# may give the key as `?token=` on these.
QUERY_TOKEN_PATHS = frozenset({"/ws", "/conversation-relay", "/twilio/voice", "/twilio/handoff"})


def error_response(error: CallagentError) -> web.Response:
    return web.json_response(error.body(), status=error.status, dumps=dumps)


@dataclass(frozen=True, slots=True)
class RouteFamily:
    """Paths served in another API's conventions: its error body, its forms of the API key."""

    error_response: Callable[[CallagentError], web.Response]
    bare_key: bool = False  # ``Authorization: KEY`` without a scheme is accepted too


ROUTE_FAMILIES = web.AppKey("route_families", dict[str, RouteFamily])
"""Exact request paths -> the family that serves them."""


def route_family(request: web.Request) -> RouteFamily | None:
    families = request.app.get(ROUTE_FAMILIES)
    return families.get(request.path) if families else None


def _error_response(request: web.Request, error: CallagentError) -> web.Response:
    family = route_family(request)
    return family.error_response(error) if family is not None else error_response(error)


REQUEST_ID = web.RequestKey("request_id", str)
_REQUEST_ID_RE = re.compile(r"[\x21-\x7e]{1,64}")
"""A gateway's request id is used as it is only when it is printable ASCII (header values are
untrusted bytes: anything else would break every log line of the request)."""


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get("X-Request-Id", "")[:64]
    request_id = given if _REQUEST_ID_RE.fullmatch(given) else os.urandom(8).hex()
    request[REQUEST_ID] = request_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    return await handler(request)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response, streamed ones too, names its request."""
    if REQUEST_ID in request:
        response.headers["X-Request-Id"] = request[REQUEST_ID]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except CallagentError as e:
        if e.status >= 500:
            log.warning("request_failed", path=request.path, status=e.status, type=e.type, msg=e.msg)
        response = _error_response(request, e)
        if isinstance(e, RequestTimeout):
            response.force_close()  # the rest of a stalled body must not be read as a request
        return response
    except web.HTTPRequestEntityTooLarge:
        return _error_response(request, PayloadTooLarge(f"request body larger than {request.client_max_size} bytes"))
    except web.HTTPNotFound:
        return _error_response(request, NotFound(f"no route {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed as e:
        response = _error_response(request, MethodNotAllowed(f"{request.method} not allowed on {request.path}"))
        response.headers["Allow"] = ",".join(sorted(e.allowed_methods))
        return response
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return web.json_response(
            {"code": str(e.status), "msg": e.reason, "type": e.reason.lower().replace(" ", "_")},
            status=e.status,
            dumps=dumps,
        )
    except Exception:
        log.exception("unhandled_error", path=request.path)
        return _error_response(request, CallagentError("internal error"))


def api_key_auth(keys: tuple[str, ...], open_paths: frozenset[str] = frozenset()) -> Middleware:
    """``Authorization: Bearer <key>`` (or ``?token=`` where a client cannot set headers) on
    every route but /healthz and ``open_paths``; a bare ``Authorization: <key>`` where the route
    family allows it."""
    encoded = [k.encode() for k in keys]
    unchecked = OPEN_PATHS | open_paths

    def allowed(candidate: str) -> bool:
        # aiohttp decodes header bytes that are not UTF-8 as lone surrogates: keep them as bytes.
        given = candidate.encode("utf-8", "surrogateescape")
        # Compare against every key, without stopping early, in constant time per key.
        return any([hmac.compare_digest(given, k) for k in encoded])

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in unchecked or is_console(request.path):
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            family = route_family(request)
            if family is not None and family.bare_key and scheme and not token:
                token = scheme
            else:
                token = request.query.get("token", "") if request.path in QUERY_TOKEN_PATHS else ""
        if not token or not allowed(token.strip()):
            raise Unauthorized("missing or invalid API key")
        return await handler(request)

    return auth


def is_console(path: str) -> bool:
    return path == "/console" or path.startswith("/console/")


def console_auth(access: ConsoleAccess) -> Middleware:
    """The console's own gate: absent when disabled, a console key on every ``/console/api/`` route.

    The gateway's API keys do not open it, and console keys open nothing else.
    """

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_console(request.path):
            return await handler(request)
        if not access.enabled:
            raise NotFound(f"no route {request.method} {request.path}")
        if request.path.startswith("/console/api/"):
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                token = request.query.get("token", "")
            who = access.operator(token)
            if who is None:
                raise Unauthorized("missing or invalid console key")
            request[OPERATOR] = who
        return await handler(request)

    return gate
