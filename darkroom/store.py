"""Reads of job rows and the owner's cancel (the submit's insert lives in `inserts`, the
state changes in `transitions`)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, cast

import psycopg
from sqlalchemy import func, select

from darkroom.inserts import insert_jobs
from darkroom.models import JobRecord, JobRow, State
from darkroom.transitions import Transitions
from darkroom.validation import JobRequest
from darkroom.webhooks.outbox import Event


class JobStore(Transitions):
    """The job table, seen through the operations services need: reads, submits and
    cancels here, every worker-side state change in `Transitions`."""

    async def create(
        self, owner: str, job: JobRequest, max_attempts: int
    ) -> tuple[JobRecord, bool]:
        """Insert a QUEUED job, or return the row already recorded for its request_id.

        Returns the row and whether it was created (see `create_many`).
        """
        [result] = await self.create_many([(owner, job)], max_attempts)
        return result

    async def create_many(
        self, jobs: Sequence[tuple[str, JobRequest]], max_attempts: int
    ) -> list[tuple[JobRecord, bool]]:
        """`insert_jobs` on a pooled connection (see there)."""
        async with self._engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            raw = await connection.get_raw_connection()
            driver = cast(psycopg.AsyncConnection[Any], raw.driver_connection)
            return await insert_jobs(driver, jobs, max_attempts)

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
        priority: int | None = None,
    ) -> list[JobRow]:
        """`owner`'s jobs newest first, strictly older than `before` when given."""
        query = select(JobRow).where(JobRow.owner == owner)
        if state is not None:
            query = query.where(JobRow.state == state)
        if priority is not None:
            query = query.where(JobRow.priority == priority)
        if before is not None:
            query = query.where(JobRow.id < before)
        query = query.order_by(JobRow.id.desc()).limit(limit)
        async with self._sessions() as session:
            return list(await session.scalars(query))

    async def submitted(self, owner: str, request_id: uuid.UUID) -> bool:
        """Whether `owner` already submitted `request_id` (a retry is a replay)."""
        async with self._sessions() as session:
            found = await session.scalar(
                select(JobRow.id).where(JobRow.owner == owner, JobRow.request_id == request_id)
            )
        return found is not None

    async def active_counts(self) -> dict[str, tuple[int, int]]:
        """Per model, how many jobs are QUEUED and RUNNING (the active-jobs index)."""
        query = (
            select(JobRow.model, JobRow.state, func.count())
            .where(JobRow.state.in_((State.QUEUED, State.RUNNING)))
            .group_by(JobRow.model, JobRow.state)
        )
        counts: dict[str, tuple[int, int]] = {}
        async with self._sessions() as session:
            for model, state, count in await session.execute(query):
                queued, running = counts.get(model, (0, 0))
                counts[model] = (count, running) if state == State.QUEUED else (queued, count)
        return counts

    async def cancel(self, owner: str, job_id: uuid.UUID) -> tuple[JobRecord | None, bool]:
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
                outbox=Event.TERMINAL,
            )
            if cancelled is not None:
                return cancelled, True
            requested = await self.transition(
                job_id, State.RUNNING, {"cancel_requested": True}, owner=owner
            )
            if requested is not None:
                return requested, True
            current = await self.get(owner, job_id)
            if current is None or current.state.terminal:
                return current, False
        return await self.get(owner, job_id), False
