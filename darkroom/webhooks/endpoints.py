"""Owners' webhook endpoints and signing secrets in the database."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, delete, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from darkroom.inserts import new_job_id
from darkroom.webhooks.models import DeliveryRow, DeliveryState, EndpointRow, SigningSecretRow
from darkroom.webhooks.signing import new_secret

_ENDPOINTS = cast(Table, EndpointRow.__table__)
_SECRETS = cast(Table, SigningSecretRow.__table__)
_DELIVERIES = cast(Table, DeliveryRow.__table__)


class Endpoints:
    """Endpoints (each with its secrets) and the owners' job-webhook secrets."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, owner: str, url: str, events: Sequence[str]) -> tuple[EndpointRow, str]:
        """Record an endpoint; returns it and its new secret."""
        secret = new_secret()
        statement = (
            insert(_ENDPOINTS)
            .values(id=new_job_id(), owner=owner, url=url, events=list(events), secret=secret)
            .returning(*_ENDPOINTS.c)
        )
        async with self._engine.begin() as connection:
            row = (await connection.execute(statement)).one()
        return cast(EndpointRow, row), secret

    async def list(
        self, owner: str, *, after: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[EndpointRow]:
        """`owner`'s endpoints, newest first, older than (created_at, id) `after`."""
        query = select(*_ENDPOINTS.c).where(_ENDPOINTS.c.owner == owner)
        if after is not None:
            query = query.where(tuple_(_ENDPOINTS.c.created_at, _ENDPOINTS.c.id) < after)
        query = query.order_by(_ENDPOINTS.c.created_at.desc(), _ENDPOINTS.c.id.desc())
        query = query.limit(limit)
        async with self._engine.connect() as connection:
            return [cast(EndpointRow, row) for row in await connection.execute(query)]

    async def get(self, owner: str, endpoint_id: uuid.UUID) -> EndpointRow | None:
        """One of `owner`'s endpoints, or None."""
        query = select(*_ENDPOINTS.c).where(
            _ENDPOINTS.c.owner == owner, _ENDPOINTS.c.id == endpoint_id
        )
        async with self._engine.connect() as connection:
            return cast(EndpointRow | None, (await connection.execute(query)).one_or_none())

    async def delete(self, owner: str, endpoint_id: uuid.UUID) -> bool:
        """Delete an endpoint and end its pending deliveries (DEAD), in one transaction."""
        async with self._engine.begin() as connection:
            deleted = await connection.execute(
                delete(_ENDPOINTS)
                .where(_ENDPOINTS.c.owner == owner, _ENDPOINTS.c.id == endpoint_id)
                .returning(_ENDPOINTS.c.id)
            )
            if deleted.one_or_none() is None:
                return False
            await connection.execute(
                update(_DELIVERIES)
                .where(
                    _DELIVERIES.c.endpoint_id == endpoint_id,
                    _DELIVERIES.c.state == DeliveryState.PENDING.value,
                )
                .values(state=DeliveryState.DEAD.value, last_error="the endpoint was deleted")
            )
        return True

    async def rotate(
        self, owner: str, endpoint_id: uuid.UUID, grace: timedelta
    ) -> tuple[EndpointRow, str] | None:
        """A new secret for an endpoint; the current one signs beside it for `grace`."""
        secret = new_secret()
        statement = (
            update(_ENDPOINTS)
            .where(_ENDPOINTS.c.owner == owner, _ENDPOINTS.c.id == endpoint_id)
            .values(
                secret=secret,
                previous_secret=_ENDPOINTS.c.secret,
                previous_secret_expires_at=func.now() + grace,
            )
            .returning(*_ENDPOINTS.c)
        )
        async with self._engine.begin() as connection:
            row = (await connection.execute(statement)).one_or_none()
        return None if row is None else (cast(EndpointRow, row), secret)

    async def rotate_signing_secret(
        self, owner: str, grace: timedelta
    ) -> tuple[str, datetime | None]:
        """A new secret for `owner`'s jobs' webhooks; the current one (if any) signs beside
        it for `grace`. Returns the secret and until when the previous one signs."""
        fresh = insert(_SECRETS).values(owner=owner, secret=new_secret())
        statement = fresh.on_conflict_do_update(
            index_elements=["owner"],
            set_={
                "secret": fresh.excluded.secret,
                "previous_secret": _SECRETS.c.secret,
                "previous_secret_expires_at": func.now() + grace,
            },
        ).returning(_SECRETS.c.secret, _SECRETS.c.previous_secret_expires_at)
        async with self._engine.begin() as connection:
            row = (await connection.execute(statement)).one()
        return str(row.secret), row.previous_secret_expires_at

    async def signing_secret(self, owner: str) -> str:
        """The secret of `owner`'s jobs' own webhooks, created on first use (concurrent
        first uses agree on one)."""
        async with self._engine.begin() as connection:
            await connection.execute(
                insert(_SECRETS)
                .values(owner=owner, secret=new_secret())
                .on_conflict_do_nothing(index_elements=["owner"])
            )
            secret = await connection.scalar(
                select(_SECRETS.c.secret).where(_SECRETS.c.owner == owner)
            )
        return str(secret)
