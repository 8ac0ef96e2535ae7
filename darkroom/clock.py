"""Whether this machine's clock agrees with the servers' clocks.

Darkroom never decides by a process's own clock: leases, deadlines and retry times come
from the database's `now()`, queue due times from Redis `TIME`. A skewed clock therefore
breaks nothing, but it makes logs and event times misleading, so every process compares
its clock with both servers' at start and warns when they disagree by more than
`TOLERANCE`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import timedelta
from typing import cast

import redis.asyncio
import structlog
from sqlalchemy import text

from darkroom import db
from darkroom.config import Settings

log = structlog.get_logger("darkroom.clock")

TOLERANCE = timedelta(seconds=5)
# The check is best effort: a server that does not answer within this is skipped.
CHECK_TIMEOUT_S = 5.0


async def database_offset(url: str) -> float:
    """The database clock minus ours, in seconds (half a round trip of uncertainty)."""
    engine = db.create_engine(url, pool_size=1)
    try:
        async with engine.connect() as connection:
            before = time.time()
            server = (await connection.execute(text("SELECT extract(epoch FROM now())"))).scalar()
            after = time.time()
    finally:
        await engine.dispose()
    return float(cast(float, server)) - (before + after) / 2


async def redis_offset(url: str) -> float:
    """The Redis clock minus ours, in seconds."""
    client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=CHECK_TIMEOUT_S)
    try:
        before = time.time()
        seconds, micros = await cast(Awaitable[tuple[int, int]], client.time())
        after = time.time()
    finally:
        await client.aclose()
    return seconds + micros / 1_000_000 - (before + after) / 2


async def check(settings: Settings) -> dict[str, float]:
    """Compare this machine's clock with Postgres' and Redis'; warn about each one that is
    off by more than `TOLERANCE`. Returns the offsets it could measure (seconds)."""
    offsets: dict[str, float] = {}
    for name, measure in (
        ("database", database_offset(settings.database_url)),
        ("redis", redis_offset(settings.redis_url)),
    ):
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                offsets[name] = await measure
        except Exception as exc:  # noqa: BLE001 - best effort: the service runs regardless
            log.info("clock_check_skipped", server=name, error=repr(exc))
            continue
        if abs(offsets[name]) > TOLERANCE.total_seconds():
            log.warning(
                "clock_skewed",
                server=name,
                offset_s=round(offsets[name], 3),
                tolerance_s=TOLERANCE.total_seconds(),
                note="Darkroom decides by the servers' clocks; logs and event times will be off",
            )
    return offsets
