"""The dial plan and its configuration: which trunk, which URIs, rewrites; bad settings refused."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from telephony_edge.sip.dialplan import NoRoute, plan_call
from telephony_edge.sip.sdes import SrtpRules
from telephony_edge.sip.settings import SipSettings

EDGE = "203.0.113.5"


def settings(**sip: Any) -> SipSettings:
    return SipSettings.model_validate({"enabled": True, **sip})


CARRIER = {
    "cidrs": ["192.0.2.0/24"],
    "numbers": ["+15550100"],
    "outbound": {
        "proxies": [
            "sbc1.carrier.example;lr",
            "10.0.0.7:5070",
            "sip:sbc2.carrier.example;transport=tcp",
        ],
        "domain": "carrier.example",
        "username": "edge",
        "password": "s3cret",
        "caller_id": "+1 555 0199",
        "number_rewrites": [{"match": r"^\+1(\d+)$", "replace": r"\1"}],
        "caller_id_rewrites": [{"match": r"^\+(\d+)$", "replace": r"00\1"}],
    },
}


def test_a_number_goes_through_the_trunk_of_the_calling_number() -> None:
    plan, digest = plan_call(settings(trunks={"carrier": CARRIER}), "+15550100", "+15557777", EDGE)
    assert plan.request_uri == "sip:5557777@carrier.example"
    assert plan.from_uri == "sip:0015550199@203.0.113.5"
    assert plan.hops == (
        "sip:sbc1.carrier.example;lr",
        "sip:10.0.0.7:5070",
        "sip:sbc2.carrier.example;transport=tcp",
    )
    assert plan.transport == "UDP" and plan.ring_timeout == 60.0 and plan.failover_timeout == 5.0
    assert digest is not None and digest.username == "edge"


def test_defaults_and_the_first_trunk_that_may_carry_the_number() -> None:
    trunks = {
        "other": {**CARRIER, "numbers": ["+15550222"]},
        "plain": {"outbound": {"proxies": ["pbx.example:5080"], "transport": "tcp"}},
    }
    sip = settings(trunks=trunks, outbound_ring_timeout_s=20)
    plan, digest = plan_call(sip, "+15550100", "+15557777", EDGE)
    assert plan.request_uri == "sip:+15557777@pbx.example"  # the first proxy's host
    assert plan.from_uri == "sip:+15550100@203.0.113.5" and plan.transport == "TCP"
    assert digest is None and plan.ring_timeout == 20.0


def test_a_sip_uri_is_called_as_written_and_a_number_without_trunk_has_no_route() -> None:
    plan, digest = plan_call(
        settings(), "+15550100", "sip:agent@127.0.0.1:5090;transport=tcp", EDGE
    )
    assert plan.request_uri == plan.hops[0] == "sip:agent@127.0.0.1:5090;transport=tcp"
    assert plan.transport == "TCP" and digest is None
    with pytest.raises(NoRoute, match=r"\+15550100"):
        plan_call(settings(trunks={"in": {"cidrs": ["192.0.2.0/24"]}}), "+15550100", "+1555", EDGE)


TLS = {"tls": True, "tls_certificate": "edge.pem", "tls_private_key": "edge.key"}


def test_tls_trunks_and_uris_dial_over_tls_with_the_srtp_their_policy_allows() -> None:
    trunk = {"outbound": {"proxies": ["sbc.carrier.example"], "transport": "tls"}}
    sip = settings(trunks={"carrier": {**trunk, "srtp": "required"}}, **TLS)
    plan, _ = plan_call(sip, "+15550100", "+15557777", EDGE)
    assert plan.transport == "TLS" and plan.hops == ("sip:sbc.carrier.example",)
    assert plan.srtp == SrtpRules("required", True)
    # sips: proxies are TLS whatever the trunk's transport; the trunk's policy, else sip.srtp
    sips = {"outbound": {"proxies": ["sips:a.example", "sips:b.example"]}}
    plan, _ = plan_call(settings(trunks={"c": sips}, srtp="none", **TLS), "+1555", "+1666", EDGE)
    assert plan.transport == "TLS" and plan.srtp == SrtpRules("none", True)
    for uri in ("sips:alice@pbx.example", "sip:alice@pbx.example;transport=tls"):
        plan, _ = plan_call(settings(**TLS), "+15550100", uri, EDGE)
        assert plan.transport == "TLS" and plan.srtp == SrtpRules("optional", True)
    # SDES keys are not offered in the clear, unless the operator says so
    plan, _ = plan_call(settings(), "+15550100", "sip:alice@pbx.example", EDGE)
    assert plan.transport == "UDP" and not plan.srtp.srtp_allowed
    plan, _ = plan_call(settings(srtp_over_plain=True), "+15550100", "sip:a@pbx.example", EDGE)
    assert plan.srtp.srtp_allowed
    with pytest.raises(NoRoute, match="does not go over TLS"):
        plan_call(settings(srtp="required"), "+15550100", "sip:alice@pbx.example", EDGE)
    with pytest.raises(NoRoute, match=r"need sip\.tls"):  # the callee's requests come there
        plan_call(settings(), "+15550100", "sips:alice@pbx.example", EDGE)


@pytest.mark.parametrize(
    ("section", "why"),
    [
        ({"trunks": {"t": {}}}, "cidrs"),
        (
            {"trunks": {"t": {"outbound": {"proxies": ["sips:a", "b"]}}}, **TLS},
            "over TLS all or none",
        ),
        ({"trunks": {"t": {"outbound": {"proxies": ["a"], "transport": "tls"}}}}, "needs tls"),
        ({"trunks": {"t": {"outbound": {"proxies": []}}}}, "proxies"),
        ({"trunks": {"t": {"outbound": {"proxies": ["a b"]}}}}, "proxies"),
        ({"trunks": {"t": {"outbound": {"proxies": ["x"], "username": "u"}}}}, "together"),
        (
            {
                "trunks": {
                    "t": {
                        "outbound": {
                            "proxies": ["x"],
                            "number_rewrites": [{"match": "(", "replace": ""}],
                        }
                    }
                }
            },
            "regular expression",
        ),
        (
            {
                "trunks": {
                    "t": {
                        "outbound": {
                            "proxies": ["x"],
                            "number_rewrites": [{"match": "(a)", "replace": r"\2"}],
                        }
                    }
                }
            },
            "group",
        ),
        (
            {
                "accounts": {
                    "a": {
                        "registrar": "pbx",
                        "username": "u",
                        "password": "p",
                        "number": "+1555",
                        "aor": "sip:pbx",
                    }
                }
            },
            "user part",
        ),
        (
            {
                "accounts": {
                    "a": {
                        "registrar": "pbx",
                        "username": "u",
                        "password": "p",
                        "number": "+1555",
                        "retry_min_s": 9,
                        "retry_max_s": 1,
                    }
                }
            },
            "retry_min_s",
        ),
        (
            {
                "accounts": {
                    "a": {
                        "registrar": "pbx",
                        "username": "u",
                        "password": "p",
                        "number": "+1555",
                        "contact_host": "sip:u@h",
                    }
                }
            },
            "contact_host",
        ),
    ],
)
def test_bad_settings_are_refused(section: dict[str, Any], why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        settings(**section)


def test_account_defaults() -> None:
    account = settings(
        accounts={
            "a": {
                "registrar": "pbx.example:5080",
                "username": "1001",
                "password": "p",
                "number": "+1 555 0100",
            }
        }
    ).accounts["a"]
    assert account.registrar == "sip:pbx.example:5080" and account.number == "+15550100"
    assert account.address_of_record == "sip:1001@pbx.example"
