"""The service's tables: service_tasks (the queue of `pullsmith serve`) and service_events.

Before this revision the service made them with `create_all`: a store that has them and no
alembic_version is stamped here (CREATE_ALL_STAMPS), so this must stay what create_all made.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "service_tasks",
        sa.Column("id", sa.String(length=80), nullable=False),
        sa.Column("repo", sa.Text(), nullable=False),
        sa.Column("base", sa.String(length=255), nullable=True),
        sa.Column("instruction", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("until_pass", sa.Boolean(), nullable=False),
        sa.Column("model_options", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("interruptions", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("pr_number", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_service_tasks_repo", "service_tasks", ["repo"], unique=False)
    op.create_index(
        "ix_service_tasks_state_created", "service_tasks", ["state", "created_at"], unique=False
    )
    op.create_table(
        "service_events",
        sa.Column("task_id", sa.String(length=80), nullable=False),
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("v", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["service_tasks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("task_id", "id"),
    )


def downgrade() -> None:
    op.drop_table("service_events")
    op.drop_table("service_tasks")
