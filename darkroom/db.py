"""The database engine and session factory, the bound on one database call, and
migrations run from code."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext import asyncio as sqlalchemy_asyncio
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
T = TypeVar("T")


# The default of DARKROOM_DATABASE_TIMEOUT, for engines built without settings.
DEFAULT_TIMEOUT = 4.0
# How often `bounded` repeats its cancellation of work that has not ended yet.
_CANCEL_EVERY = 0.05


def create_engine(
    url: str, pool_size: int = 10, *, timeout: float = DEFAULT_TIMEOUT
) -> AsyncEngine:
    """An async engine whose pooled connections are checked before use, and on which no
    wait lasts much longer than `timeout` seconds, on either side of the connection.

    Client side: connecting (`connect_timeout`, whole seconds, at least 2 as in libpq),
    waiting for a pooled connection, and data the server does not acknowledge
    (`tcp_user_timeout`: a peer that drops packets breaks the connection instead of
    leaving it waiting forever). Server side, so that a statement whose client gave up does
    not run on, holding locks: `statement_timeout`, and
    `idle_in_transaction_session_timeout` for a client that vanished mid-transaction
    (sent as the `options` startup parameter: behind PgBouncer, list `options` in its
    `ignore_startup_parameters`, and only the client side applies). A peer that takes the
    bytes but never answers (a wedged server or proxy) trips none of the client's: callers
    on a request path also wrap their calls in `bounded`.
    """
    millis = max(1, round(timeout * 1000))
    server = f"-c statement_timeout={millis} -c idle_in_transaction_session_timeout={millis}"
    # Keep any `options` the URL carries (connect_args would replace them).
    given = make_url(url).query.get("options")
    given = given if isinstance(given, str) else " ".join(given or ())
    # Looked up on its module at each call: tracing, when on, wraps it there.
    return sqlalchemy_asyncio.create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=timeout,
        connect_args={
            "connect_timeout": max(2, math.ceil(timeout)),
            "tcp_user_timeout": millis,
            "options": f"{given} {server}".strip(),
        },
    )


async def bounded(work: Awaitable[T], seconds: float) -> T:
    """`await work`, giving up after `seconds` with `TimeoutError`.

    Not `asyncio.timeout`: on the first cancellation of a running statement psycopg asks
    the server to cancel it and waits for that, up to 10 s more against a server that
    answers nothing; cancelled again, it closes the connection at once. So the work is
    cancelled until it has ended, and its connection is never reused (SQLAlchemy
    invalidates a connection interrupted mid-call; `HeldConnection` drops it). The
    server's own `statement_timeout` ends whatever the statement left running there.
    When our caller is cancelled, the work is ended the same way.
    """
    task = asyncio.ensure_future(work)
    timed_out = True
    try:
        done, _ = await asyncio.wait([task], timeout=seconds)
        timed_out = not done
    finally:
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=_CANCEL_EVERY)
        cause = None if task.cancelled() else task.exception()  # retrieved, either way
    if timed_out:
        raise TimeoutError(f"the database did not answer within {seconds:g} s") from cause
    return task.result()


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

    With `timeout`, each try (connecting included) is `bounded` by it: one that takes
    longer raises `TimeoutError` and its connection is dropped.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        retry_on_disconnect: bool = False,
        timeout: float | None = None,
    ) -> None:
        self._engine = engine
        self._connection: AsyncConnection | None = None
        self._lock = asyncio.Lock()
        self._retry = retry_on_disconnect
        self._timeout = timeout

    async def run(self, use: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """`await use(connection)` on the held connection."""
        async with self._lock:
            reused = self._connection is not None
            try:
                return await self._try(use)
            except DBAPIError as exc:
                if not (self._retry and reused and exc.connection_invalidated):
                    raise
            return await self._try(use)

    async def _try(self, use: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        if self._timeout is None:
            return await self._run(use)
        return await bounded(self._run(use), self._timeout)

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
