"""The notifier stops when asked, even when a Redis call loses the cancellation on its way.

When `asyncio.timeout` and a cancellation land together, the timeout turns the
`CancelledError` into a `TimeoutError`, and redis-py's retry runs the command again and
returns normally. The task still counts the request; a loop that does not ask made
`EventsApp.stop` wait for ever (seen as a 120 s hang of a test that restarts Events).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio

from darkroom.config import Settings
from darkroom.services.events.notifier import Notifier


class _SwallowingCommands:
    """A Redis client whose SET loses a cancellation, as a retried command does."""

    def __init__(self, inner: redis.asyncio.Redis) -> None:
        self._inner = inner
        self.swallowed = 0
        self.calls = 0
        self.hold = asyncio.Event()

    async def set(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == 2:  # one lost cancellation; later ones arrive
            try:
                await self.hold.wait()  # where the cancellation lands
            except asyncio.CancelledError:
                self.swallowed += 1
        return await self._inner.set(*args, **kwargs)

    async def delete(self, *args: Any) -> Any:
        return await self._inner.delete(*args)


async def test_close_ends_a_data_check_whose_cancellation_was_swallowed(
    settings: Settings, redis_client: redis.asyncio.Redis
) -> None:
    commands = _SwallowingCommands(redis_client)
    notifier = Notifier(redis_client, commands, settings.keys, data_check=0.01)  # type: ignore[arg-type]
    await notifier.start()
    async with asyncio.timeout(10):
        while commands.calls < 2:  # the second check is held where a cancel is lost
            await asyncio.sleep(0.01)
    closing = asyncio.create_task(notifier.close())
    done, _ = await asyncio.wait({closing}, timeout=5)
    assert done, "close() still waits for a loop that lost its cancellation"
    assert commands.swallowed == 1
    assert all(task.done() for task in notifier._tasks)
