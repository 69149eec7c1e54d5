"""Configuration: each kind of bad file is refused with the field named, exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from telephony_edge.cli import main
from telephony_edge.config import (
    ConfigError,
    load_settings,
    normalize_e164,
    normalize_network_number,
)
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
        line.startswith(f"{field}:") and reason in line for line in str(info.value).splitlines()
    ), str(info.value)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert field in err and reason in err


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEPHONY_EDGE_SERVER__PORT", "9123")
    monkeypatch.setenv("TELEPHONY_EDGE_TWILIO__AUTH_TOKEN", "from-env")
    settings = load_settings(write(tmp_path, base()))
    assert settings.server.port == 9123
    assert settings.twilio.auth_token == "from-env"
    assert settings.server.region == "us-east"  # the file's other values stay


def test_bad_environment_value_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEPHONY_EDGE_SERVER__PORT", "eighty")
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_settings(write(tmp_path, base()))


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
