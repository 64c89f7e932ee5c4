"""The store's schema is Alembic's: new stores are migrated, old create_all stores stamped."""

from __future__ import annotations

import multiprocessing
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from pullsmith import migrations
from pullsmith.errors import UserError
from pullsmith.store import PullRequestRecord, Store, TaskRecord

SRC = Path(migrations.__file__).resolve().parent.parent

# What create_all made before migrations existed, as SQLite keeps it in sqlite_master: the
# store's three tables (revision 0001) ...
LEGACY_DDL = [
    """CREATE TABLE tasks (
        id VARCHAR(80) NOT NULL,
        instruction TEXT NOT NULL,
        repo TEXT NOT NULL,
        base_ref VARCHAR(255),
        created_at DATETIME NOT NULL,
        PRIMARY KEY (id)
    )""",
    """CREATE TABLE pull_requests (
        number INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
        task_id VARCHAR(80) NOT NULL,
        repo TEXT NOT NULL,
        head VARCHAR(255) NOT NULL,
        base VARCHAR(255) NOT NULL,
        base_commit VARCHAR(64) NOT NULL,
        head_commit VARCHAR(64) NOT NULL,
        title TEXT NOT NULL,
        body TEXT NOT NULL,
        state VARCHAR(16) NOT NULL,
        checks VARCHAR(16) NOT NULL,
        created_at DATETIME NOT NULL,
        updated_at DATETIME NOT NULL,
        merged_at DATETIME,
        merge_commit VARCHAR(64),
        merge_method VARCHAR(16),
        closed_at DATETIME,
        remote TEXT,
        remote_repo VARCHAR(255),
        remote_number INTEGER,
        remote_url TEXT,
        published_commit VARCHAR(64),
        published_at DATETIME,
        FOREIGN KEY(task_id) REFERENCES tasks (id)
    )""",
    "CREATE INDEX ix_pull_requests_repo ON pull_requests (repo)",
    "CREATE INDEX ix_pull_requests_task_id ON pull_requests (task_id)",
    """CREATE TABLE attempts (
        id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
        run_id VARCHAR(80) NOT NULL,
        task_id VARCHAR(80) NOT NULL,
        pr_number INTEGER,
        kind VARCHAR(16) NOT NULL,
        instruction TEXT NOT NULL,
        status VARCHAR(32) NOT NULL,
        exit_reason TEXT NOT NULL,
        summary TEXT NOT NULL,
        error TEXT,
        branch VARCHAR(255) NOT NULL,
        start_commit VARCHAR(64) NOT NULL,
        "commit" VARCHAR(64),
        test_command TEXT,
        tests_before JSON,
        tests_after JSON,
        checks JSON NOT NULL,
        agent_tests JSON NOT NULL,
        notes JSON NOT NULL,
        diff_stat TEXT NOT NULL,
        turns INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        model VARCHAR(255) NOT NULL,
        wall_seconds FLOAT NOT NULL,
        run_dir TEXT NOT NULL,
        created_at DATETIME NOT NULL,
        FOREIGN KEY(task_id) REFERENCES tasks (id),
        FOREIGN KEY(pr_number) REFERENCES pull_requests (number)
    )""",
    "CREATE UNIQUE INDEX ix_attempts_run_id ON attempts (run_id)",
    "CREATE INDEX ix_attempts_task_id ON attempts (task_id)",
    "CREATE INDEX ix_attempts_pr_number ON attempts (pr_number)",
]
# ... and the two that `pullsmith serve` added with create_all (revision 0002).
SERVICE_DDL = [
    """CREATE TABLE service_tasks (
        id VARCHAR(80) NOT NULL,
        repo TEXT NOT NULL,
        base VARCHAR(255),
        instruction TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        until_pass BOOLEAN NOT NULL,
        model_options JSON NOT NULL,
        state VARCHAR(32) NOT NULL,
        created_at DATETIME NOT NULL,
        started_at DATETIME,
        finished_at DATETIME,
        tries INTEGER NOT NULL,
        interruptions INTEGER NOT NULL,
        result JSON,
        pr_number INTEGER,
        error TEXT,
        PRIMARY KEY (id)
    )""",
    "CREATE INDEX ix_service_tasks_repo ON service_tasks (repo)",
    "CREATE INDEX ix_service_tasks_state_created ON service_tasks (state, created_at)",
    """CREATE TABLE service_events (
        task_id VARCHAR(80) NOT NULL,
        id INTEGER NOT NULL,
        type VARCHAR(64) NOT NULL,
        ts FLOAT NOT NULL,
        data JSON NOT NULL,
        v INTEGER NOT NULL,
        PRIMARY KEY (task_id, id),
        FOREIGN KEY(task_id) REFERENCES service_tasks (id) ON DELETE CASCADE
    )""",
]
CREATE_ALL_DDL = {"0001": LEGACY_DDL, "0002": LEGACY_DDL + SERVICE_DDL}

# A task and its pull request, as a user's old store holds them.
LEGACY_ROWS = [
    "INSERT INTO tasks (id, instruction, repo, base_ref, created_at)"
    " VALUES ('t1', 'fix it', '/src/app', 'main', '2026-11-01 10:00:00')",
    "INSERT INTO pull_requests (task_id, repo, head, base, base_commit, head_commit, title,"
    " body, state, checks, created_at, updated_at) VALUES ('t1', '/src/app', 'pullsmith/t1',"
    f" 'main', '{'a' * 40}', '{'b' * 40}', 'fix the parser', 'why', 'open', 'passing',"
    " '2026-11-01 10:00:00', '2026-11-01 10:00:00')",
]
SERVICE_ROWS = [
    "INSERT INTO service_tasks (id, repo, instruction, attempts, until_pass, model_options,"
    " state, created_at, tries, interruptions) VALUES ('s1', '/src/app', 'fix it', 1, 0, '{}',"
    " 'queued', '2026-11-01 10:00:00', 0, 0)",
    "INSERT INTO service_events (task_id, id, type, ts, data, v)"
    " VALUES ('s1', 1, 'queued', 1.5, '{}', 1)",
]


def _squeeze(sql: str) -> str:
    return " ".join(sql.split())


def _ddl(path: Path) -> list[str]:
    """A SQLite file's own schema text, sorted, without Alembic's table and SQLite's own."""
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE '%alembic%'"
            " AND name != 'sqlite_sequence'"
        ).fetchall()
    return sorted(_squeeze(sql) for (sql,) in rows)


def _revision(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT version_num FROM alembic_version")]


def _legacy_store(path: Path, revision: str = "0001") -> None:
    """A store as pullsmith's create_all made it before migrations, with rows in it."""
    with sqlite3.connect(path) as db:
        for statement in CREATE_ALL_DDL[revision]:
            db.execute(statement)
        for row in LEGACY_ROWS + (SERVICE_ROWS if revision == "0002" else []):
            db.execute(row)


def _diff(store: Store) -> list[object]:
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, migrations.metadata())


def _spawn_openers(url: str, count: int = 3) -> list[int | None]:
    """`count` processes that open the store at the same moment; their exit codes."""
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(count)
    workers = [
        spawn.Process(target=_open_and_add, args=(url, f"w{i}", barrier)) for i in range(count)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    return [worker.exitcode for worker in workers]


def _open_and_add(url: str, task_id: str, barrier: object) -> None:
    barrier.wait(timeout=60)  # type: ignore[attr-defined]
    with Store(url) as store:
        store.add(TaskRecord(id=task_id, instruction="x", repo="/r", base_ref="main"))


def test_head_is_the_only_head_of_the_scripts():
    """HEAD is what opening a store compares with: a new revision must move it."""
    script = ScriptDirectory.from_config(migrations.alembic_config())
    assert script.get_heads() == [migrations.HEAD]
    assert script.get_bases() == [migrations.FIRST]
    for revision, _tables in migrations.CREATE_ALL_STAMPS:
        assert script.get_revision(revision) is not None


def test_every_module_with_tables_is_a_model_module():
    """A module that defines tables on Base but isn't in MODEL_MODULES escapes the check."""
    found = set()
    for path in SRC.joinpath("pullsmith").rglob("*.py"):
        if re.search(r"^class \w+\((\w+\.)?Base\):", path.read_text(), re.MULTILINE):
            found.add(".".join(path.relative_to(SRC).with_suffix("").parts))
    assert found <= set(migrations.MODEL_MODULES), found - set(migrations.MODEL_MODULES)


def test_a_new_store_is_at_head(tmp_path):
    path = tmp_path / "s.db"
    with Store(f"sqlite:///{path}") as store:
        store.add(TaskRecord(id="t1", instruction="x", repo="/r", base_ref="main"))
        assert store.task("t1").instruction == "x"
    assert _revision(path) == [migrations.HEAD]


@pytest.mark.parametrize("revision", sorted(CREATE_ALL_DDL))
def test_a_stamped_revision_builds_what_create_all_made(tmp_path, revision):
    """Stamping a create_all store at a revision is right only if it builds the same schema."""
    path = tmp_path / "s.db"
    engine = create_engine(f"sqlite:///{path}")
    migrations.upgrade(engine, head=revision)
    engine.dispose()
    assert _revision(path) == [revision]
    assert _ddl(path) == sorted(_squeeze(sql) for sql in CREATE_ALL_DDL[revision])


@pytest.mark.skipif(migrations.HEAD != "0002", reason="the models moved past 0002")
def test_the_recorded_schema_is_what_create_all_makes_of_the_models(tmp_path):
    path = tmp_path / "s.db"
    engine = create_engine(f"sqlite:///{path}")
    migrations.metadata().create_all(engine)
    engine.dispose()
    assert _ddl(path) == sorted(_squeeze(sql) for sql in CREATE_ALL_DDL["0002"])


@pytest.mark.parametrize("revision", sorted(CREATE_ALL_DDL))
def test_a_create_all_store_is_stamped_and_keeps_its_rows(tmp_path, revision):
    path = tmp_path / "s.db"
    _legacy_store(path, revision)
    with Store(f"sqlite:///{path}") as store:
        pr = store.pull_request(1)
        assert (pr.title, pr.checks, pr.task_id) == ("fix the parser", "passing", "t1")
        store.add(
            PullRequestRecord(
                task_id="t1",
                repo="/src/app",
                head="pullsmith/t1-2",
                base="main",
                base_commit="a" * 40,
                head_commit="c" * 40,
                title="again",
            )
        )
        assert [p.number for p in store.pull_requests()] == [2, 1]
        assert _diff(store) == []
        if revision == "0002":
            with store.engine.connect() as connection:
                rows = connection.execute(text("SELECT id, state FROM service_tasks")).all()
            assert rows == [("s1", "queued")]
    assert _revision(path) == [migrations.HEAD]
    with Store(f"sqlite:///{path}") as store:  # and opens again as an up-to-date store
        assert store.pull_request(1).title == "fix the parser"


def test_the_models_and_the_migrated_schema_agree(tmp_path):
    """A table or column added to the models without a revision fails here."""
    path = tmp_path / "s.db"
    with Store(f"sqlite:///{path}") as store:
        assert _diff(store) == []
    # compare_metadata doesn't see SQLite's AUTOINCREMENT (numbers never reused): check it.
    # (A table a batch migration rebuilt is renamed into place: SQLite keeps its name quoted.)
    ddl = {sql.split()[2].strip('"'): sql for sql in _ddl(path) if sql.startswith("CREATE TABLE")}
    for table in migrations.metadata().sorted_tables:
        wanted = table.kwargs.get("sqlite_autoincrement", False)
        assert ("AUTOINCREMENT" in ddl[table.name]) == wanted, table.name


def test_an_up_to_date_store_opens_without_alembic(tmp_path):
    """Opening a store at HEAD is two small queries: Alembic isn't even imported."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    Store(url).close()
    probe = (
        "import sys; from pullsmith.store import Store; Store(sys.argv[1]).close(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, url], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("legacy", [False, True], ids=["new", "create_all"])
def test_processes_opening_one_store_at_once_all_succeed(tmp_path, legacy):
    path = tmp_path / "s.db"
    if legacy:
        _legacy_store(path)
    url = f"sqlite:///{path}"
    assert _spawn_openers(url) == [0, 0, 0]
    assert _revision(path) == [migrations.HEAD]
    with Store(url) as store:
        assert all(store.task(f"w{i}") for i in range(3))
        assert _diff(store) == []


@pytest.mark.parametrize("legacy", [False, True], ids=["new", "create_all"])
def test_postgres_processes_opening_one_store_at_once_all_succeed(postgres_url, legacy):
    """The advisory lock, on an empty database of the PostgreSQL server of the tests."""
    url = postgres_url
    engine = create_engine(url)
    if legacy:  # FIRST's tables without alembic_version, as create_all left them
        migrations.upgrade(engine, head=migrations.FIRST)
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE alembic_version"))
            for row in LEGACY_ROWS:
                connection.execute(text(row))
    engine.dispose()
    assert _spawn_openers(url) == [0, 0, 0]
    with Store(url) as store:
        with store.engine.connect() as connection:
            assert migrations.current_revision(connection) == migrations.HEAD
        assert all(store.task(f"w{i}") for i in range(3))
        assert _diff(store) == []
        if legacy:
            assert store.pull_request(1).title == "fix the parser"


def test_widening_to_text_keeps_rows_and_numbers(tmp_path):
    """0004 rebuilds four tables on SQLite: rows, foreign keys and the AUTOINCREMENT counters
    survive, so a PR number once given (even of a row since deleted) is not given again."""
    path = tmp_path / "s.db"
    engine = create_engine(f"sqlite:///{path}")
    migrations.upgrade(engine, head="0003")
    with engine.begin() as connection:
        for row in LEGACY_ROWS + SERVICE_ROWS:
            connection.execute(text(row))
        connection.execute(
            text(
                "INSERT INTO pull_requests (task_id, repo, head, base, base_commit, head_commit,"
                " title, body, state, checks, created_at, updated_at) SELECT task_id, repo,"
                " 'pullsmith/t1-2', base, base_commit, head_commit, 'two', body, state, checks,"
                " created_at, updated_at FROM pull_requests WHERE number = 1"
            )
        )
        connection.execute(text("DELETE FROM pull_requests WHERE number = 2"))
    engine.dispose()
    assert _revision(path) == ["0003"]
    with Store(f"sqlite:///{path}") as store:
        assert _diff(store) == []
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA foreign_key_check").all() == []
            tasks = connection.execute(text("SELECT id, state FROM service_tasks")).all()
            events = connection.execute(text("SELECT task_id, id FROM service_events")).all()
        assert (tasks, events) == ([("s1", "queued")], [("s1", 1)])
        assert store.task("t1").base_ref == "main"
        assert [(p.number, p.head) for p in store.pull_requests()] == [(1, "pullsmith/t1")]
        store.add(
            PullRequestRecord(
                task_id="t1",
                repo="/src/app",
                head="pullsmith/t1-3",
                base="main",
                base_commit="a" * 40,
                head_commit="c" * 40,
                title="three",
            )
        )
        assert [p.number for p in store.pull_requests()] == [3, 1]
    assert _revision(path) == [migrations.HEAD]


def test_a_later_table_rebuild_keeps_rows_that_point_at_it(tmp_path):
    """SQLite rebuilds a table to alter it (batch mode): foreign keys are off while it does."""
    scripts = tmp_path / "scripts"
    shutil.copytree(migrations.DIRECTORY, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    later = f"{int(migrations.HEAD) + 1:04d}"
    (scripts / "versions" / f"{later}_task_note.py").write_text(
        "import sqlalchemy as sa\n"
        "from alembic import op\n\n"
        f"revision = {later!r}\ndown_revision = {migrations.HEAD!r}\n"
        "branch_labels = None\ndepends_on = None\n\n\n"
        "def upgrade():\n"
        "    with op.batch_alter_table('tasks', recreate='always') as batch:\n"
        "        batch.add_column(sa.Column('note', sa.Text(), nullable=True))\n"
    )
    path = tmp_path / "s.db"
    _legacy_store(path)
    with Store(f"sqlite:///{path}") as store:
        store.add(
            TaskRecord(id="t2", instruction="x", repo="/r", base_ref="main"),
        )
        migrations.upgrade(store.engine, head=later, script_location=scripts)
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            rows = connection.execute(text("SELECT id, note FROM tasks ORDER BY id")).all()
        assert rows == [("t1", None), ("t2", None)]
        assert store.pull_request(1).task_id == "t1"
    assert _revision(path) == [later]


def test_a_store_from_a_newer_pullsmith_is_one_sentence(tmp_path):
    path = tmp_path / "s.db"
    Store(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(UserError, match="schema revision 9999, which this pullsmith does not"):
        Store(f"sqlite:///{path}")


def test_a_database_with_only_some_tables_is_one_sentence(tmp_path):
    path = tmp_path / "s.db"
    with sqlite3.connect(path) as db:
        db.execute(LEGACY_DDL[0])
    with pytest.raises(UserError, match=r"only some of pullsmith's tables \(tasks\)"):
        Store(f"sqlite:///{path}")


def test_a_store_that_can_not_be_opened_is_one_sentence(tmp_path):
    with pytest.raises(UserError, match="could not open the store at .*reachable and writable"):
        Store(f"sqlite:///{tmp_path}")  # a directory
    (tmp_path / "junk.db").write_text("not a database, but long enough to be read as one" * 40)
    with pytest.raises(UserError, match="could not open the store"):
        Store(f"sqlite:///{tmp_path / 'junk.db'}")
