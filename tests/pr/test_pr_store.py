"""The store: tasks, attempts and pull requests in a SQLite file in the data directory."""

from __future__ import annotations

import pytest

from pullsmith.config import load_settings
from pullsmith.errors import UserError
from pullsmith.store import (
    AttemptRecord,
    PullRequestRecord,
    Store,
    TaskRecord,
    database_url,
)


def pr_row(task_id: str, repo: str = "/src/app", **extra) -> PullRequestRecord:
    values = {
        "task_id": task_id,
        "repo": repo,
        "head": f"pullsmith/{task_id}",
        "base": "main",
        "base_commit": "a" * 40,
        "head_commit": "b" * 40,
        "title": "fix it",
    }
    values.update(extra)
    return PullRequestRecord(**values)


def attempt_row(run_id: str, task_id: str, pr_number: int | None) -> AttemptRecord:
    return AttemptRecord(
        run_id=run_id,
        task_id=task_id,
        pr_number=pr_number,
        instruction="fix it",
        status="passed",
        branch=f"pullsmith/{task_id}",
        start_commit="a" * 40,
        commit="b" * 40,
    )


def test_the_default_store_is_a_file_in_the_data_directory(isolated_home, monkeypatch):
    monkeypatch.delenv("PULLSMITH_DATABASE_URL", raising=False)
    monkeypatch.delenv("PULLSMITH_DATA_DIR", raising=False)
    settings = load_settings()
    assert database_url(settings) == f"sqlite:///{settings.data_dir / 'pullsmith.db'}"
    with Store.open(settings) as store:
        store.add(TaskRecord(id="t1", instruction="x", repo="/r", base_ref="main"))
    assert (settings.data_dir / "pullsmith.db").is_file()
    with Store.open(settings) as store:  # a second process sees it
        assert store.task("t1").instruction == "x"


def test_a_database_url_from_the_environment_wins(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("PULLSMITH_DATABASE_URL", url)
    assert database_url(load_settings()) == url


def test_pull_requests_attempts_and_states(tmp_path):
    with Store(f"sqlite:///{tmp_path / 's.db'}") as store:
        store.add(TaskRecord(id="t1", instruction="fix it", repo="/src/app", base_ref="main"))
        store.add(TaskRecord(id="t2", instruction="other", repo="/src/lib", base_ref="main"))
        first, second = pr_row("t1"), pr_row("t2", repo="/src/lib")
        store.add(first)
        store.add(second)
        assert (first.number, second.number) == (1, 2)
        store.add(attempt_row("t1", "t1", 1), attempt_row("t1-follow", "t1", 1))
        assert [a.run_id for a in store.attempts(1)] == ["t1", "t1-follow"]
        # Found by number, by task id and by any run's id.
        assert store.find_pull_request("1").number == 1
        assert store.find_pull_request("#2").number == 2
        assert store.find_pull_request("t1").number == 1
        assert store.find_pull_request("t1-follow").number == 1
        assert [p.number for p in store.pull_requests()] == [2, 1]
        assert [p.number for p in store.pull_requests(repo="/src/lib")] == [2]
        store.update_pull_request(1, state="merged")
        assert [p.number for p in store.pull_requests(states=("open",))] == [2]
        assert store.count_pull_requests() == {"merged": 1, "open": 1}


def test_numbers_are_never_reused(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    with Store(url) as store:
        store.add(TaskRecord(id="t1", instruction="x", repo="/r", base_ref="main"))
        row = pr_row("t1")
        store.add(row)
        with store.session() as session:
            session.delete(session.get(PullRequestRecord, row.number))
        again = pr_row("t1")
        store.add(again)
        assert again.number == row.number + 1


def test_unknown_pull_requests_are_one_sentence(tmp_path):
    with Store(f"sqlite:///{tmp_path / 's.db'}") as store:
        with pytest.raises(UserError, match="there is no pull request #7"):
            store.find_pull_request("7")
        with pytest.raises(UserError, match="no pull request belongs to task 'nope'"):
            store.find_pull_request("nope")


def test_bad_database_urls_are_one_sentence(tmp_path):
    with pytest.raises(UserError, match="not one SQLAlchemy understands"):
        Store("nosuchdb://x/y")
    with pytest.raises(UserError, match="database driver .* is not installed|not one SQLAlchemy"):
        Store("postgresql+nosuchdriver://u:secret@127.0.0.1/db")
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError) as caught:
        Store(f"sqlite:///{tmp_path / 'file' / 'x.db'}")
    assert "secret" not in str(caught.value)
