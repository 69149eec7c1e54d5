"""JSON structured logs with the call id on every call-related line.

The call id comes from ``extra={"call_id": …}`` on the log call, or from the
``current_call_id`` context variable that the bridge sets for the tasks of a
call, so code deep inside a leg logs with the right id without passing it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

current_call_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_call_id", default=None
)


def sampled(count: int) -> bool:
    """Whether the ``count``-th occurrence of a repeated warning is logged.

    The first few are, then one in 500: an attacker or a broken peer that
    repeats one mistake cannot flood the log, and the operator still sees it.
    """
    return count <= 5 or count % 500 == 0


_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, call_id, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        call_id = getattr(record, "call_id", None) or current_call_id.get()
        if call_id:
            entry["call_id"] = call_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.Formatter.converter = time.gmtime
