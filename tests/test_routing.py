from __future__ import annotations

from pathlib import Path

from telephony_edge.config_loading import load_settings
from telephony_edge.routing import NumberRouter

EXAMPLE = Path(__file__).parent.parent / "deploy" / "config.example.yaml"


def test_lookup_normalises_the_dialled_number() -> None:
    router = NumberRouter(load_settings(EXAMPLE))
    for dialled in ("+14155550100", "+1 415-555-0100", "14155550100"):
        route = router.lookup(dialled)
        assert route is not None
        assert (route.number, route.provider, route.agent_id) == (
            "+14155550100",
            "twilio",
            "support",
        )
        assert route.local and route.region.public_url == "https://us-east.edge.example.com"


def test_number_homed_elsewhere_is_not_local_and_carries_overrides() -> None:
    route = NumberRouter(load_settings(EXAMPLE)).lookup("+442079460958")
    assert route is not None
    assert not route.local
    assert route.region_name == "eu-west"
    assert route.agent_config == {"language": "en-GB"}


def test_unknown_and_garbage_numbers() -> None:
    router = NumberRouter(load_settings(EXAMPLE))
    assert router.lookup("+15555550000") is None
    assert router.lookup("not a number") is None


def test_agent_core_urls_rotate_per_region_and_fall_back() -> None:
    settings = load_settings(
        EXAMPLE,
        regions={
            "us-east": {
                "public_url": "https://a.example.com",
                "agent_core_urls": ["ws://a:1", "ws://b:2"],
            },
            "eu-west": {"public_url": "https://b.example.com"},
        },
        agent_core={"url": "wss://global.example.com"},
    )
    router = NumberRouter(settings)
    assert [router.agent_core_url("us-east") for _ in range(3)] == [
        "ws://a:1",
        "ws://b:2",
        "ws://a:1",
    ]
    assert router.agent_core_url("eu-west") == "wss://global.example.com"
    assert router.agent_core_url(None) == "wss://global.example.com"
