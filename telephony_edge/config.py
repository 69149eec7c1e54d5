"""Typed settings: a YAML file plus ``TELEPHONY_EDGE_`` environment overrides.

Everything is validated at start-up, so a wrong file stops the service with a
message that names the field and the reason, never half-way through a call.
Environment variables override the file; nested fields use ``__``, e.g.
``TELEPHONY_EDGE_SERVER__PORT=9000`` or ``TELEPHONY_EDGE_TWILIO__AUTH_TOKEN=…``.
"""

from __future__ import annotations

import functools
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
    create_model,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from telephony_edge.coord.redis_url import check_redis_url

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_FORMATTING = re.compile(r"[\s().\-/]")


class ConfigError(Exception):
    """The configuration is invalid; ``str()`` names each field and reason."""


def normalize_e164(number: str) -> str:
    """Return ``number`` as E.164 (``+`` and digits), or raise ValueError.

    Accepts what people and carriers write: spaces, dashes, dots, brackets,
    a ``00`` international prefix, or digits without the ``+`` (as some
    trunks send in the Request-URI user part).
    """
    digits = _FORMATTING.sub("", number.strip())
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    elif not digits.startswith("+") and digits.isdigit():
        digits = "+" + digits
    if not _E164.match(digits):
        raise ValueError(f"{number!r} is not an E.164 phone number (+ and 2-15 digits)")
    return digits


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
RedisUrl = Annotated[str, AfterValidator(check_redis_url)]


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
    provider: str
    """A registered provider's name (``telephony_edge.registry``)."""
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
    idle_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """A connection without a complete request head for this long is closed: from connect
    (silent or slowloris clients) and between keep-alive requests. Behind a proxy that
    reuses connections, keep it above the proxy's idle timeout."""
    max_pending_websockets: int = Field(default=200, ge=1, le=100_000)
    """Twilio streams per worker not yet admitted (no valid ``start`` yet); beyond, 503."""


class ApiSettings(_Model):
    private_key: str | None = Field(default=None, min_length=16)
    public_key: str | None = Field(default=None, min_length=8)


class AgentCoreSettings(_Model):
    url: WsUrl | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60)
    ready_timeout_s: float = Field(default=10.0, gt=0, le=120)
    ping_interval_s: float = Field(default=10.0, gt=0, le=300)
    heartbeat_s: float = Field(default=5.0, gt=0, le=300)
    """WebSocket ping interval; a core that misses the pong is gone (half-open link)."""
    max_early_messages: int = Field(default=500, ge=1, le=100_000)
    """Messages the core may send before ``onready``; past that the link is refused."""


class CallSettings(_Model):
    max_duration_s: float = Field(default=3600.0, gt=0, le=24 * 3600)
    inactivity_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    preconnect_buffer_s: float = Field(default=10.0, gt=0, le=60)
    setup_ttl_s: float = Field(default=300.0, gt=0, le=3600)
    """How long a call announced by a webhook waits for its media before it ends ``error``."""
    max_chat_messages: int = Field(default=1000, ge=1, le=100_000)
    max_function_calls: int = Field(default=200, ge=1, le=100_000)


class CoordinationSettings(_Model):
    """Where workers share state: Redis when ``redis_url`` is set, else this process's memory.

    ``redis_url`` alone decides (env ``TELEPHONY_EDGE_COORDINATION__REDIS_URL``);
    its forms, Sentinel included, are listed in ``telephony_edge.coord.redis_url``.
    ``backend`` is kept so existing files still load: it follows ``redis_url``
    (a file saying ``memory`` plus a URL from the environment means Redis),
    and ``backend: redis`` without a URL is an error.
    """

    backend: Literal["memory", "redis"] = "memory"
    redis_url: RedisUrl | None = None
    #: Prepended to every key, so deployments (or tests) can share one Redis.
    key_prefix: str = Field(default="te:", min_length=1, max_length=64, pattern=r"^[^{}\s]+$")

    @model_validator(mode="before")
    @classmethod
    def _url_selects_redis(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("redis_url"):
            return {**data, "backend": "redis"}
        return data

    @model_validator(mode="after")
    def _redis_needs_url(self) -> CoordinationSettings:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("backend 'redis' needs redis_url")
        return self


class ProviderSettings(_Model):
    """The base of every provider's own section (``twilio:``, …) of the configuration.

    Each provider package subclasses it with its fields; the section's name
    is the provider's name. ``check`` reports what the section needs from
    the rest of the configuration.
    """

    enabled: bool = False

    def check(self, settings: Settings) -> list[str]:
        """Problems with the rest of ``settings`` while this provider is enabled."""
        return []


class WebhookSettings(_Model):
    signing_secret: str | None = Field(default=None, min_length=16)
    max_attempts: int = Field(default=8, ge=1, le=50)
    backoff_base_s: float = Field(default=1.0, gt=0, le=60)
    backoff_max_s: float = Field(default=300.0, gt=0, le=3600)
    allow_private_targets: bool = False
    """Let webhooks reach loopback, private, link-local and reserved addresses (local setups)."""


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
            section = self.provider_settings(route.provider)
            if section is None:
                known = ", ".join(self.provider_names()) or "none"
                errors.append(
                    f"numbers.{number}.provider: unknown provider {route.provider!r} "
                    f"(registered: {known})"
                )
            elif not section.enabled:
                errors.append(
                    f"numbers.{number}.provider: {route.provider} numbers need "
                    f"{route.provider}.enabled"
                )
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
        for name in self.provider_names():
            section = self.provider_settings(name)
            if section is not None and section.enabled:
                errors.extend(section.check(self))
        if errors:
            raise ValueError("\n".join(errors))
        return self

    @classmethod
    def provider_names(cls) -> list[str]:
        """The providers this settings class has a section for (the registry's)."""
        return [
            name
            for name, info in cls.model_fields.items()
            if isinstance(info.annotation, type) and issubclass(info.annotation, ProviderSettings)
        ]

    def provider_settings(self, name: str) -> ProviderSettings | None:
        """The section of provider ``name``, or None if no such provider is registered."""
        section = getattr(self, name, None) if name in self.provider_names() else None
        return section if isinstance(section, ProviderSettings) else None

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
        return settings_class()(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None


@functools.cache
def settings_class() -> type[Settings]:
    """:class:`Settings` with one section per registered provider, named after it.

    Built once, on first use, from the registry: the provider set is open,
    so no list of networks is written here.
    """
    from telephony_edge.registry import provider_classes

    sections: dict[str, Any] = {
        name: (cls.settings_model, cls.settings_model()) for name, cls in provider_classes().items()
    }
    return create_model("Settings", __base__=Settings, **sections)
