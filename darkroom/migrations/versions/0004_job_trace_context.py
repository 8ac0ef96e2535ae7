"""The trace a job was submitted in.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 13:30:00

`traceparent` holds the W3C trace context of the SubmitJob call that recorded the job (null
when tracing was off). Each attempt's span links to it, also for attempts the reconciler
re-enqueues from the row after Redis lost the queue message. A nullable column without a
default is instant to add.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("traceparent", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "traceparent")
