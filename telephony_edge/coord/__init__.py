"""Shared state between workers: the Coordinator interface and its backends."""

from telephony_edge.coord.base import ControlMessage, Coordinator, Job
from telephony_edge.coord.memory import MemoryCoordinator

__all__ = ["ControlMessage", "Coordinator", "Job", "MemoryCoordinator"]
