"""The reconciler's scans of the job table: each returns a bounded batch of rows to repair,
oldest first; every change made after it is a conditional transition, so a row that moved
meanwhile is simply left alone."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import and_, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from darkroom.db import sessionmaker
from darkroom.metrics import QueueCount
from darkroom.models import TERMINAL_STATES, JobRow, State


class Scans:
    """Reads of the rows the reconciler repairs."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = sessionmaker(engine)

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

    async def queued_since(
        self, age: timedelta, stale: timedelta, limit: int
    ) -> list[tuple[JobRow, bool]]:
        """QUEUED jobs, ready to run, unchanged for at least `age` (oldest first), each with
        whether it is unchanged for `stale` too (both by the database clock)."""
        query = (
            select(JobRow, JobRow.updated_at <= func.now() - stale)
            .where(
                JobRow.state == State.QUEUED,
                JobRow.run_after <= func.now(),
                JobRow.updated_at <= func.now() - age,
            )
            .order_by(JobRow.run_after)
            .limit(limit)
        )
        async with self._sessions() as session:
            return [(row, bool(is_stale)) for row, is_stale in await session.execute(query)]

    async def due_page(
        self, after: tuple[datetime, uuid.UUID] | None, age: timedelta, limit: int
    ) -> list[JobRow]:
        """A page of QUEUED jobs ready to run and unchanged for `age`, in (run_after, id)
        order, after `after`."""
        query = select(JobRow).where(
            JobRow.state == State.QUEUED,
            JobRow.run_after <= func.now(),
            JobRow.updated_at <= func.now() - age,
        )
        if after is not None:
            query = query.where(tuple_(JobRow.run_after, JobRow.id) > tuple_(*after))
        query = query.order_by(JobRow.run_after, JobRow.id).limit(limit)
        async with self._sessions() as session:
            return list(await session.scalars(query))

    async def past_deadline(self, limit: int) -> list[JobRow]:
        """QUEUED jobs that never started and whose deadline passed."""
        query = (
            select(JobRow)
            .where(
                JobRow.state == State.QUEUED,
                JobRow.deadline <= func.now(),
                JobRow.started_at.is_(None),
            )
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
                JobRow.state.in_(TERMINAL_STATES),
                JobRow.completed_at >= func.now() - window,
            )
            .order_by(JobRow.completed_at.desc())
            .limit(limit)
        )
        async with self._sessions() as session:
            return list(await session.scalars(query))

    async def queue_counts(self) -> list[QueueCount]:
        """Each model's queued, due and running jobs, and how long its longest-waiting due
        job has waited: one aggregate over the active-jobs index, for the metrics."""
        queued = JobRow.state == State.QUEUED
        due = and_(queued, JobRow.run_after <= func.now())
        oldest = func.extract("epoch", func.now() - func.min(JobRow.run_after).filter(due))
        query = (
            select(
                JobRow.model,
                func.count().filter(queued),
                func.count().filter(due),
                func.count().filter(JobRow.state == State.RUNNING),
                oldest,
            )
            .where(JobRow.state.in_([State.QUEUED, State.RUNNING]))
            .group_by(JobRow.model)
        )
        async with self._sessions() as session:
            return [
                QueueCount(model, queued_n, due_n, running_n, float(age or 0))
                for model, queued_n, due_n, running_n, age in await session.execute(query)
            ]
