"""SIP over TLS (RFC 3261 §26, and §18 on a stream as TCP): the edge's certificate, reloaded
when its files change, and TLS connections both ways.

Theory of operation
-------------------
:class:`TlsSide` is :class:`~telephony_edge.sip.tcp.TcpSide` on its own port
(``sip.tls_port``, 5061), with the same framing, limits and timeouts
(:mod:`~telephony_edge.sip.tcp_policy`). A connection is accepted as TCP and
admitted by that policy (per source, a full table) before any handshake, so a
flood of connections costs no more handshakes than the policy lets in. Its
:class:`TlsStream` then runs TLS itself, through the ``ssl`` module's memory
BIOs (what asyncio's own SSL transport is made of): the same on uvloop and
the stdlib loop, with no handover between protocols (uvloop's server-side
``start_tls`` loses the ClientHello that arrives before it takes over), and
every failure in the edge's hands. The context is the one
:meth:`Certificate.context` gives when the connection is admitted. The
stream carries SIP once the handshake is done; one that fails, or takes
longer than ``sip.tls_handshake_timeout_s``, closes the connection: bad input
(``sip-tls``, counted and warned per sender) and
``telephony_edge_sip_tcp_closed_total{reason="handshake"}``. A connection that
sends no SIP message in ``sip.tcp_first_message_timeout_s`` is closed as a
TCP one is.

:class:`Certificate` checks the certificate and key files at each new
connection (``os.stat``: modification time, size, inode; nothing else per
connection) and builds a new context when they changed, so a renewed
certificate (cert-manager, certbot) is served from the next connection on,
while connections already up keep theirs. Files that do not load (a key that
does not match its certificate while both are being replaced, a file gone)
leave the old context in use, with a warning, until they change again.

The edge's own connections (§18.1.1, when a dialog's connection is gone; the
edge's outbound calls) verify the server's certificate against the system's
trust store, or ``sip.tls_ca_file`` alone when it is set, and check its name:
:meth:`TlsSide.connect` with ``server_name`` (the URI's host; default the
address, which then must be in the certificate). They use asyncio's own TLS
client (``create_connection(ssl=…)``), which uvloop runs well. One that fails
is counted by its reason (:meth:`TlsSide.connect_failure`: ``certificate``
for a server certificate not trusted or not for the name, ``handshake`` for
any other TLS failure) and told to the sender.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from telephony_edge import badinput
from telephony_edge.sip import tcp_policy
from telephony_edge.sip.parse import DEFAULT_LIMITS, Limits
from telephony_edge.sip.tcp import Address, SipStream, TcpSide

log = logging.getLogger(__name__)

MAX_READ = 65536  # decrypted bytes taken at once (the framer bounds what they make up)

Stamp = tuple[tuple[int, int, int], ...]  # (mtime ns, size, inode) of each file


def _server_context(certificate: str, private_key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, private_key)
    return context


def client_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A context for the edge's own TLS connections: the server's certificate verified
    against ``ca_file`` when given, else the system's trust store; its name checked."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Certificate:
    """The listener's context, rebuilt when its files change; see the module docstring."""

    def __init__(self, certificate: str, private_key: str) -> None:
        self.files = (certificate, private_key)
        self.reloads = 0
        self._stamp = self._stat()
        self._context = _server_context(certificate, private_key)  # a bad one stops the start
        self._failed: Stamp | None = None

    def _stat(self) -> Stamp | None:
        try:
            stats = [os.stat(path) for path in self.files]
        except OSError:
            return None
        return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in stats)

    def context(self) -> ssl.SSLContext:
        """The context for a new connection: rebuilt first if the files changed."""
        stamp = self._stat()
        if stamp is None or stamp in (self._stamp, self._failed):
            return self._context
        try:
            context = _server_context(*self.files)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self._failed = stamp
            log.warning(
                "SIP TLS certificate not reloaded: the old one is still served",
                extra={"certificate": self.files[0], "error": f"{type(exc).__name__}: {exc}"},
            )
            return self._context
        self._context, self._stamp, self._failed = context, stamp, None
        self.reloads += 1
        log.info("SIP TLS certificate reloaded", extra={"certificate": self.files[0]})
        return context


@dataclass(frozen=True, slots=True)
class TlsConfig:
    certificate: Certificate | None  # None: no listener, our own connections only
    client: ssl.SSLContext
    handshake_timeout: float = 5.0


class TlsStream(SipStream):
    """A caller's connection to the TLS listener: TLS over memory BIOs, SIP inside."""

    def __init__(self, side: TlsSide) -> None:
        super().__init__(side)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls: ssl.SSLObject | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def begin(self, context: ssl.SSLContext, timeout: float) -> None:
        """Admitted: the handshake may start (the ClientHello may be in already)."""
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._deadline = asyncio.get_running_loop().call_later(timeout, self._timed_out)

    def _timed_out(self) -> None:
        if not self.ready and not self.closing:
            self._failed(TimeoutError("handshake"))

    def _failed(self, exc: BaseException) -> None:
        side = self.side
        assert isinstance(side, TlsSide)
        side.handshake_failed(self, exc)

    def data_received(self, data: bytes) -> None:
        tls = self._tls
        if tls is None or self.closing:
            return
        self._incoming.write(data)
        if not self.ready:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except (ssl.SSLError, ValueError) as exc:
                self._flush()  # the alert, for the peer's logs
                self._failed(exc)
                return
            self.ready = True
            if self._deadline is not None:
                self._deadline.cancel()
        plain = bytearray()
        try:
            while chunk := tls.read(MAX_READ):
                plain += chunk
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:  # close_notify, or a record that does not decrypt
            self._flush()
            self.close()
            return
        self._flush()  # TLS 1.3 tickets, key updates
        if plain:
            super().data_received(bytes(plain))

    def write(self, data: bytes) -> None:
        if self._tls is None or not self.ready or self.closing:
            return
        try:
            self._tls.write(data)
        except ssl.SSLError:
            self.close()
            return
        self._flush()

    def _flush(self) -> None:
        out = self._outgoing.read()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)


class TlsSide(TcpSide):
    """SIP over TLS: see the module docstring."""

    source = "sip-tls"

    def __init__(
        self,
        deliver: Callable[[bytes, Address], None],
        tls: TlsConfig,
        *,
        limits: Limits = DEFAULT_LIMITS,
        policy: tcp_policy.Limits = tcp_policy.DEFAULT_LIMITS,
        dialogs: Callable[[], dict[Address, Address]] = dict,
        trusted: Callable[[str], bool] = lambda address: False,
    ) -> None:
        super().__init__(deliver, limits=limits, policy=policy, dialogs=dialogs, trusted=trusted)
        self.tls = tls
        self.handshakes_failed = 0

    def _accept(self) -> SipStream:
        return TlsStream(self)

    def opened(self, stream: SipStream) -> None:
        """Ours are TLS already (:meth:`connect`); a caller's handshake starts now."""
        if isinstance(stream, TlsStream) and self.tls.certificate is not None:
            stream.begin(self.tls.certificate.context(), self.tls.handshake_timeout)
        else:
            stream.ready = True

    def handshake_failed(self, stream: SipStream, exc: BaseException) -> None:
        self.handshakes_failed += 1
        self._closed(stream, "handshake")
        why = "timed out" if isinstance(exc, TimeoutError) else _reason(exc)
        badinput.report(self.source, f"TLS handshake failed: {why}", stream.peer[0])
        if stream.transport is not None:
            stream.transport.abort()
        self.forget(stream)

    async def connect(self, dest: Address, server_name: str | None = None) -> SipStream:
        """A TLS connection of ours to ``dest``, the server's certificate verified for
        ``server_name`` (default: the address); raises OSError (ssl.SSLError for a
        certificate that does not verify) or TimeoutError."""
        loop = asyncio.get_running_loop()
        _, stream = await asyncio.wait_for(
            loop.create_connection(
                lambda: SipStream(self, outbound=True),
                dest[0],
                dest[1],
                ssl=self.tls.client,
                server_hostname=server_name or dest[0],
                ssl_handshake_timeout=self.tls.handshake_timeout,
            ),
            self.policy.read_timeout + self.tls.handshake_timeout,
        )
        return stream

    def connect_failure(self, exc: OSError | TimeoutError) -> tuple[str, str]:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return "certificate", f"certificate not trusted ({exc.verify_message})"
        if isinstance(exc, ssl.SSLError):
            return "handshake", f"TLS handshake failed ({_reason(exc)})"
        return super().connect_failure(exc)


def _reason(exc: BaseException) -> str:
    """A TLS error in a few words (OpenSSL's reason code, never the peer's bytes)."""
    reason = getattr(exc, "reason", None)
    return str(reason).lower()[:60] if reason else type(exc).__name__
