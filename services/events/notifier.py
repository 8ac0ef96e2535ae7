"""One pub/sub subscription per Events process, fanned out to the watchers in it.

Writers publish a job's id on one channel whenever they append to its stream. The notifier
wakes only that job's watchers, which then read their stream on the shared connection
pool. An XREAD over every watched stream would instead resend all ten thousand keys on each
wake-up; here the cost of an event does not grow with the number of watchers.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict

import redis.asyncio
import redis.exceptions
import structlog

from darkroom.keys import Keys
from darkroom.process import raise_if_cancelled

log = structlog.get_logger("darkroom.events")


class Notifier:
    """Wakes the watchers of a job when it has a new event."""

    def __init__(
        self,
        listener: redis.asyncio.Redis,
        commands: redis.asyncio.Redis,
        keys: Keys,
        *,
        data_check: float = 1.0,
    ) -> None:
        self._client = listener
        self._commands = commands
        self._channel = keys.notify_channel
        self._data_check = data_check
        # A key only this process writes: when it vanishes, Redis lost its data.
        self._sentinel = keys.alive(uuid.uuid4().hex)
        self._watchers: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()
        self.closing = False

    @property
    def watcher_count(self) -> int:
        return sum(len(events) for events in self._watchers.values())

    @property
    def job_count(self) -> int:
        return len(self._watchers)

    async def start(self) -> None:
        """Subscribe, and return once notifications flow."""
        self._tasks = [
            asyncio.create_task(self._run(), name="events-notifier"),
            asyncio.create_task(self._watch_data(), name="events-data-check"),
        ]
        await self._subscribed.wait()

    def register(self, job_id: str) -> asyncio.Event:
        """An event set whenever `job_id` has news (or the process is shutting down)."""
        wake = asyncio.Event()
        self._watchers[job_id].add(wake)
        return wake

    def unregister(self, job_id: str, wake: asyncio.Event) -> None:
        watchers = self._watchers.get(job_id)
        if watchers is None:
            return
        watchers.discard(wake)
        if not watchers:
            del self._watchers[job_id]

    def _wake(self, job_id: str) -> None:
        for wake in self._watchers.get(job_id, ()):
            wake.set()

    def _wake_all(self) -> None:
        for watchers in self._watchers.values():
            for wake in watchers:
                wake.set()

    async def _run(self) -> None:
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                while True:
                    raise_if_cancelled()
                    message = await pubsub.get_message(timeout=5.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        # (Re)subscribed: anything published while we were away was
                        # missed, so every watcher re-reads its stream.
                        self._subscribed.set()
                        self._wake_all()
                    elif message["type"] == "message":
                        data = message["data"]
                        self._wake(data.decode() if isinstance(data, bytes) else str(data))
            except (
                redis.exceptions.ConnectionError,
                redis.exceptions.TimeoutError,
                OSError,
            ) as exc:
                raise_if_cancelled()
                log.warning("notifier_disconnected", error=repr(exc))
                self._subscribed.set()  # serve anyway: watchers fall back to the row
                await asyncio.sleep(0.5)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _watch_data(self) -> None:
        """Wake everyone when Redis loses its data (FLUSHALL, a restart without persistence):
        no event will say so, and watchers must fall back to the job rows."""
        first = True
        while True:
            try:
                previous = await self._commands.set(self._sentinel, b"1", ex=3600, get=True)
                if previous is None and not first:
                    log.warning("event_log_lost")
                    self._wake_all()
                first = False
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                pass  # the notifier's reconnect wakes everyone when Redis is back
            raise_if_cancelled()
            await asyncio.sleep(self._data_check)

    async def close(self) -> None:
        """Wake every watcher to end its stream, then stop listening."""
        self.closing = True
        self._wake_all()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            await self._commands.delete(self._sentinel)
