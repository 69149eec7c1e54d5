"""Text frames of the agent-core protocol: method names, encoding, decoding.

Shared by the edge's agent-link client and the built-in demo core so both
sides spell the protocol the same way (see ``AGENT_PROTOCOL.md``). A text
frame is a JSON object ``{"method": str, "data": object?}``; binary frames are
audio and never pass through here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

# Edge -> core.
INITIATE: Final = "initiate"
PING: Final = "ping"
DTMF: Final = "dtmf"
PLAYBACK: Final = "playback"
ERROR: Final = "error"  # a request of the core's was refused; the call goes on
AMD_RESULT: Final = "amd_result"  # who answered: human, machine (greeting over) or unknown

# Core -> edge.
ONREADY: Final = "onready"
PAUSE: Final = "pause"
UNPAUSE: Final = "unpause"
CLEAR: Final = "clear"
ONTRANSCRIPT: Final = "ontranscript"
ONRESPONSETEXT: Final = "onresponsetext"
START_ANSWERING: Final = "start_answering"
AI_ACTION: Final = "ai_action"
FUNCTION_CALL: Final = "function_call"
END_CALL: Final = "end_call"
TRANSFER_CALL: Final = "transfer_call"
SEND_DTMF: Final = "send_dtmf"  # press keys toward the caller (an IVR's menu)
ONSESSIONENDED: Final = "onsessionended"

EDGE_TO_CORE: Final = frozenset({INITIATE, PING, DTMF, PLAYBACK, ERROR, AMD_RESULT})
CORE_TO_EDGE: Final = frozenset(
    {
        ONREADY,
        PAUSE,
        UNPAUSE,
        CLEAR,
        ONTRANSCRIPT,
        ONRESPONSETEXT,
        START_ANSWERING,
        AI_ACTION,
        FUNCTION_CALL,
        END_CALL,
        TRANSFER_CALL,
        SEND_DTMF,
        ONSESSIONENDED,
    }
)


class ProtocolError(ValueError):
    """A text frame that is not a protocol message (bad JSON, no method...)."""


def encode(method: str, data: Mapping[str, Any] | None = None) -> str:
    """Return the text frame for ``method``; ``data`` is omitted when None."""
    if not method:
        raise ValueError("method must be a non-empty string")
    msg: dict[str, Any] = {"method": method}
    if data is not None:
        msg["data"] = dict(data)
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False)


def decode(text: str | bytes) -> tuple[str, dict[str, Any]]:
    """Parse a text frame into ``(method, data)``.

    A missing or null ``data`` becomes ``{}``. The protocol allows free-form
    data for some events (``ai_action``); a ``data`` that is not an object is
    returned wrapped as ``{"value": data}`` so callers always get a dict.
    Raises :class:`ProtocolError` naming what is wrong otherwise.
    """
    try:
        msg = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed JSON in text frame: {exc} ({_excerpt(text)})") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"text frame is not a JSON object: {_excerpt(text)}")
    method = msg.get("method")
    if not isinstance(method, str) or not method:
        raise ProtocolError(f"text frame has no string 'method': {_excerpt(text)}")
    data = msg.get("data")
    if data is None:
        return method, {}
    if isinstance(data, dict):
        return method, data
    return method, {"value": data}


def _excerpt(text: str | bytes, limit: int = 80) -> str:
    s = text if isinstance(text, str) else text.decode("utf-8", "replace")
    return repr(s if len(s) <= limit else s[:limit] + "...")
