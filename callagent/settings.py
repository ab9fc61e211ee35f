"""Configuration: environment variables (optionally from a ``.env`` file), then CLI flags.

Everything is validated once at start-up; a bad value stops the process with one clear line
naming the variable. Secrets are wrapped in ``Secret`` so they never show up in logs or reprs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names it."""


class Secret(str):
    """A string whose repr and str never show the value (keys, tokens)."""

    def __repr__(self) -> str:
        return "Secret('**********')" if self else "Secret('')"

    def __str__(self) -> str:
        return "**********" if self else ""

    @property
    def value(self) -> str:
        return str.__str__(self)


_DEFAULT_FALLBACK_TEXT = "抱歉，系统暂时无法处理，正在为您转接人工客服，请稍候。"


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    upstream: str = "local"
    fastgpt_base_url: str = ""
    fastgpt_api_key: Secret = Secret("")  # noqa: RUF009 (immutable str subclass)
    fastgpt_app_id: str = ""
    # FastGPT CRUD path family: "legacy" (/api/core/chat/...) or "v2" (/history/, /record/).
    fastgpt_paths: str = "legacy"
    store: str = "sqlite:///var/callagent.db"
    api_keys: tuple[Secret, ...] = ()
    connect_timeout: float = 3.0
    # Upstream calls other than the reply stream (readiness, deletes) are whole within this.
    upstream_request_timeout: float = 5.0
    # The session lease expires this long after its instance last renewed it (a crashed instance
    # holds its calls' sessions about this long); renewed three times per TTL.
    lease_ttl: float = 3.0
    # A store operation that takes longer fails (503 store_unavailable): a stalled disk or Redis.
    store_timeout: float = 2.0
    # Request headers and a request body must arrive within this (slow or stalled clients).
    request_read_timeout: float = 15.0
    first_token_timeout: float = 10.0
    idle_timeout: float = 15.0
    turn_timeout: float = 120.0
    fallback_enabled: bool = True
    fallback_stage: str = "0001"
    fallback_text: str = _DEFAULT_FALLBACK_TEXT
    # Stage codes the workflow writes are sent on only when they match this (whole) pattern.
    stage_code_pattern: str = r"[0-9A-Za-z]{1,16}"
    stages_file: str = ""
    local_script: str = ""
    local_chunk_delay: float = 0.0
    # What happens upstream to an interrupted turn's records: "keep" or "delete".
    interrupt_records: str = "keep"
    sse_ping_interval: float = 10.0
    # A gateway that accepts no SSE bytes for this long is dropped (half-open or stalled).
    sse_send_timeout: float = 15.0
    max_text_chars: int = 4000
    max_body_bytes: int = 64 * 1024
    # Per session: at most this many variables, of at most this many bytes together (JSON).
    max_variables: int = 256
    max_variables_bytes: int = 256 * 1024
    # Messages queued for a WebSocket before the sender waits for the gateway to read some.
    ws_send_queue: int = 256
    # A WebSocket gateway that leaves a message unwritten this long is disconnected.
    ws_send_timeout: float = 15.0
    ws_heartbeat: float = 20.0
    shutdown_timeout: float = 10.0
    transcript_ttl: int = 7 * 24 * 3600
    uvloop: bool = True  # run on uvloop when it is installed (the `fast` extra)
    log_format: str = "auto"
    log_level: str = "info"

    def __post_init__(self) -> None:
        # Plain strings given in code become Secrets too, so they can never be logged.
        object.__setattr__(self, "fastgpt_api_key", Secret(str.__str__(self.fastgpt_api_key)))
        object.__setattr__(self, "api_keys", tuple(Secret(str.__str__(k)) for k in self.api_keys))
        _validate(self)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env", **overrides: Any
    ) -> Settings:
        """Settings from ``environ`` (default ``os.environ``) over an optional ``.env`` file,
        then ``overrides`` (CLI flags; ``None`` values are ignored)."""
        env: dict[str, str] = {}
        if env_file and Path(env_file).is_file():
            env.update(read_env_file(Path(env_file)))
        env.update(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = ENV_NAMES.get(f.name, f"CALLAGENT_{f.name.upper()}")
            if name in env:
                values[f.name] = _convert(f.name, name, env[name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


ENV_NAMES = {
    "fastgpt_base_url": "FASTGPT_BASE_URL",
    "fastgpt_api_key": "FASTGPT_API_KEY",
    "fastgpt_app_id": "FASTGPT_APP_ID",
    "fastgpt_paths": "FASTGPT_PATHS",
}

_TYPES: dict[str, str] = {}
_BOOL = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _convert(field_name: str, env_name: str, raw: str) -> Any:
    kind = _field_types()[field_name]
    raw = raw.strip()
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return _BOOL[raw.lower()]
    except (ValueError, KeyError):
        raise ConfigError(f"{env_name}={raw!r} is not a valid {kind}") from None
    if kind == "Secret":
        return Secret(raw)
    if kind.startswith("tuple"):
        return tuple(Secret(k.strip()) for k in raw.split(",") if k.strip())
    return raw


def _field_types() -> dict[str, str]:
    if not _TYPES:
        _TYPES.update({f.name: str(f.type) for f in fields(Settings)})
    return _TYPES


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines; ``#`` comments, blank lines, ``export`` and quotes allowed."""
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep:
            raise ConfigError(f"{path}:{n}: expected KEY=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


_STORE_RE = re.compile(r"^(sqlite:///.+|redis://.*|rediss://.*|memory://)$")


def _validate(s: Settings) -> None:
    def fail(name: str, why: str) -> None:
        raise ConfigError(f"{name}: {why}")

    if not 0 < s.port < 65536:
        fail("CALLAGENT_PORT", f"{s.port} is not a TCP port")
    if s.upstream not in ("local", "fastgpt"):
        fail("CALLAGENT_UPSTREAM", f"{s.upstream!r} must be 'local' or 'fastgpt'")
    if s.upstream == "fastgpt":
        missing = [
            n
            for n, v in (
                ("FASTGPT_BASE_URL", s.fastgpt_base_url),
                ("FASTGPT_API_KEY", s.fastgpt_api_key),
                ("FASTGPT_APP_ID", s.fastgpt_app_id),
            )
            if not v
        ]
        if missing:
            fail(", ".join(missing), "required when CALLAGENT_UPSTREAM=fastgpt")
        if not re.match(r"^https?://[^/\s]+", s.fastgpt_base_url):
            fail("FASTGPT_BASE_URL", f"{s.fastgpt_base_url!r} is not an http(s) URL")
    if s.fastgpt_paths not in ("legacy", "v2"):
        fail("FASTGPT_PATHS", "must be 'legacy' or 'v2'")
    if not _STORE_RE.match(s.store):
        fail("CALLAGENT_STORE", f"{s.store!r}: use sqlite:///path.db, redis://host:port/db or memory://")
    for name in (
        "connect_timeout",
        "upstream_request_timeout",
        "store_timeout",
        "lease_ttl",
        "request_read_timeout",
        "first_token_timeout",
        "idle_timeout",
        "turn_timeout",
        "sse_send_timeout",
        "sse_ping_interval",
        "ws_send_timeout",
        "ws_heartbeat",
        "shutdown_timeout",
    ):
        if not getattr(s, name) > 0:
            fail(f"CALLAGENT_{name.upper()}", "must be a positive number of seconds")
    if s.local_chunk_delay < 0:
        fail("CALLAGENT_LOCAL_CHUNK_DELAY", "must be >= 0")
    try:
        codes = re.compile(s.stage_code_pattern)
    except re.error as e:
        fail("CALLAGENT_STAGE_CODE_PATTERN", f"not a regular expression: {e}")
    if not re.fullmatch(r"[0-9A-Za-z]{1,16}", s.fallback_stage) or not codes.fullmatch(s.fallback_stage):
        fail("CALLAGENT_FALLBACK_STAGE", f"{s.fallback_stage!r} is not a stage code")
    if s.interrupt_records not in ("keep", "delete"):
        fail("CALLAGENT_INTERRUPT_RECORDS", "must be 'keep' or 'delete'")
    if s.log_format not in ("auto", "console", "json"):
        fail("CALLAGENT_LOG_FORMAT", "must be 'console', 'json' or 'auto'")
    if s.log_level.lower() not in ("debug", "info", "warning", "error"):
        fail("CALLAGENT_LOG_LEVEL", "must be debug, info, warning or error")
    for name in (
        "max_text_chars",
        "max_body_bytes",
        "max_variables",
        "max_variables_bytes",
        "ws_send_queue",
        "transcript_ttl",
    ):
        if getattr(s, name) < 1:
            fail(f"CALLAGENT_{name.upper()}", "must be >= 1")
