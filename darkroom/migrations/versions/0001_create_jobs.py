"""Create the jobs table and the trigger that enforces the job state machine.

Revision ID: 0001
Revises:
Create Date: 2026-11-27 22:13:55.782677
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The state machine lives in the database too: a buggy or stale writer cannot move a job
# backwards or out of a terminal state, whatever its WHERE clause said. The trigger also
# keeps updated_at current so no writer can forget it.
TRANSITION_FUNCTION = """
CREATE FUNCTION jobs_check_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state IN ('SUCCEEDED', 'FAILED', 'CANCELLED') THEN
        RAISE EXCEPTION 'job % is % and can no longer change', OLD.id, OLD.state
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.state <> OLD.state AND (OLD.state, NEW.state) NOT IN (
        ('QUEUED', 'RUNNING'), ('QUEUED', 'CANCELLED'), ('QUEUED', 'FAILED'),
        ('RUNNING', 'SUCCEEDED'), ('RUNNING', 'FAILED'), ('RUNNING', 'CANCELLED'),
        ('RUNNING', 'QUEUED')
    ) THEN
        RAISE EXCEPTION 'illegal job transition % -> % (job %)', OLD.state, NEW.state, OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END;
$$
"""


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("request_id", sa.UUID(), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("prompt_sha256", sa.String(length=64), nullable=False),
        sa.Column("negative_prompt", sa.Text(), server_default="", nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("guidance_scale", sa.Double(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("num_images", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=256), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "run_after", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("cancel_requested", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("progress_step", sa.Integer(), server_default="0", nullable=False),
        sa.Column("progress_total", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column(
            "outputs", postgresql.JSONB(astext_type=sa.Text()), server_default="[]", nullable=False
        ),
        sa.Column("model_id", sa.String(length=512), nullable=True),
        sa.Column("model_version", sa.String(length=128), nullable=True),
        sa.CheckConstraint(
            "state <> 'RUNNING' OR lease_expires_at IS NOT NULL", name=op.f("ck_jobs_lease")
        ),
        sa.CheckConstraint(
            "state IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')",
            name=op.f("ck_jobs_state"),
        ),
        sa.CheckConstraint(
            "attempt >= 0 AND attempt <= max_attempts", name=op.f("ck_jobs_attempt")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("owner", "request_id", name=op.f("uq_jobs_owner_request_id")),
    )
    op.create_index(
        "ix_jobs_owner_id", "jobs", ["owner", sa.literal_column("id DESC")], unique=False
    )
    op.create_index(
        "ix_jobs_owner_state_id",
        "jobs",
        ["owner", "state", sa.literal_column("id DESC")],
        unique=False,
    )
    op.create_index(
        "ix_jobs_queued_deadline",
        "jobs",
        ["deadline"],
        unique=False,
        postgresql_where=sa.text("state = 'QUEUED'"),
    )
    op.create_index(
        "ix_jobs_queued_run_after",
        "jobs",
        ["run_after"],
        unique=False,
        postgresql_where=sa.text("state = 'QUEUED'"),
    )
    op.create_index(
        "ix_jobs_running_lease",
        "jobs",
        ["lease_expires_at"],
        unique=False,
        postgresql_where=sa.text("state = 'RUNNING'"),
    )
    op.execute(TRANSITION_FUNCTION)
    op.execute(
        "CREATE TRIGGER jobs_check_transition BEFORE UPDATE ON jobs "
        "FOR EACH ROW EXECUTE FUNCTION jobs_check_transition()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER jobs_check_transition ON jobs")
    op.execute("DROP FUNCTION jobs_check_transition()")
    op.drop_index(
        "ix_jobs_running_lease", table_name="jobs", postgresql_where=sa.text("state = 'RUNNING'")
    )
    op.drop_index(
        "ix_jobs_queued_run_after", table_name="jobs", postgresql_where=sa.text("state = 'QUEUED'")
    )
    op.drop_index(
        "ix_jobs_queued_deadline", table_name="jobs", postgresql_where=sa.text("state = 'QUEUED'")
    )
    op.drop_index("ix_jobs_owner_state_id", table_name="jobs")
    op.drop_index("ix_jobs_owner_id", table_name="jobs")
    op.drop_table("jobs")
