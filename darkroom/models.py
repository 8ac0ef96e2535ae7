"""The job table: SQLAlchemy 2 typed model of the row that is the source of truth."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from darkroom.spec import HasSpec

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class State(enum.StrEnum):
    """Job states as stored; the values mirror `darkroom.v1.JobState` without prefix."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """Whether the state never changes again."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})
# The state machine: every move a job may make (the migration's trigger enforces the same
# table in SQL, and a test tries every pair against it). A terminal state never changes.
LEGAL_MOVES = frozenset(
    {
        (State.QUEUED, State.RUNNING),  # claimed
        (State.QUEUED, State.CANCELLED),  # cancelled while waiting
        (State.QUEUED, State.FAILED),  # expired
        (State.RUNNING, State.SUCCEEDED),
        (State.RUNNING, State.FAILED),
        (State.RUNNING, State.CANCELLED),
        (State.RUNNING, State.QUEUED),  # the attempt ended without a result: retry
    }
)


class StateType(TypeDecorator[State]):
    """The state column: stored as its name, read back as a `State` (not a bare str)."""

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value: State | str | None, dialect: Dialect) -> str | None:
        return None if value is None else State(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> State | None:
        return None if value is None else State(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class JobRow(Base):
    """One job. Transitions go through `darkroom.store`, never through attribute writes."""

    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    request_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    # SHA-256 of the submitted request, to tell an idempotent replay from a conflict.
    request_hash: Mapped[str] = mapped_column(String(64))

    prompt: Mapped[str] = mapped_column(Text)
    prompt_sha256: Mapped[str] = mapped_column(String(64))
    negative_prompt: Mapped[str] = mapped_column(Text, server_default="")
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer)
    guidance_scale: Mapped[float] = mapped_column(Double)
    seed: Mapped[int] = mapped_column(BigInteger)
    num_images: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(256))
    # Orders an owner's own queued jobs of a model (see `darkroom.scheduling`).
    priority: Mapped[int] = mapped_column(Integer, server_default="0")
    # W3C trace context of the submit that recorded the job; attempts' spans link to it.
    traceparent: Mapped[str | None] = mapped_column(String(64))
    # The job's own webhook (`darkroom.spec.Spec.webhook`); deliveries: `darkroom.webhooks`.
    webhook: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    state: Mapped[State] = mapped_column(StateType())
    attempt: Mapped[int] = mapped_column(Integer, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer)
    worker_id: Mapped[str | None] = mapped_column(String(256))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Earliest time a QUEUED job may be claimed (backoff between attempts).
    run_after: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    cancel_requested: Mapped[bool] = mapped_column(Boolean, server_default="false")
    progress_step: Mapped[int] = mapped_column(Integer, server_default="0")
    progress_total: Mapped[int] = mapped_column(Integer, server_default="0")

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    deadline: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    error_code: Mapped[int | None] = mapped_column(Integer)
    error_message: Mapped[str | None] = mapped_column(Text)
    outputs: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    model_id: Mapped[str | None] = mapped_column(String(512))
    model_version: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (
        UniqueConstraint("owner", "request_id"),
        CheckConstraint(
            "state IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')", name="state"
        ),
        CheckConstraint("attempt >= 0 AND attempt <= max_attempts", name="attempt"),
        CheckConstraint("state <> 'RUNNING' OR lease_expires_at IS NOT NULL", name="lease"),
        CheckConstraint("priority BETWEEN -10 AND 10", name="priority"),
        # List by owner, newest first (ids are UUIDv7, so id order is creation order).
        Index("ix_jobs_owner_id", "owner", text("id DESC")),
        Index("ix_jobs_owner_state_id", "owner", "state", text("id DESC")),
        # The reconciler's scans: expired leases, and queued work to re-enqueue or expire.
        Index(
            "ix_jobs_running_lease",
            "lease_expires_at",
            postgresql_where=text("state = 'RUNNING'"),
        ),
        Index("ix_jobs_queued_run_after", "run_after", postgresql_where=text("state = 'QUEUED'")),
        Index("ix_jobs_queued_deadline", "deadline", postgresql_where=text("state = 'QUEUED'")),
        # The autoscaler's count of a model's due and running jobs (deploy/k8s, KEDA).
        Index(
            "ix_jobs_active_model",
            "model",
            "state",
            "run_after",
            postgresql_where=text("state IN ('QUEUED', 'RUNNING')"),
        ),
    )


class JobRecord(HasSpec, Protocol):
    """A job row read without the ORM (a Core `Row` on the submit hot path, where building
    ORM instances was a third of the CPU); a `JobRow` is one too. The spec's columns come
    from `HasSpec`, declared beside the spec itself."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def owner(self) -> str: ...
    @property
    def request_id(self) -> uuid.UUID: ...
    @property
    def request_hash(self) -> str: ...
    @property
    def prompt_sha256(self) -> str: ...
    @property
    def state(self) -> State: ...
    @property
    def attempt(self) -> int: ...
    @property
    def max_attempts(self) -> int: ...
    @property
    def worker_id(self) -> str | None: ...
    @property
    def lease_expires_at(self) -> datetime | None: ...
    @property
    def run_after(self) -> datetime: ...
    @property
    def traceparent(self) -> str | None: ...
    @property
    def cancel_requested(self) -> bool: ...
    @property
    def progress_step(self) -> int: ...
    @property
    def progress_total(self) -> int: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def completed_at(self) -> datetime | None: ...
    @property
    def updated_at(self) -> datetime: ...
    @property
    def deadline(self) -> datetime: ...
    @property
    def error_code(self) -> int | None: ...
    @property
    def error_message(self) -> str | None: ...
    @property
    def outputs(self) -> list[dict[str, Any]]: ...
    @property
    def model_id(self) -> str | None: ...
    @property
    def model_version(self) -> str | None: ...


# The webhook tables share this metadata (migrations and their check see every table).
import darkroom.webhooks.models  # noqa: E402, F401 - registers the tables; needs Base above
