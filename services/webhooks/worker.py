"""The delivery loop: take due deliveries, sign and POST each, record how it went.

Up to DARKROOM_WEBHOOK_CONCURRENCY POSTs are in flight; the loop takes as many due rows
as it has free slots, and when none are due it waits for a wake-up (`wakeups`: new
deliveries were committed) or the poll interval, whichever comes first. A try
that fails is due again after the next pause of DARKROOM_WEBHOOK_RETRY_SCHEDULE (±10 %
jitter, so a receiver that comes back is not met by every delivery at once); after the
last one the delivery is dead, logged as `webhook_dead`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog

from darkroom import metrics, process
from darkroom.config import Settings
from darkroom.services.webhooks.sender import Sender
from darkroom.webhooks import signing
from darkroom.webhooks.deliveries import Deliveries, Outcome, Taken
from darkroom.webhooks.endpoints import Endpoints
from darkroom.webhooks.models import DeliveryState

log = structlog.get_logger("darkroom.webhooks")
JITTER = 0.1


class DeliveryWorker:
    """Delivers the outbox until stopped."""

    def __init__(
        self,
        settings: Settings,
        deliveries: Deliveries,
        endpoints: Endpoints,
        sender: Sender,
        url_for: Callable[[str], str] | None,
        *,
        wakeup: asyncio.Event | None = None,
    ) -> None:
        self._settings = settings
        self._deliveries = deliveries
        self._endpoints = endpoints
        self._sender = sender
        self._url_for = url_for
        self._in_flight: set[asyncio.Task[None]] = set()
        # POSTs in flight per destination (circuit key), so one slow destination holds at
        # most DARKROOM_WEBHOOK_DESTINATION_CONCURRENCY of this worker's slots.
        self._per_destination: Counter[str] = Counter()
        self._wakeup = wakeup or asyncio.Event()

    def retry_in(self, attempt: int) -> timedelta | None:
        """The pause after failed try `attempt` (from 1), jittered; None: it was the last."""
        schedule = self._settings.webhook_retry_schedule
        if attempt >= len(schedule):
            return None
        return schedule[attempt] * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311 - jitter

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver until `stopping` is set, then let the POSTs in flight end."""
        settings = self._settings
        poll = settings.webhook_poll_interval.total_seconds()
        while not stopping.is_set():
            free = settings.webhook_concurrency - len(self._in_flight)
            taken: list[Taken] = []
            if free > 0:
                self._wakeup.clear()  # set again by whatever commits from now on
                try:
                    taken = await self._deliveries.take(
                        free,
                        settings.webhook_lease,
                        per_destination=settings.webhook_destination_concurrency,
                        in_flight=+self._per_destination,
                    )
                except Exception as exc:  # noqa: BLE001 - Postgres is down: try again
                    process.raise_if_cancelled()
                    log.warning("webhook_take_failed", error=repr(exc))
            for delivery in taken:
                self._start(delivery)
            if taken and len(taken) == free:
                continue  # more may be due: take again as soon as a slot frees
            await self._pause(stopping, poll)
        await self.drain(settings.shutdown_grace)

    def _start(self, delivery: Taken) -> None:
        self._per_destination[delivery.circuit] += 1
        task = asyncio.create_task(self._deliver(delivery))
        self._in_flight.add(task)

        def done(_: asyncio.Task[None]) -> None:
            self._in_flight.discard(task)
            self._per_destination[delivery.circuit] -= 1

        task.add_done_callback(done)

    async def _pause(self, stopping: asyncio.Event, seconds: float) -> None:
        """Until the poll interval passed, a wake-up, a POST ended (its slot, or its
        destination's, is free again: the last take may have left due ones for it), or
        stop."""
        waits: set[asyncio.Future[object]] = {
            asyncio.ensure_future(stopping.wait()),
            asyncio.ensure_future(self._wakeup.wait()),
            *self._in_flight,  # type: ignore[arg-type]
        }
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                if waiting not in self._in_flight:
                    waiting.cancel()

    async def drain(self, grace: timedelta) -> None:
        """Let the POSTs in flight end within `grace`, then cancel the rest (their rows
        are due again when their lease ends)."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=grace.total_seconds())
        for task in set(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _deliver(self, taken: Taken) -> None:
        bound = log.bind(delivery_id=str(taken.id), job_id=str(taken.job_id), attempt=taken.attempt)
        started = time.perf_counter()
        try:
            outcome = await self.attempt(taken)
            if metrics.enabled():
                metrics.WEBHOOK_TRY_SECONDS.observe(time.perf_counter() - started)
            state = await self._deliveries.finish(
                taken,
                outcome,
                retry_in=None if outcome.delivered else self.retry_in(taken.round_attempt),
                circuit_failures=self._settings.webhook_circuit_failures,
                circuit_cooldown=self._settings.webhook_circuit_cooldown,
            )
        except Exception as exc:  # noqa: BLE001 - the lease brings the row back
            bound.warning("webhook_try_unrecorded", error=repr(exc))
            if metrics.enabled():
                metrics.WEBHOOK_TRIES.labels("unrecorded").inc()
            return
        if metrics.enabled():
            metrics.WEBHOOK_TRIES.labels(
                _RESULTS.get(state, "superseded") if state else "superseded"
            ).inc()
        fields = {"url": taken.url, "type": taken.type, "status": outcome.status}
        if state is DeliveryState.DELIVERED:
            bound.info("webhook_delivered", **fields)
        elif state is DeliveryState.DEAD:
            bound.warning("webhook_dead", error=outcome.error, **fields)
        elif state is DeliveryState.PENDING:
            bound.info("webhook_failed", error=outcome.error, **fields)
        else:
            bound.info("webhook_try_superseded", **fields)

    async def attempt(self, taken: Taken) -> Outcome:
        """Sign and POST one try (nothing is sent for a deleted endpoint)."""
        if taken.endpoint_gone:
            return Outcome(error="the endpoint was deleted")
        secret = taken.secret or await self._endpoints.signing_secret(taken.owner)
        signing_with = [secret] + ([taken.previous_secret] if taken.previous_secret else [])
        body = signing.body(taken.type, taken.created_at, taken.job, self._url_for)
        headers = signing.headers(
            signing.webhook_id(taken.id), datetime.now(UTC), body, signing_with
        )
        return await self._sender.post(taken.url, body, headers)


_RESULTS = {
    DeliveryState.DELIVERED: "delivered",
    DeliveryState.DEAD: "dead",
    DeliveryState.PENDING: "pending",
}


async def stop_task(task: asyncio.Task[None], grace: timedelta) -> None:
    """Wait for `task` up to `grace` (plus a little), then cancel it."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), grace.total_seconds() + 1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
