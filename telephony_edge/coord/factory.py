"""Pick the coordinator the settings ask for: Redis when a URL is configured, else memory."""

from __future__ import annotations

from telephony_edge.config import CoordinationSettings
from telephony_edge.coord.base import Coordinator
from telephony_edge.coord.memory import MemoryCoordinator


def create_coordinator(settings: CoordinationSettings) -> Coordinator:
    """A coordinator for ``settings``; Redis connects lazily, so this never blocks or fails on I/O.

    Check ``await coordinator.ping()`` for readiness; close it on shutdown.
    """
    if settings.redis_url:
        # redis-py costs a worker ~8 MB: only where Redis is used
        from telephony_edge.coord.redis import RedisCoordinator

        return RedisCoordinator.from_url(settings.redis_url, key_prefix=settings.key_prefix)
    return MemoryCoordinator()
