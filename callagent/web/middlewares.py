"""Middlewares: request context for logs, API-key auth, and the one JSON error format."""

from __future__ import annotations

import hmac
import re
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from ..errors import CallagentError, MethodNotAllowed, NotFound, PayloadTooLarge, RequestTimeout, Unauthorized
from ..events import dumps

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = structlog.get_logger("callagent.web")

OPEN_PATHS = frozenset({"/healthz"})


def error_response(error: CallagentError) -> web.Response:
    return web.json_response(error.body(), status=error.status, dumps=dumps)


REQUEST_ID = web.RequestKey("request_id", str)
_REQUEST_ID_RE = re.compile(r"[\x21-\x7e]{1,64}")
"""A gateway's request id is used as it is only when it is printable ASCII (header values are
untrusted bytes: anything else would break every log line of the request)."""


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get("X-Request-Id", "")[:64]
    request_id = given if _REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex[:16]
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
        response = error_response(e)
        if isinstance(e, RequestTimeout):
            response.force_close()  # the rest of a stalled body must not be read as a request
        return response
    except web.HTTPRequestEntityTooLarge:
        return error_response(PayloadTooLarge(f"request body larger than {request.client_max_size} bytes"))
    except web.HTTPNotFound:
        return error_response(NotFound(f"no route {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed as e:
        response = error_response(MethodNotAllowed(f"{request.method} not allowed on {request.path}"))
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
        return error_response(CallagentError("internal error"))


def api_key_auth(keys: tuple[str, ...]) -> Middleware:
    """``Authorization: Bearer <key>`` (WebSocket: or ``?token=``) on every route but /healthz."""
    encoded = [k.encode() for k in keys]

    def allowed(candidate: str) -> bool:
        # aiohttp decodes header bytes that are not UTF-8 as lone surrogates: keep them as bytes.
        given = candidate.encode("utf-8", "surrogateescape")
        # Compare against every key, without stopping early, in constant time per key.
        return any([hmac.compare_digest(given, k) for k in encoded])

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            token = request.query.get("token", "") if request.path == "/ws" else ""
        if not token or not allowed(token.strip()):
            raise Unauthorized("missing or invalid API key")
        return await handler(request)

    return auth
