"""Agent config merging and ``{variable}`` filling."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from telephony_edge.calls.variables import (
    MAX_DEPTH,
    call_variables,
    fill_placeholders,
    fill_text,
    merge_agent_config,
)

STORED: dict[str, Any] = {
    "prompt": "You are a helpful agent.",
    "first_message": "Hello!",
    "voice": {"provider": "elevenlabs", "voice_id": "v1", "settings": {"speed": 1.0, "pitch": 0}},
    "tools": [{"name": "a"}, {"name": "b"}],
    "language": "en",
}


def test_merge_overrides_win_and_nested_dicts_merge() -> None:
    overrides = {
        "first_message": "Hi {userName}!",
        "voice": {"voice_id": "v2", "settings": {"speed": 1.2}},
        "tools": [{"name": "c"}],
        "extra": 1,
    }
    merged = merge_agent_config(STORED, overrides)
    assert merged == {
        "prompt": "You are a helpful agent.",
        "first_message": "Hi {userName}!",
        "voice": {
            "provider": "elevenlabs",
            "voice_id": "v2",
            "settings": {"speed": 1.2, "pitch": 0},
        },
        "tools": [{"name": "c"}],  # lists are replaced, not merged
        "language": "en",
        "extra": 1,
    }


def test_merge_does_not_modify_or_alias_inputs() -> None:
    stored = copy.deepcopy(STORED)
    overrides = {"voice": {"voice_id": "v2"}, "tools": [{"name": "c"}]}
    before = copy.deepcopy(overrides)
    merged = merge_agent_config(stored, overrides)
    merged["voice"]["settings"]["speed"] = 9
    merged["tools"][0]["name"] = "changed"
    assert stored == STORED
    assert overrides == before


def test_merge_none_and_empty_overrides() -> None:
    assert merge_agent_config(STORED, None) == STORED
    assert merge_agent_config(STORED, {}) == STORED
    assert merge_agent_config({}, {"prompt": "p"}) == {"prompt": "p"}
    # a scalar replaces a dict and a dict replaces a scalar
    assert merge_agent_config({"voice": {"a": 1}}, {"voice": "x"}) == {"voice": "x"}
    assert merge_agent_config({"voice": "x"}, {"voice": {"a": 1}}) == {"voice": {"a": 1}}


def test_merge_refuses_unbounded_nesting() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(MAX_DEPTH + 5):
        node["n"] = {}
        node = node["n"]
    with pytest.raises(ValueError):
        merge_agent_config({}, deep)


VARS = {"FromPhone": "+15555550100", "ToPhone": "+15555550199", "userName": "Ada"}


def test_fill_documented_fields() -> None:
    config = {
        "prompt": "The caller {userName} called from {FromPhone} to {ToPhone}.",
        "first_message": "Hi {userName}! How can I help you?",
        "tools": [
            {
                "name": "lookup_caller",
                "description": "Look up {userName}",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "phone_number": {"type": "string", "description": "{FromPhone}"}
                    },
                },
            }
        ],
        "temperature": 0.5,
        "enabled": True,
        "nothing": None,
    }
    filled = fill_placeholders(config, VARS)
    assert filled["prompt"] == "The caller Ada called from +15555550100 to +15555550199."
    assert filled["first_message"] == "Hi Ada! How can I help you?"
    tool = filled["tools"][0]
    assert tool["description"] == "Look up Ada"
    assert tool["parameters"]["properties"]["phone_number"]["description"] == "+15555550100"
    assert (filled["temperature"], filled["enabled"], filled["nothing"]) == (0.5, True, None)
    assert str(config["prompt"]).startswith("The caller {userName}")  # input untouched


@pytest.mark.parametrize(
    "text",
    [
        'Reply as JSON like {"a": 1} or {"name": "{x"}.',
        "Literal braces {{ and }} and {{userName} and {",
        "A regex \\d{3}-\\d{4} and {3,5}",
        "Unknown {notAVariable} stays",
        "}{ stray { } {} { userName }",
    ],
)
def test_fill_leaves_non_placeholders_as_written(text: str) -> None:
    assert fill_text(text, VARS) == text.replace("{userName}", "Ada")


def test_fill_doubled_braces_and_no_second_pass() -> None:
    assert fill_text("{{userName}}", VARS) == "{Ada}"
    assert fill_text("{a}{b}", {"a": "{b}", "b": "B"}) == "{b}B"  # values are not re-expanded


def test_fill_urls_percent_encodes_values() -> None:
    config = {
        "tools": [{"webhook": "https://crm.example/lookup?phone={FromPhone}&name={userName}"}],
        "extra_prompt_webhook": {"url": "https://h.example/p/{who}", "headers": {"X": "{who}"}},
    }
    filled = fill_placeholders(config, {**VARS, "who": "a b&c=d"})
    assert (
        filled["tools"][0]["webhook"] == "https://crm.example/lookup?phone=%2B15555550100&name=Ada"
    )
    assert filled["extra_prompt_webhook"]["url"] == "https://h.example/p/a%20b%26c%3Dd"
    assert filled["extra_prompt_webhook"]["headers"]["X"] == "a b&c=d"  # not a URL: plain


def test_fill_keys_are_not_touched() -> None:
    assert fill_placeholders({"{userName}": "{userName}"}, VARS) == {"{userName}": "Ada"}


def test_call_variables() -> None:
    variables = call_variables(
        from_="+1555", to="+1666", metadata={"userName": "Ada", "n": 3, "vip": True, "x": [1]}
    )
    assert variables == {
        "userName": "Ada",
        "n": "3",
        "vip": "true",
        "x": "[1]",
        "FromPhone": "+1555",
        "ToPhone": "+1666",
    }
    # no phone numbers (WebRTC): metadata may supply them, else empty
    assert call_variables(from_="", to="", metadata={"FromPhone": "+1777"})["FromPhone"] == "+1777"
    assert call_variables(from_="", to="", metadata={})["ToPhone"] == ""
    # the call's real number wins over metadata
    assert call_variables(from_="+1555", to="", metadata={"FromPhone": "x"})["FromPhone"] == "+1555"
