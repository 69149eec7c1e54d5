"""SIP dialogs (RFC 3261 §12): a record, and in-dialog requests.

A :class:`Dialog` is created from the INVITE the edge answers (§12.1.1):
its id is Call-ID + our tag (the To tag we put in responses) + the peer's tag
(From); the route set is the INVITE's Record-Route in order; the remote target
is its Contact; the remote CSeq is the INVITE's; ours starts where the UA
says. Or from the 2xx to an INVITE the edge sent (§12.1.2,
:meth:`Dialog.from_2xx`): our tag is the From tag, the peer's the To tag, the
route set the 2xx's Record-Route in reverse, the remote target its Contact,
and our CSeq the INVITE's. :meth:`Dialog.build_request` builds a request inside it (§12.2.1.1):
BYE from the edge, INFO, NOTIFY, UPDATE, re-INVITE; loose routing when the
first route has ``lr`` (Request-URI = remote target, Route = route set),
strict routing otherwise (Request-URI = first route, remote target last).
:meth:`Dialog.accept_cseq` is §12.2.2's rule for the peer's requests.

The :class:`~telephony_edge.sip.ua.UserAgent` (the sans-I/O UA that routes
messages to transactions and dialogs) lives in :mod:`telephony_edge.sip.ua`;
it is re-exported here for convenience.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from telephony_edge.sip.header_values import NameAddr
from telephony_edge.sip.headers import Headers
from telephony_edge.sip.message import MAGIC_COOKIE, Request, Response
from telephony_edge.sip.uri import SipUri

Address = tuple[str, int]

#: methods that refresh the remote target and so carry our Contact (§12.2.1.1)
TARGET_REFRESH = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(slots=True)
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str  # our address as the peer wrote it in To, without tag
    remote_uri: str  # the peer's From, without tag
    remote_target: str
    route_set: list[str]
    local_seq: int
    remote_seq: int
    local_contact: str
    transport: str = "UDP"
    state: DialogState = DialogState.EARLY
    secure: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_invite(
        cls, invite: Request, local_tag: str, local_contact: str, local_seq: int
    ) -> Dialog:
        """The dialog a UAS forms by answering ``invite`` (§12.1.1)."""
        frm = invite.from_()
        to = invite.to()
        contacts = invite.headers.get_all("Contact")
        target = NameAddr.parse(contacts[0]).uri if contacts else frm.uri
        to.params.pop("tag", None)
        remote_tag = frm.params.pop("tag", "")
        return cls(
            call_id=invite.call_id(),
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_uri=str(to),
            remote_uri=str(frm),
            remote_target=target,
            route_set=invite.headers.get_all("Record-Route"),
            local_seq=local_seq,
            remote_seq=invite.cseq().seq,
            local_contact=local_contact,
            transport=invite.top_via().transport,
            secure=invite.uri.lower().startswith("sips:"),
        )

    @classmethod
    def from_2xx(cls, invite: Request, response: Response, local_contact: str) -> Dialog:
        """The dialog a UAC forms from the 2xx to its ``invite`` (§12.1.2)."""
        frm = invite.from_()
        to = response.to()
        contacts = response.headers.get_all("Contact")
        target = NameAddr.parse(contacts[0]).uri if contacts else invite.uri
        local_tag = frm.params.pop("tag", "")
        remote_tag = to.params.pop("tag", "")
        return cls(
            call_id=invite.call_id(),
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_uri=str(frm),
            remote_uri=str(to),
            remote_target=target,
            route_set=list(reversed(response.headers.get_all("Record-Route"))),
            local_seq=invite.cseq().seq,
            remote_seq=0,  # §12.1.2: empty; the peer's first request sets it
            local_contact=local_contact,
            transport=invite.top_via().transport,
            state=DialogState.CONFIRMED,
            secure=invite.uri.lower().startswith("sips:"),
        )

    def validate(self) -> None:
        """Raise ValueError unless in-dialog requests can be built and sent
        (every route and the remote target are SIP URIs)."""
        for route in self.route_set:
            NameAddr.parse(route).sip_uri()
        SipUri.parse(self.remote_target)
        if SipUri.parse(self.remote_target).scheme not in ("sip", "sips"):
            raise ValueError("the remote target is not a SIP URI")
        self.destination()

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    def accept_cseq(self, seq: int) -> bool:
        """§12.2.2: a request with a CSeq lower than the last one is out of order."""
        if seq < self.remote_seq:
            return False
        self.remote_seq = seq
        return True

    def refresh_target(self, request: Request) -> None:
        """A target refresh request (re-INVITE, UPDATE) may move the peer (§12.2.2)."""
        contacts = request.headers.get_all("Contact")
        if contacts:
            target = NameAddr.parse(contacts[0]).uri
            if SipUri.parse(target).scheme in ("sip", "sips"):
                self.remote_target = target

    def build_request(
        self,
        method: str,
        branch: str,
        via_sent_by: str,
        extra_headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        cseq: int | None = None,
    ) -> Request:
        """A request inside the dialog (§12.2.1.1); ``branch`` without the cookie;
        ``cseq`` given only for the ACK of a 2xx (its INVITE's number, §13.2.2.4)."""
        routes = list(self.route_set)
        uri = self.remote_target
        if routes and "lr" not in NameAddr.parse(routes[0]).sip_uri().params:
            first = NameAddr.parse(routes.pop(0)).sip_uri()
            first.headers = ""
            first.params.pop("method", None)
            uri = str(first)
            routes.append(f"<{self.remote_target}>")
        if cseq is None:
            self.local_seq += 1
            cseq = self.local_seq
        h = Headers()
        h.add("Via", f"SIP/2.0/{self.transport} {via_sent_by};branch={MAGIC_COOKIE}{branch};rport")
        h.add("Max-Forwards", "70")
        h.add("From", f"{self.local_uri};tag={self.local_tag}")
        h.add("To", f"{self.remote_uri};tag={self.remote_tag}")
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{cseq} {method}")
        for route in routes:
            h.add("Route", route)
        if method in TARGET_REFRESH:
            h.add("Contact", self.local_contact)
        for name, value in extra_headers or []:
            h.add(name, value)
        return Request(h, body, method, uri)

    def next_hop(self) -> str:
        """The URI the next in-dialog request goes to: the first route, else the target."""
        return NameAddr.parse(self.route_set[0]).uri if self.route_set else self.remote_target

    def destination(self) -> Address:
        """Where the next in-dialog request goes: the first route, else the target
        (host names are the shell's to resolve; no DNS here)."""
        uri = SipUri.parse(self.next_hop())
        host = uri.params.get("maddr") or uri.host
        default = 5061 if uri.scheme == "sips" else 5060
        return (host.strip("[]"), uri.port or default)


def __getattr__(name: str) -> object:
    if name == "UserAgent":
        from telephony_edge.sip.ua import UserAgent

        return UserAgent
    raise AttributeError(name)
