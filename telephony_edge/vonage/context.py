"""What the Vonage handlers of one worker share: settings, call tokens, the Voice API client."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from aiohttp import web

from telephony_edge.config import Settings
from telephony_edge.tokens import StreamTokens
from telephony_edge.vonage.api import VoiceApi
from telephony_edge.vonage.media import CONNECTED_TIMEOUT_S, IDLE_TIMEOUT_S
from telephony_edge.vonage.settings import VonageSettings, vonage_settings

# the NCCO's WebSocket headers (they come back in websocket:connected)
TOKEN_HEADER = "edge_token"
CALL_ID_HEADER = "call_id"
UUID_HEADER = "vonage_uuid"
FROM_HEADER = "from"
TO_HEADER = "to"
CALL_ID_PARAM = "call_id"  # outbound calls: in the answer and event URLs
_LABEL = b"telephony-edge/vonage-ws-token/v1"


@dataclass(slots=True)
class VonageContext:
    settings: Settings
    vonage: VonageSettings
    tokens: StreamTokens
    api: VoiceApi | None = None  # created on start-up when application_id is set
    connected_timeout_s: float = CONNECTED_TIMEOUT_S
    idle_timeout_s: float = IDLE_TIMEOUT_S

    @property
    def public_url(self) -> str:
        return self.settings.public_url

    @property
    def secret(self) -> str:
        assert self.vonage.signature_secret, "checked by VonageSettings"
        return self.vonage.signature_secret

    @classmethod
    def from_settings(cls, settings: Settings) -> VonageContext:
        vn = vonage_settings(settings)
        if not vn.enabled or not vn.signature_secret:
            raise ValueError("Vonage routes need vonage.enabled with signature_secret")
        # The socket tokens are keyed by a key derived from the signature secret, so
        # every worker and region of one Vonage application checks the others' tokens
        # and the secret itself signs nothing but Vonage's webhooks. The token format
        # and checks are the Twilio stream tokens' (generic: a key, a subject, an expiry).
        key = hmac.new(vn.signature_secret.encode(), _LABEL, hashlib.sha256).digest()
        return cls(
            settings=settings, vonage=vn, tokens=StreamTokens(key=key, ttl_s=vn.ws_token_ttl_s)
        )


VONAGE = web.AppKey("vonage", VonageContext)


def pending_key(call_id: str) -> str:
    """The coordinator key that makes a call's socket token single-use."""
    return f"vonage-ws:{call_id}"


def provider_call_key(uuid: str) -> str:
    """The key ``CallService.create_inbound`` maps a Vonage call ``uuid`` to its call by."""
    return f"provider-call:vonage:{uuid}"


def handoff_subject(uuid: str, from_: str, to: str) -> str:
    """What a hand-off token (a call another region answered) is bound to."""
    return f"handoff|{uuid}|{from_}|{to}"
