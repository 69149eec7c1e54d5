"""Typed settings: a YAML file plus ``TELEPHONY_EDGE_`` environment overrides.

Everything is validated at start-up, so a wrong file stops the service with a
message that names the field and the reason, never half-way through a call.
Environment variables override the file; nested fields use ``__``, e.g.
``TELEPHONY_EDGE_SERVER__PORT=9000`` or ``TELEPHONY_EDGE_TWILIO__AUTH_TOKEN=…``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_FORMATTING = re.compile(r"[\s().\-/]")


class ConfigError(Exception):
    """The configuration is invalid; ``str()`` names each field and reason."""


def normalize_e164(number: str) -> str:
    """Return a number people wrote (configuration, API) as E.164, or raise ValueError.

    It must carry its country code: ``+`` (or the ``00`` international
    prefix) and the digits; spaces, dashes, dots, slashes and brackets are
    fine. Without a country code it is an error, not a guess: ``(415)
    555-0100`` is not ``+4155550100``, and a mistake here routes calls to
    the wrong country.
    """
    if "(0)" in number.replace(" ", ""):
        raise ValueError(f"{number!r}: leave out the (0), dialled only within the country")
    digits = _FORMATTING.sub("", number.strip())
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    elif digits.isdigit():
        raise ValueError(
            f"{number!r} has no country code: write it with + and the country code, "
            "e.g. +1 415 555 0100"
        )
    if not _E164.match(digits):
        raise ValueError(f"{number!r} is not an E.164 phone number (+ and 2-15 digits)")
    return digits


def normalize_network_number(number: str) -> str:
    """Return a number a *network* sent as E.164, or raise ValueError.

    Lenient where :func:`normalize_e164` is strict: some trunks send the
    international digits without the ``+`` (e.g. ``14155550100`` in a SIP
    Request-URI), so bare digits count as if ``+`` were there. Only for
    numbers networks send, to route a call (``NumberRouter.lookup``); never
    for what people write.
    """
    digits = _FORMATTING.sub("", number.strip())
    if digits.isdigit() and not digits.startswith("0"):
        return normalize_e164("+" + digits)
    return normalize_e164(number)


def _http_url(value: str) -> str:
    return _check_url(value, ("http", "https"))


def _ws_url(value: str) -> str:
    return _check_url(value, ("ws", "wss"))


def _check_url(value: str, schemes: tuple[str, ...]) -> str:
    from yarl import URL

    try:
        url = URL(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{value!r} is not a URL: {exc}") from None
    if url.scheme not in schemes or not url.host:
        raise ValueError(f"{value!r} is not an absolute {'/'.join(schemes)} URL")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_http_url)]
WsUrl = Annotated[str, AfterValidator(_ws_url)]
PhoneNumber = Annotated[str, AfterValidator(normalize_e164)]
ProviderName = Literal["twilio", "vonage", "sip"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WebhookSpec(_Model):
    """A webhook as the platform documents it: a URL, or an object with details."""

    url: HttpUrl
    method: Literal["GET", "POST"] | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=3.0, gt=0, le=30)


class AgentConfig(_Model):
    """A stored agent (agent_id → config), as the platform documents it."""

    model_config = ConfigDict(extra="allow", frozen=True)  # the platform adds fields freely

    prompt: str = ""
    first_message: str = ""
    language: str = "en-US"
    voice: dict[str, Any] = Field(default_factory=dict)
    tools: list[dict[str, Any]] = Field(default_factory=list)
    extra_prompt_webhook: HttpUrl | WebhookSpec | None = None
    session_data_webhook: HttpUrl | WebhookSpec | None = None
    max_concurrent_calls: int | None = Field(default=None, ge=1)
    allow_public_key: bool = False


class Region(_Model):
    public_url: HttpUrl
    sip_host: str = ""
    agent_core_urls: list[WsUrl] = Field(default_factory=list)


class NumberRoute(_Model):
    provider: ProviderName
    agent_id: str
    region: str
    agent_config: dict[str, Any] = Field(default_factory=dict)


class ServerSettings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: HttpUrl | None = None
    region: str | None = None
    worker_id: str | None = None
    drain_grace_s: float = Field(default=30.0, ge=0, le=3600)
    use_uvloop: bool = True


class ApiSettings(_Model):
    private_key: str | None = Field(default=None, min_length=16)
    public_key: str | None = Field(default=None, min_length=8)


class AgentCoreSettings(_Model):
    url: WsUrl | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60)
    ready_timeout_s: float = Field(default=10.0, gt=0, le=120)
    ping_interval_s: float = Field(default=10.0, gt=0, le=300)


class CallSettings(_Model):
    max_duration_s: float = Field(default=3600.0, gt=0, le=24 * 3600)
    inactivity_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    preconnect_buffer_s: float = Field(default=10.0, gt=0, le=60)
    setup_ttl_s: float = Field(default=300.0, gt=0, le=3600)
    """How long a call announced by a webhook waits for its media before it is forgotten."""


class CoordinationSettings(_Model):
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None

    @model_validator(mode="after")
    def _redis_needs_url(self) -> CoordinationSettings:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("backend 'redis' needs redis_url")
        return self


class TwilioSettings(_Model):
    enabled: bool = False
    account_sid: str | None = Field(default=None, pattern=r"^AC[0-9a-fA-F]{32}$")
    auth_token: str | None = None
    api_base_url: HttpUrl | None = None  # a local stand-in of Twilio's REST API in tests
    stream_token_ttl_s: float = Field(default=60.0, gt=0, le=3600)
    validate_signatures: bool = True

    @model_validator(mode="after")
    def _enabled_needs_credentials(self) -> TwilioSettings:
        if self.enabled:
            missing = [n for n in ("account_sid", "auth_token") if not getattr(self, n)]
            if missing:
                raise ValueError(f"enabled Twilio needs {', '.join(missing)}")
        return self


class VonageSettings(_Model):
    enabled: bool = False
    application_id: str | None = None
    private_key_path: str | None = None
    signature_secret: str | None = None

    @model_validator(mode="after")
    def _enabled_needs_credentials(self) -> VonageSettings:
        if self.enabled:
            needed = ("application_id", "private_key_path", "signature_secret")
            missing = [n for n in needed if not getattr(self, n)]
            if missing:
                raise ValueError(f"enabled Vonage needs {', '.join(missing)}")
        return self


class WebhookSettings(_Model):
    signing_secret: str | None = Field(default=None, min_length=16)
    max_attempts: int = Field(default=8, ge=1, le=50)
    backoff_base_s: float = Field(default=1.0, gt=0, le=60)
    backoff_max_s: float = Field(default=300.0, gt=0, le=3600)


class CostRates(_Model):
    platform_per_min: float = Field(default=0.02, ge=0)
    telephony_per_min: float = Field(default=0.0085, ge=0)
    stt_per_min: float = Field(default=0.0043, ge=0)
    tts_per_1k_chars: float = Field(default=0.015, ge=0)


class Settings(BaseSettings):
    """The whole configuration of one worker."""

    model_config = SettingsConfigDict(
        env_prefix="TELEPHONY_EDGE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    server: ServerSettings = ServerSettings()
    api: ApiSettings = ApiSettings()
    agent_core: AgentCoreSettings = AgentCoreSettings()
    calls: CallSettings = CallSettings()
    coordination: CoordinationSettings = CoordinationSettings()
    twilio: TwilioSettings = TwilioSettings()
    vonage: VonageSettings = VonageSettings()
    webhooks: WebhookSettings = WebhookSettings()
    costs: CostRates = CostRates()
    agents: dict[str, AgentConfig] = Field(default_factory=dict)
    regions: dict[str, Region] = Field(default_factory=dict)
    numbers: dict[PhoneNumber, NumberRoute] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)  # the environment overrides the file

    @model_validator(mode="after")
    def _cross_references(self) -> Settings:
        errors: list[str] = []
        if self.server.region is not None and self.server.region not in self.regions:
            errors.append(f"server.region: region {self.server.region!r} is not defined")
        for number, route in self.numbers.items():
            if route.region not in self.regions:
                errors.append(f"numbers.{number}.region: region {route.region!r} is not defined")
            if route.agent_id not in self.agents:
                errors.append(f"numbers.{number}.agent_id: agent {route.agent_id!r} is not defined")
            if route.provider == "twilio" and not self.twilio.enabled:
                errors.append(f"numbers.{number}.provider: twilio numbers need twilio.enabled")
            if route.provider == "vonage" and not self.vonage.enabled:
                errors.append(f"numbers.{number}.provider: vonage numbers need vonage.enabled")
        for agent_id, agent in self.agents.items():
            if agent.session_data_webhook is not None and not self.webhooks.signing_secret:
                errors.append(
                    f"webhooks.signing_secret: required because agents.{agent_id}"
                    ".session_data_webhook is set"
                )
            if agent.allow_public_key and not self.api.public_key:
                errors.append(
                    f"api.public_key: required because agents.{agent_id}.allow_public_key is true"
                )
        if self.twilio.enabled and not self.api.private_key:
            errors.append("api.private_key: required for Twilio outbound calls and call control")
        if errors:
            raise ValueError("\n".join(errors))
        return self

    @property
    def public_url(self) -> str:
        """The base URL networks reach this worker at (behind a proxy, the proxy's)."""
        if self.server.public_url:
            return self.server.public_url
        if self.server.region and self.regions[self.server.region].public_url:
            return self.regions[self.server.region].public_url
        host = "127.0.0.1" if self.server.host in ("0.0.0.0", "::", "") else self.server.host
        return f"http://{host}:{self.server.port}"


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if str(p) != "[key]")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "\n".join(lines)


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read ``path`` (YAML) if given, apply the environment, validate.

    Raises ConfigError with one line per problem, each naming the field.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
