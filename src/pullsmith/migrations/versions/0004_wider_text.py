"""User text of any length: the VARCHAR(255) columns that hold names a user chooses become TEXT.

A base ref, a branch (`exec --branch`, a follow-up's PR head) and a model name come from the
user and have no length limit of their own; PostgreSQL refused one over 255 characters (SQLite
never checked). Changed: tasks.base_ref, attempts.branch, attempts.model, pull_requests.head,
pull_requests.base, service_tasks.base. Left: the ids (80), commits (64), states and kinds,
and pull_requests.remote_repo (GitHub's owner/name is at most 140 characters).

On SQLite each table is rebuilt (batch mode, foreign keys off under the migration's lock);
the AUTOINCREMENT of attempts and pull_requests is kept, and so is its counter, so a number
once given is never given again. On PostgreSQL each is one ALTER COLUMN ... TYPE TEXT.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# table -> (columns widened, whether the table has SQLite's AUTOINCREMENT)
WIDENED: dict[str, tuple[tuple[str, ...], bool]] = {
    "tasks": (("base_ref",), False),
    "attempts": (("branch", "model"), True),
    "pull_requests": (("head", "base"), True),
    "service_tasks": (("base",), False),
}
# Columns that are NOT NULL (alter_column needs to be told, or batch mode may loosen it).
NOT_NULL = {
    ("attempts", "branch"),
    ("attempts", "model"),
    ("pull_requests", "head"),
    ("pull_requests", "base"),
}


def _sequences() -> dict[str, int]:
    """SQLite's AUTOINCREMENT counters (the highest number ever given, per table)."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return {}
    has = bind.exec_driver_sql(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'"
    ).scalar()
    if not has:
        return {}
    return {
        name: int(seq)
        for name, seq in bind.exec_driver_sql("SELECT name, seq FROM sqlite_sequence")
    }


def _restore(sequences: dict[str, int]) -> None:
    """Put back counters a rebuild lowered (rows copied over only raise it to their max id)."""
    bind = op.get_bind()
    for name, seq in sequences.items():
        bind.execute(
            sa.text("UPDATE sqlite_sequence SET seq = :seq WHERE name = :name AND seq < :seq"),
            {"seq": seq, "name": name},
        )
        if not bind.execute(
            sa.text("SELECT count(*) FROM sqlite_sequence WHERE name = :name"), {"name": name}
        ).scalar():
            bind.execute(
                sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:name, :seq)"),
                {"seq": seq, "name": name},
            )


def _alter(wider: bool) -> None:
    sequences = _sequences()
    old, new = (sa.String(length=255), sa.Text()) if wider else (sa.Text(), sa.String(length=255))
    for table, (columns, autoincrement) in WIDENED.items():
        kwargs = {"sqlite_autoincrement": True} if autoincrement else {}
        with op.batch_alter_table(table, table_kwargs=kwargs) as batch:
            for column in columns:
                batch.alter_column(
                    column,
                    existing_type=old,
                    type_=new,
                    existing_nullable=(table, column) not in NOT_NULL,
                )
    _restore({name: seq for name, seq in sequences.items() if name in WIDENED})


def upgrade() -> None:
    _alter(wider=True)


def downgrade() -> None:
    _alter(wider=False)
