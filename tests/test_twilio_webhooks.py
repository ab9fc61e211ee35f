"""The Twilio webhooks: the TwiML they answer (parsed as XML), their signatures, API keys."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from callagent.settings import Settings

from .twilio_side import AUTH_TOKEN, CALL_SID, sign, twiml

NUMBER = "+8602112345678"
SIP = "sip:desk@pbx.example.com"
DIAL_NUMBER = ("Dial", "Number", NUMBER)
HANG_UP = ("Hangup", None, None)
CALL = {"CallSid": CALL_SID, "AccountSid": "AC0123456789abcdef0123456789abcdef", "From": "+8613800000000"}


def settings(**changes: Any) -> Settings:
    return Settings(upstream="local", store="memory://", **changes)


def handoff_form(reason: str, code: str) -> dict[str, str]:
    data = {"reason": reason, "nextStageCode": code, "nextStage": "", "sessionId": CALL_SID, "turnId": "t1"}
    return {**CALL, "SessionStatus": "ended", "HandoffData": orjson.dumps(data).decode()}


async def test_the_voice_webhook_connects_the_call_to_the_relay(make_client: Any) -> None:
    client = await make_client(
        settings(
            public_url="https://agent.example.com",
            twilio_language="zh-CN",
            twilio_voice="zh-CN-Standard-A",
            twilio_tts_provider="Google",
            twilio_transcription_provider="Google",
            twilio_welcome_greeting="您好，这里是交通事故快处中心。",
            twilio_partial_prompts=True,
        )
    )
    response = await client.post("/twilio/voice", data=CALL)
    assert response.status == 200 and response.content_type == "text/xml"
    (connect,) = twiml(await response.text())
    assert connect.tag == "Connect" and connect.attrib == {"action": "https://agent.example.com/twilio/handoff"}
    (relay,) = connect
    assert relay.tag == "ConversationRelay"
    assert relay.attrib == {
        "url": "wss://agent.example.com/conversation-relay",
        "language": "zh-CN",
        "voice": "zh-CN-Standard-A",
        "ttsProvider": "Google",
        "transcriptionProvider": "Google",
        "welcomeGreeting": "您好，这里是交通事故快处中心。",
        "partialPrompts": "true",
    }


async def test_without_a_public_url_the_urls_follow_the_request(make_client: Any) -> None:
    client = await make_client(settings())
    response = await client.post(
        "/twilio/voice", data=CALL, headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "cr.example.com"}
    )
    (connect,) = twiml(await response.text())
    assert connect.get("action") == "https://cr.example.com/twilio/handoff"
    assert connect[0].attrib == {"url": "wss://cr.example.com/conversation-relay", "language": "zh-CN"}
    plain = twiml(await (await client.post("/twilio/voice", data=CALL)).text())
    assert plain[0][0].get("url") == f"ws://127.0.0.1:{client.port}/conversation-relay"


@pytest.mark.parametrize(
    ("changes", "form", "expected"),
    [
        ({"twilio_transfer_to": NUMBER}, handoff_form("transfer", "0003"), DIAL_NUMBER),
        ({"twilio_transfer_to": SIP}, handoff_form("transfer", "0001"), ("Dial", "Sip", SIP)),
        ({}, handoff_form("transfer", "0001"), HANG_UP),  # no number: hang up (logged)
        ({"twilio_transfer_to": NUMBER}, handoff_form("hangup", "0000"), HANG_UP),
        ({"twilio_end_url": "https://ivr.example.com/after"}, handoff_form("hangup", "1001"), ("Redirect", None, None)),
        ({"twilio_transfer_to": NUMBER}, {**CALL, "SessionStatus": "ended"}, HANG_UP),
        ({"twilio_transfer_to": NUMBER}, {**CALL, "HandoffData": "{not json"}, HANG_UP),
        # The relay session failed: the fallback stage (0001, a transfer) decides.
        ({"twilio_transfer_to": NUMBER}, {**CALL, "SessionStatus": "failed"}, DIAL_NUMBER),
        ({"twilio_transfer_to": NUMBER, "fallback_enabled": False}, {**CALL, "SessionStatus": "failed"}, HANG_UP),
    ],
)
async def test_the_handoff_webhook_transfers_or_hangs_up(
    make_client: Any, changes: dict[str, Any], form: dict[str, str], expected: tuple[str, str | None, str | None]
) -> None:
    client = await make_client(settings(**changes))
    response = await client.post("/twilio/handoff", data=form)
    assert response.status == 200 and response.content_type == "text/xml"
    (verb,) = twiml(await response.text())
    tag, child, text = expected
    assert verb.tag == tag
    if child is not None:
        assert [(n.tag, n.text) for n in verb] == [(child, text)]
    if tag == "Redirect":
        assert verb.text == "https://ivr.example.com/after"


# -- signatures -----------------------------------------------------------------------------


async def test_signed_webhooks_are_answered_and_unsigned_ones_refused(make_client: Any) -> None:
    client = await make_client(settings(twilio_auth_token=AUTH_TOKEN, public_url="https://agent.example.com"))
    good = sign("https://agent.example.com/twilio/voice?line=7", CALL)
    response = await client.post("/twilio/voice?line=7", data=CALL, headers={"X-Twilio-Signature": good})
    assert response.status == 200, await response.text()
    handoff = handoff_form("hangup", "0000")
    handoff_url = "https://agent.example.com/twilio/handoff"
    signature = sign(handoff_url, handoff)
    response = await client.post("/twilio/handoff", data=handoff, headers={"X-Twilio-Signature": signature})
    assert response.status == 200
    with capture_logs() as logs:
        for path, headers, data in [
            ("/twilio/voice?line=7", {}, CALL),
            ("/twilio/voice?line=8", {"X-Twilio-Signature": good}, CALL),  # another URL
            ("/twilio/voice?line=7", {"X-Twilio-Signature": good}, {**CALL, "From": "+1"}),  # another body
            ("/twilio/handoff", {"X-Twilio-Signature": sign(handoff_url, handoff, "another token")}, handoff),
        ]:
            response = await client.post(path, data=data, headers=headers)
            assert response.status == 403
            body = await response.json()
            assert body == {"code": "403", "msg": "X-Twilio-Signature does not verify", "type": "forbidden"}
    assert [e["reason"] for e in logs if e["event"] == "twilio_signature_rejected"] == ["missing"] + ["mismatch"] * 3
    assert AUTH_TOKEN not in repr(logs)


async def test_api_keys_give_way_to_the_signature_on_the_twilio_routes(make_client: Any) -> None:
    keyed = await make_client(settings(api_keys=("k1",)))  # type: ignore[arg-type]
    assert (await keyed.post("/twilio/voice", data=CALL)).status == 401
    response = await keyed.post("/twilio/voice?token=k1", data=CALL)
    assert response.status == 200
    (connect,) = twiml(await response.text())
    # The platform's next calls carry the key on as well.
    assert connect.get("action", "").endswith("/twilio/handoff?token=k1")
    assert connect[0].get("url", "").endswith("/conversation-relay?token=k1")
    ws = await keyed.ws_connect("/conversation-relay?token=k1")
    await ws.close()
    assert (await keyed.post("/chat?token=k1", json={"sessionId": "a1", "text": "x"})).status == 401

    signed = await make_client(settings(api_keys=("k1",), twilio_auth_token=AUTH_TOKEN))  # type: ignore[arg-type]
    url = str(signed.make_url("/twilio/voice"))
    response = await signed.post("/twilio/voice", data=CALL, headers={"X-Twilio-Signature": sign(url, CALL)})
    assert response.status == 200
    assert (await signed.get("/readyz")).status == 401


async def test_a_body_that_is_not_a_form_is_a_clear_422(make_client: Any) -> None:
    client = await make_client(settings())
    for headers, data in [
        ({"Content-Type": "application/json"}, b'{"CallSid": "CA1"}'),
        ({"Content-Type": "multipart/form-data"}, b"--x\r\n"),  # no boundary
    ]:
        response = await client.post("/twilio/voice", data=data, headers=headers)
        assert response.status == 422
        assert (await response.json())["type"] == "invalid_request"
    empty = await client.post("/twilio/handoff")
    assert empty.status == 200 and twiml(await empty.text())[0].tag == "Hangup"


def test_the_twilio_settings_are_read_and_checked() -> None:
    from callagent.settings import ConfigError

    env = {
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "CALLAGENT_PUBLIC_URL": "https://agent.example.com/cr",
        "CALLAGENT_TWILIO_PARTIAL_PROMPTS": "yes",
        "CALLAGENT_TWILIO_TRANSFER_STAGES": "0001, 0003",
    }
    s = Settings.from_env(env, env_file=None)
    assert s.twilio_auth_token.value == AUTH_TOKEN and AUTH_TOKEN not in repr(s)
    assert (s.public_url, s.twilio_partial_prompts) == ("https://agent.example.com/cr", True)
    for name, value in [
        ("CALLAGENT_PUBLIC_URL", "agent.example.com"),
        ("CALLAGENT_PUBLIC_URL", "https://agent.example.com/?x=1"),
        ("CALLAGENT_TWILIO_END_URL", "ftp://x"),
        ("CALLAGENT_TWILIO_SEGMENT", "word"),
        ("CALLAGENT_TWILIO_HANGUP_STAGES", "0000;1001"),
    ]:
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value}, env_file=None)
