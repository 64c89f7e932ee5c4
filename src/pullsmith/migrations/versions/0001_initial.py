"""The first schema: the tables `Base.metadata.create_all` made before migrations existed.

A store made that way is stamped at this revision rather than run through it, so this must
stay exactly what create_all made from the models of that time: columns, types, nullability,
indexes, foreign keys and SQLite's AUTOINCREMENT (numbers are never reused).

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(length=80), nullable=False),
        sa.Column("instruction", sa.Text(), nullable=False),
        sa.Column("repo", sa.Text(), nullable=False),
        sa.Column("base_ref", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "pull_requests",
        sa.Column("number", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.String(length=80), nullable=False),
        sa.Column("repo", sa.Text(), nullable=False),
        sa.Column("head", sa.String(length=255), nullable=False),
        sa.Column("base", sa.String(length=255), nullable=False),
        sa.Column("base_commit", sa.String(length=64), nullable=False),
        sa.Column("head_commit", sa.String(length=64), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("checks", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("merged_at", sa.DateTime(), nullable=True),
        sa.Column("merge_commit", sa.String(length=64), nullable=True),
        sa.Column("merge_method", sa.String(length=16), nullable=True),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.Column("remote", sa.Text(), nullable=True),
        sa.Column("remote_repo", sa.String(length=255), nullable=True),
        sa.Column("remote_number", sa.Integer(), nullable=True),
        sa.Column("remote_url", sa.Text(), nullable=True),
        sa.Column("published_commit", sa.String(length=64), nullable=True),
        sa.Column("published_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"]),
        sa.PrimaryKeyConstraint("number"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_pull_requests_repo", "pull_requests", ["repo"], unique=False)
    op.create_index("ix_pull_requests_task_id", "pull_requests", ["task_id"], unique=False)
    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=80), nullable=False),
        sa.Column("task_id", sa.String(length=80), nullable=False),
        sa.Column("pr_number", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("instruction", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("exit_reason", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("branch", sa.String(length=255), nullable=False),
        sa.Column("start_commit", sa.String(length=64), nullable=False),
        sa.Column("commit", sa.String(length=64), nullable=True),
        sa.Column("test_command", sa.Text(), nullable=True),
        sa.Column("tests_before", sa.JSON(), nullable=True),
        sa.Column("tests_after", sa.JSON(), nullable=True),
        sa.Column("checks", sa.JSON(), nullable=False),
        sa.Column("agent_tests", sa.JSON(), nullable=False),
        sa.Column("notes", sa.JSON(), nullable=False),
        sa.Column("diff_stat", sa.Text(), nullable=False),
        sa.Column("turns", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("wall_seconds", sa.Float(), nullable=False),
        sa.Column("run_dir", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"]),
        sa.ForeignKeyConstraint(["pr_number"], ["pull_requests.number"]),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_attempts_run_id", "attempts", ["run_id"], unique=True)
    op.create_index("ix_attempts_task_id", "attempts", ["task_id"], unique=False)
    op.create_index("ix_attempts_pr_number", "attempts", ["pr_number"], unique=False)


def downgrade() -> None:
    op.drop_table("attempts")
    op.drop_table("pull_requests")
    op.drop_table("tasks")
