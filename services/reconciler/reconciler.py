"""One reconciliation pass. Safe in several replicas at once: every change is a conditional
UPDATE, arq deduplicates message ids, and a duplicate delivery is harmless."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from datetime import timedelta

import grpc
import structlog

from darkroom import metrics
from darkroom.config import Settings
from darkroom.events import TERMINAL_KINDS, EventLog
from darkroom.lifecycle import Lifecycle
from darkroom.services.reconciler.scans import Scans

log = structlog.get_logger("darkroom.reconciler")
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
# A QUEUED row this fresh may still have its enqueue in flight.
ENQUEUE_GRACE = timedelta(seconds=2)


@dataclass
class Report:
    """What one pass changed."""

    requeued: int = 0
    failed_lost: int = 0
    expired: int = 0
    enqueued: int = 0
    republished: int = 0

    def as_dict(self) -> dict[str, int]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


class Reconciler:
    """Repairs what a dead worker, a lost enqueue or a wiped Redis left behind."""

    def __init__(
        self,
        settings: Settings,
        *,
        lifecycle: Lifecycle,
        event_log: EventLog,
    ) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.queue = lifecycle.queue
        self.event_log = event_log
        self.scans = Scans(lifecycle.store.engine)

    async def run_once(self) -> Report:
        started = time.perf_counter()
        report = Report()
        await self._expired_leases(report)
        await self._deadlines(report)
        await self._lost_messages(report)
        await self._terminal_events(report)
        if metrics.enabled():
            await self._count(report, started)
        return report

    async def _count(self, report: Report, started: float) -> None:
        """The pass's repairs and the queue's depth, for the metrics (best effort)."""
        for kind, count in report.as_dict().items():
            metrics.REPAIRS.labels(kind).inc(count)  # every kind's series, from 0
        try:
            metrics.record_queue(await self.scans.queue_counts(), time.time())
        except Exception as exc:  # noqa: BLE001 - a gauge left stale says so by its time
            log.warning("queue_count_failed", error=repr(exc))
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    async def _expired_leases(self, report: Report) -> None:
        for row in await self.scans.expired_leases(self.settings.reconcile_batch):
            reason = f"worker {row.worker_id} was lost: its lease expired"
            if row.attempt < row.max_attempts:
                requeued = await self.lifecycle.requeue(
                    row.id,
                    row.attempt,
                    code=UNAVAILABLE,
                    message=reason,
                    delay=self.settings.retry_delay(row.attempt),
                    lease_expired=True,
                )
                if requeued is not None:  # else the worker renewed its lease, or a peer won
                    log.info("lease_expired_requeued", job_id=str(row.id), attempt=row.attempt)
                    report.requeued += 1
                continue
            failed = await self.lifecycle.fail(
                row.id,
                row.attempt,
                UNAVAILABLE,
                f"{reason}, and all {row.max_attempts} attempts are spent",
                lease_expired=True,
            )
            if failed is not None:
                log.info("lease_expired_failed", job_id=str(row.id), attempt=row.attempt)
                report.failed_lost += 1
                # Its dead worker's message would count against the owner's running
                # limit until its hold ran out.
                await self.queue.reset(row.id, row.attempt - 1, row.model)

    async def _deadlines(self, report: Report) -> None:
        for row in await self.scans.past_deadline(self.settings.reconcile_batch):
            if await self.lifecycle.expire(row.id) is not None:
                report.expired += 1

    async def _rebuild(self, report: Report) -> None:
        """After Redis lost its data (or on a new one): enqueue every due QUEUED row that
        has no message, page by page, so the whole queue and its fair order come back."""
        if await self.queue.intact():
            return
        after, restored = None, 0
        while rows := await self.scans.due_page(
            after, ENQUEUE_GRACE, self.settings.reconcile_batch
        ):
            restored += await self.queue.restore(rows)
            after = (rows[-1].run_after, rows[-1].id)
        await self.queue.mark_intact()
        report.enqueued += restored
        log.info("queues_rebuilt", enqueued=restored)

    async def _lost_messages(self, report: Report) -> None:
        await self._rebuild(report)
        rows = await self.scans.queued_since(
            ENQUEUE_GRACE, self.settings.reconcile_stale_message, self.settings.reconcile_batch
        )
        for row, stale in rows:
            state = await self.queue.message_state(row.id, row.attempt, row.model)
            if state == "waiting":
                continue
            if state == "taken" and not stale:
                continue  # a worker is claiming it right now
            # Lost with Redis, never enqueued, or taken by a worker that died before its
            # claim: arq would keep the latter "in progress" until its timeout.
            await self.queue.reset(row.id, row.attempt, row.model)
            await self.queue.enqueue(
                row.id, row.attempt, row.model, owner=row.owner, priority=row.priority
            )
            log.info("message_reenqueued", job_id=str(row.id), attempt=row.attempt, was=state)
            report.enqueued += 1

    async def _terminal_events(self, report: Report) -> None:
        rows = await self.scans.ended_since(
            self.settings.reconcile_terminal_window, self.settings.reconcile_batch
        )
        if not rows:
            return
        lasts = await self.event_log.last_many([row.id for row in rows])
        for row, last in zip(rows, lasts, strict=True):
            if last is not None and last[1].WhichOneof("kind") in TERMINAL_KINDS:
                continue
            await self.lifecycle.publish_terminal(row)
            log.info("terminal_event_republished", job_id=str(row.id), state=str(row.state))
            report.republished += 1
