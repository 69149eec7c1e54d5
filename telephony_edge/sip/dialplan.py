"""Where an outbound SIP call goes: the trunk, the Request-URI, From and the hops (pure).

``POST /start_outbound_call`` from one of the edge's SIP numbers names a
destination, and :func:`plan_call` says how the INVITE goes:

* a phone number (E.164) goes through the first trunk of ``sip.trunks``
  with an ``outbound`` section that carries the calling number (its
  ``numbers`` empty or listing it). The Request-URI and To are the number,
  rewritten by the trunk's ``number_rewrites``, at its ``domain`` (default:
  the first proxy's host); From is the trunk's ``caller_id`` or the calling
  number, rewritten by ``caller_id_rewrites``, at ``from_host`` (default: the
  edge's advertised host); the hops are its proxies, in order; its
  credentials answer 401/407;
* a ``sip:`` URI is called as written: its host is the one hop (RFC 3263),
  no credentials are offered, From is the calling number at the edge's host.

Over TLS (a trunk's ``transport: tls`` or ``sips:`` proxies; a ``sips:`` URI
or one with ``;transport=tls``) the call needs the edge's TLS listener
(``sip.tls``: the callee's requests in the call come there). The SRTP of the
offer follows the trunk's ``srtp`` (else ``sip.srtp``) and is offered only
when the call goes over TLS (or ``sip.srtp_over_plain``), SDES keys being
in the SDP: a call whose policy requires SRTP where it cannot be offered is
:class:`NoRoute`.

The call's family (IPv4 or IPv6: our address in Via, Contact, From and the
SDP offer, and its RTP socket's) is the first hop's when that is an IP
address (``sip:agent@[2001:db8::7]``), else the edge's first (``sip.bind_host``'s):
a host name is looked up in that family first. A destination in a family the
edge has no address in is :class:`NoRoute`.

Nothing here does I/O; a destination no trunk carries is :class:`NoRoute`.
"""

from __future__ import annotations

from collections.abc import Sequence

from telephony_edge.sip.digest_client import DigestClient
from telephony_edge.sip.family import Family, family_of
from telephony_edge.sip.nat import ip_literal
from telephony_edge.sip.sdes import Policy, SrtpRules
from telephony_edge.sip.settings import SipSettings, SipTrunkSettings
from telephony_edge.sip.settings_outbound import rewrite
from telephony_edge.sip.uac import Dial, hop_transport
from telephony_edge.sip.uri import SipUri


class NoRoute(ValueError):
    """No trunk of the configuration may carry this call."""


def plan_call(
    settings: SipSettings, from_number: str, to: str, edge_host: str, edge_host6: str | None = None
) -> tuple[Dial, DigestClient | None]:
    """The INVITE's plan for a call from ``from_number`` to ``to`` (E.164 or ``sip:`` URI),
    and the trunk's credentials, if any (a fresh client: its ``nc`` counts this call's);
    ``edge_host``: our advertised address, ``edge_host6`` our IPv6 one on a dual-stack edge."""
    ring, failover = settings.outbound_ring_timeout_s, settings.outbound_failover_timeout_s
    if to.lower().startswith(("sip:", "sips:")):
        transport = hop_transport(to, "UDP")
        srtp = _secure(settings, transport == "TLS", None)
        family, host = _family((to,), edge_host, edge_host6)
        caller = str(SipUri("sip", from_number, host))
        plan = Dial(to, caller, (to,), "", transport, ring, failover, srtp=srtp, family=family)
        return plan, None
    trunk = _trunk_for(settings, from_number)
    outbound = trunk.outbound
    assert outbound is not None
    domain = outbound.domain or SipUri.parse(outbound.proxies[0]).host
    dialled = rewrite(to, outbound.number_rewrites)
    caller_id = rewrite(outbound.caller_id or from_number, outbound.caller_id_rewrites)
    family, host = _family(outbound.proxies, edge_host, edge_host6)
    plan = Dial(
        request_uri=str(SipUri("sip", dialled, domain)),
        from_uri=str(SipUri("sip", caller_id, outbound.from_host or host)),
        hops=tuple(outbound.proxies),
        transport="TLS" if outbound.tls else outbound.transport.upper(),
        ring_timeout=ring,
        failover_timeout=failover,
        srtp=_secure(settings, outbound.tls, trunk.srtp),
        family=family,
    )
    digest = None
    if outbound.username is not None and outbound.password is not None:
        digest = DigestClient(outbound.username, outbound.password, outbound.realm)
    return plan, digest


def _family(hops: Sequence[str], edge_host: str, edge_host6: str | None) -> tuple[Family, str]:
    """The call's family and our address in it (the module docstring says which)."""
    hop = SipUri.parse(hops[0])
    target = hop.params.get("maddr") or hop.host
    family = family_of(target) if ip_literal(target) is not None else family_of(edge_host)
    host = edge_host6 if family == 6 and edge_host6 else edge_host
    if family_of(host) != family:
        raise NoRoute(
            f"{target} is an IPv{family} address and the edge has none"
            + (" (sip.bind_host6 gives it one)" if family == 6 else "")
        )
    return family, host


def _secure(settings: SipSettings, tls: bool, policy: Policy | None) -> SrtpRules:
    """A call's SRTP rules, or :class:`NoRoute` when it cannot go as they say."""
    if tls and not settings.tls:
        raise NoRoute(
            "calls over TLS need sip.tls (the listener where the callee's requests in the "
            "call arrive)"
        )
    rules = SrtpRules(policy or settings.srtp, tls or settings.srtp_over_plain)
    if rules.policy == "required" and not rules.keys_safe:
        raise NoRoute(
            "SRTP is required and this call does not go over TLS (SDES keys travel in the "
            "SDP; sip.srtp_over_plain allows them in the clear)"
        )
    return rules


def _trunk_for(settings: SipSettings, from_number: str) -> SipTrunkSettings:
    for trunk in settings.trunks.values():
        if trunk.outbound is not None and (not trunk.numbers or from_number in trunk.numbers):
            return trunk
    raise NoRoute(
        f"no trunk of sip.trunks places calls from {from_number} (one with an outbound "
        "section whose numbers are empty or list it)"
    )
