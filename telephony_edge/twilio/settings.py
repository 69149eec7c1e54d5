"""The ``twilio:`` section of the configuration."""

from __future__ import annotations

from pydantic import Field, model_validator

from telephony_edge.config import ProviderSettings, Settings
from telephony_edge.config_values import HttpUrl


class TwilioSettings(ProviderSettings):
    account_sid: str | None = Field(default=None, pattern=r"^AC[0-9a-fA-F]{32}$")
    auth_token: str | None = None
    api_base_url: HttpUrl | None = None  # a local stand-in of Twilio's REST API in tests
    stream_token_ttl_s: float = Field(default=60.0, gt=0, le=3600)
    playout_lead_ms: int = Field(default=200, ge=0, le=2000)
    """Agent audio sent ahead of real time at the start of each agent talkspurt, so that the
    network's own playout buffer rides out the jitter of the path between it and the edge
    (loopback needs none; a real path wants about 200 ms). Barge-in costs nothing extra: the
    edge sends the network's ``clear``."""
    validate_signatures: bool = True

    @model_validator(mode="after")
    def _enabled_needs_credentials(self) -> TwilioSettings:
        if self.enabled:
            missing = [n for n in ("account_sid", "auth_token") if not getattr(self, n)]
            if missing:
                raise ValueError(f"enabled Twilio needs {', '.join(missing)}")
        return self

    def check(self, settings: Settings) -> list[str]:
        if not settings.api.private_key:
            return ["api.private_key: required for Twilio outbound calls and call control"]
        return []


def twilio_settings(settings: Settings) -> TwilioSettings:
    """The ``twilio:`` section of ``settings``."""
    section = settings.provider_settings("twilio")
    assert isinstance(section, TwilioSettings), "the Twilio provider is registered"
    return section
