"""Reads and conditional writes of job rows.

Every state change is one `UPDATE … WHERE id = :id AND state = :expected … RETURNING`, so a
duplicate or late writer changes nothing; the database trigger rejects illegal moves.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, cast

import uuid_utils.compat as uuid_utils
from sqlalchemy import ColumnElement, Interval, Table, bindparam, case, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from darkroom.db import sessionmaker
from darkroom.models import JobRow, State
from darkroom.validation import JobRequest

# The columns a submit sets; the others take their server defaults.
_INSERTED = frozenset(
    {
        "id", "owner", "request_id", "request_hash", "prompt", "prompt_sha256",
        "negative_prompt", "width", "height", "steps", "guidance_scale", "seed",
        "num_images", "model", "state", "max_attempts",
    }
)  # fmt: skip


_JOBS = cast(Table, JobRow.__table__)
_INSERT = (
    insert(_JOBS)
    .values(
        {column.name: bindparam(column.name) for column in _JOBS.c if column.name in _INSERTED}
        | {"deadline": func.now() + bindparam("queue_timeout", type_=Interval)}
    )
    .on_conflict_do_nothing(index_elements=["owner", "request_id"])
    .returning(*_JOBS.c)
)
_BY_REQUEST = select(*_JOBS.c).where(
    _JOBS.c.owner == bindparam("owner"), _JOBS.c.request_id == bindparam("request_id")
)


def new_job_id() -> uuid.UUID:
    """A time-sortable job id (UUIDv7), so id order is creation order."""
    return uuid_utils.uuid7()


class JobStore:
    """The job table, seen through the operations services need."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine)

    async def create(self, owner: str, job: JobRequest, max_attempts: int) -> tuple[JobRow, bool]:
        """Insert a QUEUED job, or return the row already recorded for its request_id.

        Returns the row and whether it was created. Concurrent identical submits meet on
        the (owner, request_id) unique index: one inserts, the others wait for its commit
        and read its row. This is the submit hot path, so it runs one prepared Core
        statement rather than the ORM's insert machinery (about twice as fast).
        """
        values: dict[str, Any] = {
            "id": new_job_id(),
            "owner": owner,
            "request_id": job.request_id,
            "request_hash": job.request_hash,
            "prompt": job.prompt,
            "prompt_sha256": job.prompt_sha256,
            "negative_prompt": job.negative_prompt,
            "width": job.width,
            "height": job.height,
            "steps": job.steps,
            "guidance_scale": job.guidance_scale,
            "seed": job.seed,
            "num_images": job.num_images,
            "model": job.model,
            "state": State.QUEUED.value,
            "max_attempts": max_attempts,
            "queue_timeout": job.queue_timeout,
        }
        async with self._engine.begin() as connection:
            created = (await connection.execute(_INSERT, values)).one_or_none()
            if created is not None:
                return JobRow(**created._mapping), True
            existing = (
                await connection.execute(
                    _BY_REQUEST, {"owner": owner, "request_id": job.request_id}
                )
            ).one_or_none()
            if existing is None:  # pragma: no cover - the conflict guarantees a row
                raise RuntimeError("idempotency conflict without a row")
            return JobRow(**existing._mapping), False

    async def get(self, owner: str, job_id: uuid.UUID) -> JobRow | None:
        """One of `owner`'s jobs, or None (also when it belongs to someone else)."""
        async with self._sessions() as session:
            return await session.scalar(
                select(JobRow).where(JobRow.id == job_id, JobRow.owner == owner)
            )

    async def get_any(self, job_id: uuid.UUID) -> JobRow | None:
        """A job whoever owns it (for workers and the reconciler)."""
        async with self._sessions() as session:
            return await session.get(JobRow, job_id)

    async def list_owned(
        self,
        owner: str,
        *,
        state: State | None,
        before: uuid.UUID | None,
        limit: int,
    ) -> list[JobRow]:
        """`owner`'s jobs newest first, strictly older than `before` when given."""
        query = select(JobRow).where(JobRow.owner == owner)
        if state is not None:
            query = query.where(JobRow.state == state)
        if before is not None:
            query = query.where(JobRow.id < before)
        query = query.order_by(JobRow.id.desc()).limit(limit)
        async with self._sessions() as session:
            return list(await session.scalars(query))

    async def transition(
        self,
        job_id: uuid.UUID,
        expected: State | Iterable[State],
        values: Mapping[str, Any],
        *,
        owner: str | None = None,
        attempt: int | None = None,
        where: Sequence[ColumnElement[bool]] = (),
    ) -> JobRow | None:
        """Apply `values` only if the job is in `expected` (and at `attempt`, if given).

        Returns the updated row, or None when the condition did not hold: the caller lost
        a race or the message was late, and nothing changed.
        """
        states = [expected] if isinstance(expected, State) else list(expected)
        statement = update(JobRow).where(JobRow.id == job_id, JobRow.state.in_(states))
        if owner is not None:
            statement = statement.where(JobRow.owner == owner)
        if attempt is not None:
            statement = statement.where(JobRow.attempt == attempt)
        if where:
            statement = statement.where(*where)
        statement = (
            statement.values(**values)
            .returning(JobRow)
            .execution_options(synchronize_session=False)
        )
        async with self._sessions.begin() as session:
            return (await session.scalars(statement)).one_or_none()

    async def cancel(self, owner: str, job_id: uuid.UUID) -> tuple[JobRow | None, bool]:
        """Cancel a QUEUED job at once, or ask a RUNNING one to stop.

        Returns the row (None if `owner` has no such job) and whether this call changed
        it; a terminal job comes back unchanged.
        """
        # A job can move between our conditional updates (claimed, re-queued), so try
        # again from what the row says now; a few rounds always settle.
        for _ in range(5):
            cancelled = await self.transition(
                job_id,
                State.QUEUED,
                {"state": State.CANCELLED, "completed_at": func.now()},
                owner=owner,
            )
            if cancelled is not None:
                return cancelled, True
            requested = await self.transition(
                job_id, State.RUNNING, {"cancel_requested": True}, owner=owner
            )
            if requested is not None:
                return requested, True
            current = await self.get(owner, job_id)
            if current is None or State(current.state).terminal:
                return current, False
        return await self.get(owner, job_id), False

    # Worker-side transitions. `attempt` is always the caller's own attempt number, so a
    # stale or duplicate worker matches no row and changes nothing.

    async def claim(
        self, job_id: uuid.UUID, queued_attempt: int, worker_id: str, lease: timedelta
    ) -> JobRow | None:
        """QUEUED -> RUNNING as attempt `queued_attempt + 1`, leased by the database clock.

        None when the job is not QUEUED at `queued_attempt` or is past its deadline.
        """
        return await self.transition(
            job_id,
            State.QUEUED,
            {
                "state": State.RUNNING,
                "attempt": queued_attempt + 1,
                "worker_id": worker_id,
                "lease_expires_at": func.now() + lease,
                "started_at": func.now(),
                "progress_step": 0,
                "progress_total": JobRow.steps,
            },
            attempt=queued_attempt,
            where=[JobRow.deadline > func.now()],
        )

    async def heartbeat(
        self, job_id: uuid.UUID, attempt: int, lease: timedelta, step: int | None = None
    ) -> JobRow | None:
        """Renew the lease (and record progress); None when this attempt lost the job."""
        values: dict[str, Any] = {"lease_expires_at": func.now() + lease}
        if step is not None:
            values["progress_step"] = step
        return await self.transition(job_id, State.RUNNING, values, attempt=attempt)

    async def succeed(
        self,
        job_id: uuid.UUID,
        attempt: int,
        outputs: list[dict[str, Any]],
        model_id: str,
        model_version: str,
    ) -> JobRow | None:
        """RUNNING -> SUCCEEDED with this attempt's outputs, only if it still holds the job."""
        return await self.transition(
            job_id,
            State.RUNNING,
            {
                "state": State.SUCCEEDED,
                "outputs": outputs,
                "model_id": model_id,
                "model_version": model_version,
                "progress_step": JobRow.progress_total,
                "completed_at": func.now(),
                "lease_expires_at": None,
                "error_code": None,
                "error_message": None,
            },
            attempt=attempt,
        )

    async def end(
        self,
        job_id: uuid.UUID,
        attempt: int,
        state: State,
        code: int | None = None,
        message: str | None = None,
        *,
        lease_expired: bool = False,
    ) -> JobRow | None:
        """RUNNING -> FAILED or CANCELLED for this attempt (only once its lease expired,
        when the reconciler asks)."""
        return await self.transition(
            job_id,
            State.RUNNING,
            {
                "state": state,
                "completed_at": func.now(),
                "lease_expires_at": None,
                "error_code": code,
                "error_message": message,
            },
            attempt=attempt,
            where=[JobRow.lease_expires_at < func.now()] if lease_expired else (),
        )

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
    ) -> JobRow | None:
        """RUNNING -> QUEUED after this attempt ended without a result.

        A job whose owner asked to cancel goes to CANCELLED instead. With `refund`, the
        attempt does not count against the job (the platform interrupted it): max_attempts
        grows by one so the attempt number, and with it the queue message id, still moves on.
        """
        cancelled = JobRow.cancel_requested
        values: dict[str, Any] = {
            "state": case((cancelled, State.CANCELLED.value), else_=State.QUEUED.value),
            "completed_at": case((cancelled, func.now()), else_=None),
            "worker_id": None,
            "lease_expires_at": None,
            "run_after": func.now() + delay,
            "progress_step": 0,
            "error_code": code,
            "error_message": message,
        }
        if refund:
            values["max_attempts"] = JobRow.max_attempts + 1
        return await self.transition(
            job_id,
            State.RUNNING,
            values,
            attempt=attempt,
            where=[JobRow.lease_expires_at < func.now()] if lease_expired else (),
        )

    async def expire(self, job_id: uuid.UUID, code: int, message: str) -> JobRow | None:
        """QUEUED -> FAILED for a job that did not start before its deadline."""
        return await self.transition(
            job_id,
            State.QUEUED,
            {
                "state": State.FAILED,
                "completed_at": func.now(),
                "error_code": code,
                "error_message": message,
            },
            where=[JobRow.deadline <= func.now()],
        )

    # Reconciler scans: each returns a bounded batch; every change after it is conditional.

    async def expired_leases(self, limit: int) -> list[JobRow]:
        """RUNNING jobs whose lease ran out (by the database clock)."""
        query = (
            select(JobRow)
            .where(JobRow.state == State.RUNNING, JobRow.lease_expires_at < func.now())
            .order_by(JobRow.lease_expires_at)
            .limit(limit)
        )
        async with self._sessions() as session:
            return list(await session.scalars(query))

    async def queued_since(self, age: timedelta, limit: int) -> list[JobRow]:
        """QUEUED jobs, ready to run, unchanged for at least `age` (oldest first)."""
        query = (
            select(JobRow)
            .where(
                JobRow.state == State.QUEUED,
                JobRow.run_after <= func.now(),
                JobRow.updated_at <= func.now() - age,
            )
            .order_by(JobRow.run_after)
            .limit(limit)
        )
        async with self._sessions() as session:
            return list(await session.scalars(query))

    async def past_deadline(self, limit: int) -> list[JobRow]:
        """QUEUED jobs whose deadline passed."""
        query = (
            select(JobRow)
            .where(JobRow.state == State.QUEUED, JobRow.deadline <= func.now())
            .order_by(JobRow.deadline)
            .limit(limit)
        )
        async with self._sessions() as session:
            return list(await session.scalars(query))

    async def ended_since(self, window: timedelta, limit: int) -> list[JobRow]:
        """Jobs that reached a terminal state within `window`."""
        query = (
            select(JobRow)
            .where(
                JobRow.state.in_([State.SUCCEEDED, State.FAILED, State.CANCELLED]),
                JobRow.completed_at >= func.now() - window,
            )
            .order_by(JobRow.completed_at.desc())
            .limit(limit)
        )
        async with self._sessions() as session:
            return list(await session.scalars(query))
