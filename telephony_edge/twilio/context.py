"""What the Twilio handlers of one worker share: signature checker, tokens, REST client."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from telephony_edge.config import Settings
from telephony_edge.tokens import StreamTokens
from telephony_edge.twilio.handover import StreamHandover
from telephony_edge.twilio.media import HANDOVER_TIMEOUT_S, IDLE_TIMEOUT_S, START_TIMEOUT_S
from telephony_edge.twilio.rest import TwilioRest
from telephony_edge.twilio.settings import TwilioSettings, twilio_settings
from telephony_edge.twilio.signature import SignatureChecker

STREAM_TOKEN_PARAM = "token"
CALL_ID_PARAM = "call_id"


@dataclass(slots=True)
class TwilioContext:
    settings: Settings
    twilio: TwilioSettings
    signatures: SignatureChecker
    tokens: StreamTokens
    handover: StreamHandover  # the streams this worker's calls wait for after their keys
    rest: TwilioRest | None = None  # created on start-up, inside the running loop
    start_timeout_s: float = START_TIMEOUT_S  # for the stream's 'start' message
    idle_timeout_s: float = IDLE_TIMEOUT_S  # a stream silent this long is gone
    handover_timeout_s: float = HANDOVER_TIMEOUT_S  # the stream back after the keys, beyond them

    @property
    def public_url(self) -> str:
        return self.settings.public_url

    @classmethod
    def from_settings(cls, settings: Settings) -> TwilioContext:
        tw = twilio_settings(settings)
        if not tw.enabled or not tw.auth_token or not tw.account_sid:
            raise ValueError("Twilio routes need twilio.enabled with account_sid and auth_token")
        tokens = StreamTokens.from_auth_token(tw.auth_token, tw.stream_token_ttl_s)
        return cls(
            settings=settings,
            twilio=tw,
            signatures=SignatureChecker(
                tw.auth_token, settings.public_url, enabled=tw.validate_signatures
            ),
            tokens=tokens,
            handover=StreamHandover(tokens, settings.public_url),
        )


TWILIO = web.AppKey("twilio", TwilioContext)


def pending_key(call_id: str) -> str:
    """The coordinator key that makes a call's stream token single-use."""
    return f"twilio-stream:{call_id}"


def handoff_subject(call_sid: str, from_: str, to: str) -> str:
    """What a hand-off token is bound to: the Twilio call and its numbers."""
    return f"handoff|{call_sid}|{from_}|{to}"
