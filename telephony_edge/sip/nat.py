"""Where the edge's SIP messages go when the peer is behind NAT, or lies about itself.

Theory of operation
-------------------
A packet's source address is the only address the edge can trust: it is
where the peer's NAT binding is open, and (for anything the edge answers)
the only address a spoofer does not choose for free. What a peer writes
about itself (its Via, its Contact) is a private address behind NAT at best,
and at worst a third party it wants the edge to flood.

* :func:`stamp_via` writes ``received`` (and ``rport``) into the top Via from
  the packet's source (§18.2.1, RFC 3581), and drops a ``received`` the peer
  wrote itself: a request that arrives carrying one is never trusted. An IPv6
  source is written bare (``received=2001:db8::9``, RFC 5118 §4.5), while the
  sent-by it is compared with is in brackets (``[2001:db8::9]:5060``).
* :func:`response_dest` is §18.2.2 with RFC 3581 over that stamped Via: over
  a stream, the connection; over UDP, the source address, at the source port
  when the request asked for ``rport``, else at its Via's port. So a response
  never goes to an address the request did not come from.
* :func:`behind_nat` is Kamailio's ``nat_uac_test`` (flags 1, 2 and 16) on
  the dialog-forming request: the Contact names a private address other than
  the source, or the top Via's address is not the source's, or its port is not
  the source's and the sender asked for ``rport`` (one that did not listens at
  its Via's port and may send from another).
* :func:`in_dialog_dest` is where the edge's own requests in a dialog (BYE,
  re-INVITE, UPDATE, REFER …) go: over a stream, the caller's connection; over
  UDP, the route set's first hop or the remote target (§12.2.1.1), except
  that a caller :func:`behind_nat` with no route set is reached at the flow
  its INVITE came from (``fix_nated_contact``, RFC 5626's flow reuse), and so
  is a first hop that names a private address the INVITE did not come from.

Rules: pure functions of messages and addresses; no sockets, no DNS (a host
name in a route or target is the shell's to resolve, see
:mod:`telephony_edge.sip.outbound`), no clock.
"""

from __future__ import annotations

import ipaddress

from telephony_edge.sip.dialog import Address, Dialog
from telephony_edge.sip.header_values import NameAddr, Via
from telephony_edge.sip.headers import Headers, is_digits, split_list
from telephony_edge.sip.message import Request


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an IP address (brackets allowed), or None for a host name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _unmapped(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """:func:`ip_literal`, an IPv4-mapped IPv6 address as the IPv4 address it carries
    (what a dual-stack socket reports for an IPv4 peer)."""
    ip = ip_literal(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


#: where NAT puts a phone: RFC 1918, RFC 6598 (carrier-grade NAT), ULA, link-local
#: (``ipaddress``'s ``is_private`` also holds documentation and benchmark ranges)
NAT_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
        "fc00::/7", "fe80::/10",
    )
)  # fmt: skip


def is_private(host: str) -> bool:
    """An IP literal of :data:`NAT_NETWORKS`: no packet from the internet comes from
    there. Loopback is not: a peer on this machine really is there. A host name is
    not judged here."""
    ip = _unmapped(host)
    return ip is not None and any(ip.version == n.version and ip in n for n in NAT_NETWORKS)


def same_host(host: str, address: str) -> bool:
    """``host`` (as written in a header) and a socket's ``address`` are one address
    (``1.2.3.4`` is ``::ffff:1.2.3.4`` on a dual-stack socket)."""
    ip = _unmapped(host)
    return ip is not None and ip == _unmapped(address)


def stamp_via(req: Request, source: Address) -> None:
    """§18.2.1 and RFC 3581 on the top Via: ``received`` from the packet's source
    (a ``received`` the sender wrote is dropped, never trusted), ``rport`` filled in."""
    items = req.headers.items()
    for i, (name, value) in enumerate(items):
        if name != "Via":
            continue
        values = split_list(value)
        via = Via.parse(values[0])
        via.params.pop("received", None)
        if not same_host(via.host, source[0]) or "rport" in via.params:
            # an IPv6 address bare, as §20.42's grammar has it (RFC 5118 §4.5), its zone
            # (``%eth0``: the edge's own interface, no part of an address) left out
            via.params["received"] = source[0].partition("%")[0]
        if "rport" in via.params:
            via.params["rport"] = str(source[1])
        values[0] = str(via)
        items[i] = (name, ", ".join(values))
        req.headers = Headers(items)
        return


def response_dest(via: Via, source: Address, transport: str) -> Address:
    """§18.2.2 with RFC 3581: a response goes to the request's source address (what
    :func:`stamp_via` wrote as ``received``), at its port when ``rport`` was asked."""
    if transport != "UDP":
        return source  # the connection the request came on
    rport = via.params.get("rport")
    if rport is not None:
        return (source[0], int(rport) if is_digits(rport, 5) else source[1])
    return (source[0], via.port or 5060)


def behind_nat(req: Request, source: Address) -> bool:
    """The sender of ``req`` is behind NAT, as Kamailio's ``nat_uac_test("19")`` says
    but surer of what the sender declared: its Contact is a private address it did
    not send from (flag 1), its Via names an address that is not the source (flag 2),
    or its Via's port is not the source port and it asked for ``rport`` (flag 16; a
    sender that did not ask listens at its Via's port, RFC 3261, and may send from
    another: that is no NAT). A host name in the Via says nothing either way."""
    via = req.top_via()
    if ip_literal(via.host) is not None and not same_host(via.host, source[0]):
        return True
    if "rport" in via.params and (via.port or 5060) != source[1]:
        return True
    contacts = req.headers.get_all("Contact")
    if not contacts:
        return False
    try:
        host = NameAddr.parse(contacts[0]).sip_uri().host
    except ValueError:
        return False
    return is_private(host) and not same_host(host, source[0])


def in_dialog_dest(dialog: Dialog, flow: Address, transport: str, nated: bool) -> Address:
    """Where the edge's next request in ``dialog`` goes; ``flow`` is the source of the
    dialog's INVITE, ``nated`` what :func:`behind_nat` said of it (module docstring)."""
    if transport != "UDP":
        return flow
    try:
        hop = dialog.destination()
    except ValueError:
        return flow
    if dialog.route_set:
        return flow if is_private(hop[0]) and not same_host(hop[0], flow[0]) else hop
    return flow if nated else hop
