"""The store: tasks, their attempts (runs) and pull requests, in SQLAlchemy.

A SQLite file in pullsmith's data directory by default; any SQLAlchemy URL (PostgreSQL for the
service) by the `database_url` setting or `PULLSMITH_DATABASE_URL`. Rows are returned detached
(nothing expires on commit), so callers read them freely after the session is gone. The schema
comes from the Alembic revisions in `pullsmith/migrations`, run whenever a store is opened.
"""

from __future__ import annotations

import importlib.util
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    or_,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    DataError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from pullsmith import migrations
from pullsmith.config import Settings
from pullsmith.errors import UserError

PR_STATES = ("open", "merged", "closed")
CHECKS = ("passing", "failing", "untested", "error")
DATABASE_URL_ENV = "PULLSMITH_DATABASE_URL"


class StoreUnavailable(UserError):
    """The store could not be written (or reached) just now: read-only, full, locked, gone.

    Nothing of the write is kept (its transaction was rolled back); retrying once the cause is
    fixed is safe. The service answers 503 with the sentence."""


def _unwritable(url: str, exc: OperationalError) -> StoreUnavailable:
    reason = _first_line(exc)
    code = getattr(getattr(exc, "orig", None), "sqlite_errorname", "") or ""
    lowered = reason.lower()
    if (
        code.startswith("SQLITE_READONLY")
        or "readonly database" in lowered
        or "read-only" in lowered
    ):
        advice = "the database is read-only; make the database file and its directory writable"
    elif code == "SQLITE_FULL" or "is full" in lowered or "no space left" in lowered:
        advice = "the disk it is on is full; free some space there"
    else:
        advice = "check that the database is reachable and not full"
    return StoreUnavailable(
        f"the store at {_redact(url)} could not be written ({reason}): {advice}, then retry."
    )


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class TaskRecord(Base):
    """What was asked, of which repository; a task has one or more attempts."""

    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    instruction: Mapped[str] = mapped_column(Text)
    repo: Mapped[str] = mapped_column(Text)
    base_ref: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class AttemptRecord(Base):
    """One run on a task's branch: the first one, or a follow-up that added commits."""

    __tablename__ = "attempts"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(80), unique=True, index=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), index=True)
    pr_number: Mapped[int | None] = mapped_column(
        ForeignKey("pull_requests.number"), index=True, nullable=True
    )
    kind: Mapped[str] = mapped_column(String(16), default="task")
    instruction: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32))
    exit_reason: Mapped[str] = mapped_column(Text, default="")
    summary: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    branch: Mapped[str] = mapped_column(Text)
    start_commit: Mapped[str] = mapped_column(String(64))
    commit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    test_command: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Test runs as evidence: {"event", "command", "exit_code", "seconds", "timed_out", "excerpt"}.
    tests_before: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    tests_after: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    checks: Mapped[list[Any]] = mapped_column(JSON, default=list)
    agent_tests: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # What stopped the run or was sent back: limits, rejected finishes, malformed replies.
    notes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    diff_stat: Mapped[str] = mapped_column(Text, default="")
    turns: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    model: Mapped[str] = mapped_column(Text, default="")
    wall_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    run_dir: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    @property
    def head_commit(self) -> str:
        """The commit this attempt's evidence is about: its own, or the one it started from."""
        return self.commit or self.start_commit


class PullRequestRecord(Base):
    """A branch proposed for merging into a base, with a description that proves itself."""

    __tablename__ = "pull_requests"
    __table_args__ = {"sqlite_autoincrement": True}

    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), index=True)
    repo: Mapped[str] = mapped_column(Text, index=True)
    head: Mapped[str] = mapped_column(Text)
    base: Mapped[str] = mapped_column(Text)
    base_commit: Mapped[str] = mapped_column(String(64))
    head_commit: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), default="open")
    checks: Mapped[str] = mapped_column(String(16), default="untested")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    merged_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    merge_commit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    merge_method: Mapped[str | None] = mapped_column(String(16), nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    remote: Mapped[str | None] = mapped_column(Text, nullable=True)
    remote_repo: Mapped[str | None] = mapped_column(String(255), nullable=True)
    remote_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    remote_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    published_commit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    published_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class ReviewRecord(Base):
    """A review of a pull request's change (`pullsmith pr review N`): the whole review as
    `pullsmith review --json` prints it, and where it was posted on GitHub."""

    __tablename__ = "reviews"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pr_number: Mapped[int] = mapped_column(ForeignKey("pull_requests.number"), index=True)
    base_commit: Mapped[str] = mapped_column(String(64))
    head_commit: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(Text, default="")
    verdict: Mapped[str] = mapped_column(String(16))
    findings: Mapped[int] = mapped_column(Integer, default=0)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # The pull request review it became on GitHub (`pr publish`), once posted.
    remote_review_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    remote_review_url: Mapped[str | None] = mapped_column(Text, nullable=True)


def database_url(settings: Settings) -> str:
    """The store's URL: the `database_url` setting, $PULLSMITH_DATABASE_URL, or the SQLite file."""
    if settings.database_url:
        return settings.database_url
    return f"sqlite:///{Path(settings.data_dir).expanduser() / 'pullsmith.db'}"


def _with_driver(url: str) -> str:
    """`url` with PostgreSQL's driver named: a bare postgresql:// (or a host's postgres://)
    means psycopg 3, the one `pip install 'pullsmith[postgres]'` brings, not SQLAlchemy's
    default psycopg2, when psycopg is there."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg"):
        return f"postgresql+psycopg://{rest}"
    return url


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the service read while a run writes; foreign keys are off in SQLite by default.
    _wal(cursor)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _wal(cursor: Any, patience: float = 30.0) -> None:
    """Switch the file to WAL (it stays so), waiting out others who do it at the same moment.

    Two processes opening a new file at once both switch it, and SQLite answers the second
    "database is locked" at once, without waiting the busy timeout: so wait here.
    """
    import sqlite3  # only SQLite stores come here

    deadline = time.monotonic() + patience
    pause = 0.01
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(item) for item in value.values())
    if type(value) in (list, tuple):
        return any(_has_nul(item) for item in value)
    return False


def _no_nul(value: Any) -> Any:
    """`value` with every NUL in its strings (also in dicts, lists, tuples) made U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {key: _no_nul(item) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_no_nul(item) for item in value)
    return value


def _postgres_text(
    _conn: Any,
    _cursor: Any,
    statement: str,
    parameters: Any,
    _context: Any,
    _executemany: bool,
) -> tuple[str, Any]:
    """PostgreSQL's text can't hold NUL, which SQLite stores: a test's output with one would
    fail the whole write. It is stored as U+FFFD, as bytes that aren't UTF-8 are (JSON keeps
    it, escaped, either way)."""
    return statement, _no_nul(parameters) if _has_nul(parameters) else parameters


class Store:
    """Tasks, attempts and pull requests, behind one SQLAlchemy engine."""

    def __init__(self, url: str) -> None:
        self.url = url
        shown = _redact(url)
        connect_args: dict[str, Any] = {}
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///") :])
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(
                    f"can not create {path.parent} for the store ({exc.strerror}); set "
                    "PULLSMITH_DATA_DIR to a directory you can write."
                ) from None
            # Parallel runs share the file: wait for a lock rather than fail at once.
            connect_args["timeout"] = 30
        options: dict[str, Any] = {}
        if not url.startswith("sqlite"):
            # A server may end idle connections (a restart, a proxy's timeout): check each
            # pooled one before use, so a long-lived service reconnects instead of failing.
            options["pool_pre_ping"] = True
        try:
            self.engine: Engine = create_engine(
                _with_driver(url), connect_args=connect_args, **options
            )
        except (ArgumentError, NoSuchModuleError) as exc:
            raise UserError(
                f"the database URL {shown} is not one SQLAlchemy understands ({exc}); fix "
                f"{DATABASE_URL_ENV} or the database_url setting."
            ) from None
        except ModuleNotFoundError as exc:
            raise UserError(
                f"the database driver for {shown} is not installed ({exc.name}); install it "
                "with pip (for PostgreSQL: pip install 'pullsmith[postgres]'), or unset the "
                "database URL to use the SQLite file."
            ) from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        elif self.engine.dialect.name == "postgresql":
            event.listen(self.engine, "before_cursor_execute", _postgres_text, retval=True)
        try:
            # The schema is Alembic's (pullsmith/migrations): a new database gets every
            # revision, one that create_all made is stamped, an up-to-date one costs a query.
            migrations.upgrade(self.engine)
        except DatabaseError as exc:
            raise UserError(
                f"could not open the store at {shown} ({_first_line(exc)}); check that the "
                "database is reachable and writable."
            ) from None
        except migrations.UnknownRevisionError as exc:
            raise UserError(
                f"the store at {shown} is at schema revision {exc.revision}, which this "
                "pullsmith does not know (a newer one upgraded it); upgrade pullsmith."
            ) from None
        except migrations.PartialSchemaError as exc:
            raise UserError(
                f"the store at {shown} has only some of pullsmith's tables ({exc}) and no "
                "schema revision; point the database URL at pullsmith's own database."
            ) from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def open(cls, settings: Settings) -> Store:
        """The store the settings point at (by default `data_dir/pullsmith.db`)."""
        return cls(database_url(settings))

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block ends and rolls back when it raises."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except OperationalError as exc:
            session.rollback()
            raise _unwritable(self.url, exc) from None
        except DataError as exc:
            # A server database checks what SQLite lets through: VARCHAR sizes, say.
            session.rollback()
            raise UserError(
                f"the store at {_redact(self.url)} refused a value ({_first_line(exc)}); "
                "unlike SQLite, this database holds each column to its declared size: shorten "
                "the value (a branch or model name, say) and retry."
            ) from None
        except SQLAlchemyError:
            session.rollback()
            raise
        finally:
            session.close()

    # --- tasks and attempts ------------------------------------------------------------

    def add(self, *rows: Base) -> None:
        """Insert or update `rows` (detached rows are merged back in)."""
        with self.session() as session:
            merged = [session.merge(row) for row in rows]
            session.flush()
            for original, row in zip(rows, merged, strict=True):
                # Copy generated keys (PR numbers, attempt ids) back to the caller's objects.
                for column in row.__table__.columns:
                    setattr(original, column.key, getattr(row, column.key))

    def task(self, task_id: str) -> TaskRecord | None:
        with self.session() as session:
            return session.get(TaskRecord, task_id)

    def attempt(self, run_id: str) -> AttemptRecord | None:
        with self.session() as session:
            return session.scalars(
                select(AttemptRecord).where(AttemptRecord.run_id == run_id)
            ).first()

    def attempts(self, pr_number: int) -> list[AttemptRecord]:
        """The attempts of a pull request, oldest first."""
        with self.session() as session:
            return list(
                session.scalars(
                    select(AttemptRecord)
                    .where(AttemptRecord.pr_number == pr_number)
                    .order_by(AttemptRecord.id)
                )
            )

    def task_attempts(self, task_id: str) -> list[AttemptRecord]:
        with self.session() as session:
            return list(
                session.scalars(
                    select(AttemptRecord)
                    .where(AttemptRecord.task_id == task_id)
                    .order_by(AttemptRecord.id)
                )
            )

    # --- pull requests -----------------------------------------------------------------

    def pull_request(self, number: int) -> PullRequestRecord:
        """PR `number`, or a UserError that says how to find the right one."""
        with self.session() as session:
            row = session.get(PullRequestRecord, number)
        if row is None:
            raise UserError(
                f"there is no pull request #{number}; `pullsmith pr list --state all` shows "
                "the ones there are."
            )
        return row

    def pull_requests(
        self, repo: str | None = None, states: tuple[str, ...] | None = None
    ) -> list[PullRequestRecord]:
        """Pull requests, newest first, optionally of one repository and in some states."""
        query = select(PullRequestRecord).order_by(PullRequestRecord.number.desc())
        if repo is not None:
            query = query.where(PullRequestRecord.repo == repo)
        if states:
            query = query.where(PullRequestRecord.state.in_(states))
        with self.session() as session:
            return list(session.scalars(query))

    def pull_request_for_task(self, task_id: str) -> PullRequestRecord | None:
        """The pull request of a task, found by the task's id or by any of its runs' ids."""
        with self.session() as session:
            attempt = session.scalars(
                select(AttemptRecord).where(
                    or_(AttemptRecord.run_id == task_id, AttemptRecord.task_id == task_id)
                )
            ).first()
            owner = attempt.task_id if attempt is not None else task_id
            return session.scalars(
                select(PullRequestRecord)
                .where(PullRequestRecord.task_id == owner)
                .order_by(PullRequestRecord.number.desc())
            ).first()

    def find_pull_request(self, ref: str) -> PullRequestRecord:
        """The pull request `ref` names: `N` or `#N`, a task id, or a run id."""
        text = ref.strip()
        if re.fullmatch(r"#?\d+", text):
            return self.pull_request(int(text.lstrip("#")))
        found = self.pull_request_for_task(text)
        if found is None:
            raise UserError(
                f"no pull request belongs to task '{text}'; pass a PR number or task id from "
                "`pullsmith pr list --state all`."
            )
        return found

    def update_pull_request(self, number: int, **values: Any) -> PullRequestRecord:
        values.setdefault("updated_at", utcnow())
        return self._update(
            PullRequestRecord, number, values, f"there is no pull request #{number}."
        )

    def _update(self, table: type[Any], key: int, values: dict[str, Any], missing: str) -> Any:
        """Set `values` on the row of `table` with primary key `key` (UserError `missing`)."""
        with self.session() as session:
            row = session.get(table, key)
            if row is None:
                raise UserError(missing)
            for name, value in values.items():
                if not hasattr(table, name):
                    raise AttributeError(name)
                setattr(row, name, value)
            return row

    def count_pull_requests(self, repo: str | None = None) -> dict[str, int]:
        """How many pull requests there are in each state."""
        query = select(PullRequestRecord.state, func.count()).group_by(PullRequestRecord.state)
        if repo is not None:
            query = query.where(PullRequestRecord.repo == repo)
        with self.session() as session:
            return {state: count for state, count in session.execute(query).all()}

    # --- reviews -----------------------------------------------------------------------

    def reviews(self, pr_number: int) -> list[ReviewRecord]:
        """The reviews of a pull request, oldest first."""
        with self.session() as session:
            return list(
                session.scalars(
                    select(ReviewRecord)
                    .where(ReviewRecord.pr_number == pr_number)
                    .order_by(ReviewRecord.id)
                )
            )

    def latest_review(self, pr_number: int) -> ReviewRecord | None:
        with self.session() as session:
            return session.scalars(
                select(ReviewRecord)
                .where(ReviewRecord.pr_number == pr_number)
                .order_by(ReviewRecord.id.desc())
                .limit(1)
            ).first()

    def update_review(self, review_id: int, **values: Any) -> ReviewRecord:
        return self._update(ReviewRecord, review_id, values, f"there is no review {review_id}.")


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
