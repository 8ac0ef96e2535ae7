"""Reads and conditional writes of job rows.

Every state change is one `UPDATE … WHERE id = :id AND state = :expected … RETURNING`, so a
duplicate or late writer changes nothing; the database trigger rejects illegal moves.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import uuid_utils.compat as uuid_utils
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from darkroom.db import sessionmaker
from darkroom.models import JobRow, State
from darkroom.validation import JobRequest


def new_job_id() -> uuid.UUID:
    """A time-sortable job id (UUIDv7), so id order is creation order."""
    return uuid_utils.uuid7()


class JobStore:
    """The job table, seen through the operations services need."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = sessionmaker(engine)

    async def create(self, owner: str, job: JobRequest, max_attempts: int) -> tuple[JobRow, bool]:
        """Insert a QUEUED job, or return the row already recorded for its request_id.

        Returns the row and whether it was created. Concurrent identical submits meet on
        the (owner, request_id) unique index: one inserts, the others wait for its commit
        and read its row.
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
            "state": State.QUEUED,
            "max_attempts": max_attempts,
            "deadline": func.now() + job.queue_timeout,
        }
        statement = (
            insert(JobRow)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["owner", "request_id"])
            .returning(JobRow)
        )
        async with self._sessions.begin() as session:
            created = (await session.scalars(statement)).one_or_none()
            if created is not None:
                return created, True
            existing = await session.scalar(
                select(JobRow).where(JobRow.owner == owner, JobRow.request_id == job.request_id)
            )
            if existing is None:  # pragma: no cover - the conflict guarantees a row
                raise RuntimeError("idempotency conflict without a row")
            return existing, False

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

    async def list(
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
