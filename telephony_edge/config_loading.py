"""Loading the settings: a YAML file plus ``TELEPHONY_EDGE_`` environment overrides.

Everything is validated at start-up, so a wrong file stops the service with
one line per problem (all of them at once), naming where the value came from
(the file or the environment variable), the field and the reason, never
half-way through a call.
Environment variables override the file; nested fields use ``__``, e.g.
``TELEPHONY_EDGE_SERVER__PORT=9000`` or ``TELEPHONY_EDGE_TWILIO__AUTH_TOKEN=…``.
The environment is merged in here (not by pydantic-settings) so that each
problem can name the variable that gave the bad value.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import EnvSettingsSource
from pydantic_settings.exceptions import SettingsError

from telephony_edge.config import Settings, data_settings_class, settings_class
from telephony_edge.config_problems import follows_from, leave_out, unknown_key, validation_problems

ENV_PREFIX = "TELEPHONY_EDGE_"
_MAX_ROUNDS = 5


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One bad field: where its value came from, which field, what is wrong."""

    source: str  # the file, the environment variable, or "" (values given in code)
    field: str
    reason: str

    def __str__(self) -> str:
        return ": ".join(part for part in (self.source, self.field, self.reason) if part)


class ConfigError(Exception):
    """The configuration is invalid; ``str()`` is one line per problem."""

    def __init__(self, problems: str | list[ConfigProblem]) -> None:
        if isinstance(problems, str):
            problems = [ConfigProblem("", "", problems)]
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read ``path`` (YAML) if given, apply the environment, validate.

    Raises ConfigError listing every problem found, each with its source
    (the file or the environment variable) and field. Top-level
    ``overrides`` replace the file's sections (tests, embedding).
    """
    data = _read_yaml(path) if path is not None else {}
    data.update(copy.deepcopy(overrides))
    env_names = _environment_names()
    problems = [
        ConfigProblem(name, ".".join(parts), unknown_key(settings_class(), parts[0]))
        for parts, name in env_names.items()
        if parts[0] not in settings_class().model_fields
    ]
    try:
        env_values = EnvSettingsSource(settings_class())()
    except SettingsError as exc:  # a JSON value that does not parse; names the field
        field = re.search(r'field "([^"]+)"', str(exc))
        name = field.group(1) if field else ""
        source = env_names.get((name,), f"{ENV_PREFIX}{name.upper()}")
        raise ConfigError([*problems, ConfigProblem(source, name, "not valid JSON")]) from None
    sources = _Sources(str(path or ""), env_names)
    settings, found = _validate(_deep_merge(data, env_values), sources)
    problems += found
    if problems or settings is None:
        raise ConfigError(problems)
    return settings


def _read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(path), "", f"cannot read: {exc.strerror}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(str(path), "", f"not valid YAML: {exc}")]) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            [ConfigProblem(str(path), "", "the top level must be a mapping of sections")]
        )
    return loaded


def _environment_names() -> dict[tuple[str, ...], str]:
    """Each ``TELEPHONY_EDGE_*`` variable by the field path it sets (lower case, as read)."""
    names = {}
    for name in os.environ:
        if name.upper().startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            names[tuple(name[len(ENV_PREFIX) :].lower().split("__"))] = name
    return names


@dataclass(frozen=True, slots=True)
class _Sources:
    """Where a field's value came from: an environment variable, else the file."""

    file: str
    env: dict[tuple[str, ...], str]

    def of(self, field: str) -> str:
        dotted = field.lower()
        for parts, name in self.env.items():
            path = ".".join(parts)
            if dotted == path or dotted.startswith(path + "."):
                return name
        inside = [n for p, n in self.env.items() if ".".join(p).startswith(dotted + ".")]
        return " + ".join(filter(None, (self.file, *inside)))


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, nested mappings key by key (as pydantic-settings merges)."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _validate(
    data: dict[str, Any], sources: _Sources
) -> tuple[Settings | None, list[ConfigProblem]]:
    """Validate, and on failure again without the bad values, to list every problem at once.

    pydantic reports every bad field of one pass, but the cross-references
    (numbers → regions, agents; secrets) only run once all fields are valid.
    So each bad value is left out (a key, or a whole entry/section when
    leaving the key out cannot help) and the rest validated again; problems
    that only follow from what was left out are not reported.
    """
    problems: list[ConfigProblem] = []
    removed: list[str] = []
    for _ in range(_MAX_ROUNDS):
        try:
            return data_settings_class()(**data), problems
        except ValidationError as exc:
            progress = False
            for loc, field, reason in validation_problems(exc):
                if any(follows_from(gone, field, reason) for gone in removed):
                    continue
                if not any(p.field == field for p in problems):
                    problems.append(ConfigProblem(sources.of(field), field, reason))
                if loc is not None:
                    progress |= leave_out(data, loc, removed)
            if not progress:
                break
    return None, problems
