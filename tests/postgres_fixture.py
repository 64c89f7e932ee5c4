"""A real PostgreSQL server for the tests: `postgres_url` is a fresh database on it per test.

The server is Debian's PostgreSQL (`make postgres-deps` installs it), started once per session
in a temporary directory: `initdb` with trust authentication, then `postgres` listening on a
free port of 127.0.0.1 only, its socket in the same directory. As root it runs as the
`postgres` system user (initdb and postgres refuse root). Durability is off (fsync and friends):
the data is thrown away with the directory when the session ends.

PULLSMITH_TEST_POSTGRES_URL names a server of your own instead (any SQLAlchemy URL of a
database there): each test gets a database made on that server when the URL's user may
create databases, and otherwise that database itself with pullsmith's tables dropped first.

Tests ask for `postgres_url` (a SQLAlchemy URL, `postgresql+psycopg://...`); a test run on
both backends takes `store_url` with `@pytest.mark.parametrize("store_url", BACKENDS,
indirect=True)`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ENV = "PULLSMITH_TEST_POSTGRES_URL"
BACKENDS = ["sqlite", "postgresql"]
SERVER_USER = "postgres"
START_TIMEOUT = 30.0


def postgres_bin() -> Path | None:
    """The directory with initdb and postgres: $PATH's, or the newest Debian cluster's."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    for postgres in reversed(versions):
        if (postgres.parent / "initdb").is_file():
            return postgres.parent
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """A throwaway PostgreSQL cluster in a temporary directory, on 127.0.0.1:`port`."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="pullsmith-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.log = self.root / "postgres.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._user: dict[str, object] = {}
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(SERVER_USER)
            except KeyError:
                pytest.fail(
                    f"PostgreSQL refuses to run as root and there is no '{SERVER_USER}' user; "
                    "`make postgres-deps` (Debian's postgresql package) makes one."
                )
            self._user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.sockets.mkdir()
        if self._user:
            os.chown(self.sockets, int(self._user["user"]), int(self._user["group"]))

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
            cwd=self.root,
            **self._user,  # type: ignore[arg-type]
        )

    def start(self) -> PostgresServer:
        done = self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SERVER_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
            "--no-instructions",
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        for _ in range(5):  # another process may take the free port before the server does
            self.port = _free_port()
            if self._start_server():
                return self
        raise RuntimeError(f"PostgreSQL did not start:\n{self._log_tail()}")

    def _start_server(self) -> bool:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port)]
                + ["-k", str(self.sockets), "-c", "listen_addresses=127.0.0.1"]
                + ["-c", "fsync=off", "-c", "synchronous_commit=off"]
                + ["-c", "full_page_writes=off", "-c", "max_connections=200"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                **self._user,  # type: ignore[arg-type]
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self._accepts():
                return True
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"PostgreSQL accepted no connection in {START_TIMEOUT:.0f} s")

    def _accepts(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.conninfo("postgres"), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def conninfo(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={SERVER_USER} dbname={dbname}"

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{SERVER_USER}@127.0.0.1:{self.port}/{dbname}"

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        return "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: disconnect everyone
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


class Databases:
    """Makes a database per test on a server, and drops it after."""

    def __init__(self, admin_url: str) -> None:
        from sqlalchemy import create_engine

        self.admin_url = admin_url
        self.engine = create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_size=1)
        self._names = (f"pullsmith_test_{os.getpid()}_{n}" for n in itertools.count(1))
        self.can_create = True

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        from sqlalchemy import text
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ProgrammingError

        name = next(self._names)
        if self.can_create:
            try:
                with self.engine.connect() as connection:
                    connection.execute(text(f'CREATE DATABASE "{name}"'))
            except ProgrammingError:  # no CREATEDB: the URL's own database, emptied
                self.can_create = False
        if not self.can_create:
            _drop_pullsmith_tables(self.admin_url)
            yield self.admin_url
            return
        try:
            yield make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with self.engine.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def close(self) -> None:
        self.engine.dispose()


def _drop_pullsmith_tables(url: str) -> None:
    from sqlalchemy import create_engine, text

    from pullsmith import migrations

    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            for table in reversed(migrations.metadata().sorted_tables):
                connection.execute(text(f'DROP TABLE IF EXISTS "{table.name}" CASCADE'))
            connection.execute(text(f"DROP TABLE IF EXISTS {migrations.VERSION_TABLE}"))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[Databases]:
    """The session's PostgreSQL server (started here, or $PULLSMITH_TEST_POSTGRES_URL's)."""
    try:
        import psycopg  # noqa: F401
    except ModuleNotFoundError:
        pytest.fail(
            "psycopg (the PostgreSQL driver) is not installed: pip install -e '.[postgres]' "
            "(`make test` does)"
        )
    outside = os.environ.get(ENV)
    if outside:
        databases = Databases(outside)
        yield databases
        databases.close()
        return
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip(
            "PostgreSQL's initdb and postgres are not installed (`make postgres-deps` installs "
            f"them), and {ENV} names no server"
        )
    server = PostgresServer(bindir)
    try:
        server.start()
        databases = Databases(server.url("postgres"))
        try:
            yield databases
        finally:
            databases.close()
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_databases: Databases) -> Iterator[str]:
    """A SQLAlchemy URL of an empty PostgreSQL database of this test's own."""
    with postgres_databases.database() as url:
        yield url


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLAlchemy URL of an empty store: SQLite ("sqlite") or PostgreSQL ("postgresql")."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    raise ValueError(f"unknown backend {request.param!r}")
