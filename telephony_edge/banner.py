"""What ``serve`` prints once it listens: its URLs, and what to paste into each network."""

from __future__ import annotations

import ipaddress

from yarl import URL

from telephony_edge import __version__
from telephony_edge.config import Settings
from telephony_edge.recording.recorder import ffmpeg_warning
from telephony_edge.registry import PROVIDERS, enabled_providers

#: where a new user finds every network enabled at once (the README's demo)
DEMO_CONFIG = "deploy/demo.yaml"


def banner_lines(settings: Settings, base_url: str, admin_url: str | None = None) -> list[str]:
    """The start-up banner: one place, so each provider can add its own lines later.

    ``base_url`` is where the worker is bound (``http://host:port``);
    ``settings.public_url`` is where networks reach it (what Twilio signs);
    ``admin_url`` where the operators' surface is, when it has a port of its own.
    """
    from telephony_edge.app import DEMO_AGENT_PATH  # app imports this module

    lines = [f"telephony-edge {__version__} serving on {base_url}"]
    if admin_url is None:
        lines += [f"  {base_url}{path}" for path in ("/healthz", "/readyz", "/metrics")]
    else:
        lines += [f"  {base_url}{path}" for path in ("/healthz", "/readyz")]
        api = " and the API" if settings.server.admin_api else ""
        lines.append(f"  operators (/metrics, /status{api}): {admin_url}")
    if settings.agent_core.url is None:
        ws_base = "ws" + base_url.removeprefix("http")
        url = f"{ws_base}{DEMO_AGENT_PATH}"
        lines.append(f"  built-in demo agent core: {url} (this edge's calls only)")
    else:
        lines.append(f"  agent core: {settings.agent_core.url}")
    public = settings.public_url
    enabled = enabled_providers(settings)
    lines += [f"  {line}" for line in network_lines([cls.name for cls in enabled])]
    for provider in enabled:
        lines += [f"  {line}" for line in provider.banner(public)]
    lines += [f"  warning: {warning}" for warning in config_warnings(settings)]
    return lines


def config_warnings(settings: Settings) -> list[str]:
    """What valid settings still get wrong (``serve``'s banner and ``check-config`` say it).

    Each enabled provider may add its own through a ``config_warnings(settings)``
    classmethod (SIP: numbers no trunk may call).
    """
    warnings: list[str] = []
    enabled = enabled_providers(settings)
    public = settings.public_url
    web_reached = [cls for cls in enabled if cls.uses_public_url]
    if web_reached and is_loopback_url(public):
        names = ", ".join(cls.name for cls in web_reached)
        warnings.append(
            f"public URL {public} is a loopback address, which {names} cannot reach; "
            "set server.public_url to a public or tunnel URL "
            "(the simulators work without one)"
        )
    for cls in enabled:
        hook = getattr(cls, "config_warnings", None)
        if callable(hook):
            warnings += [str(warning) for warning in hook(settings)]
    ffmpeg = ffmpeg_warning(settings)
    if ffmpeg is not None:
        warnings.append(ffmpeg)
    return warnings


def network_lines(enabled: list[str]) -> list[str]:
    """Which networks can reach this edge; with none, how to enable one (else nothing can)."""
    names = list(PROVIDERS)
    if not enabled:
        return [
            f"networks: none enabled ({', '.join(names)} are all off): no call can reach this edge",
            "  enable one with <network>.enabled: true in a --config file, "
            f"or try them all: telephony-edge serve --config {DEMO_CONFIG}",
        ]
    off = [name for name in names if name not in enabled]
    return [f"networks: {', '.join(enabled)}" + (f" (off: {', '.join(off)})" if off else "")]


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is this machine only (127.0.0.0/8, ::1, localhost)."""
    host = (URL(url).host or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
