"""Redis URLs the edge accepts, parsed without importing redis-py (config validation uses it).

Accepted forms
--------------
``redis://[[user]:password@]host[:port][/db]``
    One server over TCP (redis-py's own URL syntax, query options included).
``rediss://…``
    The same over TLS.
``unix://[[user]:password@]/path/to/redis.sock[?db=N]``
    A local server over its Unix socket.
``redis+sentinel://[[user]:password@]host1:port1[,host2:port2…]/service_name[/db]``
    Redis Sentinel: the sentinels to ask (port defaults to 26379) and the
    monitored service whose *current* primary to use; after a failover the
    client asks again, so a promoted replica takes over without a restart.
    The password is the data nodes' password. Query options:
    ``sentinel_password=…`` when the sentinels themselves require AUTH
    (``sentinel_username=…`` with it for an ACL user), ``ssl=true`` for TLS
    to the data nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")
SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
_SENTINEL_OPTIONS = {"sentinel_password", "sentinel_username", "ssl"}


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL names."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False


def check_redis_url(url: str) -> str:
    """Return ``url`` if the edge can use it, else raise ValueError naming what is wrong."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise ValueError(
            f"redis_url {redact_redis_url(url)!r} must start with one of "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    if scheme == SENTINEL_SCHEME:
        parse_sentinel_url(url)
    elif scheme == "unix":
        if not urlsplit(url).path:
            raise ValueError(
                "a unix:// redis_url needs the socket path, e.g. unix:///run/redis.sock"
            )
    else:
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValueError(f"redis_url {redact_redis_url(url)!r} has no host")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"redis_url {redact_redis_url(url)!r}: {exc}") from None
    return url


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Split a ``redis+sentinel://`` URL into sentinels, service, db and credentials."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != SENTINEL_SCHEME:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
    rest, _, query = rest.partition("?")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        userinfo, hostpart = "", rest
    hosts, _, path = hostpart.partition("/")
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_host_port(h) for h in hosts.split(",") if h)
    if not sentinels:
        raise ValueError("a redis+sentinel:// URL needs at least one sentinel host:port")
    segments = [unquote(s) for s in path.split("/") if s]
    if not segments or len(segments) > 2:
        raise ValueError(
            "a redis+sentinel:// URL needs the service name as its path: "
            "redis+sentinel://host1:26379,host2:26379/service_name[/db]"
        )
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise ValueError(f"redis+sentinel:// database {segments[1]!r} is not a number")
        db = int(segments[1])
    options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = set(options) - _SENTINEL_OPTIONS
    if unknown:
        raise ValueError(f"unknown redis+sentinel:// option(s): {', '.join(sorted(unknown))}")
    return SentinelTarget(
        sentinels=sentinels,
        service_name=segments[0],
        db=db,
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
        ssl=options.get("ssl", "").lower() in ("1", "true", "yes"),
    )


def _host_port(item: str) -> tuple[str, int]:
    if item.startswith("["):  # [ipv6]:port
        host, _, port = item[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise ValueError(f"sentinel address {item!r} has no host")
    if not port:
        return host, DEFAULT_SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"sentinel address {item!r} has a bad port")
    return host, int(port)


def redact_redis_url(url: str) -> str:
    """The URL without its password, for error messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo, at, tail = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{tail}"
