"""What the SIP endpoint builds from its settings: the UA's config, admission, stream limits.

Why a module of its own: :class:`~telephony_edge.sip.transport.SipEndpoint`
carries out the sans-I/O UA's actions; turning the ``sip:`` section into the
records that the UA, its :class:`~telephony_edge.sip.trunks.Admission` and the
TCP/TLS sides take is a pure translation, with no socket or task in it, and
reads best apart from the I/O.
"""

from __future__ import annotations

from collections.abc import Callable

from telephony_edge.routing import NumberRouter
from telephony_edge.sip import tcp_policy
from telephony_edge.sip.auth import DigestServer
from telephony_edge.sip.auth_guard import DigestGuard, GuardLimits
from telephony_edge.sip.sdp import MediaConfig
from telephony_edge.sip.settings import SipSettings
from telephony_edge.sip.trunks import Admission, DigestEvent
from telephony_edge.sip.ua_records import UaConfig


def ua_config(settings: SipSettings, host: str, port: int, tls_port: int) -> UaConfig:
    """The UA's config: advertised ``host:port`` (and the TLS port with ``sip.tls``)."""
    media = MediaConfig(
        address=host,
        address6=settings.public_host6,
        preferences=settings.codecs,
        order="local" if settings.codec_order == "local" else "offer",
        wideband_first=settings.prefer_g722,
    )
    return UaConfig(
        host=host,
        host6=settings.public_host6,
        port=port,
        media=media,
        refer_scheme=settings.refer_to,
        refer_host=settings.refer_host,
        refer_timeout=settings.refer_timeout_s,
        refer_refused_bye=settings.refer_refused == "bye",
        min_se=settings.min_se_s,
        session_expires=settings.session_expires_s,
        max_transactions=settings.max_transactions,
        nat_keepalive=settings.nat_keepalive_s or None,
        srtp=settings.srtp,
        srtp_over_plain=settings.srtp_over_plain,
        dialog_contact=settings.dialog_proxy,
        tls_port=(settings.advertised_tls_port or tls_port) if settings.tls else None,
    )


def admission(
    settings: SipSettings,
    router: NumberRouter,
    realm: str,
    on_digest: DigestEvent,
    registered: Callable[[str], str | None],
) -> Admission:
    """Who may call: the trunks, the SIP numbers of the routes, the accounts' users."""

    def dialled(user: str) -> str | None:
        route = router.lookup(user)
        return route.number if route and route.provider == "sip" and route.local else None

    return Admission(
        [t.trunk(name, realm) for name, t in settings.trunks.items()],
        dialled,
        drop_unknown=settings.drop_unknown,
        rate_per_minute=settings.rate_per_minute,
        burst=settings.rate_burst,
        digest=DigestServer(settings.nonce_ttl_s),
        guard=DigestGuard(
            GuardLimits(
                per_source=settings.digest_max_failures,
                per_username=settings.digest_max_user_failures,
                window=settings.digest_failure_window_s,
                lockout=settings.digest_lockout_s,
            )
        ),
        on_digest=on_digest,
        registered=registered,
    )


def stream_limits(settings: SipSettings) -> tcp_policy.Limits:
    """The limits of the TCP and TLS sides' connections (``sip.tcp_*``)."""
    return tcp_policy.Limits(
        max_connections=settings.tcp_max_connections,
        max_per_source=settings.tcp_max_per_source,
        first_message_timeout=settings.tcp_first_message_timeout_s,
        read_timeout=settings.tcp_read_timeout_s,
        idle_timeout=settings.tcp_idle_timeout_s,
    )
