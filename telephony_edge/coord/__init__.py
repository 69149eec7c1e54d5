"""Shared state between workers: the Coordinator interface and its backends."""

from telephony_edge.coord.base import (
    Conflict,
    ControlMessage,
    Coordinator,
    DeadLetter,
    Document,
    Job,
)
from telephony_edge.coord.memory import MemoryCoordinator

__all__ = [
    "Conflict",
    "ControlMessage",
    "Coordinator",
    "DeadLetter",
    "Document",
    "Job",
    "MemoryCoordinator",
]
