"""The ``vonage:`` section of the configuration."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from telephony_edge.config import ProviderSettings, Settings
from telephony_edge.config_values import HttpUrl


class VonageSettings(ProviderSettings):
    """Vonage Voice API application: signed webhooks in, application JWTs out."""

    application_id: str | None = None
    private_key_path: Path | None = None  # the application's RSA key: outbound calls, control
    signature_secret: str | None = Field(default=None, min_length=16)
    api_base_url: HttpUrl | None = None  # a local stand-in of the Voice API in tests
    ws_token_ttl_s: float = Field(default=60.0, gt=0, le=3600)
    playout_lead_ms: int = Field(default=200, ge=0, le=2000)
    """Agent audio sent ahead of real time at the start of each agent talkspurt, so that the
    network's own playout buffer rides out the jitter of the path between it and the edge
    (loopback needs none; a real path wants about 200 ms). Barge-in costs nothing extra: the
    edge sends the network's ``clear``."""
    validate_signatures: bool = True
    max_webhook_age_s: float = Field(default=300.0, gt=0, le=3600)  # a JWT without exp

    @model_validator(mode="after")
    def _enabled_needs_secret(self) -> VonageSettings:
        if self.enabled and not self.signature_secret:
            # also keys the WebSocket's call tokens, so needed even without validation
            raise ValueError("enabled Vonage needs signature_secret")
        if (self.application_id is None) != (self.private_key_path is None):
            raise ValueError("application_id and private_key_path go together")
        return self

    def check(self, settings: Settings) -> list[str]:
        return []

    @property
    def api_enabled(self) -> bool:
        """Whether outbound calls and call control through the Voice API are configured."""
        return bool(self.application_id and self.private_key_path)


def vonage_settings(settings: Settings) -> VonageSettings:
    """The ``vonage:`` section of ``settings``."""
    section = settings.provider_settings("vonage")
    assert isinstance(section, VonageSettings), "the Vonage provider is registered"
    return section
