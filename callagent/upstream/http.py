"""The HTTP habits every upstream client shares, so that each is written once.

FastGPT, Dify and OpenAI-compatible servers are all reached the same way: a turn's streaming
POST tried once more when nothing reached the server (a refused or timed-out connect), small
JSON calls whose body is read up to a bound, and an SSE stream read with ``callagent.sse``.
What goes wrong on the network is mapped here to ``UpstreamUnavailable`` or
``UpstreamProtocol``; what the upstream *says* (its statuses and error bodies) stays in each
client's own error mapping, the one edge where that upstream's failures become typed errors.

A message names the exception's type or the OS reason, never the exception itself, and the
exception is not chained (``from None``): an aiohttp error's text may carry the request, and
the request carries the API key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
import orjson

from ..errors import UpstreamProtocol, UpstreamTimeout, UpstreamUnavailable
from ..sse import SSEError, SSEEvent, read_events

SMALL_BODY = 64 * 1024
"""The most of a non-stream body (an error or a JSON answer) a client reads."""


@dataclass(frozen=True, slots=True)
class Peer:
    """One upstream as messages and logs name it."""

    name: str  # in messages: "FastGPT", "Dify", "the model server"
    log: Any  # the client's structlog logger
    key: str  # the prefix of its log events: "fastgpt", "dify", "openai"


async def post_stream(
    http: aiohttp.ClientSession,
    peer: Peer,
    url: str,
    *,
    body: bytes,
    headers: Mapping[str, str],
    client_timeout: aiohttp.ClientTimeout,
) -> aiohttp.ClientResponse:
    """POST a turn and return the response unread; a failed connect is tried once more."""
    for attempt in (1, 2):
        try:
            return await http.post(url, data=body, headers=headers, timeout=client_timeout)
        except aiohttp.ClientConnectorError as e:
            # Nothing reached the server: safe to try once more.
            if attempt == 2:
                raise UpstreamUnavailable(f"cannot connect to {peer.name}: {_reason(e)}") from None
            peer.log.warning(f"{peer.key}_connect_retry", error=_reason(e))
        except TimeoutError:
            if attempt == 2:
                raise UpstreamUnavailable(f"connecting to {peer.name} timed out") from None
        except aiohttp.ClientError as e:
            raise UpstreamProtocol(f"{peer.name} request failed: {type(e).__name__}") from None
    raise AssertionError("unreachable")


async def request_small(
    http: aiohttp.ClientSession,
    peer: Peer,
    method: str,
    url: str,
    *,
    failed: str,
    client_timeout: aiohttp.ClientTimeout,
    headers: Mapping[str, str],
    params: Mapping[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, bytes]:
    """One call, whole within ``client_timeout``: the status and the body, read up to
    ``SMALL_BODY``. ``failed`` completes "<peer> ...: <error type>" when no answer came.
    Redirects are not followed: a redirect loop must not resend the key around."""
    try:
        async with http.request(
            method, url, params=params, data=data, headers=headers, timeout=client_timeout, allow_redirects=False
        ) as response:
            return response.status, await read_small(response)
    except aiohttp.ClientConnectorError as e:
        raise UpstreamUnavailable(f"cannot connect to {peer.name}: {_reason(e)}") from None
    except TimeoutError:
        raise UpstreamTimeout(f"{peer.name} {failed}: no answer within {client_timeout.total:g}s") from None
    except aiohttp.ClientError as e:
        raise UpstreamUnavailable(f"{peer.name} {failed}: {type(e).__name__}") from None


async def read_small(response: aiohttp.ClientResponse, limit: int = SMALL_BODY) -> bytes:
    return await response.content.read(limit)


def sse_events(response: aiohttp.ClientResponse, peer: Peer) -> AsyncIterator[SSEEvent]:
    """The response's SSE events; a broken stream or connection is ``UpstreamProtocol``."""
    return read_events(response, failed=partial(_stream_failure, peer))


def _stream_failure(peer: Peer, e: Exception) -> UpstreamProtocol:
    if isinstance(e, SSEError):
        return UpstreamProtocol(f"{peer.name} sent a broken stream: {e}")
    return UpstreamProtocol(f"{peer.name} connection broke mid-stream: {type(e).__name__}")


def frame_json(data: bytes, peer: Peer) -> Any:
    """A frame's (or a body's) JSON; None, logged as ``<key>_bad_frame``, when it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        peer.log.warning(f"{peer.key}_bad_frame", data=data[:200].decode(errors="replace"))
        return None


def _reason(e: aiohttp.ClientConnectorError) -> str:
    """Why a connect failed: the OS's words, else only the error's type."""
    return e.os_error.strerror or type(e.os_error).__name__
