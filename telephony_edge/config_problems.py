"""What is wrong with a configuration, in the words of its fields: pydantic's errors made readable.

pydantic reports a union's every branch, internal tags and "extra fields not
permitted"; a person wants one line per bad field (``server.port: …``), an
unknown key with its "did you mean", and nothing that only follows from a
value already refused. These functions translate, and say which value to
leave out so that validation can go on and find the rest
(:func:`telephony_edge.config_loading.load_settings`); a call's
``agent_config`` is checked with the same words (:func:`agent_config_problems`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from telephony_edge.config import SECTION_MODEL_NAMES, AgentConfig, settings_class

_UNION_TAG = re.compile(r"^[\w-]+\[.*\]$")  # pydantic's name for one branch of a union
#: pydantic's errors for a key no field takes: in a model, in a dataclass
_UNKNOWN_KEY_ERRORS = frozenset({"extra_forbidden", "unexpected_keyword_argument"})


def agent_config_problems(overrides: Mapping[str, Any]) -> list[str]:
    """What is wrong with a call's ``agent_config``: one ``agent_config.<field>: <reason>`` each.

    The checks and words of a stored agent's (``agents.<id>.<field>: <reason>``):
    an unknown key at any level is refused with "did you mean", except in
    the free-form places (``extra``, ``voice``, ``tools``, a webhook's
    ``headers``). A call's config overrides the stored agent's key by key, so
    what the stored agent may supply (a webhook's ``url``) is not required here.
    """
    try:
        AgentConfig.model_validate(overrides)
    except ValidationError as exc:
        found = validation_problems(exc, AgentConfig, partial=True)
        return [f"agent_config.{field}: {reason}" for _, field, reason in found]
    return []


def validation_problems(
    exc: ValidationError, root: type[BaseModel] | None = None, *, partial: bool = False
) -> list[tuple[tuple[str, ...] | None, str, str]]:
    """(path, dotted field, reason) per bad field; a union's branches are one field.

    ``root``: the model validated (default: the whole settings). ``partial``:
    the data are overrides, so a missing required field is no problem.
    """
    by_loc: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    out: list[tuple[tuple[str, ...] | None, str, str]] = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"] if not _is_union_tag(str(p)) and p != "[key]")
        msg = err["msg"].removeprefix("Value error, ")
        if (not loc and "\n" in msg) or (not loc and ": " in msg):  # the cross-references
            for line in msg.splitlines():
                field, _, reason = line.partition(": ")
                out.append((None, field, reason))
            continue
        if err["type"] in _UNKNOWN_KEY_ERRORS:
            msg = unknown_key(_model_at(loc[:-1], root), loc[-1])
        by_loc.setdefault(loc, []).append((err["type"], msg))
    for loc, errs in by_loc.items():
        if any(other[: len(loc)] == loc and other != loc for other in by_loc):
            continue  # another branch of a union got further: its error says more
        if partial:
            errs = [(kind, msg) for kind, msg in errs if kind != "missing"]
            if not errs:
                continue
        useful = [msg for kind, msg in errs if not kind.endswith("_type")] or [errs[0][1]]
        out.append((loc, ".".join(loc), "; ".join(dict.fromkeys(useful))))
    return out


def _is_union_tag(part: str) -> bool:
    return bool(_UNION_TAG.match(part)) or part in SECTION_MODEL_NAMES


def _model_at(loc: tuple[str, ...], root: type[BaseModel] | None = None) -> type | None:
    """The model (or dataclass) whose fields live at ``loc`` (for "did you mean"), if any."""
    current: Any = root or settings_class()
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            current = field.annotation if field is not None else None
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return None
        current = _model_or_dict(current)
    return current if _field_names(current) else None


def _field_names(model: Any) -> list[str]:
    """The fields of a model or a dataclass (``[]`` for anything else)."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    if isinstance(model, type) and is_dataclass(model):
        return [f.name for f in fields(model)]
    return []


def _model_or_dict(annotation: Any) -> Any:
    """The model (or dict) inside ``X | None`` or ``Annotated[...]``."""
    if get_origin(annotation) is Annotated:
        return get_args(annotation)[0]
    for arg in get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ():
        if get_origin(arg) is dict or (isinstance(arg, type) and issubclass(arg, BaseModel)):
            return arg
    return annotation


def unknown_key(model: type | None, key: str) -> str:
    reason = "unknown key"
    if model is not None:
        close = difflib.get_close_matches(key, _field_names(model), n=1, cutoff=0.7)
        if close:
            reason += f"; did you mean {close[0]}?"
        if model is AgentConfig:
            reason += " (free-form settings for the agent core go under extra:)"
    return reason


def follows_from(gone: str, field: str, reason: str) -> bool:
    """Whether a problem is only a consequence of leaving ``gone`` out."""
    name = gone.rsplit(".", 1)[-1]
    return field == gone or field.startswith(gone + ".") or gone in reason or f"'{name}'" in reason


def leave_out(data: dict[str, Any], loc: tuple[str, ...], removed: list[str]) -> bool:
    """Take the value at ``loc`` out of ``data``; whether anything changed.

    A key whose field has a default just goes; when it is already gone (a
    required field) or names a whole section or entry (its own check failed),
    the enclosing entry or section goes, and is remembered in ``removed``.
    """
    parent: Any = data
    for part in loc[:-1]:
        if not isinstance(parent, dict) or part not in parent:
            return False
        if not isinstance(parent[part], dict):  # a list: leave the whole list out
            del parent[part]
            return True
        parent = parent[part]
    if isinstance(parent, dict) and loc[-1] in parent and not isinstance(parent[loc[-1]], dict):
        del parent[loc[-1]]
        return True
    whole = loc[:2] if loc[0] in ("agents", "regions", "numbers") else loc[:1]
    container: Any = data
    for part in whole[:-1]:
        container = container.get(part, {}) if isinstance(container, dict) else {}
    if isinstance(container, dict) and whole[-1] in container:
        del container[whole[-1]]
        removed.append(".".join(whole))
        return True
    return False
