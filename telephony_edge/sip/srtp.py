"""SRTP and SRTCP for a SIP call's media (RFC 3711, keys from SDES), through pylibsrtp.

Theory of operation
-------------------
:class:`SrtpSession` holds one call's two libsrtp contexts: ours, which
protects everything the edge sends with our master key, and the peer's,
which checks and decrypts what arrives with theirs (any SSRC: a peer that
restarts its stream is taken). The suites are ``AES_CM_128_HMAC_SHA1_80``
and ``_32`` (a 32-bit SRTP tag; SRTCP keeps 80 bits, as RFC 4568 says).
Both contexts live as long as their keys: :meth:`SrtpSession.update` with a
re-INVITE's terms rebuilds only a context whose key changed, so our packet
index never restarts under the same key.

The MKI the peer's key declares sits between the packet and its
authentication tag (RFC 3711 §3.1, outside the authenticated portion): it is
checked and cut out before libsrtp sees the packet. A key's lifetime (RFC
4568) counts the packets taken with it; once spent, its packets are dropped
until the peer rekeys.

The hook is the call's sockets (:mod:`~telephony_edge.sip.rtp_socket`):
:func:`secure` puts a session on them, after which every datagram they
receive is unprotected before the leg sees it (RTCP multiplexed on the RTP
port told apart by its packet type, RFC 5761) and every datagram sent through
their transport is protected (:class:`SecureTransport`), whoever sends it:
nothing leaves a secured socket in the clear. A packet that fails (forged,
replayed, malformed, a stale key) is dropped and counted in
``telephony_edge_sip_srtp_dropped_total{protocol,reason}``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pylibsrtp

from telephony_edge import metrics
from telephony_edge.sip.rtcp import RR, SR
from telephony_edge.sip.sdes import MasterKey, SrtpTerms

PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": (pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 10),
    "AES_CM_128_HMAC_SHA1_32": (pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 4),
}
SRTCP_TAG_BYTES = 10  # both suites (RFC 4568 §6.2)
_DROPPED = {
    (protocol, reason): metrics.SIP_SRTP_DROPPED.labels(protocol=protocol, reason=reason)
    for protocol in ("rtp", "rtcp")
    for reason in ("auth", "replay", "malformed", "mki", "key_expired", "unsent")
}


def _reason(exc: Exception) -> str:
    """The label for a libsrtp error (pylibsrtp raises them with libsrtp's own words)."""
    text = str(exc)
    if "authentication" in text:
        return "auth"
    if "replay" in text or "too old" in text:
        return "replay"
    if "key any more" in text:
        return "key_expired"
    return "malformed"


class _Context:
    """One direction's libsrtp context, with its key's MKI and packet budget."""

    def __init__(self, suite: str, key: MasterKey, outbound: bool, window: int) -> None:
        profile, self.tag_bytes = PROFILES[suite]
        policy = pylibsrtp.Policy(
            key=key.key,
            ssrc_type=(
                pylibsrtp.Policy.SSRC_ANY_OUTBOUND
                if outbound
                else pylibsrtp.Policy.SSRC_ANY_INBOUND
            ),
            srtp_profile=profile,
        )
        if not outbound:
            policy.window_size = window
        self.session = pylibsrtp.Session(policy)
        self.key = key
        self.left = key.lifetime  # packets the key may still protect (None: libsrtp's limit)

    def strip_mki(self, packet: bytes, tag_bytes: int) -> bytes | None:
        """The packet without the key's MKI (None: it carries another)."""
        mki = self.key.mki
        if not mki:
            return packet
        at = len(packet) - tag_bytes - len(mki)
        if at < 12 or packet[at : at + len(mki)] != mki:
            return None
        return packet[:at] + packet[at + len(mki) :]


class SrtpSession:
    """One call's SRTP both ways; see the module docstring."""

    def __init__(self, terms: SrtpTerms) -> None:
        self.terms = terms
        self._out = _Context(terms.suite, terms.local, True, terms.window)
        self._in = _Context(terms.suite, terms.remote, False, terms.window)
        self.dropped = 0

    def update(self, terms: SrtpTerms) -> None:
        """New terms from a re-INVITE: a context is rebuilt only when its key changed."""
        old, self.terms = self.terms, terms
        if (terms.suite, terms.local) != (old.suite, old.local):
            self._out = _Context(terms.suite, terms.local, True, terms.window)
        if (terms.suite, terms.remote, terms.window) != (old.suite, old.remote, old.window):
            self._in = _Context(terms.suite, terms.remote, False, terms.window)

    # -- out -----------------------------------------------------------------------------

    def protect(self, packet: bytes) -> bytes | None:
        """An RTP packet protected, or None (not sent, counted ``unsent``: libsrtp refuses
        to protect an index twice, or the key is spent)."""
        return self._seal(packet, "rtp", self._out.session.protect)

    def protect_rtcp(self, packet: bytes) -> bytes | None:
        return self._seal(packet, "rtcp", self._out.session.protect_rtcp)

    def _seal(self, packet: bytes, protocol: str, protect: Any) -> bytes | None:
        try:
            sealed: bytes = protect(packet)
        except (pylibsrtp.Error, ValueError):
            return self._drop(protocol, "unsent")
        return sealed

    # -- in ------------------------------------------------------------------------------

    def unprotect(self, packet: bytes) -> bytes | None:
        """An SRTP packet decrypted, or None (dropped, counted)."""
        context = self._in
        return self._open(packet, "rtp", context, context.tag_bytes, context.session.unprotect)

    def unprotect_rtcp(self, packet: bytes) -> bytes | None:
        """An SRTCP packet decrypted, or None (dropped, counted)."""
        context = self._in
        return self._open(packet, "rtcp", context, SRTCP_TAG_BYTES, context.session.unprotect_rtcp)

    def _open(
        self, packet: bytes, protocol: str, context: _Context, tag_bytes: int, unprotect: Any
    ) -> bytes | None:
        if context.left is not None and context.left <= 0:
            return self._drop(protocol, "key_expired")
        stripped = context.strip_mki(packet, tag_bytes)
        if stripped is None:
            return self._drop(protocol, "mki")
        try:
            plain: bytes = unprotect(stripped)
        except (pylibsrtp.Error, ValueError) as exc:
            return self._drop(protocol, _reason(exc))
        if context.left is not None:
            context.left -= 1
        return plain

    def _drop(self, protocol: str, reason: str) -> bytes | None:
        """Count a packet dropped; None, what the caller returns for it."""
        self.dropped += 1
        _DROPPED[protocol, reason].inc()
        return None

    def receive(self, packet: bytes) -> bytes | None:
        """A datagram on the RTP port: SRTP, or SRTCP multiplexed there (RFC 5761)."""
        if len(packet) > 1 and SR <= packet[1] <= RR:
            return self.unprotect_rtcp(packet)
        return self.unprotect(packet)


class SecureTransport:
    """A datagram transport whose every ``sendto`` is protected first (the rest passed on)."""

    def __init__(self, inner: asyncio.DatagramTransport, session: SrtpSession, rtcp: bool) -> None:
        self.inner = inner
        self.session = session
        self._protect = session.protect_rtcp if rtcp else session.protect

    def sendto(self, data: bytes, addr: Any = None) -> None:
        sealed = self._protect(data)
        if sealed is not None:
            self.inner.sendto(sealed, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def secure(current: SrtpSession | None, terms: SrtpTerms | None) -> tuple[SrtpSession | None, bool]:
    """The call's session for ``terms`` (``current`` updated when there is one); and
    whether it is a new object that the sockets must be given."""
    if terms is None:
        return None, current is not None
    if current is None:
        return SrtpSession(terms), True
    if terms != current.terms:
        current.update(terms)
    return current, False
