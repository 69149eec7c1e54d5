"""Per-session agent config: overrides merged in, ``{variables}`` filled.

Merging: the stored agent's config is the base; a session's ``agent_config``
overrides it. Nested objects merge key by key, everything else (lists
included) is replaced whole, so a session can swap the ``tools`` list
without inheriting the stored one's entries.

Placeholders: ``{name}`` is replaced by ``variables[name]`` when ``name`` is
a known variable (``FromPhone``, ``ToPhone`` and every metadata key). What
is not a known variable stays exactly as written, so ``{"a": 1}`` in a JSON
example, ``{{``, ``{3}`` in a regex or ``{unknown}`` pass through untouched.
There is no escape syntax and no second pass: a value that itself contains
``{x}`` is inserted literally.

Which fields: every string value anywhere in the config (dict keys are never
touched). That covers the documented places (prompt, first message, tool and
parameter descriptions, webhook parameters) and whatever a custom agent core
reads, without a list of field names to keep in step with it. A string that
is a URL (``http(s)://``, ``ws(s)://``) gets its inserted values
percent-encoded, so ``+15555550100`` stays a plus sign in a query string and
``&`` in a value cannot add a parameter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

#: Nesting deeper than this is refused (merge) or left as is (fill): configs are
#: user input and recursion must stay bounded.
MAX_DEPTH = 32

_PLACEHOLDER = re.compile(r"\{([^{}\s\"']{1,128})\}")
_URL = re.compile(r"^(?:https?|wss?)://", re.IGNORECASE)


def merge_agent_config(
    stored: Mapping[str, Any], overrides: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``stored`` with ``overrides`` on top; neither input is modified."""
    return _merge(stored, overrides or {}, 0)


def _merge(base: Mapping[str, Any], top: Mapping[str, Any], depth: int) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise ValueError(f"agent_config nested deeper than {MAX_DEPTH} levels")
    merged = {key: _copy(value, depth + 1) for key, value in base.items()}
    for key, value in top.items():
        old = merged.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            merged[key] = _merge(old, value, depth + 1)
        else:
            merged[key] = _copy(value, depth + 1)
    return merged


def _copy(value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError(f"agent_config nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        return {k: _copy(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(v, depth + 1) for v in value]
    return value


def variable_value(value: Any) -> str:
    """How a metadata value reads when inserted into text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def call_variables(*, from_: str, to: str, metadata: Mapping[str, Any]) -> dict[str, str]:
    """The variables of a call: every metadata key, plus ``FromPhone`` and ``ToPhone``.

    The call's own numbers win over same-named metadata when known; a call
    without numbers (WebRTC) may get them from metadata.
    """
    variables = {str(k): variable_value(v) for k, v in metadata.items()}
    if from_:
        variables["FromPhone"] = from_
    if to:
        variables["ToPhone"] = to
    variables.setdefault("FromPhone", "")
    variables.setdefault("ToPhone", "")
    return variables


def fill_text(text: str, variables: Mapping[str, str], *, url: bool = False) -> str:
    """``text`` with each ``{known}`` replaced; percent-encode the values if ``url``."""
    if "{" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        value = variables.get(match.group(1))
        if value is None:
            return match.group(0)
        return quote(value, safe="") if url else value

    return _PLACEHOLDER.sub(replace, text)


def fill_placeholders(
    agent_config: Mapping[str, Any], variables: Mapping[str, str]
) -> dict[str, Any]:
    """A copy of ``agent_config`` with placeholders filled in every string value."""
    return {key: _fill(value, variables, 1) for key, value in agent_config.items()}


def _fill(value: Any, variables: Mapping[str, str], depth: int) -> Any:
    if isinstance(value, str):
        return fill_text(value, variables, url=bool(_URL.match(value)))
    if depth > MAX_DEPTH:
        return value  # too deep to walk: hand it on unchanged rather than fail the call
    if isinstance(value, Mapping):
        return {k: _fill(v, variables, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_fill(v, variables, depth + 1) for v in value]
    return value
