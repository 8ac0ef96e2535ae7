"""The database engine and session factory, and migrations run from code."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

MIGRATIONS = Path(__file__).with_name("migrations")
T = TypeVar("T")


def create_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    """An async engine whose pooled connections are checked before use."""
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=5,
        # A dead database must turn into UNAVAILABLE quickly, not hang a request.
        connect_args={"connect_timeout": 5},
    )


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded rows usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    """An Alembic configuration for `url`, independent of the working directory."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the database at `url` to `revision` (blocking; call from sync code)."""
    command.upgrade(alembic_config(url), revision)


class HeldConnection:
    """One connection in autocommit mode (each statement its own transaction), held from
    one use to the next: no pool checkout and no liveness ping per statement, which on a
    hot path cost a round trip each. One user at a time; after any error the connection
    is dropped, so the next use starts on a fresh one.

    With `retry_on_disconnect`, a use that finds the held connection dead (the database
    restarted since the last use) runs once more on a fresh connection, as the pool's
    liveness ping would have arranged; only for uses that may safely run twice (the
    conditional transitions: a repeat matches nothing and changes nothing).
    """

    def __init__(self, engine: AsyncEngine, *, retry_on_disconnect: bool = False) -> None:
        self._engine = engine
        self._connection: AsyncConnection | None = None
        self._lock = asyncio.Lock()
        self._retry = retry_on_disconnect

    async def run(self, use: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """`await use(connection)` on the held connection."""
        async with self._lock:
            reused = self._connection is not None
            try:
                return await self._run(use)
            except DBAPIError as exc:
                if not (self._retry and reused and exc.connection_invalidated):
                    raise
            return await self._run(use)

    async def _run(self, use: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        if self._connection is None:
            connection = await self._engine.connect()
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            self._connection = connection
        try:
            return await use(self._connection)
        except BaseException:
            # Broken, or stopped mid-statement: its state is unknown, never reuse it.
            await self._drop(invalidate=True)
            raise

    async def close(self) -> None:
        async with self._lock:
            await self._drop(invalidate=False)

    async def _drop(self, *, invalidate: bool) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        with contextlib.suppress(Exception):
            if invalidate:
                await connection.invalidate()
            await connection.close()
