"""The UA's state and the primitives every part of it sends with: responses, client
transactions in a dialog, the 2xx and its retransmitter, and a call's end.

:class:`UaCore` is the base of :class:`~telephony_edge.sip.ua.UserAgent`; the
answering (:mod:`.ua_answer`), re-offer (:mod:`.ua_reoffer`) and transfer
(:mod:`.ua_transfer`) parts build on it. Turning transaction outputs into actions
(:meth:`UaCore._outputs`) is the UA's own, since it knows every kind of entry.
"""

from __future__ import annotations

import itertools
import re
import secrets
import traceback
from collections.abc import Callable

from telephony_edge.sip import sdes
from telephony_edge.sip.dialog import Address, DialogState
from telephony_edge.sip.family import Family, family_of
from telephony_edge.sip.header_values import NameAddr
from telephony_edge.sip.message import Request, Response, build_response
from telephony_edge.sip.nat import (
    in_dialog_dest,
    ip_literal,
)
from telephony_edge.sip.sdp import (
    LocalSession,
    SdpError,
)
from telephony_edge.sip.session_timer import Negotiated as SessionTerms
from telephony_edge.sip.transaction import (
    InviteServerTransaction,
    Key,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Output,
    Uas2xxRetransmitter,
    client_key,
)
from telephony_edge.sip.trunks import Admission
from telephony_edge.sip.tx_table import TransactionTable
from telephony_edge.sip.ua_records import (
    Action,
    BadMessage,
    Call,
    CallEnded,
    Entry,
    Phase,
    Stats,
    UaConfig,
)


class UaCore:
    """See the module docstring."""

    def __init__(
        self,
        config: UaConfig | None = None,
        new_id: Callable[[], str] | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.config = config or UaConfig()
        self.admission = admission
        self._new_id = new_id or (lambda: secrets.token_hex(8))
        self.stats = Stats()
        self.draining = False
        self.last_error: str | None = None
        self.last_bad: BadMessage | None = None
        self._machines: TransactionTable[Entry] = TransactionTable()
        self._calls: dict[str, Call] = {}
        self._dialogs: dict[tuple[str, str, str], str] = {}
        self._origins: dict[tuple[str, str, int], str] = {}  # (Call-ID, From tag, CSeq)
        self._pending = 0
        self._seq = itertools.count(1)

    def _note_error(self) -> None:
        """Count an internal error and keep its traceback for the shell to log."""
        self.stats.internal_errors += 1
        self.last_error = traceback.format_exc()

    def _bad(self, reason: str, status: int | None, call: str | None = None) -> None:
        self.last_bad = BadMessage(reason, status, call)

    # -- sending -------------------------------------------------------------------------

    def _capabilities(self) -> list[tuple[str, str]]:
        return [
            ("Allow", ", ".join(self.config.allow)),
            ("Accept", "application/sdp, application/dtmf-relay, application/dtmf"),
            ("Supported", ", ".join(self.config.supported)),
        ]

    def _sdp_headers(self) -> list[tuple[str, str]]:
        return [("Content-Type", "application/sdp")]

    def _response(
        self,
        req: Request,
        code: int,
        call: Call | None,
        extra: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> Response:
        headers = list(extra or [])
        if call is not None and 100 < code < 300 and req.method in ("INVITE", "UPDATE"):
            headers.insert(0, ("Contact", call.dialog.local_contact))
            if code < 300 and code >= 200:
                headers += self._capabilities()
        headers.append(("Server", self.config.user_agent))
        tag = call.ref if call is not None else self._new_id()
        return build_response(req, code, None, headers, body, to_tag=tag)

    def _tx_respond(self, key: Key, response: Response, now: float) -> list[Action]:
        entry = self._machines.get(key)
        if entry is None:
            return []
        machine = entry.machine
        assert isinstance(machine, (InviteServerTransaction, NonInviteServerTransaction))
        return self._outputs(key, entry, machine.respond(response, now), now)

    def _answer_tx(
        self,
        req: Request,
        key: Key,
        dest: Address,
        transport: str,
        code: int,
        now: float,
        extra: list[tuple[str, str]] | None = None,
    ) -> list[Action]:
        """Answer a request at once through a new non-INVITE server transaction (so
        that a resent request gets the same answer until Timer J)."""
        machine = NonInviteServerTransaction(req, transport != "UDP", self.config.timers)
        entry = Entry(machine, dest, transport, None, "server")
        self._machines[key] = entry
        headers = list(extra or [])
        headers.append(("Server", self.config.user_agent))
        response = build_response(req, code, None, headers, to_tag=self._new_id())
        return self._outputs(key, entry, machine.respond(response, now), now)

    def _send_2xx(
        self,
        call: Call,
        req: Request,
        key: Key,
        body: bytes,
        now: float,
        terms: SessionTerms | None = None,
    ) -> list[Action]:
        headers = (terms.headers() if terms else []) + self._sdp_headers()
        response = self._response(req, 200, call, headers, body)
        actions = self._tx_respond(key, response, now)
        retx = Uas2xxRetransmitter(response, self.config.timers)
        retx_key: Key = ("2xx", call.ref, str(retx.cseq))
        entry = Entry(retx, self._machines[key].dest, call.transport, call.ref, "2xx")
        retx.start(now)  # its first send is the transaction's
        self._machines[retx_key] = entry
        call.retransmitter = retx_key
        if call.phase is Phase.PENDING:
            self._pending -= 1
            call.invite_deadline = None
            call.phase = Phase.ANSWERED
        return actions

    def _final(self, call: Call, code: int, now: float, reason: str) -> list[Action]:
        """A non-2xx final answer to the call's INVITE, and the call's end."""
        actions = self._tx_respond(call.tx_key, self._response(call.invite, code, call), now)
        return actions + self._end(call, reason, code)

    def _bye(self, call: Call, now: float, reason: str) -> list[Action]:
        actions = self._client(call, "BYE", now)
        return actions + self._end(call, reason)

    def _client(
        self,
        call: Call,
        method: str,
        now: float,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> list[Action]:
        return self._start_client(call, method, now, headers, body)[1]

    def _start_client(
        self,
        call: Call,
        method: str,
        now: float,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> tuple[Key, list[Action]]:
        """A request inside the call's dialog, in a client transaction of its own."""
        branch = self._new_id()
        req = call.dialog.build_request(
            method,
            branch,
            self._sent_by(call),
            [*(headers or []), ("User-Agent", self.config.user_agent)],
            body,
        )
        machine = NonInviteClientTransaction(req, call.transport != "UDP", self.config.timers)
        key = client_key(req.top_via().branch or "", method)
        dest, uri = self._dialog_dest(call)
        entry = Entry(machine, dest, call.transport, call.ref, "client", uri=uri, flow=call.source)
        self._machines[key] = entry
        return key, self._outputs(key, entry, machine.start(now), now)

    def _sent_by(self, call: Call) -> str:
        """Our Via sent-by in the call's requests: its transport's port, our address in
        the family of its signalling."""
        return self.config.sent_by_for(call.transport, family_of(call.source[0]))

    def _local_session(self, rtp_port: int, family: Family) -> LocalSession:
        """Our SDP for a call whose RTP socket is of ``family``."""
        media = self.config.media.for_family(family)
        return LocalSession(media, rtp_port, str(next(self._seq) + 1_000_000))

    def _offer(self, call: Call, direction: str) -> bytes:
        """Our own offer in the call: SRTP with the call's key when it has SRTP, best
        effort (``RTP/AVP`` with ``a=crypto``) when its rules allow, ``RTP/SAVP`` when
        they require it or our last description was SAVP."""
        assert call.local is not None
        keep = call.media.srtp if call.media is not None else None
        if keep is None and not call.srtp_rules.srtp_allowed:
            return call.local.offer(direction)
        secure = call.srtp_rules.policy == "required" or call.local.profile in sdes.SAVP
        return call.local.offer(direction, sdes.offer(keep), secure)

    def _arm_keepalive(self, call: Call, now: float) -> None:
        """A caller behind NAT over UDP gets a CRLF ping every ``nat_keepalive`` seconds
        while the call is up (as pjsip's and Kamailio's nathelper's), so the binding our
        BYE needs is still open at the end of a long call."""
        every = self.config.nat_keepalive
        up = call.phase is Phase.CONFIRMED and not call.hangup_reported
        if every and up and call.nated and call.transport == "UDP":
            call.keepalive_at = now + every
        else:
            call.keepalive_at = None

    def _dialog_dest(self, call: Call) -> tuple[Address, str | None]:
        """Where our in-dialog requests go (:func:`~telephony_edge.sip.nat.in_dialog_dest`),
        and the URI for the shell to resolve when that is a host name."""
        if call.unreachable:
            return call.source, None
        dest = in_dialog_dest(call.dialog, call.source, call.transport, call.nated)
        return dest, None if ip_literal(dest[0]) else call.dialog.next_hop()

    def _end(self, call: Call, reason: str, status: int | None = None) -> list[Action]:
        if call.phase is Phase.ENDED:
            return []
        if call.phase is Phase.PENDING:
            self._pending -= 1
        call.phase = Phase.ENDED
        call.invite_deadline = call.keepalive_at = None
        call.dialog.state = DialogState.TERMINATED
        if call.provisional is not None:
            self._machines.pop(call.provisional, None)
            call.provisional = None
        if call.retransmitter is not None:
            self._machines.pop(call.retransmitter, None)
            call.retransmitter = None
        self._calls.pop(call.ref, None)
        self._dialogs.pop(call.dialog.key, None)
        origin = (call.dialog.call_id, call.dialog.remote_tag, call.invite.cseq().seq)
        self._origins.pop(origin, None)
        return [] if call.hangup_reported else [CallEnded(call.ref, reason, status)]

    def _outputs(self, key: Key, entry: Entry, outputs: list[Output], now: float) -> list[Action]:
        """A transaction's outputs as actions: :meth:`UserAgent._outputs`."""
        raise NotImplementedError

    def _resume_pending(self, ref: str) -> bool:
        """Whether the call's resumption re-INVITE has no final answer yet (:mod:`.ua_resume`)."""
        return False


_QUOTED = re.compile(r"""\s+(?:in\s+)?['"].*$""", re.S)


def unquoted(reason: str) -> str:
    """A parse error's reason up to where it quotes the message: the sender's bytes stay
    out of the log (``bad Via 'x'`` → ``bad Via``)."""
    return _QUOTED.sub("", reason)[:100]


def sdp_reason(exc: ValueError) -> str:
    """What was wrong with an SDP body, without quoting it."""
    return unquoted(str(exc)) if isinstance(exc, SdpError) else "a number int() refuses"


def check_contact(req: Request) -> None:
    """Raise ValueError unless the request's Contact, if any, can be the dialog's target."""
    contacts = req.headers.get_all("Contact")
    if contacts:
        NameAddr.parse(contacts[0]).sip_uri()


def quote_warning(text: str) -> str:
    return text.replace("\\", "").replace('"', "'")[:100]
