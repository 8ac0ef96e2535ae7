"""Reads of job rows, submits and cancels (the state changes live in `transitions`)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any, cast

import uuid_utils.compat as uuid_utils
from sqlalchemy import Interval, Table, bindparam, func, select
from sqlalchemy.dialects.postgresql import insert

from darkroom.models import JobRow, State
from darkroom.transitions import Transitions
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


class JobStore(Transitions):
    """The job table, seen through the operations services need: reads, submits and
    cancels here, every worker-side state change in `Transitions`."""

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
