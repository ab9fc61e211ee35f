"""Configuration: environment variables (optionally from a ``.env`` file), then CLI flags.

Everything is validated once at start-up; a bad value stops the process with one clear line
naming the variable. Secrets are wrapped in ``Secret`` so they never show up in logs or reprs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import orjson


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
    fastgpt_paths: str = "auto"
    dify_base_url: str = ""
    dify_api_key: Secret = Secret("")  # noqa: RUF009 (immutable str subclass)
    openai_base_url: str = ""
    openai_api_key: Secret = Secret("")  # noqa: RUF009 (immutable str subclass)
    openai_model: str = ""
    openai_extra_body: str = ""  # a JSON object merged into every chat completions request
    openai_history_turns: int = 20
    prompt_file: str = ""  # the OpenAI-compatible upstream's system prompt template
    # What Dify and the OpenAI-compatible upstream receive for an empty caller utterance.
    silence_text: str = "（来电者没有说话）"
    store: str = "sqlite:///var/callagent.db"
    api_keys: tuple[Secret, ...] = ()
    # Keys of the operator console (``name:key`` names the operator in the action log).
    console_keys: tuple[Secret, ...] = ()
    console_viewer_buffer: int = 1000  # feed chunks queued for one console viewer before it is dropped
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
    # The OpenAI-compatible route: platforms send the whole history and tool schemas each time.
    openai_route_max_body_bytes: int = 1024 * 1024
    openai_route_keepalive: float = 2.5  # seconds between keep-alive comments on its streams
    openai_route_model: str = "callagent"  # the model id GET /v1/models lists
    tools_file: str = ""
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
    # Twilio ConversationRelay (and Telnyx): web/twilio.py, web/conversation_relay.py.
    twilio_auth_token: Secret = Secret("")  # noqa: RUF009 (immutable str subclass)
    public_url: str = ""  # the base URL the platform calls, e.g. https://agent.example.com
    twilio_transfer_to: str = ""  # a phone number or sip: URI for the transfer stages
    twilio_transfer_stages: str = "0001,0002,0003"
    twilio_hangup_stages: str = "0000,1001"
    twilio_end_url: str = ""  # TwiML to continue with after a hang-up stage (default: hang up)
    twilio_language: str = "zh-CN"
    twilio_voice: str = ""
    twilio_tts_provider: str = ""
    twilio_transcription_provider: str = ""
    twilio_welcome_greeting: str = ""
    twilio_partial_prompts: bool = False
    twilio_lang: str = ""  # `lang` on outgoing text frames
    twilio_segment: str = "none"

    def __post_init__(self) -> None:
        # Plain strings given in code become Secrets too, so they can never be logged.
        for name in ("fastgpt_api_key", "dify_api_key", "openai_api_key", "twilio_auth_token"):
            object.__setattr__(self, name, Secret(str.__str__(getattr(self, name))))
        object.__setattr__(self, "api_keys", tuple(Secret(str.__str__(k)) for k in self.api_keys))
        object.__setattr__(self, "console_keys", tuple(Secret(str.__str__(k)) for k in self.console_keys))
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
    "dify_base_url": "DIFY_BASE_URL",
    "dify_api_key": "DIFY_API_KEY",
    "openai_base_url": "OPENAI_BASE_URL",
    "openai_api_key": "OPENAI_API_KEY",
    "openai_model": "OPENAI_MODEL",
    "openai_extra_body": "OPENAI_EXTRA_BODY",
    "openai_history_turns": "OPENAI_HISTORY_TURNS",
    "twilio_auth_token": "TWILIO_AUTH_TOKEN",
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


UPSTREAMS = ("local", "fastgpt", "dify", "openai")

_STORE_RE = re.compile(r"^(sqlite:///.+|redis://.*|rediss://.*|memory://)$")


def _validate(s: Settings) -> None:
    def fail(name: str, why: str) -> None:
        raise ConfigError(f"{name}: {why}")

    if not 0 < s.port < 65536:
        fail("CALLAGENT_PORT", f"{s.port} is not a TCP port")
    if s.upstream not in UPSTREAMS:
        fail("CALLAGENT_UPSTREAM", f"{s.upstream!r} must be one of {', '.join(map(repr, UPSTREAMS))}")
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
    _validate_dify(s, fail)
    _validate_openai(s, fail)
    if s.fastgpt_paths not in ("auto", "legacy", "v2"):
        fail("FASTGPT_PATHS", "must be 'auto', 'legacy' or 'v2'")
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
        "openai_route_keepalive",
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
    for name, url in (("CALLAGENT_PUBLIC_URL", s.public_url), ("CALLAGENT_TWILIO_END_URL", s.twilio_end_url)):
        if url and not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", url):
            fail(name, f"{url!r} is not an http(s) URL without query")
    if s.twilio_segment not in ("none", "clause"):
        fail("CALLAGENT_TWILIO_SEGMENT", "must be 'none' or 'clause'")
    for name in ("twilio_transfer_stages", "twilio_hangup_stages"):
        if not re.fullmatch(r"([0-9A-Za-z]{1,16}(,[0-9A-Za-z]{1,16})*)?", getattr(s, name).replace(" ", "")):
            fail(f"CALLAGENT_{name.upper()}", "must be a comma-separated list of stage codes")
    if not s.openai_route_model:
        fail("CALLAGENT_OPENAI_ROUTE_MODEL", "must not be empty")
    for name in (
        "max_text_chars",
        "max_body_bytes",
        "openai_route_max_body_bytes",
        "max_variables",
        "max_variables_bytes",
        "ws_send_queue",
        "transcript_ttl",
        "console_viewer_buffer",
    ):
        if getattr(s, name) < 1:
            fail(f"CALLAGENT_{name.upper()}", "must be >= 1")


def _validate_dify(s: Settings, fail: Callable[[str, str], None]) -> None:
    if s.upstream != "dify":
        return
    missing = [n for n, v in (("DIFY_BASE_URL", s.dify_base_url), ("DIFY_API_KEY", s.dify_api_key)) if not v]
    if missing:
        fail(", ".join(missing), "required when CALLAGENT_UPSTREAM=dify")
    if not re.match(r"^https?://[^/\s]+", s.dify_base_url):
        fail("DIFY_BASE_URL", f"{s.dify_base_url!r} is not an http(s) URL")
    if s.interrupt_records == "delete":
        fail("CALLAGENT_INTERRUPT_RECORDS", "'delete' is not possible with Dify, which cannot delete messages")
    if not s.silence_text.strip():
        fail("CALLAGENT_SILENCE_TEXT", "must not be blank: Dify refuses an empty query")


def _validate_openai(s: Settings, fail: Callable[[str, str], None]) -> None:
    if s.openai_history_turns < 0:
        fail("OPENAI_HISTORY_TURNS", "must be >= 0")
    if s.prompt_file:
        try:
            Path(s.prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            fail("CALLAGENT_PROMPT_FILE", f"{s.prompt_file!r} is not a readable UTF-8 file")
    if s.openai_extra_body:
        try:
            extra = orjson.loads(s.openai_extra_body)
        except orjson.JSONDecodeError:
            extra = None
        if not isinstance(extra, dict):
            fail("OPENAI_EXTRA_BODY", 'must be a JSON object, e.g. {"enable_thinking": false}')
    if s.upstream != "openai":
        return
    missing = [n for n, v in (("OPENAI_BASE_URL", s.openai_base_url), ("OPENAI_MODEL", s.openai_model)) if not v]
    if missing:
        fail(", ".join(missing), "required when CALLAGENT_UPSTREAM=openai")
    if not re.match(r"^https?://[^/\s]+", s.openai_base_url):
        fail("OPENAI_BASE_URL", f"{s.openai_base_url!r} is not an http(s) URL")
