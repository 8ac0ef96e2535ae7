"""Index a model's queued and running jobs, for the autoscaler's count of them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 17:50:00

KEDA's PostgreSQL scaler counts, every few seconds and for every model, the jobs that are
QUEUED and due or RUNNING. A partial index keeps that count to the active jobs, however
many finished ones the table holds.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_active_model",
        "jobs",
        ["model", "state", "run_after"],
        postgresql_where=sa.text("state IN ('QUEUED', 'RUNNING')"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_active_model", table_name="jobs")
