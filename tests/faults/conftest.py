"""Fixtures of the fault suite: its own servers for the session, a cluster per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.faults.cluster import Cluster, Servers, close_cluster, open_cluster, own_servers


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    own = own_servers()
    yield own
    own.redis.close()
    own.postgres.close()


@pytest.fixture
async def cluster(servers: Servers) -> AsyncIterator[Cluster]:
    world = await open_cluster(servers)
    yield world
    await close_cluster(world)
