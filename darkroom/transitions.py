"""Conditional state changes of job rows: the primitive, and the worker's transitions.

Every state change is one `UPDATE … WHERE id = :id AND state = :expected … RETURNING`, so a
duplicate or late writer changes nothing; the database trigger rejects illegal moves. A move
that webhooks hear of inserts its deliveries in that same statement (`darkroom.webhooks.outbox`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Interval,
    Table,
    bindparam,
    case,
    func,
    or_,
    update,
)
from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import Executable

from darkroom.db import HeldConnection, sessionmaker
from darkroom.models import JobRecord, JobRow, State
from darkroom.spec import BATCH_SHARED
from darkroom.webhooks.outbox import Event, with_deliveries

_JOBS = cast(Table, JobRow.__table__)


# Parameters of the statements built once per process (`Transitions.transition`'s shapes).
_TYPES: dict[str, Any] = {
    "job_id": JobRow.id.type,
    "attempt": JobRow.attempt.type,
    "queued": JobRow.attempt.type,
    "next": JobRow.attempt.type,
    "lease": Interval(),
    "step": JobRow.progress_step.type,
    "worker_id": JobRow.worker_id.type,
    "outputs": JobRow.outputs.type,
    "model_id": JobRow.model_id.type,
    "model_version": JobRow.model_version.type,
    "room": JobRow.num_images.type,
    "model": JobRow.model.type,
    **{name: getattr(JobRow, name).type for name in BATCH_SHARED},
}
_SHAPES: dict[str, Executable] = {}


def bound(name: str) -> BindParameter[Any]:
    """The bound parameter `name` of a statement built once (its type from `_TYPES`;
    prefixed, as an UPDATE takes parameters named after columns for its SET clause)."""
    return bindparam(f"p_{name}", type_=_TYPES[name])


def _statement(  # noqa: PLR0917 - transition()'s own arguments, in its order
    job_id: Any,
    expected: State | Iterable[State],
    values: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
    owner: str | None,
    attempt: Any,
    where: Sequence[ColumnElement[bool]] | Callable[[], Sequence[ColumnElement[bool]]],
    outbox: Event | None,
) -> Executable:
    states = [expected] if isinstance(expected, State) else list(expected)
    statement = update(_JOBS).where(JobRow.id == job_id, JobRow.state.in_(states))
    if owner is not None:
        statement = statement.where(JobRow.owner == owner)
    if attempt is not None:
        statement = statement.where(JobRow.attempt == attempt)
    conditions = where() if callable(where) else where
    if conditions:
        statement = statement.where(*conditions)
    statement = statement.values(**(values() if callable(values) else values))
    return statement.returning(*_JOBS.c) if outbox is None else with_deliveries(statement, outbox)


class Transitions:
    """State changes of job rows, each one conditional.

    Each is one Core statement in autocommit mode (one round trip; no ORM objects). With
    `hold_connection` they all go over one connection kept open between them, as a
    generator wants for its claims and its lease renewals four times a second; otherwise
    each takes a pooled connection.
    """

    def __init__(
        self, engine: AsyncEngine, *, hold_connection: bool = False, timeout: float | None = None
    ) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine)
        self._held = (
            HeldConnection(engine, retry_on_disconnect=True, timeout=timeout)
            if hold_connection
            else None
        )

    @property
    def engine(self) -> AsyncEngine:
        """The engine the rows are read and written through (the caller's)."""
        return self._engine

    async def close(self) -> None:
        """Close the held connection, if any (the engine stays the caller's)."""
        if self._held is not None:
            await self._held.close()

    async def transition(
        self,
        job_id: uuid.UUID,
        expected: State | Iterable[State],
        values: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
        *,
        owner: str | None = None,
        attempt: int | None = None,
        where: Sequence[ColumnElement[bool]] | Callable[[], Sequence[ColumnElement[bool]]] = (),
        outbox: Event | None = None,
        shape: str | None = None,
        params: Mapping[str, Any] | None = None,
        attempt_param: str = "attempt",
    ) -> JobRecord | None:
        """Apply `values` only if the job is in `expected` (and at `attempt`, if given),
        with the webhook deliveries of `outbox` in the same statement.

        Returns the updated row, or None when the condition did not hold: the caller lost
        a race or the message was late, and nothing changed.

        A hot move names its `shape`: its statement is then built once per process, with
        the job id and attempt as bound parameters and `values`/`where` (callables, then)
        written with `bound(...)` parameters whose values come in `params`. Building the
        statement (a CTE for the webhook outbox) cost four times its execution.
        """
        if shape is None:
            runs = _statement(job_id, expected, values, owner, attempt, where, outbox)
            parameters: dict[str, Any] | None = None
        else:
            cached = _SHAPES.get(shape)
            if cached is None:
                cached = _SHAPES[shape] = _statement(
                    bound("job_id"),
                    expected,
                    values,
                    owner,
                    None if attempt is None else bound(attempt_param),
                    where,
                    outbox,
                )
            runs = cached
            given = {"job_id": job_id, **(params or {})}
            if attempt is not None:
                given.setdefault(attempt_param, attempt)
            parameters = {f"p_{name}": value for name, value in given.items()}

        async def execute(connection: AsyncConnection) -> JobRecord | None:
            result: Result[Any] = await connection.execute(runs, parameters)
            return cast(JobRecord | None, result.one_or_none())

        if self._held is not None:
            return await self._held.run(execute)
        async with self._engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            return await execute(connection)

    # Worker-side transitions. `attempt` is always the caller's own attempt number, so a
    # stale or duplicate worker matches no row and changes nothing.

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
        """QUEUED -> RUNNING as attempt `queued_attempt + 1`, leased by the database clock.

        None when the job is not QUEUED at `queued_attempt`, or has never started and is
        past its deadline (the deadline bounds the wait before the first start only: a job
        handed back or lost after it started runs again while attempts remain). With
        `batch_with`, also None (nothing written) unless the job can share that job's
        pipeline call (`BATCH_SHARED`, the same model) with at most `room` images.
        """
        params: dict[str, Any] = {
            "queued": queued_attempt,
            "next": queued_attempt + 1,
            "worker_id": worker_id,
            "lease": lease,
        }
        if batch_with is not None:
            params |= {name: getattr(batch_with, name) for name in (*BATCH_SHARED, "model")}
            params["room"] = room

        def where() -> list[ColumnElement[bool]]:
            conditions = [or_(JobRow.deadline > func.now(), JobRow.started_at.is_not(None))]
            if batch_with is not None:
                conditions += [getattr(JobRow, name) == bound(name) for name in BATCH_SHARED]
                conditions += [JobRow.model == bound("model"), JobRow.num_images <= bound("room")]
            return conditions

        return await self.transition(
            job_id,
            State.QUEUED,
            lambda: {
                "state": State.RUNNING,
                "attempt": bound("next"),
                "worker_id": bound("worker_id"),
                "lease_expires_at": func.now() + bound("lease"),
                "started_at": func.now(),
                "progress_step": 0,
                "progress_total": JobRow.steps,
            },
            attempt=queued_attempt,
            where=where,
            outbox=Event.STARTED,
            shape="claim" if batch_with is None else "claim_into_batch",
            params=params,
            # The claim matches the queued attempt; the row then holds the next one.
            attempt_param="queued",
        )

    async def heartbeat(
        self, job_id: uuid.UUID, attempt: int, lease: timedelta, step: int | None = None
    ) -> JobRecord | None:
        """Renew the lease (and record progress); None when this attempt lost the job."""

        def values() -> dict[str, Any]:
            renewed: dict[str, Any] = {"lease_expires_at": func.now() + bound("lease")}
            if step is not None:
                renewed["progress_step"] = bound("step")
            return renewed

        return await self.transition(
            job_id,
            State.RUNNING,
            values,
            attempt=attempt,
            outbox=Event.PROGRESS if step is not None else None,
            shape="heartbeat" if step is None else "heartbeat_step",
            params={"lease": lease, "step": step},
        )

    async def succeed(
        self,
        job_id: uuid.UUID,
        attempt: int,
        outputs: list[dict[str, Any]],
        model_id: str,
        model_version: str,
    ) -> JobRecord | None:
        """RUNNING -> SUCCEEDED with this attempt's outputs, only if it still holds the job."""
        return await self.transition(
            job_id,
            State.RUNNING,
            lambda: {
                "state": State.SUCCEEDED,
                "outputs": bound("outputs"),
                "model_id": bound("model_id"),
                "model_version": bound("model_version"),
                "progress_step": JobRow.progress_total,
                "completed_at": func.now(),
                "lease_expires_at": None,
                "error_code": None,
                "error_message": None,
            },
            attempt=attempt,
            outbox=Event.TERMINAL,
            shape="succeed",
            params={"outputs": outputs, "model_id": model_id, "model_version": model_version},
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
    ) -> JobRecord | None:
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
            outbox=Event.TERMINAL,
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
    ) -> JobRecord | None:
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
            outbox=Event.TERMINAL,
        )

    async def expire(self, job_id: uuid.UUID, code: int, message: str) -> JobRecord | None:
        """QUEUED -> FAILED for a job that never started and is past its deadline."""
        return await self.transition(
            job_id,
            State.QUEUED,
            _failed(code, message),
            where=[JobRow.deadline <= func.now(), JobRow.started_at.is_(None)],
            outbox=Event.TERMINAL,
        )

    async def reject(
        self, job_id: uuid.UUID, queued_attempt: int, code: int, message: str
    ) -> JobRecord | None:
        """QUEUED -> FAILED for a job whose queue message at `queued_attempt` was set aside
        as poison (it could not be run)."""
        return await self.transition(
            job_id,
            State.QUEUED,
            _failed(code, message),
            attempt=queued_attempt,
            outbox=Event.TERMINAL,
        )


def _failed(code: int, message: str) -> dict[str, Any]:
    """The values of a QUEUED job that fails without running."""
    return {
        "state": State.FAILED,
        "completed_at": func.now(),
        "error_code": code,
        "error_message": message,
    }
