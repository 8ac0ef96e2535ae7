"""The delivery workers' side of the outbox: take due deliveries, record how a try ended.

`take` leases due rows with `FOR UPDATE SKIP LOCKED` (so any number of workers take
disjoint rows) and commits before anything is sent: a delivery in flight is one whose
`next_attempt_at` is its worker's lease, and a worker that dies mid-POST leaves a row that
is due again when the lease ends, with the same id. `finish` is fenced by the try's number,
so a worker that outlived its lease cannot overwrite a newer try. Destinations that fail
`circuit_failures` times in a row are skipped for a cooldown (their circuit is open), so a
dead endpoint does not hold the workers' slots.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import DateTime, Table, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncEngine

from darkroom.models import JobRecord, JobRow, State
from darkroom.webhooks.models import DeliveryState

_JOBS = cast(Table, JobRow.__table__)
# How far down the due deliveries a take looks for ones whose destination has room.
SCAN_FACTOR = 8

# The earliest due deliveries whose circuit is not open, at most `room` per destination
# (`:in_flight` is what this worker already sends to each, as JSON), looked for among the
# first `:scan` due ones (a backlog is never sorted whole); then locked, skipping those
# another worker holds, and checked again now that they are.
_TAKE = text("""
WITH head AS (
  SELECT d.id, d.circuit, d.next_attempt_at FROM webhook_deliveries d
  WHERE d.state = 'PENDING' AND d.next_attempt_at <= now()
    AND NOT EXISTS (
      SELECT 1 FROM webhook_circuits c WHERE c.key = d.circuit AND c.open_until > now()
    )
  ORDER BY d.next_attempt_at
  LIMIT :scan
), ranked AS (
  SELECT id, next_attempt_at, circuit,
         row_number() OVER (PARTITION BY circuit ORDER BY next_attempt_at) AS place
  FROM head
), chosen AS (
  SELECT id FROM ranked
  WHERE place <= :per_destination
                 - coalesce((CAST(:in_flight AS jsonb) ->> circuit)::int, 0)
  ORDER BY next_attempt_at
  LIMIT :limit
), due AS (
  SELECT d.id FROM webhook_deliveries d
  WHERE d.id IN (SELECT id FROM chosen)
    AND d.state = 'PENDING' AND d.next_attempt_at <= now()
  FOR UPDATE OF d SKIP LOCKED
), taken AS (
  UPDATE webhook_deliveries d
  SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => :lease)
  FROM due WHERE d.id = due.id
  RETURNING d.id, d.owner, d.job_id, d.endpoint_id, d.url, d.circuit, d.type, d.job,
            d.attempts, d.schedule_from, d.created_at
), tries AS (
  INSERT INTO webhook_attempts (delivery_id, number, worker)
  SELECT id, attempts, :worker FROM taken
  RETURNING id, delivery_id
)
SELECT taken.*, tries.id AS attempt_id,
       (taken.endpoint_id IS NOT NULL AND e.id IS NULL) AS endpoint_gone,
       coalesce(e.secret, s.secret) AS secret,
       CASE WHEN coalesce(e.previous_secret_expires_at, s.previous_secret_expires_at) > now()
            THEN coalesce(e.previous_secret, s.previous_secret) END AS previous_secret
FROM taken JOIN tries ON tries.delivery_id = taken.id
LEFT JOIN webhook_endpoints e ON e.id = taken.endpoint_id
LEFT JOIN webhook_signing_secrets s ON s.owner = taken.owner AND taken.endpoint_id IS NULL
""")

# How a try ended, in one statement (one round trip, one transaction): the try's row, the
# delivery (only if this try still holds it), and the destination's circuit (only then).
_FINISH = text("""
WITH ended AS (
  UPDATE webhook_deliveries
  SET state = CAST(:state AS varchar),
      next_attempt_at = CASE WHEN CAST(:state AS varchar) = 'PENDING'
                             THEN now() + make_interval(secs => :retry_in)
                             ELSE next_attempt_at END,
      delivered_at = CASE WHEN CAST(:state AS varchar) = 'DELIVERED' THEN now() END,
      last_status = :status, last_error = :error
  WHERE id = :id AND attempts = :attempt AND state = 'PENDING'
  RETURNING id
), tried AS (
  UPDATE webhook_attempts
  SET ended_at = now(), status_code = :status, error = :error, response_body = :body
  WHERE id = :attempt_id
), closed AS (
  DELETE FROM webhook_circuits
  WHERE key = :circuit AND CAST(:counts AS boolean) AND CAST(:delivered AS boolean)
    AND EXISTS (SELECT 1 FROM ended)
), failed AS (
  INSERT INTO webhook_circuits AS c (key, failures)
  SELECT :circuit, 1
  WHERE CAST(:counts AS boolean) AND NOT CAST(:delivered AS boolean)
    AND EXISTS (SELECT 1 FROM ended)
  ON CONFLICT (key) DO UPDATE SET
    failures = c.failures + 1,
    open_until = CASE WHEN c.failures + 1 >= :threshold
                      THEN now() + make_interval(secs => :cooldown) END
)
SELECT count(*) FROM ended
""")


@dataclass(frozen=True)
class Taken:
    """A delivery a worker holds for one try."""

    id: uuid.UUID
    owner: str
    job_id: uuid.UUID
    endpoint_id: uuid.UUID | None
    url: str
    circuit: str
    type: str
    job: JobRecord
    attempt: int
    # Tries of this round: `attempt` less the tries before the last redelivery.
    round_attempt: int
    attempt_id: int
    created_at: datetime
    endpoint_gone: bool
    # Secrets that sign this try: the current one (None: the owner has none yet), and
    # an endpoint's previous one during its grace period.
    secret: str | None
    previous_secret: str | None


@dataclass(frozen=True)
class Outcome:
    """How one try ended: the receiver's status (0: none), and why it failed."""

    status: int = 0
    error: str = ""
    body: str = ""

    @property
    def delivered(self) -> bool:
        return 200 <= self.status < 300 and not self.error


class Deliveries:
    """Due deliveries, for workers."""

    def __init__(self, engine: AsyncEngine, worker: str) -> None:
        self._engine = engine
        self._worker = worker

    async def take(
        self,
        limit: int,
        lease: timedelta,
        *,
        per_destination: int,
        in_flight: Mapping[str, int] | None = None,
    ) -> list[Taken]:
        """Lease up to `limit` due deliveries (committed before this returns), at most
        `per_destination` in flight to one destination counting `in_flight` (circuit ->
        deliveries this worker is sending there now)."""
        params = {
            "limit": limit,
            "scan": limit * SCAN_FACTOR,
            "per_destination": per_destination,
            "in_flight": json.dumps(dict(in_flight or {})),
            "lease": lease.total_seconds(),
            "worker": self._worker,
        }
        async with self._engine.begin() as connection:
            rows = (await connection.execute(_TAKE, params)).mappings().all()
        return [
            Taken(
                id=row["id"],
                owner=row["owner"],
                job_id=row["job_id"],
                endpoint_id=row["endpoint_id"],
                url=row["url"],
                circuit=row["circuit"],
                type=row["type"],
                job=job_of(row["job"]),
                attempt=row["attempts"],
                round_attempt=row["attempts"] - row["schedule_from"],
                attempt_id=row["attempt_id"],
                created_at=row["created_at"],
                endpoint_gone=row["endpoint_gone"],
                secret=row["secret"],
                previous_secret=row["previous_secret"],
            )
            for row in rows
        ]

    async def finish(
        self,
        taken: Taken,
        outcome: Outcome,
        *,
        retry_in: timedelta | None,
        circuit_failures: int,
        circuit_cooldown: timedelta,
    ) -> DeliveryState | None:
        """Record a try: delivered, due again in `retry_in`, or (None) dead; and count it
        against its destination's circuit. Returns the state written, or None when the
        delivery was taken again since (this worker's lease ran out)."""
        if outcome.delivered:
            state = DeliveryState.DELIVERED
        else:
            state = DeliveryState.DEAD if retry_in is None else DeliveryState.PENDING
        error = outcome.error or (None if outcome.delivered else f"HTTP {outcome.status}")
        values = {"status": outcome.status or None, "error": error}
        params = {
            **values,
            "body": outcome.body,
            "attempt_id": taken.attempt_id,
            "state": state.value,
            "retry_in": (retry_in or timedelta(0)).total_seconds(),
            "id": taken.id,
            "attempt": taken.attempt,
            "circuit": taken.circuit,
            # A deleted endpoint's circuit is nobody's.
            "counts": not taken.endpoint_gone,
            "delivered": outcome.delivered,
            "threshold": circuit_failures,
            "cooldown": circuit_cooldown.total_seconds(),
        }
        async with self._engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            ended = await connection.scalar(_FINISH, params)
        if not ended:
            return None
        return state


def job_of(snapshot: dict[str, Any]) -> JobRecord:
    """A job row from its `to_jsonb` snapshot, typed as SQLAlchemy reads it."""
    values: dict[str, Any] = {}
    for column in _JOBS.c:
        value = snapshot.get(column.name)
        if value is not None:
            if isinstance(column.type, UUID):
                value = uuid.UUID(value)
            elif isinstance(column.type, DateTime):
                value = datetime.fromisoformat(value)
            elif column.name == "state":
                value = State(value)
        values[column.name] = value
    return cast(JobRecord, SimpleNamespace(**values))
