"""Every move of a job, each with its consequences, in the one order that is safe.

A move is a conditional transition of the row (`darkroom.transitions`: one `UPDATE … WHERE
state = … [AND attempt = …]`), then what follows from it: the event, the next queue
message. The row is the truth, so what follows only ever happens after the commit, and a
transition that did not happen (a late or duplicate writer) has no consequence at all.
Consequences are best effort: the reconciler republishes a missing terminal event and
re-enqueues a QUEUED row without a message. Every process (Jobs, Generator, reconciler)
moves jobs through `Lifecycle` only; a new consequence of a move (a metric) is added here,
once. The one consequence that must commit with the move, its webhook outbox rows, is
written by the move's own statement (`darkroom.webhooks.outbox`, through `transitions`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import grpc
import structlog

from darkroom import events, job_metrics
from darkroom.capacity import Capacity
from darkroom.convert import job_to_proto
from darkroom.events import EventLog, JobEvent
from darkroom.models import LEGAL_MOVES, JobRecord, State
from darkroom.queue import JobQueue
from darkroom.store import JobStore
from darkroom.v1 import job_pb2

log = structlog.get_logger("darkroom.lifecycle")

DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
INTERNAL = grpc.StatusCode.INTERNAL.value[0]
EXPIRED_MESSAGE = "the job was not started before its deadline"

__all__ = ["DEADLINE_EXCEEDED", "EXPIRED_MESSAGE", "LEGAL_MOVES", "Hooks", "Lifecycle"]


class Hooks:
    """Points between a move's commit and its consequences, for tests that kill a process
    exactly there (the fault suite). The default does nothing."""

    def after_commit(self, move: str, row: JobRecord) -> None:
        """Called right after `move` committed, before anything follows from it."""


class Lifecycle:
    """The moves of jobs: claim, heartbeat, succeed, fail, cancel, requeue, expire, reject."""

    def __init__(
        self,
        store: JobStore,
        event_log: EventLog,
        queue: JobQueue,
        url_for: Callable[[str], str] | None = None,
        *,
        hooks: Hooks | None = None,
        capacity: Capacity | None = None,
    ) -> None:
        self.store = store
        self._events = event_log
        self.queue = queue
        self._capacity = capacity
        self._url_for = url_for
        self._hooks = hooks or Hooks()

    def job(self, row: JobRecord) -> job_pb2.Job:
        """The `Job` message of a row, with fetchable output URLs."""
        return job_to_proto(row, self._url_for)

    async def publish(self, *batch: JobEvent) -> None:
        """Append events of one job, best effort: the row stays the truth when Redis fails
        (progress between moves; the moves' own events go out from the moves)."""
        try:
            await self._events.append_many(batch)
        except Exception as exc:  # noqa: BLE001 - the row is the truth; the reconciler repairs
            kinds = sorted({str(event.WhichOneof("kind")) for event in batch})
            log.warning("event_publish_failed", kinds=kinds, error=repr(exc))

    async def _ended(self, move: str, row: JobRecord | None, *before: JobEvent) -> None:
        """After a move to a terminal state: its terminal event (after `before`)."""
        if row is None:
            return
        self._hooks.after_commit(move, row)
        job_metrics.ended(row)
        await self.publish(*before, events.terminal(self.job(row)))

    async def publish_terminal(self, row: JobRecord) -> None:
        """(Re)publish the terminal event of a finished job: the reconciler's repair."""
        await self.publish(events.terminal(self.job(row)))

    # -- the worker's moves; `attempt` is always the caller's own, which fences it --------

    async def claim(
        self,
        job_id: uuid.UUID,
        queued_attempt: int,
        worker_id: str,
        lease: timedelta,
        *,
        batch_with: JobRecord | None = None,
        room: int = 0,
    ) -> JobRecord | None:
        """QUEUED -> RUNNING as the next attempt, then `started`; None if not claimable.

        A message that is not claimable because the job is past its deadline expires it.
        With `batch_with` (see `JobStore.claim`), a job that cannot join that one's batch
        is left as it is, for its own turn."""
        row = await self.store.claim(
            job_id, queued_attempt, worker_id, lease, batch_with=batch_with, room=room
        )
        if row is None:
            if batch_with is None:
                await self.expire(job_id)
            return None
        job_metrics.started(row)
        await self.publish(events.started(job_id, row.attempt, worker_id))
        return row

    async def heartbeat(
        self, job_id: uuid.UUID, attempt: int, lease: timedelta, step: int | None = None
    ) -> JobRecord | None:
        """Renew the lease (and record the step); None when this attempt lost the job."""
        return await self.store.heartbeat(job_id, attempt, lease, step)

    async def succeed(
        self,
        job_id: uuid.UUID,
        attempt: int,
        outputs: list[dict[str, Any]],
        model_id: str,
        model_version: str,
        *,
        progress: Sequence[JobEvent] = (),
    ) -> JobRecord | None:
        """RUNNING -> SUCCEEDED, then the last `progress` events and `succeeded` in one
        append; None when this attempt no longer holds the job (nothing is published)."""
        row = await self.store.succeed(job_id, attempt, outputs, model_id, model_version)
        await self._ended("succeed", row, *progress)
        if row is not None:
            await self._record_run(row)
        return row

    async def _record_run(self, row: JobRecord) -> None:
        """After a success: its run time, for the model's ETAs (best effort)."""
        if self._capacity is None or row.started_at is None or row.completed_at is None:
            return
        try:
            await self._capacity.record_run(row.model, row.completed_at - row.started_at)
        except Exception as exc:  # noqa: BLE001 - an estimate's input, never the truth
            log.warning("run_time_not_recorded", error=repr(exc))

    async def fail(
        self,
        job_id: uuid.UUID,
        attempt: int,
        code: int,
        message: str,
        *,
        lease_expired: bool = False,
    ) -> JobRecord | None:
        """RUNNING -> FAILED, then `failed` (`lease_expired`: only once its lease expired)."""
        row = await self.store.end(
            job_id, attempt, State.FAILED, code, message, lease_expired=lease_expired
        )
        await self._ended("fail", row)
        return row

    async def stop_cancelled(self, job_id: uuid.UUID, attempt: int) -> JobRecord | None:
        """RUNNING -> CANCELLED when the attempt stopped for its owner's cancel, then
        `cancelled`."""
        row = await self.store.end(job_id, attempt, State.CANCELLED)
        await self._ended("cancel", row)
        return row

    async def requeue(
        self,
        job_id: uuid.UUID,
        attempt: int,
        *,
        code: int,
        message: str,
        delay: timedelta,
        refund: bool = False,
        lease_expired: bool = False,
    ) -> JobRecord | None:
        """RUNNING -> QUEUED with backoff, then `retrying`, then the next queue message
        (a job whose owner asked to cancel ends CANCELLED instead, then `cancelled`)."""
        row = await self.store.requeue(
            job_id,
            attempt,
            code=code,
            message=message,
            delay=delay,
            refund=refund,
            lease_expired=lease_expired,
        )
        if row is None:
            return None
        if row.state == State.CANCELLED:
            await self._ended("cancel", row)
            return row
        job_metrics.retried(row, code, lease_expired=lease_expired)
        # When it may run again, by the database clock (never this process's).
        await self.publish(events.retrying(job_id, attempt, code, message, row.run_after))
        try:
            await self.queue.enqueue(
                job_id, row.attempt, row.model, owner=row.owner, priority=row.priority, delay=delay
            )
        except Exception as exc:  # noqa: BLE001 - the reconciler enqueues QUEUED rows
            log.warning("enqueue_deferred", job_id=str(job_id), error=repr(exc))
        return row

    # -- moves of queued jobs ---------------------------------------------------------

    async def expire(self, job_id: uuid.UUID) -> JobRecord | None:
        """QUEUED -> FAILED (DEADLINE_EXCEEDED) for a job past its deadline, then `failed`."""
        row = await self.store.expire(job_id, DEADLINE_EXCEEDED, EXPIRED_MESSAGE)
        if row is not None:
            log.info("job_expired", job_id=str(job_id))
        await self._ended("expire", row)
        await self._unqueue(row)
        return row

    async def _unqueue(self, row: JobRecord | None) -> None:
        """After a queued job ended: take its message out of the queue, so that it counts
        against its owner's quota no longer and no worker takes it (best effort: a worker
        that does finds nothing to claim)."""
        if row is None:
            return
        try:
            await self.queue.reset(row.id, row.attempt, row.model)
        except Exception as exc:  # noqa: BLE001 - the claim refuses it anyway
            log.warning("unqueue_failed", job_id=str(row.id), error=repr(exc))

    async def reject(self, job_id: uuid.UUID, queued_attempt: int, reason: str) -> JobRecord | None:
        """QUEUED -> FAILED (INTERNAL) for a job whose queue message was set aside as poison:
        it was taken too often without finishing. Then `failed`."""
        message = f"the job could not be run: its queue message was set aside ({reason})"
        row = await self.store.reject(job_id, queued_attempt, INTERNAL, message)
        await self._ended("reject", row)
        return row

    async def cancel(self, owner: str, job_id: uuid.UUID) -> tuple[JobRecord | None, bool]:
        """The owner's cancel: QUEUED -> CANCELLED at once (then `cancelled`), RUNNING gets
        `cancel_requested`. Returns the row (None: no such job of this owner) and whether it
        changed (False: the job had already ended)."""
        row, changed = await self.store.cancel(owner, job_id)
        if changed and row is not None:
            job_metrics.cancelled(row)
        if changed and row is not None and row.state == State.CANCELLED:
            await self._ended("cancel", row)
            await self._unqueue(row)
        return row, changed


def is_legal(before: State, after: State) -> bool:
    """Whether the state machine allows `before -> after` (staying put always is, but for
    a terminal row, which never changes)."""
    if before.terminal:
        return False
    return before == after or (before, after) in LEGAL_MOVES
