"""Typed settings: a YAML file plus ``TELEPHONY_EDGE_`` environment overrides.

Everything is validated at start-up, so a wrong file stops the service with
one line per problem (all of them at once), naming where the value came from
(the file or the environment variable), the field and the reason, never
half-way through a call.
Environment variables override the file; nested fields use ``__``, e.g.
``TELEPHONY_EDGE_SERVER__PORT=9000`` or ``TELEPHONY_EDGE_TWILIO__AUTH_TOKEN=…``.
"""

from __future__ import annotations

import copy
import difflib
import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError

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


def agent_config_problems(overrides: Mapping[str, Any]) -> list[str]:
    """What is wrong with a call's ``agent_config``: one ``agent_config.<field>: <reason>`` each.

    The checks and words of a stored agent's (``agents.<id>.<field>: <reason>``):
    an unknown key at any level is refused with "did you mean", except in
    the free-form places (``extra``, ``voice``, ``tools``, a webhook's
    ``headers``). A call's config overrides the stored agent's key by key, so
    what the stored agent may supply (a webhook's ``url``) is not required here.
    """
    try:
        AgentConfig.model_validate(overrides)
    except ValidationError as exc:
        found = _problems(exc, AgentConfig, partial=True)
        return [f"agent_config.{field}: {reason}" for _, field, reason in found]
    return []


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
ENV_PREFIX = "TELEPHONY_EDGE_"
_MAX_ROUNDS = 5
_UNION_TAG = re.compile(r"^[\w-]+\[.*\]$")  # pydantic's name for one branch of a union
#: pydantic's errors for a key no field takes: in a model, in a dataclass
_UNKNOWN_KEY_ERRORS = frozenset({"extra_forbidden", "unexpected_keyword_argument"})


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One bad field: where its value came from, which field, what is wrong."""

    source: str  # the file, the environment variable, or "" (values given in code)
    field: str
    reason: str

    def __str__(self) -> str:
        return ": ".join(part for part in (self.source, self.field, self.reason) if part)


class ConfigError(Exception):
    """The configuration is invalid; ``str()`` is one line per problem."""

    def __init__(self, problems: str | list[ConfigProblem]) -> None:
        if isinstance(problems, str):
            problems = [ConfigProblem("", "", problems)]
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


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
def _data_class() -> type[Settings]:
    """:func:`settings_class`, validated from data alone (see :class:`_FromData`)."""
    return create_model("Settings", __base__=_FromData, **_provider_sections())


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read ``path`` (YAML) if given, apply the environment, validate.

    Raises ConfigError listing every problem found, each with its source
    (the file or the environment variable) and field. Top-level
    ``overrides`` replace the file's sections (tests, embedding).
    """
    data = _read_yaml(path) if path is not None else {}
    data.update(copy.deepcopy(overrides))
    env_names = _environment_names()
    problems = [
        ConfigProblem(name, ".".join(parts), _unknown_key(settings_class(), parts[0]))
        for parts, name in env_names.items()
        if parts[0] not in settings_class().model_fields
    ]
    try:
        env_values = EnvSettingsSource(settings_class())()
    except SettingsError as exc:  # a JSON value that does not parse; names the field
        field = re.search(r'field "([^"]+)"', str(exc))
        name = field.group(1) if field else ""
        source = env_names.get((name,), f"{ENV_PREFIX}{name.upper()}")
        raise ConfigError([*problems, ConfigProblem(source, name, "not valid JSON")]) from None
    sources = _Sources(str(path or ""), env_names)
    settings, found = _validate(_deep_merge(data, env_values), sources)
    problems += found
    if problems or settings is None:
        raise ConfigError(problems)
    return settings


def _read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(path), "", f"cannot read: {exc.strerror}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(str(path), "", f"not valid YAML: {exc}")]) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            [ConfigProblem(str(path), "", "the top level must be a mapping of sections")]
        )
    return loaded


def _environment_names() -> dict[tuple[str, ...], str]:
    """Each ``TELEPHONY_EDGE_*`` variable by the field path it sets (lower case, as read)."""
    names = {}
    for name in os.environ:
        if name.upper().startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            names[tuple(name[len(ENV_PREFIX) :].lower().split("__"))] = name
    return names


@dataclass(frozen=True, slots=True)
class _Sources:
    """Where a field's value came from: an environment variable, else the file."""

    file: str
    env: dict[tuple[str, ...], str]

    def of(self, field: str) -> str:
        dotted = field.lower()
        for parts, name in self.env.items():
            path = ".".join(parts)
            if dotted == path or dotted.startswith(path + "."):
                return name
        inside = [n for p, n in self.env.items() if ".".join(p).startswith(dotted + ".")]
        return " + ".join(filter(None, (self.file, *inside)))


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, nested mappings key by key (as pydantic-settings merges)."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _validate(
    data: dict[str, Any], sources: _Sources
) -> tuple[Settings | None, list[ConfigProblem]]:
    """Validate, and on failure again without the bad values, to list every problem at once.

    pydantic reports every bad field of one pass, but the cross-references
    (numbers → regions, agents; secrets) only run once all fields are valid.
    So each bad value is left out (a key, or a whole entry/section when
    leaving the key out cannot help) and the rest validated again; problems
    that only follow from what was left out are not reported.
    """
    problems: list[ConfigProblem] = []
    removed: list[str] = []
    for _ in range(_MAX_ROUNDS):
        try:
            return _data_class()(**data), problems
        except ValidationError as exc:
            progress = False
            for loc, field, reason in _problems(exc):
                if any(_follows_from(gone, field, reason) for gone in removed):
                    continue
                if not any(p.field == field for p in problems):
                    problems.append(ConfigProblem(sources.of(field), field, reason))
                if loc is not None:
                    progress |= _leave_out(data, loc, removed)
            if not progress:
                break
    return None, problems


def _problems(
    exc: ValidationError, root: type[BaseModel] | None = None, *, partial: bool = False
) -> list[tuple[tuple[str, ...] | None, str, str]]:
    """(path, dotted field, reason) per bad field; a union's branches are one field.

    ``root``: the model validated (default: the whole settings). ``partial``:
    the data are overrides, so a missing required field is no problem.
    """
    by_loc: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    out: list[tuple[tuple[str, ...] | None, str, str]] = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"] if not _is_union_tag(str(p)) and p != "[key]")
        msg = err["msg"].removeprefix("Value error, ")
        if (not loc and "\n" in msg) or (not loc and ": " in msg):  # the cross-references
            for line in msg.splitlines():
                field, _, reason = line.partition(": ")
                out.append((None, field, reason))
            continue
        if err["type"] in _UNKNOWN_KEY_ERRORS:
            msg = _unknown_key(_model_at(loc[:-1], root), loc[-1])
        by_loc.setdefault(loc, []).append((err["type"], msg))
    for loc, errs in by_loc.items():
        if any(other[: len(loc)] == loc and other != loc for other in by_loc):
            continue  # another branch of a union got further: its error says more
        if partial:
            errs = [(kind, msg) for kind, msg in errs if kind != "missing"]
            if not errs:
                continue
        useful = [msg for kind, msg in errs if not kind.endswith("_type")] or [errs[0][1]]
        out.append((loc, ".".join(loc), "; ".join(dict.fromkeys(useful))))
    return out


def _is_union_tag(part: str) -> bool:
    return bool(_UNION_TAG.match(part)) or part in _MODEL_NAMES


def _model_at(loc: tuple[str, ...], root: type[BaseModel] | None = None) -> type | None:
    """The model (or dataclass) whose fields live at ``loc`` (for "did you mean"), if any."""
    current: Any = root or settings_class()
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            current = field.annotation if field is not None else None
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return None
        current = _model_or_dict(current)
    return current if _field_names(current) else None


def _field_names(model: Any) -> list[str]:
    """The fields of a model or a dataclass (``[]`` for anything else)."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    if isinstance(model, type) and is_dataclass(model):
        return [f.name for f in fields(model)]
    return []


def _model_or_dict(annotation: Any) -> Any:
    """The model (or dict) inside ``X | None`` or ``Annotated[...]``."""
    if get_origin(annotation) is Annotated:
        return get_args(annotation)[0]
    for arg in get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ():
        if get_origin(arg) is dict or (isinstance(arg, type) and issubclass(arg, BaseModel)):
            return arg
    return annotation


def _unknown_key(model: type | None, key: str) -> str:
    reason = "unknown key"
    if model is not None:
        close = difflib.get_close_matches(key, _field_names(model), n=1, cutoff=0.7)
        if close:
            reason += f"; did you mean {close[0]}?"
        if model is AgentConfig:
            reason += " (free-form settings for the agent core go under extra:)"
    return reason


def _follows_from(gone: str, field: str, reason: str) -> bool:
    """Whether a problem is only a consequence of leaving ``gone`` out."""
    name = gone.rsplit(".", 1)[-1]
    return field == gone or field.startswith(gone + ".") or gone in reason or f"'{name}'" in reason


def _leave_out(data: dict[str, Any], loc: tuple[str, ...], removed: list[str]) -> bool:
    """Take the value at ``loc`` out of ``data``; whether anything changed.

    A key whose field has a default just goes; when it is already gone (a
    required field) or names a whole section or entry (its own check failed),
    the enclosing entry or section goes, and is remembered in ``removed``.
    """
    parent: Any = data
    for part in loc[:-1]:
        if not isinstance(parent, dict) or part not in parent:
            return False
        if not isinstance(parent[part], dict):  # a list: leave the whole list out
            del parent[part]
            return True
        parent = parent[part]
    if isinstance(parent, dict) and loc[-1] in parent and not isinstance(parent[loc[-1]], dict):
        del parent[loc[-1]]
        return True
    whole = loc[:2] if loc[0] in ("agents", "regions", "numbers") else loc[:1]
    container: Any = data
    for part in whole[:-1]:
        container = container.get(part, {}) if isinstance(container, dict) else {}
    if isinstance(container, dict) and whole[-1] in container:
        del container[whole[-1]]
        removed.append(".".join(whole))
        return True
    return False


_MODEL_NAMES = frozenset(cls.__name__ for cls in _Model.__subclasses__())
