"""What each committed move of a job counts (`darkroom.metrics`), called by the life-cycle
module after the move and by the submit path after its insert: a metric is a consequence of
a move, so it is counted where the move is made, once, by the process that made it."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import grpc

from darkroom import metrics
from darkroom.models import JobRecord, State

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_OUTCOMES = {
    State.SUCCEEDED: "succeeded",
    State.FAILED: "failed",
    State.CANCELLED: "cancelled",
}
# The retry reason of an attempt whose worker stopped renewing its lease.
LEASE_EXPIRED = "LEASE_EXPIRED"


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def submitted(rows: Iterable[JobRecord]) -> None:
    """Jobs a submit recorded (not the replays)."""
    if not metrics.enabled():
        return
    for row in rows:
        metrics.JOBS_SUBMITTED.labels(row.model).inc()


def started(row: JobRecord) -> None:
    """An attempt's claim: it started, after waiting since it could."""
    if not metrics.enabled():
        return
    metrics.ATTEMPTS_STARTED.labels(row.model).inc()
    wait = _seconds(row.run_after, row.started_at)
    if wait is not None:
        metrics.QUEUE_WAIT.labels(row.model).observe(wait)


def ended(row: JobRecord) -> None:
    """A move to a terminal state; a run that ended is timed by its outcome."""
    if not metrics.enabled():
        return
    outcome = _OUTCOMES.get(row.state)
    if outcome is None:
        return
    reason = ""
    if row.state == State.FAILED:
        reason = _CODE_NAMES.get(row.error_code or 0, "UNKNOWN")
    metrics.JOBS_FINISHED.labels(row.model, outcome, reason).inc()
    ran = _seconds(row.started_at, row.completed_at)
    if ran is not None:
        metrics.RUN_SECONDS.labels(row.model, outcome).observe(ran)


def retried(row: JobRecord, code: int, *, lease_expired: bool) -> None:
    """An attempt handed back to the queue (its run timed as "retried")."""
    if not metrics.enabled():
        return
    reason = LEASE_EXPIRED if lease_expired else _CODE_NAMES.get(code, "UNKNOWN")
    metrics.RETRIES.labels(row.model, reason).inc()
    ran = _seconds(row.started_at, row.updated_at)
    if ran is not None:
        metrics.RUN_SECONDS.labels(row.model, "retried").observe(ran)


def cancelled(row: JobRecord) -> None:
    """An owner's cancel that changed the job: a queued one ended, a running one was asked."""
    if not metrics.enabled():
        return
    state = "queued" if row.state == State.CANCELLED else "running"
    metrics.CANCELLATIONS.labels(row.model, state).inc()
