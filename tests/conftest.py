"""Shared fixtures: real Postgres and Redis (running ones, or throwaways), one database
built by the migrations and one Redis key prefix per test run, and a real Jobs server."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import psycopg
import pytest
import redis.asyncio
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine

from darkroom import db, devservers
from darkroom.config import DEV_OWNER, DEV_TOKEN, Settings
from darkroom.services.events.app import EventsApp
from darkroom.services.events.app import start as start_events
from darkroom.services.jobs.app import JobsApp, start
from darkroom.store import JobStore
from darkroom.v1 import jobs_service_pb2_grpc
from tests.helpers import RUN_ID, Caller

FORCE_THROWAWAY = os.environ.get("DARKROOM_TEST_THROWAWAY_SERVERS") == "1"


def _plain(url: str) -> str:
    return url.replace("+psycopg", "")


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    server = devservers.postgres(
        os.environ.get(
            "DARKROOM_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
        force_throwaway=FORCE_THROWAWAY,
    )
    yield server.url
    server.close()


def create_database(admin_url: str, name: str) -> str:
    """Create database `name` next to `admin_url` and return its URL."""
    with psycopg.connect(_plain(admin_url), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(_plain(admin_url), autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url(postgres_admin_url: str) -> Iterator[str]:
    """This run's own database, built by the migrations themselves."""
    name = f"darkroom_test_{RUN_ID}"
    url = create_database(postgres_admin_url, name)
    db.migrate(url)
    yield url
    drop_database(postgres_admin_url, name)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    server = devservers.redis_server(
        os.environ.get("DARKROOM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        force_throwaway=FORCE_THROWAWAY,
    )
    yield server.url
    server.close()


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        key_prefix=f"darkroom-test-{RUN_ID}",
        models=["tiny-sd", "other-model"],
        auth_tokens={"alice-token": "alice", "bob-token": "bob", DEV_TOKEN: DEV_OWNER},
        log_json=True,
    )


@pytest.fixture(scope="session")
async def redis_client(settings: Settings) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain Redis client; on teardown it deletes every key this run wrote."""
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    yield client
    # Per-test prefixes extend the run's prefix, so one pattern covers them too.
    for pattern in settings.keys.everything:
        async for key in client.scan_iter(match=pattern, count=1000):
            await client.delete(key)
    await client.aclose()


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(settings.database_url, pool_size=5)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def store(engine: AsyncEngine) -> JobStore:
    return JobStore(engine)


@pytest.fixture(scope="session")
async def jobs_app(settings: Settings, redis_client: redis.asyncio.Redis) -> AsyncIterator[JobsApp]:
    app = await start(settings, "127.0.0.1:0")
    yield app
    await app.stop(settings.shutdown_grace)


@pytest.fixture(scope="session")
async def events_app(
    settings: Settings, redis_client: redis.asyncio.Redis
) -> AsyncIterator[EventsApp]:
    app = await start_events(settings, "127.0.0.1:0")
    yield app
    await app.stop(timedelta(seconds=1))


@pytest.fixture(scope="session")
async def jobs_channel(jobs_app: JobsApp) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{jobs_app.port}") as channel:
        yield channel


@pytest.fixture(scope="session")
def jobs_stub(jobs_channel: grpc.aio.Channel) -> jobs_service_pb2_grpc.JobsServiceAsyncStub:
    return jobs_service_pb2_grpc.JobsServiceStub(jobs_channel)


@pytest.fixture
def alice(jobs_stub: jobs_service_pb2_grpc.JobsServiceAsyncStub) -> Caller:
    return Caller(jobs_stub, "alice-token")


@pytest.fixture
def bob(jobs_stub: jobs_service_pb2_grpc.JobsServiceAsyncStub) -> Caller:
    return Caller(jobs_stub, "bob-token")


@pytest.fixture
def row_count(engine: AsyncEngine) -> Callable[[], Awaitable[int]]:
    """Call it to get the number of job rows now."""

    async def count() -> int:
        async with engine.connect() as connection:
            return int((await connection.execute(text("SELECT count(*) FROM jobs"))).scalar_one())

    return count


@pytest.fixture(scope="session")
def tiny_model_path() -> Iterator[Path]:
    """The tiny random Stable Diffusion pipeline, built and saved once per run."""
    from darkroom.services.generator import tiny_model  # noqa: PLC0415 - imports torch

    folder = Path(tempfile.mkdtemp(prefix="darkroom-tiny-sd-"))
    tiny_model.build(folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
