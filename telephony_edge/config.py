"""Typed settings: the sections of a worker's configuration and the whole :class:`Settings`.

Every section is a frozen pydantic model that forbids unknown keys, so a
typo is an error rather than a default silently kept; providers add their
own sections (:class:`ProviderSettings`, through the registry), which is why
:func:`settings_class` builds the final class on first use. Reading a YAML
file and the ``TELEPHONY_EDGE_`` environment into it, and telling every
problem at once, is :mod:`telephony_edge.config_loading`'s job.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from telephony_edge.amd.policy import Voicemail
from telephony_edge.config_values import (
    ClientAddressHeader,
    Headers,
    HttpUrl,
    Network,
    PhoneNumber,
    RedisUrl,
    WsUrl,
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WebhookSpec(_Model):
    """A webhook as the platform documents it: a URL, or an object with details."""

    url: HttpUrl
    method: Literal["GET", "POST"] | None = None
    headers: Headers = Field(default_factory=dict)
    timeout: float = Field(default=3.0, gt=0, le=30)


class RecordingOptions(_Model):
    """Whether and how an agent's calls are recorded (``agents.X.recording``, per call too)."""

    enabled: bool = False
    channels: Literal["stereo", "mono"] = "stereo"
    """stereo: the caller left, what the caller heard from the agent right; mono: both mixed."""
    format: Literal["wav", "mp3", "ogg"] = "wav"


class AgentConfig(_Model):
    """A stored agent (agent_id → config), as the platform documents it.

    Unknown keys are refused, so a typo (``first_mesage``) is an error rather
    than a setting that silently does nothing. Anything else an agent core
    needs goes under ``extra``, which the edge passes on unchanged (and
    unchecked) in ``initiate.data.agent.agent_config.extra``.
    """

    prompt: str = ""
    first_message: str = ""
    language: str = "en-US"
    voice: dict[str, Any] = Field(default_factory=dict)
    tools: list[dict[str, Any]] = Field(default_factory=list)
    extra_prompt_webhook: HttpUrl | WebhookSpec | None = None
    session_data_webhook: HttpUrl | WebhookSpec | None = None
    max_concurrent_calls: int | None = Field(default=None, ge=1)
    allow_public_key: bool = False
    recording: RecordingOptions | None = None
    """Off when absent; a call's ``agent_config.recording`` overrides it key by key."""
    extra: dict[str, Any] | None = None
    """Free-form settings for a custom agent core, passed through unchanged."""
    voicemail: Voicemail | None = None
    """Answering-machine detection and what a machine gets (``telephony_edge.amd.policy``)."""


class Region(_Model):
    public_url: HttpUrl
    sip_host: str = ""
    agent_core_urls: list[WsUrl] = Field(default_factory=list)


class NumberRoute(_Model):
    provider: str
    """A registered provider's name (``telephony_edge.registry``)."""
    agent_id: str
    region: str
    agent_config: AgentConfig = Field(default_factory=AgentConfig)
    """Overrides of the agent's settings for calls to this number: only the keys written."""


class ServerSettings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: HttpUrl | None = None
    region: str | None = None
    worker_id: str | None = None
    drain_grace_s: float | None = Field(default=None, ge=0, le=24 * 3600)
    """How long a draining worker (SIGTERM) lets its live calls run before it ends them;
    None: the calls' own maximum, ``calls.max_duration_s``, so drain never cuts a call.
    Kubernetes' ``terminationGracePeriodSeconds`` must cover it (``k8s/timings.py``)."""
    drain_move_after_s: float | None = Field(default=3.0, ge=0, le=600)
    """On SIGTERM, after this long (not ready meanwhile, so the load balancer stops sending
    streams here: Caddy's health checks; Kubernetes' preStop already waits), the worker
    hands its live calls whose network can move them (Twilio) to the other workers, when one
    takes calls; the rest finish within ``drain_grace_s``. None: no call is moved."""
    max_calls: int = Field(default=500, ge=1, le=100_000)
    """Calls this worker takes at most; beyond, new calls are refused (503) or redirected."""
    use_uvloop: bool = True
    idle_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """A connection without a complete request head for this long is closed: from connect
    (silent or slowloris clients) and between keep-alive requests. Behind a proxy that
    reuses connections, keep it above the proxy's idle timeout."""
    max_pending_websockets: int = Field(default=200, ge=1, le=100_000)
    """Twilio streams per worker not yet admitted (no valid ``start`` yet); beyond, 503."""
    admin_port: int | None = Field(default=None, ge=0, le=65535)
    """A listener of its own for the operators' surface (``/metrics``, ``/status``, and the
    API with ``admin_api``), which then leaves the main port; None: all on ``port``. A worker
    on the host network (SIP) serves ``port`` on the node's addresses: keep this surface
    off them (``telephony_edge.admin``)."""
    admin_host: str = "127.0.0.1"
    """Where ``admin_port`` listens: loopback, or the pod's own address for Prometheus."""
    admin_api: bool = False
    """The API (``/calls``, ``/start_outbound_call``, dead letters …) on ``admin_port`` only."""
    trusted_proxies: list[Network] = Field(default_factory=list, max_length=64)
    """Reverse proxies (addresses or CIDRs: Caddy's, the Ingress controller's pods) whose
    ``client_address_header`` names the client; from any other hop it is ignored. Empty:
    the client is the socket's peer (``telephony_edge.client_address``)."""
    client_address_header: ClientAddressHeader = "x-forwarded-for"
    """The header the trusted proxies write: ``x-forwarded-for`` (Caddy, ingress-nginx,
    Envoy, cloud load balancers) or ``forwarded`` (RFC 7239). Only that one is read."""


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
    max_failures: int = Field(default=3, ge=1, le=1000)
    """Consecutive connect failures that bench a region's agent-core endpoint."""
    bench_s: float = Field(default=30.0, gt=0, le=3600)
    """How long a benched endpoint is skipped before one call tries it again."""


class CallSettings(_Model):
    max_duration_s: float = Field(default=3600.0, gt=0, le=24 * 3600)
    inactivity_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    preconnect_buffer_s: float = Field(default=10.0, gt=0, le=60)
    setup_ttl_s: float = Field(default=300.0, gt=0, le=3600)
    """How long a call announced by a webhook waits for its media before it ends ``error``."""
    max_chat_messages: int = Field(default=1000, ge=1, le=100_000)
    max_function_calls: int = Field(default=200, ge=1, le=100_000)
    session_ttl_s: float = Field(default=24 * 3600.0, gt=0, le=30 * 24 * 3600)
    """How long a session's continuation (metadata, chat, agent_config) is kept after a call."""
    lease_s: float = Field(default=15.0, gt=0, le=300)
    """The media owner's lease on each of its calls (and the agent slot with it): a worker
    that stops renewing it (killed) has its calls reaped by the others after this long."""
    lease_renew_s: float = Field(default=5.0, gt=0, le=100)
    """How often a worker renews its leases (one coordinator step for all its calls) and
    looks for calls whose owner's lease lapsed. Well below ``lease_s``."""
    live_state_interval_s: float = Field(default=1.0, gt=0, le=10)
    """How often a live call's state (the chat so far, what the caller heard, the network's
    ids) is written when it changed, for another worker to resume the call from if this one
    is lost: at most one write per call per interval, and the most a crash loses."""

    @model_validator(mode="after")
    def _renew_within_lease(self) -> CallSettings:
        if self.lease_renew_s * 2 > self.lease_s:
            raise ValueError("calls.lease_renew_s must be at most half of calls.lease_s")
        return self


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
    owed_grace_s: float = Field(default=150.0, gt=0, le=3600)
    """An end-of-call webhook still owed this long after its call ended is queued by any
    worker's sweep (its own worker died or lost the coordinator on the way). Longer than a
    recording may take to finish (``recording.finish_timeout_s``)."""
    owed_sweep_s: float = Field(default=15.0, gt=0, le=600)
    """How often each worker looks for such webhooks."""


class S3Settings(_Model):
    """An S3-compatible object store for recordings; credentials as botocore finds them
    (environment, files) unless given here."""

    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = "recordings/"
    endpoint_url: HttpUrl | None = None
    """Another S3-compatible store than AWS's (MinIO, Ceph, R2 …)."""
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    """Connecting, and each read of an answer: past it the upload attempt has failed."""


class RecordingSettings(_Model):
    """Where recordings go and how long their links and files live."""

    directory: str = "recordings"
    """Where files are written while calls run (and kept, with local storage)."""
    spool_max_bytes: int = Field(default=2 * 1024**3, ge=1024**2)
    """The most this worker's recordings hold in ``directory`` until they are stored (S3:
    until uploaded; local: until their call ends). A recording starts only if ten seconds
    of it fit; a live one stops at the first flush past it, the file kept."""
    storage: Literal["local", "s3"] = "local"
    s3: S3Settings | None = None
    url_secret: str | None = Field(default=None, min_length=16)
    """Signs the edge's ``/recordings/{call_id}`` links; defaults to ``webhooks.signing_secret``."""
    url_ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0, le=7 * 24 * 3600)
    """How long a recording's link in the end-of-call payload works (S3 presigning: 7 days max)."""
    retention_s: float = Field(default=30 * 24 * 3600.0, gt=0)
    """Recordings older than this are deleted by the periodic sweep."""
    sweep_interval_s: float = Field(default=3600.0, gt=0, le=24 * 3600)
    flush_interval_s: float = Field(default=1.0, gt=0, le=10)
    """How often the file on disk catches up (and its header is rewritten)."""
    finish_timeout_s: float = Field(default=60.0, gt=0, le=600)
    """How long the end-of-call webhook waits for the recording (encoder's end, upload)."""
    upload_backoff_s: float = Field(default=1.0, gt=0, le=60)
    """A failed S3 upload is tried again after this, doubled each time (±20 %) …"""
    upload_backoff_max_s: float = Field(default=300.0, gt=0, le=3600)
    """… up to this, for as long as the file is kept (``retention_s``)."""

    @model_validator(mode="after")
    def _s3_needs_bucket(self) -> RecordingSettings:
        if self.storage == "s3" and self.s3 is None:
            raise ValueError("storage 's3' needs the s3 section (bucket …)")
        return self


class CostRates(_Model):
    platform_per_min: float = Field(default=0.02, ge=0)
    telephony_per_min: float = Field(default=0.0085, ge=0)
    stt_per_min: float = Field(default=0.0043, ge=0)
    tts_per_1k_chars: float = Field(default=0.015, ge=0)


class TracingSettings(_Model):
    """OpenTelemetry tracing (``telephony_edge.tracing``): off unless ``enabled``."""

    enabled: bool = False
    endpoint: HttpUrl | None = None
    """The OTLP/HTTP traces URL (``http://collector:4318/v1/traces``). None: the exporter's
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``, else localhost."""
    headers: Headers = Field(default_factory=dict)
    """Headers on each export (a vendor's API key: from the environment)."""
    service_name: str = Field(default="telephony-edge", min_length=1, max_length=128)
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    """The share of calls traced (decided once per call, at its first span)."""
    max_queued_spans: int = Field(default=2048, ge=64, le=100_000)
    """Spans waiting for export at most; past it new spans are dropped (a collector down)."""
    export_interval_s: float = Field(default=5.0, gt=0, le=60)
    export_timeout_s: float = Field(default=10.0, gt=0, le=60)


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
    recording: RecordingSettings = RecordingSettings()
    tracing: TracingSettings = TracingSettings()
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
        if self.server.admin_api and self.server.admin_port is None:
            errors.append("server.admin_api: needs server.admin_port")
        if self.server.admin_port and self.server.admin_port == self.server.port:
            errors.append("server.admin_port: must differ from server.port")
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
    def drain_wait_s(self) -> float:
        """How long a draining worker waits for its live calls (``server.drain_grace_s``;
        unset: until the last of them reached its maximum duration and ended itself)."""
        grace = self.server.drain_grace_s
        return self.calls.max_duration_s + DRAIN_MARGIN_S if grace is None else grace

    @property
    def public_url(self) -> str:
        """The base URL networks reach this worker at (behind a proxy, the proxy's)."""
        if self.server.public_url:
            return self.server.public_url
        if self.server.region and self.regions[self.server.region].public_url:
            return self.regions[self.server.region].public_url
        host = "127.0.0.1" if self.server.host in ("0.0.0.0", "::", "") else self.server.host
        return f"http://{host}:{self.server.port}"


#: a call that began just before the drain reaches its maximum up to ``max_duration_s``
#: after it, and its own end then takes a moment: the drain waits that much longer
DRAIN_MARGIN_S = 5.0


class _FromData(Settings):
    """Settings validated from data alone: ``load_settings`` has merged the environment
    in already (knowing which variable gave which value) and may leave bad values out."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def _provider_sections() -> dict[str, Any]:
    from telephony_edge.registry import settings_models

    return {name: (model, model()) for name, model in settings_models().items()}


@functools.cache
def settings_class() -> type[Settings]:
    """:class:`Settings` with one section per registered provider, named after it.

    Built once, on first use, from the registry: the provider set is open,
    so no list of networks is written here.
    """
    return create_model("Settings", __base__=Settings, **_provider_sections())


@functools.cache
def data_settings_class() -> type[Settings]:
    """:func:`settings_class`, validated from data alone (see :class:`_FromData`)."""
    return create_model("Settings", __base__=_FromData, **_provider_sections())


#: the section models' class names: pydantic names a union's branch after them
SECTION_MODEL_NAMES = frozenset(cls.__name__ for cls in _Model.__subclasses__())
