"""The outbox: a job move's webhook deliveries, inserted by the move's own statement.

`with_deliveries` turns a transition's `UPDATE … RETURNING` into one statement whose
data-modifying CTE also inserts a delivery for the job's own webhook and for each of the
owner's endpoints that asked for the move's event. One statement is one transaction: a
delivery exists exactly when its move committed, and a move that matched no row (a late or
duplicate writer) inserts nothing.
"""

from __future__ import annotations

import enum
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import (
    CTE,
    Select,
    String,
    Table,
    Update,
    exists,
    func,
    insert,
    literal,
    null,
    select,
    union_all,
)
from sqlalchemy import (
    cast as sql_cast,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.sql.elements import ColumnElement

from darkroom.models import TERMINAL_STATES, JobRow
from darkroom.webhooks.models import DeliveryRow, EndpointRow

_JOBS = cast(Table, JobRow.__table__)
_DELIVERIES = cast(Table, DeliveryRow.__table__)
_ENDPOINTS = cast(Table, EndpointRow.__table__)
# A running job's progress is called back at most this often per job and destination.
PROGRESS_INTERVAL = timedelta(seconds=5)


class Event(enum.Enum):
    """What a move tells webhooks about: its `darkroom.v1.WebhookEvent` value's name."""

    TERMINAL = "WEBHOOK_EVENT_TERMINAL"
    STARTED = "WEBHOOK_EVENT_STARTED"
    PROGRESS = "WEBHOOK_EVENT_PROGRESS"


def origin(url: ColumnElement[Any]) -> ColumnElement[str]:
    """`scheme://host[:port]` of a URL, lowercased: what a job webhook's circuit is."""
    return func.lower(func.substring(url, r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]+"))


def with_deliveries(statement: Update, event: Event) -> Select[Any]:
    """`statement` (an UPDATE of the jobs table), returning the moved rows as it would,
    and inserting the deliveries of `event` for each moved row."""
    moved = statement.returning(*_JOBS.c).cte("moved")
    if event is Event.TERMINAL:
        kind: ColumnElement[str] = literal("job.") + func.lower(moved.c.state)
        happened: ColumnElement[bool] = moved.c.state.in_(
            [state.value for state in TERMINAL_STATES]
        )
    else:
        kind = literal(f"job.{event.name.lower()}")
        happened = literal(True)
    snapshot = func.to_jsonb(moved.table_valued())
    own = select(
        moved.c.owner,
        moved.c.id,
        sql_cast(null(), UUID(as_uuid=True)),
        moved.c.webhook["url"].astext,
        origin(moved.c.webhook["url"].astext),
        kind,
        snapshot,
    ).where(happened, moved.c.webhook["events"].has_key(event.value))
    to_endpoints = (
        select(
            moved.c.owner,
            moved.c.id,
            _ENDPOINTS.c.id,
            _ENDPOINTS.c.url,
            sql_cast(_ENDPOINTS.c.id, String),
            kind,
            snapshot,
        )
        .select_from(moved.join(_ENDPOINTS, _ENDPOINTS.c.owner == moved.c.owner))
        .where(happened, _ENDPOINTS.c.events.has_key(event.value))
    )
    if event is Event.PROGRESS:
        own = own.where(~_recent_progress(moved, None))
        to_endpoints = to_endpoints.where(~_recent_progress(moved, _ENDPOINTS.c.id))
    columns = ["owner", "job_id", "endpoint_id", "url", "circuit", "type", "job"]
    outbox: CTE = (
        insert(_DELIVERIES).from_select(columns, union_all(own, to_endpoints)).cte("outbox")
    )
    return select(*moved.c).add_cte(outbox)


def _recent_progress(moved: CTE, endpoint: ColumnElement[Any] | None) -> ColumnElement[bool]:
    """Whether this job called this destination back with progress lately."""
    target = (
        _DELIVERIES.c.endpoint_id.is_(None)
        if endpoint is None
        else _DELIVERIES.c.endpoint_id == endpoint
    )
    return exists().where(
        _DELIVERIES.c.job_id == moved.c.id,
        _DELIVERIES.c.type == "job.progress",
        target,
        _DELIVERIES.c.created_at > func.now() - PROGRESS_INTERVAL,
    )
