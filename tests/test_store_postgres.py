"""The store behaves the same on SQLite and on PostgreSQL: the tests here run on both, but
for the last two, about what only a server database does.

`store_url` is an empty store of either backend (tests/postgres_fixture.py starts a real
PostgreSQL server for the session and makes a database per test).
"""

from __future__ import annotations

import multiprocessing
from datetime import datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from postgres_fixture import BACKENDS
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from pullsmith import migrations
from pullsmith.errors import UserError
from pullsmith.service.tables import ServiceEvent, ServiceTask
from pullsmith.store import AttemptRecord, PullRequestRecord, Store, TaskRecord, utcnow

# Each test runs on an empty store of each backend.
both = pytest.mark.parametrize("store_url", BACKENDS, indirect=True)


def task_row(task_id: str, repo: str = "/src/app") -> TaskRecord:
    return TaskRecord(id=task_id, instruction=f"fix {task_id}", repo=repo, base_ref="main")


def pr_row(task_id: str, repo: str = "/src/app", **extra: object) -> PullRequestRecord:
    values: dict[str, object] = {
        "task_id": task_id,
        "repo": repo,
        "head": f"pullsmith/{task_id}",
        "base": "main",
        "base_commit": "a" * 40,
        "head_commit": "b" * 40,
        "title": f"fix {task_id}",
    }
    values.update(extra)
    return PullRequestRecord(**values)


def attempt_row(run_id: str, task_id: str, pr_number: int | None, **extra: object) -> AttemptRecord:
    values: dict[str, object] = {
        "run_id": run_id,
        "task_id": task_id,
        "pr_number": pr_number,
        "instruction": "fix it",
        "status": "passed",
        "branch": f"pullsmith/{task_id}",
        "start_commit": "a" * 40,
        "commit": "b" * 40,
    }
    values.update(extra)
    return AttemptRecord(**values)


@both
def test_tasks_attempts_and_pull_requests(store_url):
    with Store(store_url) as store:
        store.add(task_row("t1"), task_row("t2", repo="/src/lib"))
        first, second = pr_row("t1"), pr_row("t2", repo="/src/lib")
        store.add(first)
        store.add(second)
        assert (first.number, second.number) == (1, 2)
        store.add(attempt_row("t1", "t1", 1), attempt_row("t1-follow", "t1", 1, kind="follow-up"))
        store.add(attempt_row("t2", "t2", 2, status="failed", commit=None))
        assert [a.run_id for a in store.attempts(1)] == ["t1", "t1-follow"]
        assert [a.id for a in store.task_attempts("t1")] == [1, 2]
        assert store.attempt("t2").head_commit == "a" * 40  # no commit: where it started
        assert store.task("t2").repo == "/src/lib" and store.task("nope") is None

        assert store.find_pull_request("1").number == 1
        assert store.find_pull_request(" #2 ").number == 2
        assert store.find_pull_request("t1").number == 1
        assert store.find_pull_request("t1-follow").number == 1
        with pytest.raises(UserError, match="there is no pull request #7"):
            store.find_pull_request("7")
        with pytest.raises(UserError, match="no pull request belongs to task 'nope'"):
            store.find_pull_request("nope")

        assert [p.number for p in store.pull_requests()] == [2, 1]
        assert [p.number for p in store.pull_requests(repo="/src/lib")] == [2]
        before = store.pull_request(1).updated_at
        merged = store.update_pull_request(
            1, state="merged", merged_at=utcnow(), merge_commit="c" * 40, merge_method="squash"
        )
        assert merged.state == "merged" and merged.updated_at >= before
        with pytest.raises(AttributeError):
            store.update_pull_request(2, no_such_column=1)
        with pytest.raises(UserError, match="there is no pull request #9"):
            store.update_pull_request(9, state="closed")
        assert [p.number for p in store.pull_requests(states=("open",))] == [2]
        assert [p.number for p in store.pull_requests(states=("open", "merged"))] == [2, 1]
        assert store.count_pull_requests() == {"merged": 1, "open": 1}
        assert store.count_pull_requests(repo="/src/lib") == {"open": 1}
        assert store.count_pull_requests(repo="/nowhere") == {}
        third = pr_row("t1", head="pullsmith/t1-again")
        store.add(third)
        assert third.number == 3 and store.pull_request_for_task("t1-follow").number == 3
    with Store(store_url) as store:  # opened again: everything is still there
        assert store.pull_request(1).merge_method == "squash"
        assert [p.number for p in store.pull_requests()] == [3, 2, 1]


@both
def test_values_come_back_as_they_went_in(store_url):
    """JSON, datetimes to the microsecond, floats, big counts and text beyond ASCII."""
    evidence = {
        "command": "pytest -q",
        "exit_code": 1,
        "seconds": 0.125,
        "timed_out": False,
        "excerpt": 'Ünïcödé ✓ — 日本語\n\ttab \\ backslash "quotes" \x00 nul \x1b[31mred',
        "nested": {"list": [1, 2.5, None, True, "x"], "empty": {}},
    }
    created = datetime(2026, 12, 1, 10, 11, 12, 345678)
    long_text = "line of output\n" * 20_000
    with Store(store_url) as store:
        store.add(TaskRecord(id="t1", instruction="Ünïcödé", repo="/src/äpp", created_at=created))
        store.add(pr_row("t1", body=long_text, created_at=created, updated_at=created))
        store.add(
            attempt_row(
                "t1",
                "t1",
                1,
                tests_before=evidence,
                tests_after=None,
                checks=[evidence, {"event": "after"}],
                notes={"limits": ["turns"], "count": 3},
                prompt_tokens=2_000_000_000,
                wall_seconds=1234.5678901234,
                created_at=created,
                summary="résumé",
            )
        )
    with Store(store_url) as store:
        task = store.task("t1")
        assert (task.instruction, task.repo, task.created_at) == ("Ünïcödé", "/src/äpp", created)
        assert task.base_ref is None
        pr = store.pull_request(1)
        assert pr.body == long_text and pr.created_at == created and pr.merged_at is None
        (attempt,) = store.attempts(1)
        assert attempt.tests_before == evidence and attempt.tests_after is None
        assert attempt.checks == [evidence, {"event": "after"}]
        assert attempt.notes == {"limits": ["turns"], "count": 3}
        assert attempt.agent_tests == [] and attempt.turns == 0  # the defaults
        assert attempt.prompt_tokens == 2_000_000_000
        assert attempt.wall_seconds == 1234.5678901234
        assert attempt.created_at == created and attempt.summary == "résumé"
        # Written again by id (a retried recording): an update, not a second row.
        again = attempt_row(
            "t1", "t1", 1, status="failed", notes={"retried": True}, tests_before=None
        )
        again.id = attempt.id
        store.add(again)
        (attempt,) = store.task_attempts("t1")
        assert (attempt.status, attempt.notes, attempt.tests_before) == (
            "failed",
            {"retried": True},
            None,
        )
        later = created + timedelta(days=400)
        store.update_pull_request(1, published_at=later, remote_number=12345)
        assert store.pull_request(1).published_at == later


@both
def test_numbers_are_never_reused(store_url):
    with Store(store_url) as store:
        store.add(task_row("t1"))
        rows = [pr_row("t1"), pr_row("t1")]
        store.add(*rows)
        assert [row.number for row in rows] == [1, 2]
        with store.session() as session:
            session.delete(session.get(PullRequestRecord, 2))
        again = pr_row("t1")
        store.add(again)
        assert again.number == 3
        store.add(attempt_row("r1", "t1", 1))
        with store.session() as session:
            session.delete(session.get(AttemptRecord, 1))
        later = attempt_row("r2", "t1", 1)
        store.add(later)
        assert later.id == 2


@both
def test_keys_and_constraints_hold(store_url):
    with Store(store_url) as store:
        store.add(task_row("t1"))
        with pytest.raises(IntegrityError):  # no such task
            store.add(pr_row("ghost"))
        store.add(attempt_row("r1", "t1", None))
        with pytest.raises(IntegrityError):  # run ids are unique
            with store.session() as session:
                session.add(attempt_row("r1", "t1", None))
        with pytest.raises(IntegrityError):  # a task id is taken once
            with store.session() as session:
                session.add(task_row("t1"))
        assert [a.run_id for a in store.task_attempts("t1")] == ["r1"]


@both
def test_the_service_tables(store_url):
    """What the service's queue relies on: JSON and booleans, the composite key of events
    (a repeat is an IntegrityError), conditional updates, and events going with their task."""
    from sqlalchemy import delete, func, select, update

    with Store(store_url) as store:
        store.add(
            ServiceTask(
                id="s1",
                repo="/src/app",
                instruction="fix it",
                until_pass=True,
                model_options={"model": "replay:/x", "edit_forms": ["patch", "whole"]},
                state="queued",
                created_at=utcnow(),
            )
        )
        data = {"command": "cat bin", "output": "\x00\x01 bytes ✓", "n": 1.5}
        with store.session() as session:
            session.add(ServiceEvent(task_id="s1", id=1, type="queued", ts=1.25, data={}))
            session.add(
                ServiceEvent(task_id="s1", id=2, type="command.finished", ts=2.5, data=data)
            )
        with pytest.raises(IntegrityError):
            with store.session() as session:
                session.add(ServiceEvent(task_id="s1", id=2, type="again", ts=3.0, data={}))
        with store.session() as session:
            moved = session.execute(
                update(ServiceTask)
                .where(ServiceTask.id == "s1", ServiceTask.state == "queued")
                .values(state="running", tries=ServiceTask.tries + 1)
            )
            assert moved.rowcount == 1
            stale = session.execute(
                update(ServiceTask)
                .where(ServiceTask.id == "s1", ServiceTask.state == "queued")
                .values(state="cancelled")
            )
            assert stale.rowcount == 0
        with store.session() as session:
            row = session.get(ServiceTask, "s1")
            assert (row.state, row.tries, row.until_pass) == ("running", 1, True)
            assert row.model_options["edit_forms"] == ["patch", "whole"] and row.result is None
            events = session.scalars(select(ServiceEvent).order_by(ServiceEvent.id)).all()
            assert [(e.id, e.type, e.ts) for e in events] == [
                (1, "queued", 1.25),
                (2, "command.finished", 2.5),
            ]
            assert events[1].data == data
        with store.session() as session:
            session.execute(delete(ServiceTask).where(ServiceTask.id == "s1"))
        with store.session() as session:
            assert session.scalar(select(func.count()).select_from(ServiceEvent)) == 0


@both
def test_the_migrated_schema_is_the_models(store_url):
    with Store(store_url) as store:
        with store.engine.connect() as connection:
            assert migrations.current_revision(connection) == migrations.HEAD
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, migrations.metadata()) == []


WRITERS = 2
ROWS_EACH = 15


@both
def test_two_processes_write_at_once(store_url):
    """Two processes add tasks, PRs and attempts and update PRs at the same moment: every
    row lands, and no PR number or attempt id is handed out twice."""
    Store(store_url).close()  # migrated here: the writers race on rows, not on the schema
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(WRITERS)
    writers = [
        spawn.Process(target=_write_rows, args=(store_url, f"w{n}", barrier))
        for n in range(WRITERS)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert [writer.exitcode for writer in writers] == [0] * WRITERS
    with Store(store_url) as store:
        prs = store.pull_requests()
        assert sorted(p.number for p in prs) == list(range(1, WRITERS * ROWS_EACH + 1))
        for pr in prs:
            (attempt,) = store.attempts(pr.number)
            assert attempt.task_id == pr.task_id and attempt.run_id == pr.task_id
            assert pr.state == ("merged" if int(pr.task_id.split("-")[1]) % 2 else "open")
        total = WRITERS * ROWS_EACH
        assert sum(store.count_pull_requests().values()) == total
        assert sorted(a.id for p in prs for a in store.attempts(p.number)) == list(
            range(1, total + 1)
        )


def _write_rows(url: str, prefix: str, barrier: object) -> None:
    with Store(url) as store:
        barrier.wait(timeout=60)  # type: ignore[attr-defined]
        for n in range(ROWS_EACH):
            task_id = f"{prefix}-{n}"
            store.add(task_row(task_id))
            pr = pr_row(task_id)
            store.add(pr)
            store.add(attempt_row(task_id, task_id, pr.number))
            if n % 2:
                store.update_pull_request(pr.number, state="merged", merged_at=utcnow())


@both
def test_nul_characters_are_kept_or_replaced(store_url):
    """PostgreSQL's text can't hold NUL: the store writes U+FFFD there (as for bytes that are
    not UTF-8) instead of failing the write; SQLite keeps it. In JSON both keep it."""
    from sqlalchemy import update

    output = "FAILED test_dump - b'\\x00' != actual\x00bytes"
    with Store(store_url) as store:
        store.add(TaskRecord(id="t1", instruction="fix\x00it", repo="/r", base_ref="main"))
        store.add(pr_row("t1", body=output))
        store.add(attempt_row("t1", "t1", 1, summary=output, tests_after={"excerpt": output}))
        store.update_pull_request(1, title="a\x00b")
        with store.session() as session:  # a Core UPDATE, as the service's queue writes
            session.execute(
                update(PullRequestRecord).where(PullRequestRecord.number == 1).values(body=output)
            )
        kept = "\x00" if store.engine.dialect.name == "sqlite" else "\ufffd"
        assert store.task("t1").instruction == f"fix{kept}it"
        pr = store.pull_request(1)
        assert (pr.title, pr.body) == (f"a{kept}b", output.replace("\x00", kept))
        (attempt,) = store.attempts(1)
        assert attempt.summary == output.replace("\x00", kept)
        assert attempt.tests_after == {"excerpt": output}


@both
def test_user_text_of_any_length_is_stored_and_read_back(store_url):
    """A base ref, a branch and a model name are the user's to choose (migration 0004 made
    their columns TEXT): 1,000 characters each go in and come back whole on both backends."""
    base = "release/" + "b" * 992
    branch = "feature/" + "h" * 992
    model = "openai/" + "m" * 993
    assert len(base) == len(branch) == len(model) == 1000
    with Store(store_url) as store:
        store.add(TaskRecord(id="t1", instruction="fix it", repo="/src/app", base_ref=base))
        store.add(pr_row("t1", head=branch, base=base))
        store.add(attempt_row("t1", "t1", 1, branch=branch, model=model))
        with store.session() as session:
            session.add(
                ServiceTask(
                    id="s1",
                    repo="/src/app",
                    base=base,
                    instruction="fix it",
                    model_options={"model": model},
                    state="queued",
                )
            )
    with Store(store_url) as store:  # read back through a new engine, from the database
        assert store.task("t1").base_ref == base
        pr = store.pull_request(1)
        assert (pr.head, pr.base) == (branch, base)
        (attempt,) = store.attempts(1)
        assert (attempt.branch, attempt.model) == (branch, model)
        with store.session() as session:
            assert session.get(ServiceTask, "s1").base == base


@both
def test_a_value_the_database_can_not_hold_is_one_sentence(store_url):
    """PostgreSQL checks VARCHAR sizes (SQLite does not): an over-long value is a UserError
    that names the store and the reason, and the store is usable after it."""
    with Store(store_url) as store:
        store.add(task_row("t1"))
        long_repo = "owner/" + "x" * 300  # remote_repo stays VARCHAR(255): GitHub's are shorter
        if store.engine.dialect.name == "sqlite":
            store.add(pr_row("t1", remote_repo=long_repo))
            assert store.pull_request(1).remote_repo == long_repo
            return
        with pytest.raises(
            UserError, match=r"refused .*value too long for type character varying\(255\)"
        ):
            store.add(pr_row("t1", remote_repo=long_repo))
        store.add(pr_row("t1"))
        assert [p.remote_repo for p in store.pull_requests()] == [None]


def test_connections_the_server_dropped_are_replaced(postgres_url):
    """A long-lived process (the service) keeps pooled connections; when the server ends
    them (a restart, an idle timeout), the next use connects again instead of failing."""
    with Store(postgres_url) as store:
        store.add(task_row("t1"))
        assert store.task("t1") is not None
        admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            ended = connection.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar()
        admin.dispose()
        assert ended >= 1
        store.add(task_row("t2"))
        assert store.task("t2") is not None and store.pull_requests() == []


def test_a_url_without_a_driver_uses_psycopg(postgres_url):
    """postgresql:// alone would be psycopg2 to SQLAlchemy, and postgres:// (as hosts hand
    them out) nothing at all: both mean psycopg, the driver pullsmith[postgres] installs."""
    rest = postgres_url.split("://", 1)[1]
    for scheme in ("postgresql", "postgres"):
        with Store(f"{scheme}://{rest}") as store:
            assert store.engine.dialect.driver == "psycopg"
            store.add(task_row(f"t-{scheme}"))
    with Store(postgres_url) as store:
        assert store.task("t-postgresql") and store.task("t-postgres")
