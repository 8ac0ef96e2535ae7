"""The webhook tables: endpoints, signing secrets, deliveries (the outbox), their tries,
and the circuit of each destination."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from darkroom.models import Base


class DeliveryState(enum.StrEnum):
    """Where a delivery stands; mirrors `darkroom.v1.WebhookDeliveryState`."""

    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    DEAD = "DEAD"


class EndpointRow(Base):
    """A URL called for every job of its owner."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    url: Mapped[str] = mapped_column(Text)
    # Names of `darkroom.v1.WebhookEvent` values, as in a job's webhook.
    events: Mapped[list[str]] = mapped_column(JSONB)
    secret: Mapped[str] = mapped_column(Text)
    previous_secret: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (Index("ix_webhook_endpoints_owner_created_at", "owner", "created_at"),)


class SigningSecretRow(Base):
    """The secret that signs calls to an owner's jobs' own webhooks."""

    __tablename__ = "webhook_signing_secrets"

    owner: Mapped[str] = mapped_column(String(128), primary_key=True)
    secret: Mapped[str] = mapped_column(Text)
    previous_secret: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class DeliveryRow(Base):
    """One event of one job to one destination: the outbox row, and its state."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    owner: Mapped[str] = mapped_column(String(128))
    job_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    # None: the job's own webhook.
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    url: Mapped[str] = mapped_column(Text)
    # What trips together: the endpoint, or the origin of a job's own webhook URL.
    circuit: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(32))
    # The job row as the move committed it (`to_jsonb`), sent as its `Job` message.
    job: Mapped[dict[str, Any]] = mapped_column(JSONB)
    state: Mapped[str] = mapped_column(String(16), server_default="PENDING")
    # Tries since it was created, counted when a worker takes it (it fences the worker's
    # record of its try); the retry schedule counts from `schedule_from` (a redelivery).
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    schedule_from: Mapped[int] = mapped_column(Integer, server_default="0")
    # When it is due; while a worker tries it, when that worker's lease ends.
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("state = 'PENDING'"),
        ),
        Index("ix_webhook_deliveries_job_id_created_at", "job_id", "created_at"),
        Index("ix_webhook_deliveries_endpoint_id_created_at", "endpoint_id", "created_at"),
    )


class AttemptRow(Base):
    """One try of a delivery: written when a worker takes it, completed when it ends."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    number: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(256))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    response_body: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_webhook_attempts_delivery_id_id", "delivery_id", "id"),)


class CircuitRow(Base):
    """Consecutive failures of one destination; open (skipped) until `open_until`."""

    __tablename__ = "webhook_circuits"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, server_default="0")
    open_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
