"""The store's schema migrations (Alembic), run by `Store` whenever it opens a database.

`upgrade(engine)` brings a database to `HEAD`: a new one gets every revision, one made by
`Base.metadata.create_all` before migrations existed is stamped at the revision that has its
tables (CREATE_ALL_STAMPS) and upgraded from there, and one already at `HEAD` costs two small
queries and no Alembic import. Processes that
open the same store at once take turns: `BEGIN IMMEDIATE` on SQLite, a transaction-level
advisory lock on PostgreSQL, and the loser finds the work done when it gets the lock.

To change the schema, change the models in `pullsmith.store`, add a revision to `versions/`
and set `HEAD` to its id: README.md in this directory says how, step by step.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import MetaData

#: The newest revision in versions/. A test checks it against the scripts' own head, so a new
#: revision that forgets to move it fails the tests instead of never running.
HEAD = "0006"
#: The first revision: the store's tables as `Base.metadata.create_all` made them.
FIRST = "0001"
FIRST_TABLES = frozenset({"tasks", "attempts", "pull_requests"})
#: Stores that create_all made before migrations existed, newest first: the revision whose
#: schema is exactly the tables such a store has (`pullsmith serve` added its two with
#: create_all too). A store with one of these sets and no alembic_version is stamped there.
CREATE_ALL_STAMPS: tuple[tuple[str, frozenset[str]], ...] = (
    ("0002", FIRST_TABLES | {"service_tasks", "service_events"}),
    (FIRST, FIRST_TABLES),
)
#: Every module that defines tables on `pullsmith.store.Base`: autogenerate and the tests
#: compare the migrated schema with all of them (a test finds a module missing here).
MODEL_MODULES = ("pullsmith.store", "pullsmith.service.tables")
VERSION_TABLE = "alembic_version"
DIRECTORY = Path(__file__).resolve().parent
# pg_advisory_xact_lock's key: any constant bigint that nothing else on the server uses.
_PG_LOCK_KEY = 0x70756C6C736D6974  # "pullsmit"


class UnknownRevisionError(Exception):
    """The database is at a revision these scripts don't have (a newer pullsmith made it)."""

    def __init__(self, revision: str) -> None:
        super().__init__(revision)
        self.revision = revision


class PartialSchemaError(Exception):
    """Some of pullsmith's tables exist without a revision, but not a set create_all made."""

    def __init__(self, tables: list[str]) -> None:
        super().__init__(", ".join(tables))
        self.tables = tables


def metadata() -> MetaData:
    """`Base.metadata` with every table of MODEL_MODULES on it: what the schema should be."""
    for name in MODEL_MODULES:
        importlib.import_module(name)
    from pullsmith.store import Base

    return Base.metadata


def alembic_config(
    connection: Connection | None = None,
    url: str | None = None,
    script_location: Path | str = DIRECTORY,
) -> Config:
    """An Alembic Config built in code (no alembic.ini): these scripts, and what to run them on.

    With `connection`, env.py migrates on it (inside whatever transaction and lock the caller
    holds); otherwise it connects to `url` (the `sqlalchemy.url` option).
    """
    from alembic.config import Config

    config = Config()
    # Config options go through configparser interpolation: a literal % is written %%.
    config.set_main_option("script_location", str(script_location).replace("%", "%%"))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def current_revision(connection: Connection) -> str | None:
    """The database's one revision, or None when it has no (or more than one) version row."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    return rows[0][0] if len(rows) == 1 else None


def upgrade(
    engine: Engine,
    head: str = HEAD,
    script_location: Path | str = DIRECTORY,
) -> None:
    """Bring the database behind `engine` to `head`, stamping a create_all store first.

    Raises UnknownRevisionError for a database newer than these scripts, PartialSchemaError
    for one with pullsmith's tables but not a set create_all made, and SQLAlchemy's errors for
    one that can't be reached or written.
    """
    with engine.connect() as connection:
        if current_revision(connection) == head:
            return
    with _locked(engine) as connection:
        # Whoever held the lock before us may have done the work.
        if current_revision(connection) == head:
            return
        _upgrade(connection, head, script_location)


def _upgrade(connection: Connection, head: str, script_location: Path | str) -> None:
    from alembic import command
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    config = alembic_config(connection, script_location=script_location)
    revision = current_revision(connection)
    if revision is None:
        known = frozenset().union(*(tables for _, tables in CREATE_ALL_STAMPS))
        found = known & set(inspect(connection).get_table_names())
        stamp = next((rev for rev, tables in CREATE_ALL_STAMPS if found == tables), None)
        if stamp is not None:
            command.stamp(config, stamp)
        elif found:
            raise PartialSchemaError(sorted(found))
    else:
        try:
            ScriptDirectory.from_config(config).get_revision(revision)
        except CommandError:
            raise UnknownRevisionError(revision) from None
    command.upgrade(config, head)


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that only one process at a time can hold for this store."""
    if engine.dialect.name == "sqlite":
        with _sqlite_immediate(engine) as connection:
            yield connection
        return
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            # Released by the transaction's end; PostgreSQL's DDL is transactional, so a
            # process that waited here sees the finished schema and no half of it.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        yield connection


@contextmanager
def _sqlite_immediate(engine: Engine) -> Iterator[Connection]:
    """SQLite's write lock for the whole migration, held by `BEGIN IMMEDIATE`.

    The driver's own transaction handling is switched off (AUTOCOMMIT, undone when the
    connection goes back to the pool) so the BEGIN and COMMIT are ours. Foreign keys are off
    meanwhile, as SQLite's procedure for rebuilding a table (Alembic's batch mode) requires,
    and checked before the commit.
    """
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        foreign_keys = connection.exec_driver_sql("PRAGMA foreign_keys").scalar()
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        try:
            # Waits up to the connection's busy timeout for another writer to finish.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield connection
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                if broken:
                    raise RuntimeError(f"the migration broke foreign keys: {broken[:5]}")
                connection.exec_driver_sql("COMMIT")
            except BaseException:
                _rollback(connection)
                raise
        finally:
            connection.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")


def _rollback(connection: Connection) -> None:
    dbapi: Any = connection.connection.dbapi_connection
    if dbapi is not None and dbapi.in_transaction:
        connection.exec_driver_sql("ROLLBACK")
