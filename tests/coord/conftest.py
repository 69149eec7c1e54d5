"""Fixtures of the coordinator tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.coord.redis_servers import RedisProcess, cluster_node


@pytest.fixture(scope="session")
def redis_cluster_node() -> Iterator[RedisProcess]:
    """A one-node Redis Cluster for the session: cross-slot steps fail on it."""
    with cluster_node() as node:
        yield node
