"""Configuration: each kind of bad file is refused with the field named, exit status 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from telephony_edge.calls.variables import merge_agent_config
from telephony_edge.cli import main
from telephony_edge.config_loading import ConfigError, load_settings
from telephony_edge.config_values import normalize_e164, normalize_network_number
from telephony_edge.routing import NumberRouter
from telephony_edge.twilio.settings import twilio_settings
from tests.conftest import run_cli

EXAMPLE = Path(__file__).parent.parent / "deploy" / "config.example.yaml"


def write(tmp_path: Path, data: dict[str, object]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def base() -> dict[str, object]:
    return yaml.safe_load(EXAMPLE.read_text())


@pytest.mark.parametrize("shipped", [EXAMPLE, EXAMPLE.with_name("demo.yaml")])
def test_shipped_configs_are_accepted(shipped: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(shipped)]) == 0
    assert "ok" in capsys.readouterr().out


def test_embedded_defaults_need_no_file() -> None:
    settings = load_settings(None)
    assert settings.coordination.backend == "memory"
    assert settings.agent_core.url is None


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (lambda c: c["server"].update(prot=1), "server.prot", "unknown key"),
        (lambda c: c.update(bogus={}), "bogus", "unknown key"),
        (
            lambda c: c["numbers"].update({"+1 415 CALL NOW": c["numbers"]["+1 415 555 0100"]}),
            "numbers.+1 415 CALL NOW",
            "not an E.164 phone number",
        ),
        (
            lambda c: c["numbers"].update({"(415) 555-0100": c["numbers"]["+1 415 555 0100"]}),
            "numbers.(415) 555-0100",
            "has no country code",
        ),
        (
            lambda c: c["numbers"]["+1 415 555 0100"].update(region="mars"),
            "numbers.+14155550100.region",
            "region 'mars' is not defined",
        ),
        (
            lambda c: c["numbers"]["+1 415 555 0100"].update(agent_id="nobody"),
            "numbers.+14155550100.agent_id",
            "agent 'nobody' is not defined",
        ),
        (
            lambda c: c["regions"]["us-east"].update(public_url="not a url"),
            "regions.us-east.public_url",
            "not an absolute http/https URL",
        ),
        (
            lambda c: c["agent_core"].update(url="http://core.example.com"),
            "agent_core.url",
            "not an absolute ws/wss URL",
        ),
        (
            lambda c: c["twilio"].pop("auth_token"),
            "twilio",
            "enabled Twilio needs auth_token",
        ),
        (
            lambda c: c["webhooks"].pop("signing_secret"),
            "webhooks.signing_secret",
            "required because agents.support.session_data_webhook is set",
        ),
        (
            lambda c: c["api"].pop("private_key"),
            "api.private_key",
            "required for Twilio",
        ),
        (
            lambda c: c["regions"]["us-east"].pop("public_url"),
            "regions.us-east.public_url",
            "Field required",
        ),
        (
            lambda c: c["agents"]["support"].update(first_mesage="Hi"),
            "agents.support.first_mesage",
            "unknown key; did you mean first_message?",
        ),
        (
            lambda c: c["coordination"].update(backend="redis"),
            "coordination",
            "needs redis_url",
        ),
    ],
)
def test_bad_config_names_field_and_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate: object, field: str, reason: str
) -> None:
    config = base()
    mutate(config)  # type: ignore[operator]
    path = write(tmp_path, config)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert any(
        (p.source, p.field) == (str(path), field) and reason in p.reason
        for p in info.value.problems
    ), str(info.value)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"  {path}: {field}: " in err and reason in err


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEPHONY_EDGE_SERVER__PORT", "9123")
    monkeypatch.setenv("TELEPHONY_EDGE_TWILIO__AUTH_TOKEN", "from-env")
    settings = load_settings(write(tmp_path, base()))
    assert settings.server.port == 9123
    assert twilio_settings(settings).auth_token == "from-env"
    assert settings.server.region == "us-east"  # the file's other values stay


@pytest.mark.parametrize(
    ("variable", "value", "field", "reason"),
    [
        ("TELEPHONY_EDGE_SERVER__PORT", "eighty", "server.port", "valid integer"),
        ("TELEPHONY_EDGE_SERVER__PROT", "9000", "server.prot", "unknown key; did you mean port?"),
        ("TELEPHONY_EDGE_SERVR__PORT", "9000", "servr.port", "unknown key; did you mean server?"),
        ("TELEPHONY_EDGE_TWILIO", "{not json", "twilio", "not valid JSON"),
    ],
)
def test_a_bad_environment_variable_is_blamed_on_itself(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    field: str,
    reason: str,
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, base()))
    [problem] = info.value.problems
    assert (problem.source, problem.field) == (variable, field)
    assert reason in problem.reason


def test_every_problem_is_listed_in_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config: Any = base()
    config["server"]["prot"] = 1
    config["agents"]["support"]["first_mesage"] = "Hi"
    numbers = config["numbers"]
    numbers["+1 415 555 0100"]["region"] = "mars"
    numbers["+44 20 7946 0958"]["agent_config"]["langauge"] = "en-GB"
    numbers["020 7946 0958"] = {"provider": "sip", "agent_id": "support", "region": "us-east"}
    path = write(tmp_path, config)
    monkeypatch.setenv("TELEPHONY_EDGE_CALLS__MAX_DURATION_S", "forever")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    problems = info.value.problems
    assert [(p.source, p.field) for p in problems] == [
        (str(path), "server.prot"),
        ("TELEPHONY_EDGE_CALLS__MAX_DURATION_S", "calls.max_duration_s"),
        (str(path), "agents.support.first_mesage"),
        (str(path), "numbers.+44 20 7946 0958.agent_config.langauge"),
        (str(path), "numbers.020 7946 0958"),
        (str(path), "numbers.+14155550100.region"),  # a cross-reference, found all the same
    ], str(info.value)
    assert problems[2].reason == (
        "unknown key; did you mean first_message? "
        "(free-form settings for the agent core go under extra:)"
    )
    proc = run_cli("check-config", str(path))  # inherits the environment
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "invalid configuration, 6 problems:",
        *(f"  {p}" for p in problems),
    ]


def test_agent_extras_pass_through_and_merge_with_a_numbers_overrides(tmp_path: Path) -> None:
    config: Any = base()
    config["agents"]["support"]["extra"] = {"stt": {"model": "x"}, "temperature": 0.2}
    config["numbers"]["+44 20 7946 0958"]["agent_config"]["extra"] = {"stt": {"lang": "en-GB"}}
    settings = load_settings(write(tmp_path, config))
    route = NumberRouter(settings).lookup("+442079460958")
    assert route is not None
    assert route.agent_config == {"language": "en-GB", "extra": {"stt": {"lang": "en-GB"}}}
    stored = settings.agents["support"].model_dump(mode="json", exclude_none=True)
    merged = merge_agent_config(stored, route.agent_config)
    assert merged["extra"] == {"stt": {"model": "x", "lang": "en-GB"}, "temperature": 0.2}
    assert merged["language"] == "en-GB" and merged["first_message"] == stored["first_message"]


def test_serve_with_bad_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server: [1, 2]\n")
    proc = run_cli("serve", "--config", str(path))
    assert proc.returncode == 2
    assert "server" in proc.stderr


@pytest.mark.parametrize(
    ("written", "e164"),
    [
        ("+1 (415) 555-0100", "+14155550100"),
        ("0044 20 7946 0958", "+442079460958"),
        ("+49.30.123456", "+4930123456"),
        ("+44 (0)20 7946 0958", None),
    ],
)
def test_normalize_e164(written: str, e164: str | None) -> None:
    if e164 is None:
        with pytest.raises(ValueError):
            normalize_e164(written)
    else:
        assert normalize_e164(written) == e164
        assert normalize_network_number(written) == e164


@pytest.mark.parametrize("bad", ["", "+0123", "call me", "+1234567890123456", "++1415"])
def test_normalize_e164_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize_e164(bad)
    with pytest.raises(ValueError):
        normalize_network_number(bad)


@pytest.mark.parametrize("local", ["(415) 555-0100", "555-0100", "14155550100", "020 7946 0958"])
def test_a_number_without_country_code_is_an_error_not_a_guess(local: str) -> None:
    with pytest.raises(ValueError, match="has no country code: write it with \\+"):
        normalize_e164(local)


def test_networks_may_send_the_digits_without_plus() -> None:
    assert normalize_network_number("14155550100") == "+14155550100"
    with pytest.raises(ValueError):
        normalize_network_number("020 7946 0958")  # national format: no country code


def sip_numbers_config(trunks: dict[str, Any]) -> dict[str, Any]:
    """Two SIP numbers on the built-in agent core, with these trunks."""
    number = {"provider": "sip", "agent_id": "support", "region": "local"}
    return {
        "api": {"private_key": "check-config-private-key"},
        "sip": {"enabled": True, "trunks": trunks},
        "agents": {"support": {"prompt": "p"}},
        "regions": {"local": {"public_url": "https://edge.example.com"}},
        "numbers": {"+15555550200": number, "+15555550201": number},
    }


def test_check_config_warns_of_a_sip_number_no_trunk_may_call(tmp_path: Path) -> None:
    path = write(tmp_path, sip_numbers_config({}))
    proc = run_cli("check-config", str(path))
    assert proc.returncode == 0, proc.stderr  # a warning: the file is valid
    assert "ok (1 agents, 1 regions, 2 numbers)" in proc.stdout
    assert proc.stderr.splitlines() == [
        f"{path}: warning: numbers.{number}: no trunk may call this SIP number "
        "(sip.trunks is empty), so INVITEs to it are refused; add a trunk with its cidrs, "
        "and numbers empty or listing it"
        for number in ("+15555550200", "+15555550201")
    ]


def test_check_config_warns_of_a_sip_number_outside_every_trunk_allow_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pbx = {"cidrs": ["10.0.0.9/32"], "numbers": ["+15555550200"]}
    assert main(["check-config", str(write(tmp_path, sip_numbers_config({"pbx": pbx})))]) == 0
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 1 and "numbers.+15555550201: no trunk may call" in warnings[0]
    assert "no entry of sip.trunks lists it" in warnings[0]

    every = {"cidrs": ["10.0.0.0/8"]}  # no numbers: it may call every SIP number
    config = sip_numbers_config({"pbx": pbx, "carrier": every})
    assert main(["check-config", str(write(tmp_path, config))]) == 0
    assert capsys.readouterr().err == ""
