"""The asyncio shell around the sans-I/O :class:`~telephony_edge.sip.ua.UserAgent` (UDP, TCP).

Theory of operation
-------------------
:class:`SipEndpoint` owns the worker's SIP sockets: UDP, and TCP on the same
port (:mod:`telephony_edge.sip.tcp`, ``sip.tcp``), and TLS, as
:mod:`telephony_edge.sip.listeners` bound them. Every datagram or framed
TCP message goes to ``UserAgent.receive`` with ``loop.time()``; the actions that come out are
carried out at once (``sendto``, legs ended, calls started), and one timer
handle follows ``UserAgent.next_deadline()`` so the UA's retransmissions and
timeouts fire on time. Nothing here parses SIP or decides protocol
behaviour.

Who may call is the UA's :class:`~telephony_edge.sip.trunks.Admission`
(built from ``sip.trunks`` and the number config by
:mod:`telephony_edge.sip.endpoint_setup`). A new call
(:class:`~telephony_edge.sip.ua.StartCall`) is :class:`~telephony_edge.sip.answerer.Answerer`'s:
its record found, rung, answered and run as any other; the edge's own calls
are :class:`~telephony_edge.sip.dialer.Dialer`'s, its registrations
:class:`~telephony_edge.sip.accounts.Accounts`'s. A BYE from the caller ends the leg
(``user-ended``); the edge's hang-up (agent ``end_call``, the API, drain)
comes back through :meth:`SipEndpoint.hangup` and the UA sends BYE.
A transfer (agent ``transfer_call``, the API) is :meth:`SipEndpoint.transfer`:
the UA's REFER, awaited until its :class:`~telephony_edge.sip.ua.TransferResult`
(a failure raises :class:`~telephony_edge.calls.refusals.ProviderError`, as the
other networks' API errors do, so the agent core or the API caller hears it).

What the UA refuses as the sender's fault (:class:`~telephony_edge.sip.ua.BadMessage`:
malformed, unknown method, bad SDP …) is bad input
(:func:`telephony_edge.badinput.report`, ``source`` ``sip-udp`` or
``sip-tcp``): counted, and a warning rate-limited per sender, never an
ERROR. An internal error of the UA is the edge's own fault: logged at ERROR
with its traceback, at most once a minute for the same error, so a packet
that finds a bug cannot flood the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from functools import partial
from typing import Any

from telephony_edge import badinput, metrics
from telephony_edge.calls.refusals import ProviderError
from telephony_edge.services import Services
from telephony_edge.sip import endpoint_setup
from telephony_edge.sip.accounts import Accounts
from telephony_edge.sip.answerer import Answerer
from telephony_edge.sip.dialer import Dialer
from telephony_edge.sip.family import Family, family_of, socket_host
from telephony_edge.sip.leg import SipLeg
from telephony_edge.sip.listeners import StreamHooks, bind_udp_and_tcp, open_tls
from telephony_edge.sip.outbound import Outbound
from telephony_edge.sip.ratelimit import RequestGate
from telephony_edge.sip.resolve import SipResolver, Unresolvable, target_of
from telephony_edge.sip.resumer import Resumer
from telephony_edge.sip.rtp_socket import RtpPorts
from telephony_edge.sip.sendto import send_datagram
from telephony_edge.sip.settings import SipSettings
from telephony_edge.sip.tcp import TcpSide
from telephony_edge.sip.tls import TlsSide
from telephony_edge.sip.ua import UserAgent
from telephony_edge.sip.ua_records import (
    Action,
    CallConfirmed,
    CallEnded,
    CallProgress,
    CallRefused,
    DialFailed,
    InfoReceived,
    MediaUpdated,
    RegistrationChanged,
    Resolve,
    Send,
    StartCall,
    TransferResult,
    dtmf_from_info,
)
from telephony_edge.sip.uri import format_hostport

log = logging.getLogger(__name__)

INTERNAL_ERROR_INTERVAL_S = 60.0  # the same internal error is logged once in this
RELEASED_NAMES = 1024  # ended calls whose call id a late DNS failure can still name


class SipEndpoint(asyncio.DatagramProtocol):
    """The worker's SIP side over UDP; see the module docstring."""

    def __init__(self, services: Services, settings: SipSettings) -> None:
        self.services = services
        self.settings = settings
        self.ua: UserAgent | None = None
        self.port = 0  # bound
        self.legs: dict[str, SipLeg] = {}
        hosts = settings.bind_hosts
        self.rtp_ports = RtpPorts(hosts, settings.rtp_port_min, settings.rtp_port_max)
        self._udp: dict[Family, asyncio.DatagramTransport] = {}  # a SIP socket per family
        self.tcp: TcpSide | None = None
        self.tls: TlsSide | None = None  # SIP over TLS: our connections; a listener with sip.tls
        self.tls_port = 0  # bound, with sip.tls
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._transfers: dict[str, asyncio.Future[None]] = {}
        self._call_ids: dict[str, str] = {}  # UA call ref → the edge's call id
        self._released: dict[str, str] = {}  # the same for calls just released
        self._internal_errors = badinput.RateLimiter(INTERNAL_ERROR_INTERVAL_S, max_sources=64)
        resolver = SipResolver(settings.dns_servers, settings.dns_timeout_s, tuple(hosts))
        self.outbound = Outbound(resolver, self._send_now, self._unreachable)
        trunks = [t.trunk(name, "") for name, t in settings.trunks.items()]
        self.gate = RequestGate(
            settings.request_rate_per_s,
            settings.request_burst,
            trusted=lambda address: any(t.holds(address) for t in trunks),
            trusted_rate=settings.trunk_request_rate_per_s,
            trusted_burst=settings.trunk_request_burst,
        )
        self._stream_calls: dict[str, tuple[tuple[str, int], tuple[str, int]]] = {}
        self.answerer = Answerer(self)  # the calls that come in
        self.dialer = Dialer(self)  # the edge's outbound calls
        self.accounts = Accounts(self)  # the accounts it registers (sip.accounts)
        self.resumer = Resumer(self)  # calls that outlive their worker (sip.dialog_proxy)

    # -- life ---------------------------------------------------------------------------

    @property
    def advertised(self) -> tuple[str, int]:
        return self.settings.public_host, self.settings.advertised_port or self.port

    async def start(self) -> None:
        bound = await bind_udp_and_tcp(self, self.settings, self._stream_hooks())
        self._udp, self.port, self.tcp = bound.udp, bound.port, bound.tcp
        self.tls = await open_tls(self.settings, self._stream_hooks())
        self.tls_port = self.tls.port
        settings = self.settings
        host, port = self.advertised
        config = endpoint_setup.ua_config(settings, host, port, self.tls_port)
        admission = endpoint_setup.admission(
            settings, self.services.router, host, self._digest_event, self.accounts.number_of
        )
        self.ua = UserAgent(config, admission=admission)
        self._spawn(self.accounts.run())
        if self.resumer.enabled:  # other workers' deaths seen, their calls taken over
            self._spawn(self.resumer.watch())
        log.info(
            "SIP listening",
            extra={
                "sip_bind": " ".join(
                    format_hostport(h, self.port) for h in settings.bind_hosts.values()
                ),
                "sip_tls_port": self.tls_port or None,
            },
        )

    def _digest_event(self, outcome: str, source: str, trunk: str) -> None:
        """Counted; a wrong, replayed or locked-out digest is also warned, per sender."""
        metrics.SIP_DIGEST.labels(outcome=outcome).inc()
        if outcome in ("bad", "replayed", "locked"):
            what = {"bad": "wrong credentials", "replayed": "a replayed nonce and nc (401)"}
            reason = f"digest for trunk {trunk}: {what.get(outcome, 'locked out (403)')}"
            badinput.report("sip-digest", reason, source)

    def _stream_hooks(self) -> StreamHooks:
        return StreamHooks(
            receive=self._receive,
            dialogs=self._stream_targets,
            trusted=self.gate.trusted,
            policy=endpoint_setup.stream_limits(self.settings),
        )

    async def stop(self) -> None:
        await self.accounts.stop()
        for ref in list(self.legs):
            self.hangup(ref)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._timer is not None:
            self._timer.cancel()
        await self.outbound.close()
        for transport in self._udp.values():
            transport.close()
        if self.tcp is not None:
            await self.tcp.stop()
        if self.tls is not None:
            await self.tls.stop()

    # -- input --------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._receive(data, (str(addr[0]), int(addr[1])), "UDP")

    def _receive(self, data: bytes, source: tuple[str, int], transport: str) -> None:
        ua = self.ua
        if ua is None:
            return
        ua.set_draining(self.settings.reject_when_draining and not self.services.calls.accepting)
        now = asyncio.get_running_loop().time()
        if self._limited(data, source, transport, now):
            return
        self._apply(ua.receive(data, source, now, transport))
        self._report_bad(source, transport)
        self._log_internal_error()

    def _limited(self, data: bytes, source: tuple[str, int], transport: str, now: float) -> bool:
        """A request over its source's rate (:mod:`~telephony_edge.sip.ratelimit`): dropped
        (UDP) or answered 503 (TCP) before the UA parses it; counted, and warned per sender."""
        limited = self.gate.check(data, source[0], transport, now)
        if limited is None:
            return False
        kind = transport.lower()
        metrics.SIP_RATE_LIMITED.labels(method=limited.method, transport=kind).inc()
        side = self.tls if transport == "TLS" else self.tcp
        if limited.answer is not None and side is not None:
            side.send(source, limited.answer)
        what = "answered 503" if limited.answer is not None else "dropped"
        reason = f"{limited.method} over the source's request rate ({what})"
        badinput.report(f"sip-{kind}", reason, source[0], port=source[1], count=False)
        return True

    def _track_stream(self, ref: str) -> None:
        """Remember where a call over a stream goes when its connection is gone: the
        route set's first hop or the Contact (§12.2.1.1), refreshed with the target. Kept
        here until :class:`CallEnded`, after the BYE of the same batch was sent."""
        call = self.ua.calls().get(ref) if self.ua is not None else None
        if call is None or call.transport == "UDP":
            return
        try:
            target = call.dialog.destination()
        except ValueError:  # no usable target: the connection is all there is
            target = call.source
        self._stream_calls[ref] = (call.source, target)

    def _stream_targets(self) -> dict[tuple[str, int], tuple[str, int]]:
        """Each live call over a stream: the connection its INVITE came on → where its
        dialog's requests go when that connection is gone (§18.1.1 opens one there)."""
        return dict(self._stream_calls.values())

    def _tick(self) -> None:
        self._timer = self._timer_at = None
        if self.ua is not None:
            self._apply(self.ua.tick(asyncio.get_running_loop().time()))

    def _report_bad(self, source: tuple[str, int], transport: str) -> None:
        """The message just received was the sender's fault: bad input, not an error."""
        ua = self.ua
        bad = ua.last_bad if ua is not None else None
        if ua is None or bad is None:
            return
        ua.last_bad = None
        answer = f" (answered {bad.status})" if bad.status else " (dropped)"
        badinput.report(
            f"sip-{transport.lower()}",
            bad.reason + answer,
            source[0],
            port=source[1],
            call_id=self._call_ids.get(bad.call) if bad.call else None,
        )

    def _log_internal_error(self) -> None:
        """A bug of the UA's (the packet was dropped): ERROR with the traceback, at most
        once per ``INTERNAL_ERROR_INTERVAL_S`` for the same error."""
        ua = self.ua
        if ua is None or ua.last_error is None:
            return
        error, ua.last_error = ua.last_error, None
        lines = error.strip().splitlines()
        admitted = self._internal_errors.admit(lines[-1][:200] if lines else "")
        if admitted is not None:
            log.error(
                "SIP user agent error (packet dropped):\n%s",
                error,
                extra={"repeats": admitted.suppressed},
            )

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.outbound.send(
                    action.data,
                    action.dest,
                    action.transport,
                    action.uri,
                    action.call,
                    action.server_name,
                )
            elif isinstance(action, StartCall):
                self._track_stream(action.call)
                self._spawn(self.answerer.start(action))
            elif isinstance(action, CallRefused):
                log.log(
                    logging.DEBUG if action.status is None else logging.INFO,
                    "SIP INVITE not admitted",
                    extra={
                        "sip_call_id": action.call_id[:128],
                        "source": f"{action.source[0]}:{action.source[1]}",
                        "status": action.status or "dropped",
                        "reason": action.reason,
                    },
                )
            elif isinstance(action, CallConfirmed | MediaUpdated):
                if isinstance(action, CallConfirmed):
                    self.answerer.acknowledged(action.call)
                    self.dialer.answered(action.call, action.media)
                self._track_stream(action.call)  # a re-INVITE may move the target
                leg = self.legs.get(action.call)
                if leg is not None and action.media is not None:
                    leg.set_media(action.media)
            elif isinstance(action, InfoReceived):
                leg = self.legs.get(action.call)
                digit = dtmf_from_info(action.content_type, action.body)
                if leg is not None and digit is not None:
                    leg.dtmf(digit)
            elif isinstance(action, TransferResult):
                self._transfer_result(action)
            elif isinstance(action, CallEnded):
                self._call_ended(action)
            elif isinstance(action, Resolve):
                self._spawn(self._resolve(action))
            elif isinstance(action, CallProgress):
                self.dialer.progress(action)
            elif isinstance(action, DialFailed):
                self.dialer.failed(action)
            elif isinstance(action, RegistrationChanged):
                self.accounts.changed(action)
        self._schedule()

    async def _resolve(self, lookup: Resolve) -> None:
        """Every address of a hop of the edge's own request, in RFC 3263 order, to the UA."""
        try:
            addresses = await self.outbound.resolver.lookup_all(
                target_of(lookup.uri, lookup.transport)
            )
            reason = ""
        except (Unresolvable, ValueError) as exc:
            addresses, reason = [], str(exc) or "not a SIP URI"
            metrics.SIP_SEND_FAILURES.labels(kind="dns").inc()
        if self.ua is not None:
            self._apply(self.ua.resolved(lookup.owner, lookup.uri, addresses, self._now(), reason))
            self._log_internal_error()

    def _send_now(
        self,
        data: bytes,
        dest: tuple[str, int],
        transport: str,
        server_name: str | None = None,
        call: str | None = None,
    ) -> None:
        if transport != "UDP":
            side = self.tls if transport == "TLS" else self.tcp
            if side is not None:
                failed = None if call is None else partial(self._connect_failed, call, dest)
                side.send(dest, data, server_name, failed)
        else:  # the socket of the address's family (an IPv4-mapped one is IPv4)
            udp = self._udp.get(family_of(dest[0]))
            send_datagram(udp, data, (socket_host(dest[0]), dest[1]), "sip")

    def _connect_failed(self, ref: str, dest: tuple[str, int], reason: str) -> None:
        """A connection a call needed could not be opened (sip/tcp.py counted it): a
        warning naming the call, and the UA goes on (a call being placed: the next
        address, RFC 3261 §8.1.3.1)."""
        log.warning(
            "SIP connection for a call failed",
            extra={
                "call_id": self._call_ids.get(ref) or self._released.get(ref),
                "sip_call": ref,
                "reason": reason,
            },
        )
        if self.ua is not None:
            self._apply(self.ua.connect_failed(ref, dest, reason, self._now()))
            self._log_internal_error()

    def _unreachable(self, ref: str, reason: str) -> None:
        """A call's next hop names a host that does not resolve (sip/outbound.py): counted,
        a warning naming the call, and the UA sends to the INVITE's source and ends it."""
        metrics.SIP_SEND_FAILURES.labels(kind="dns").inc()
        log.warning(
            "SIP next hop does not resolve: the call's requests go to where its INVITE "
            "came from, and the call ends",
            extra={
                "call_id": self._call_ids.get(ref) or self._released.get(ref),
                "sip_call": ref,
                "reason": reason,
            },
        )
        if self.ua is not None:
            self._apply(self.ua.unreachable(ref, self._now()))
            self._log_internal_error()

    def _transfer_result(self, result: TransferResult) -> None:
        waiter = self._transfers.pop(result.call, None)
        log.info(
            "SIP transfer %s",
            "done" if result.ok else "failed",
            extra={"sip_call": result.call, "status": result.status, "reason": result.reason},
        )
        if waiter is None or waiter.done():
            return
        if result.ok:
            waiter.set_result(None)
        else:
            waiter.set_exception(ProviderError(result.reason, status=result.status))

    def _call_ended(self, ended: CallEnded) -> None:
        self._stream_calls.pop(ended.call, None)
        self.answerer.ended(ended.call, ended.reason)
        waiter = self._transfers.pop(ended.call, None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(ProviderError("the call ended during the transfer"))
        leg = self.legs.get(ended.call)
        if leg is None and self.dialer.ended(ended.call, ended.reason):
            return  # an outbound call whose leg is being made: it ends at once
        if leg is None or ended.reason == "transferred":
            return  # a transfer's end is the call machine's (the transfer returned)
        if ended.reason == "remote_bye":
            leg.ended("BYE")
        elif ended.reason == "unreachable":
            leg.ended("unreachable", "the next hop of the call's dialog does not resolve")
        elif ended.reason == "resume_failed":
            why = f"the peer answered {ended.status} to the re-INVITE moving the call here"
            leg.ended("resume-failed", why)
        elif ended.reason == "refer_refused":
            leg.ended("refer-refused", "the trunk refused the REFER; the edge hung up")
        elif ended.reason == "session_expired":
            # the UA sent its BYE; the call ends ``timeout``, as when RTP stops
            leg.ended(
                "session-expired",
                "the SIP session timer expired (no refresh, RFC 4028)",
                timeout=True,
            )
        else:
            leg.ended(ended.reason)

    def _schedule(self) -> None:
        if self.ua is not None:
            metrics.SIP_TRANSACTIONS_OPEN.set(self.ua.open_transactions)
        at = self.ua.next_deadline() if self.ua is not None else None
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = None if at is None else asyncio.get_running_loop().call_at(at, self._tick)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- calls -------------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    # -- CallControl (from the legs) ---------------------------------------------------

    def hangup(self, ref: str) -> None:
        if self.ua is not None:
            self._apply(self.ua.hangup(ref, self._now()))

    async def transfer(self, ref: str, destination: str) -> None:
        ua = self.ua
        if ua is None:
            raise ProviderError("SIP is not running")
        if ref in self._transfers:
            raise ProviderError("a transfer is already under way")
        waiter = asyncio.get_running_loop().create_future()
        self._transfers[ref] = waiter
        self._apply(ua.refer(ref, destination, self._now()))
        try:
            await waiter
        finally:
            if self._transfers.get(ref) is waiter:
                del self._transfers[ref]

    def info(self, ref: str, content_type: str, body: bytes) -> bool:
        """INFO in the call's dialog (the agent's keys where RFC 4733 was not offered); its
        answer is not waited for. False when the dialog is not up."""
        ua = self.ua
        if ua is None:
            return False
        headers = [("Content-Type", content_type)]
        actions = ua.send_request(ref, "INFO", self._now(), headers, body)
        self._apply(actions)
        return bool(actions)

    def dialog_state(self, ref: str) -> dict[str, Any]:
        call_id = self._call_ids.get(ref)
        found = None if self.ua is None or call_id is None else self.ua.dialog_state(ref, call_id)
        return {} if found is None else found.to_dict()

    async def hand_off(self, ref: str) -> None:
        await self.resumer.let_go(ref)

    def release(self, ref: str) -> None:
        self.resumer.release(ref)
        call_id = self._call_ids.pop(ref, None)
        if call_id is not None:  # its BYE may still fail to resolve: name the call then
            self._released[ref] = call_id
            while len(self._released) > RELEASED_NAMES:
                del self._released[next(iter(self._released))]
        leg = self.legs.pop(ref, None)
        if leg is not None:
            self.rtp_ports.release(leg.port)
