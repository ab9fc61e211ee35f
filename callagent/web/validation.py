"""Request bodies and WebSocket frames: parse and check, or raise ``InvalidRequest``."""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from ..errors import InvalidRequest, MalformedJSON, PayloadTooLarge, RequestTimeout, UnsupportedEncoding
from ..segment import SegmentOptions

SESSION_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
"""Session and turn ids: safe in logs, keys and URLs."""
MAX_KEY_CHARS = 128
MAX_VALUE_BYTES = 16 * 1024
_SCALARS = (str, int, float, bool, type(None))


_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""The body encodings accepted besides none (``identity``), as zlib window bits. The server
reads bodies as sent (``auto_decompress`` off), so an unknown encoding is this module's clear
415, not a parser error from the depths of the HTTP library."""


async def json_body(request: web.Request, read_timeout: float) -> dict[str, Any]:
    """The request's JSON object, read within ``read_timeout`` seconds (a stalled client
    must not hold a connection and a descriptor for long), decoded if it was compressed."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity", *_WBITS):
        raise UnsupportedEncoding("Content-Encoding: only gzip and deflate are accepted")
    try:
        if request.content.is_eof():  # the whole body came with the headers: nothing to wait for
            raw = await request.read()
        else:
            async with asyncio.timeout(read_timeout):
                raw = await request.read()
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {read_timeout:g}s") from None
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"request body larger than {request.client_max_size} bytes") from None
    except RequestPayloadError:
        raise MalformedJSON("request body could not be read") from None
    if encoding in _WBITS:
        raw = _decompress(raw, encoding, request.client_max_size)
    return parse_object(raw)


def _decompress(raw: bytes, encoding: str, limit: int) -> bytes:
    """A compressed body, decoded up to ``limit`` bytes (a small body must not inflate to gigabytes)."""
    decoder = zlib.decompressobj(_WBITS[encoding])
    try:
        try:
            body = decoder.decompress(raw, limit + 1)
        except zlib.error:
            if encoding != "deflate":
                raise
            decoder = zlib.decompressobj(-zlib.MAX_WBITS)  # deflate sent without its zlib header
            body = decoder.decompress(raw, limit + 1)
    except zlib.error:
        raise MalformedJSON(f"request body could not be decoded ({encoding})") from None
    if len(body) > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes once decoded")
    if not decoder.eof:
        raise MalformedJSON(f"request body could not be decoded ({encoding}): it is cut short")
    return body


def parse_frame(raw: str, limit: int) -> dict[str, Any]:
    """A WebSocket text frame's JSON object, at most ``limit`` bytes of UTF-8."""
    # A character is at least one byte: only a long frame needs encoding to be measured.
    if len(raw) > limit or (len(raw) * 4 > limit and len(raw.encode()) > limit):
        raise InvalidRequest(f"frame larger than {limit} bytes")
    return parse_object(raw)


def parse_object(raw: bytes | str) -> dict[str, Any]:
    if not raw:
        raise MalformedJSON("request body must be a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise MalformedJSON(f"malformed JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise MalformedJSON("request body must be a JSON object")
    return data


def session_id(data: Mapping[str, Any], field: str = "sessionId") -> str:
    value = data.get(field)
    if value is None:
        raise InvalidRequest(f"{field}: field required")
    if not isinstance(value, str) or not SESSION_ID_RE.fullmatch(value):
        raise InvalidRequest(f"{field}: 1 to 128 characters of A-Z a-z 0-9 _ . : -")
    return value


def optional_str(data: Mapping[str, Any], field: str, max_chars: int = 256) -> str | None:
    value = data.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{field}: must be a string")
    if len(value) > max_chars:
        raise InvalidRequest(f"{field}: longer than {max_chars} characters")
    return value


def required_str(data: Mapping[str, Any], field: str, max_chars: int) -> str:
    value = optional_str(data, field, max_chars)
    if value is None:
        raise InvalidRequest(f"{field}: field required")
    return value


def time_stamp(data: Mapping[str, Any]) -> str:
    value = data.get("timeStamp")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return optional_str(data, "timeStamp", 64) or ""


def variable_key(data: Mapping[str, Any]) -> str:
    key = required_str(data, "key", MAX_KEY_CHARS)
    if not key:
        raise InvalidRequest("key: must not be empty")
    return key


def variable_value(data: Mapping[str, Any]) -> Any:
    if "value" not in data:
        raise InvalidRequest("value: field required")
    value = data["value"]
    if not isinstance(value, _SCALARS):
        raise InvalidRequest("value: must be a string, number, boolean or null")
    if isinstance(value, str) and len(value.encode()) > MAX_VALUE_BYTES:
        raise InvalidRequest(f"value: larger than {MAX_VALUE_BYTES} bytes")
    return value


def variables(data: Mapping[str, Any], field: str = "variables") -> dict[str, Any]:
    value = data.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{field}: must be an object")
    for key, item in value.items():
        if len(key) > MAX_KEY_CHARS or not key:
            raise InvalidRequest(f"{field}: keys must be 1 to {MAX_KEY_CHARS} characters")
        variable_value({"value": item})
    return value


def flag(data: Mapping[str, Any], field: str) -> bool:
    value = data.get(field, False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"{field}: must be true or false")
    return value


def turn_id(data: Mapping[str, Any], field: str = "turnId") -> str | None:
    """An optional gateway-chosen turn id."""
    value = data.get(field)
    if value is not None and (not isinstance(value, str) or not SESSION_ID_RE.fullmatch(value)):
        raise InvalidRequest(f"{field}: 1 to 128 characters of A-Z a-z 0-9 _ . : -")
    return value


def segment_options(mode: str | None) -> SegmentOptions | None:
    """``segment``: ``none`` (the default) or ``clause`` (whole clauses for speech synthesis)."""
    if mode in (None, "", "none"):
        return None
    if mode == "clause":
        return SegmentOptions()
    raise InvalidRequest("segment: must be 'none' or 'clause'")
