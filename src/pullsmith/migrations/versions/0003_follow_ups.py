"""Follow-ups in the service: service_tasks.follows names the task whose PR a task continues.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("service_tasks", sa.Column("follows", sa.String(length=80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("service_tasks") as batch:
        batch.drop_column("follows")
