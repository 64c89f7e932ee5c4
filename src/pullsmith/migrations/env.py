"""Alembic's environment for pullsmith's store.

`Store` runs it through `pullsmith.migrations.upgrade`, handing over its own connection in
`config.attributes["connection"]` (already in the transaction that holds the migration lock,
with the store's SQLite pragmas). The `alembic` command line, used to write revisions, runs it
with `sqlalchemy.url` from an ini file instead: README.md beside this file shows one.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Connection

from pullsmith import migrations

config = context.config
# The models of every module in MODEL_MODULES: what autogenerate compares the database with.
target_metadata = migrations.metadata()


def _configure(**options: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        # SQLite can't ALTER most things: autogenerate writes batch operations (a table
        # rebuild on SQLite, plain ALTERs elsewhere).
        render_as_batch=True,
        compare_type=True,
        **options,
    )


def run_on(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit(
            "set sqlalchemy.url in the ini file (README.md in pullsmith/migrations shows one)."
        )
    if context.is_offline_mode():
        _configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"})
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        run_on(connection)
        connection.commit()
    engine.dispose()


main()
