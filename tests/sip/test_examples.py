"""The configuration examples in ``sip/examples`` stay valid configuration."""

from __future__ import annotations

from pathlib import Path

import yaml

from telephony_edge.config_loading import load_settings
from telephony_edge.sip.settings import sip_settings

EXAMPLES = Path(__file__).resolve().parents[2] / "sip" / "examples"


def test_edge_yaml_example_loads_with_its_trunks() -> None:
    example = yaml.safe_load((EXAMPLES / "edge.yaml").read_text())
    settings = load_settings(
        None,
        api={"private_key": "example-private-key-000000000001"},
        agents={"support": {"prompt": "You help."}},
        regions={"us": {"public_url": "https://edge.example.com"}},
        **example,
    )
    sip = sip_settings(settings)
    assert set(sip.trunks) == {"twilio", "telnyx", "pbx"}
    assert sip.trunks["twilio"].refer_to == "tel" and sip.trunks["pbx"].username == "pbx"
    assert settings.numbers["+15555550202"].provider == "sip"
