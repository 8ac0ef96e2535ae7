"""Wake-ups: a connection that LISTENs on `darkroom_webhooks`, which every statement that
inserts deliveries notifies at its commit (migration 0005's trigger). An idle worker then
takes new deliveries at once instead of at its next poll; the poll stays the fallback (a
lost connection, a notification missed while reconnecting, a retry falling due)."""

from __future__ import annotations

import asyncio
import contextlib

import psycopg
import structlog
from sqlalchemy import make_url

log = structlog.get_logger("darkroom.webhooks")
CHANNEL = "darkroom_webhooks"
RECONNECT_S = 1.0


class Wakeups:
    """`event` is set whenever deliveries may have been inserted."""

    def __init__(self, database_url: str, connect_timeout: float) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._connect_timeout = max(2, round(connect_timeout))
        self.event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="darkroom-webhook-wakeups")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _listen(self) -> None:
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=self._connect_timeout
                )
                async with connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    self.event.set()  # anything inserted while we were not listening
                    async for _ in connection.notifies():
                        self.event.set()
            except (psycopg.Error, OSError) as exc:
                log.warning("webhook_wakeups_lost", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.sleep(RECONNECT_S)
