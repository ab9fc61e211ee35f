"""Twilio's HTTP side of ConversationRelay: the call webhooks, their TwiML, the signatures.

A call reaches callagent in three steps:

1. ``POST /twilio/voice``: Twilio's incoming-call webhook. callagent answers TwiML that connects
   the call to its ConversationRelay socket::

       <Response><Connect action="{public}/twilio/handoff">
         <ConversationRelay url="wss://{public host}/conversation-relay" language=... />
       </Connect></Response>

2. Twilio opens ``/conversation-relay`` (``conversation_relay.py``) and exchanges text with it.
   When a reply's stage says hang up or transfer, the socket sends ``end`` with
   ``handoffData``: a JSON string naming the stage and the reason (``handoff_data`` below).

3. The relay session over, Twilio posts the ``action`` URL, ``POST /twilio/handoff``, with that
   ``HandoffData``. callagent answers ``<Dial>`` to ``CALLAGENT_TWILIO_TRANSFER_TO`` for a
   transfer; ``<Redirect>`` to ``CALLAGENT_TWILIO_END_URL``, when set, or ``<Hangup/>``
   otherwise. A relay session that failed is treated as the fallback stage.

Which stages end the relay session (``EndRule``) is configured by code, after aliases:
``CALLAGENT_TWILIO_TRANSFER_STAGES`` (default 0001, 0002, 0003) are transferred,
``CALLAGENT_TWILIO_HANGUP_STAGES`` (default 0000, 1001) hang up, every other stage keeps the
conversation going. The stage table's ``terminal`` flag is not used: the photo stages are
terminal for a gateway that switches to a photo flow, while on a phone line the agent goes on
talking ("anything else?") until it says goodbye.

With ``TWILIO_AUTH_TOKEN`` set, every request here and the socket's upgrade must carry a valid
``X-Twilio-Signature`` (``twilio.request_validator``): HMAC-SHA1 of the URL Twilio called plus
the sorted form parameters. A webhook is signed over its full URL with its form fields; the
socket over ``{ws|wss}://{host}{path}`` with its query parameters as the parameters. Behind a
proxy, ``CALLAGENT_PUBLIC_URL`` (or ``X-Forwarded-Proto``/``X-Forwarded-Host``) gives the URL
Twilio saw. A refused request gets 403 and a log line without the token or the signature.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import orjson
import structlog
from aiohttp import web
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, Dial, VoiceResponse

from ..errors import Forbidden, InvalidRequest, RequestTimeout
from ..settings import Settings
from ..stages import Stage
from .keys import SETTINGS, STAGES

routes = web.RouteTableDef()
log = structlog.get_logger(component="callagent.twilio")

RELAY_PATH = "/conversation-relay"
VOICE_PATH = "/twilio/voice"
HANDOFF_PATH = "/twilio/handoff"
PATHS = frozenset({RELAY_PATH, VOICE_PATH, HANDOFF_PATH})
TRANSFER, HANG_UP = "transfer", "hangup"
MAX_HANDOFF_CHARS = 4096
FORM = "application/x-www-form-urlencoded"


# -- which stages end the call -------------------------------------------------------------


class EndRule:
    """Which stage codes end the relay session, and how."""

    def __init__(self, settings: Settings) -> None:
        self.transfers = _codes(settings.twilio_transfer_stages)
        self.hang_ups = _codes(settings.twilio_hangup_stages)

    def reason(self, stage: Stage) -> str | None:
        """``transfer``, ``hangup``, or None when the conversation goes on."""
        if stage.code in self.transfers:
            return TRANSFER
        return HANG_UP if stage.code in self.hang_ups else None


def _codes(listed: str) -> frozenset[str]:
    return frozenset(c.strip() for c in listed.split(",") if c.strip())


def handoff_data(stage: Stage, reason: str, session_id: str, turn_id: str) -> str:
    """The ``end`` message's ``handoffData``: a JSON string, posted back to ``/twilio/handoff``."""
    data = {
        "reason": reason,
        "nextStageCode": stage.code,
        "nextStage": stage.name,
        "sessionId": session_id,
        "turnId": turn_id,
    }
    return orjson.dumps(data).decode()


def parse_handoff(raw: str | None) -> dict[str, Any]:
    if not raw or len(raw) > MAX_HANDOFF_CHARS:
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


# -- URLs and signatures --------------------------------------------------------------------


def public_base(request: web.Request, settings: Settings, websocket: bool = False) -> str:
    """The scheme and host (and path prefix) the platform calls: ``https://agent.example.com``."""
    if settings.public_url:
        base = settings.public_url.rstrip("/")
    else:
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip() or request.scheme
        host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip() or request.host
        base = f"{proto}://{host}"
    if websocket:
        scheme, sep, rest = base.partition("://")
        base = {"https": "wss", "http": "ws"}.get(scheme, scheme) + sep + rest
    return base


def verify_signature(request: web.Request, params: Mapping[str, str], websocket: bool = False) -> None:
    """Raise ``Forbidden`` unless ``X-Twilio-Signature`` signs this request (when a token is set)."""
    token = request.app[SETTINGS].twilio_auth_token
    if not token:
        return
    base = public_base(request, request.app[SETTINGS], websocket)
    url = base + (request.path if websocket else request.path_qs)
    signature = request.headers.get("X-Twilio-Signature", "")
    # Twilio signs every value of a repeated parameter: the validator reads them with getall().
    if not signature or not RequestValidator(token.value).validate(url, params, signature):
        log.warning(
            "twilio_signature_rejected",
            path=request.path,
            reason="missing" if not signature else "mismatch",
            signed_base=base,  # the query is left out: it may carry an API key
        )
        raise Forbidden("X-Twilio-Signature does not verify")


async def verified_form(request: web.Request) -> dict[str, str]:
    """The webhook's form fields, once its signature checks out."""
    if request.body_exists and request.content_type != FORM:
        raise InvalidRequest(f"the body must be {FORM} (Twilio's webhook format)")
    read_timeout = request.app[SETTINGS].request_read_timeout
    try:
        async with asyncio.timeout(read_timeout):
            form = await request.post()
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {read_timeout:g}s") from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("the form body could not be decoded") from None
    verify_signature(request, form)  # type: ignore[arg-type]  # a urlencoded form holds only strings
    return {k: v for k, v in form.items() if isinstance(v, str)}


def twiml(response: VoiceResponse) -> web.Response:
    return web.Response(text=response.to_xml(), content_type="text/xml", charset="utf-8")


def _with_token(url: str, request: web.Request) -> str:
    """Keep a ``?token=`` API key of the webhook on the URLs it hands to the platform."""
    token = request.query.get("token")
    return f"{url}?{urlencode({'token': token})}" if token else url


# -- the webhooks ---------------------------------------------------------------------------


@routes.post(VOICE_PATH)
async def voice(request: web.Request) -> web.Response:
    """The incoming call: connect it to the relay socket."""
    settings = request.app[SETTINGS]
    form = await verified_form(request)
    attributes = {
        "language": settings.twilio_language,
        "voice": settings.twilio_voice,
        "tts_provider": settings.twilio_tts_provider,
        "transcription_provider": settings.twilio_transcription_provider,
        "welcome_greeting": settings.twilio_welcome_greeting,
        "partial_prompts": "true" if settings.twilio_partial_prompts else "",
    }
    connect = Connect(action=_with_token(public_base(request, settings) + HANDOFF_PATH, request))
    connect.conversation_relay(
        url=_with_token(public_base(request, settings, websocket=True) + RELAY_PATH, request),
        **{k: v for k, v in attributes.items() if v},
    )
    log.info("twilio_call", call_sid=form.get("CallSid", "")[:64])
    return twiml(VoiceResponse().append(connect))


@routes.post(HANDOFF_PATH)
async def handoff(request: web.Request) -> web.Response:
    """The relay session ended: transfer the call, hand it on, or hang up."""
    settings = request.app[SETTINGS]
    form = await verified_form(request)
    data = parse_handoff(form.get("HandoffData"))
    reason = data.get("reason")
    if not data and form.get("SessionStatus") == "failed":
        # The socket never worked: as for any upstream failure, the fallback stage decides.
        fallback = request.app[STAGES].resolve(settings.fallback_stage)
        reason = EndRule(settings).reason(fallback) if settings.fallback_enabled else None
    response = VoiceResponse()
    if reason == TRANSFER and not settings.twilio_transfer_to:
        log.warning("twilio_transfer_without_number", reason="CALLAGENT_TWILIO_TRANSFER_TO is not set: hanging up")
    if reason == TRANSFER and settings.twilio_transfer_to:
        response.append(_dial(settings.twilio_transfer_to))
    elif reason == HANG_UP and settings.twilio_end_url:
        response.redirect(settings.twilio_end_url)
    else:
        response.hangup()
    log.info(
        "twilio_handoff",
        call_sid=form.get("CallSid", "")[:64],
        session_status=form.get("SessionStatus", "")[:32],
        reason=reason if isinstance(reason, str) else None,
        stage=str(data.get("nextStageCode", ""))[:16],
        transferred=reason == TRANSFER and bool(settings.twilio_transfer_to),
    )
    return twiml(response)


def _dial(target: str) -> Dial:
    dial = Dial()
    if target.startswith("sip:"):
        dial.sip(target)
    else:
        dial.number(target)
    return dial
