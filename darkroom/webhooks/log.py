"""The delivery log: an owner's deliveries per job or endpoint with their tries, and
redelivery."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, func, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncEngine

from darkroom.webhooks.models import AttemptRow, DeliveryRow, DeliveryState

_DELIVERIES = cast(Table, DeliveryRow.__table__)
_ATTEMPTS = cast(Table, AttemptRow.__table__)
# Everything but the job snapshot, which the log does not show.
_SHOWN = [column for column in _DELIVERIES.c if column.name != "job"]


@dataclass(frozen=True)
class Logged:
    """A delivery and its tries, oldest first."""

    delivery: Any  # a row of `webhook_deliveries` without `job`
    attempts: list[Any]


class DeliveryLog:
    """Reads and redeliveries, scoped to an owner."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def list(
        self,
        owner: str,
        *,
        job_id: uuid.UUID | None = None,
        endpoint_id: uuid.UUID | None = None,
        after: tuple[datetime, uuid.UUID] | None = None,
        limit: int,
    ) -> list[Logged]:
        """Deliveries for a job or to an endpoint, newest first, older than `after`."""
        query = select(*_SHOWN).where(_DELIVERIES.c.owner == owner)
        if job_id is not None:
            query = query.where(_DELIVERIES.c.job_id == job_id)
        if endpoint_id is not None:
            query = query.where(_DELIVERIES.c.endpoint_id == endpoint_id)
        if after is not None:
            query = query.where(tuple_(_DELIVERIES.c.created_at, _DELIVERIES.c.id) < after)
        query = query.order_by(_DELIVERIES.c.created_at.desc(), _DELIVERIES.c.id.desc())
        async with self._engine.connect() as connection:
            rows = list(await connection.execute(query.limit(limit)))
            return await _with_attempts(connection, rows)

    async def redeliver(self, owner: str, delivery_id: uuid.UUID) -> Logged | None:
        """Make a delivery PENDING and due now, with the whole retry schedule ahead of it
        (the same `webhook-id`); None when the owner has no such delivery. A try in flight
        meanwhile still records itself, fenced by its number, without ending the delivery
        early: the next try is a new number."""
        statement = (
            update(_DELIVERIES)
            .where(_DELIVERIES.c.owner == owner, _DELIVERIES.c.id == delivery_id)
            .values(
                state=DeliveryState.PENDING.value,
                schedule_from=_DELIVERIES.c.attempts,
                next_attempt_at=func.now(),
                delivered_at=None,
            )
            .returning(*_SHOWN)
        )
        async with self._engine.begin() as connection:
            row = (await connection.execute(statement)).one_or_none()
            if row is None:
                return None
            # Idle workers take it at once (see migration 0005's trigger for inserts).
            await connection.execute(text("SELECT pg_notify('darkroom_webhooks', '')"))
            return (await _with_attempts(connection, [row]))[0]


async def _with_attempts(connection: Any, rows: list[Any]) -> list[Logged]:
    if not rows:
        return []
    query = (
        select(_ATTEMPTS)
        .where(_ATTEMPTS.c.delivery_id.in_([row.id for row in rows]))
        .order_by(_ATTEMPTS.c.id)
    )
    attempts: dict[uuid.UUID, list[Any]] = defaultdict(list)
    for attempt in await connection.execute(query):
        attempts[attempt.delivery_id].append(attempt)
    return [Logged(row, attempts[row.id]) for row in rows]
