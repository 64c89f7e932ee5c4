"""Local pull requests from real runs (scripted model, real sandbox), through the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from conftest import git
from pr_helpers import (
    FALSE_CLAIM,
    assert_refused,
    failing_replies,
    good_replies,
    idle_replies,
    ledger_repo_fixture,  # noqa: F401 (the ledger_repo fixture)
    pullsmith,
    run_and_record,
    settings_for,
)

from pullsmith.store import Store


def test_a_run_opens_a_pr_that_list_and_show_present(ledger_repo, tmp_path):
    result, pr = run_and_record(ledger_repo, tmp_path, good_replies(ledger_repo))
    assert result.status == "passed" and pr is not None
    assert (pr.number, pr.state, pr.checks) == (1, "open", "passing")
    assert (pr.head, pr.base, pr.base_commit) == (result.branch, "main", result.base_commit)

    listed = pullsmith("pr", "list", cwd=ledger_repo, subprocess_=True)
    assert listed.returncode == 0, listed.stderr
    assert "The ledger total drops the last amount" in listed.stdout
    assert "passing" in listed.stdout and "open" in listed.stdout

    shown = pullsmith("pr", "show", "1", cwd=ledger_repo)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "#1 The ledger total drops the last amount; fix it." in out
    assert "Tests pass." in out and "total adds every amount" in out
    assert f"run `{result.task_id}`, event #{result.tests_after.event_id}" in out
    assert "ledger/report.py" in out
    # The Changes table names the function the diff changes, read from the code.
    assert (
        "| `ledger/report.py` | `total` | 2 | 2 |" in pullsmith("pr", "show", "1", "--raw").stdout
    )
    # On a terminal the Markdown is rendered (and GitHub's alert markers dropped).
    rendered = pullsmith("pr", "show", "1", env={"FORCE_COLOR": "1", "COLUMNS": "300"}).stdout
    assert "Tests pass." in rendered and "[!NOTE]" not in rendered
    assert "**Tests pass.**" not in rendered

    raw = pullsmith("pr", "show", result.task_id, "--raw").stdout
    assert raw.startswith("> [!NOTE]\n> **Tests pass.**")
    # Every cited event is in the run log, with the exit code the description states.
    log = [json.loads(line) for line in open(f"{result.run_dir}/events.jsonl")]
    after = next(e for e in log if e["id"] == result.tests_after.event_id)
    assert after["type"] == "tests.ran" and after["data"]["exit_code"] == 0
    assert f"event #{after['id']}): `python -m pytest -q` → exit 0 (pass)" in raw
    agent_run = next(
        e for e in log if e["type"] == "command.finished" and "pytest" in e["data"]["command"]
    )
    assert f"| #{agent_run['id']} | 2 | `python -m pytest -q` | 0 |" in raw

    data = json.loads(pullsmith("pr", "show", "1", "--json").stdout)
    assert data["number"] == 1 and data["runs"] == [result.task_id]
    events = [e["type"] for e in log]
    assert "pr.opened" in events


def test_failing_tests_make_a_failing_pr_whatever_the_model_says(ledger_repo, tmp_path):
    result, pr = run_and_record(ledger_repo, tmp_path, failing_replies())
    assert result.status == "failed" and result.commit
    assert result.summary == FALSE_CLAIM
    assert pr.checks == "failing"
    raw = pullsmith("pr", "show", str(pr.number), "--raw").stdout
    assert raw.startswith("> [!CAUTION]\n> **Tests fail.**")
    assert (
        f"`python -m pytest -q` exited with code {result.tests_after.exit_code} "
        f"(run `{result.task_id}`, event #{result.tests_after.event_id})"
    ) in raw
    assert "FAILED tests/test_report.py::test_total_counts_every_amount" in raw
    assert "**Left undone:** the tests still fail" in raw
    assert "the model said it was done while the tests failed, 2 times" in raw
    # The claim is there, but as the model's words.
    summary = raw.split("## Summary", 1)[1].split("## Changes", 1)[0]
    assert "In the model's own words" in summary and f"> {FALSE_CLAIM}" in summary
    listed = pullsmith("pr", "list", cwd=ledger_repo).stdout
    assert "failing" in listed


def test_a_run_without_changes_opens_no_pr(ledger_repo, tmp_path):
    result, pr = run_and_record(ledger_repo, tmp_path, idle_replies())
    assert result.commit is None and pr is None
    with Store.open(settings_for(tmp_path)) as store:
        assert store.attempt(result.task_id).status == "failed"
        assert store.pull_requests() == []
    listed = pullsmith("pr", "list", cwd=ledger_repo)
    assert listed.returncode == 0 and "no open pull requests" in listed.stdout


def test_diff_close_reopen_and_their_refusals(ledger_repo, tmp_path):
    result, pr = run_and_record(ledger_repo, tmp_path, good_replies(ledger_repo))
    diff = pullsmith("pr", "diff", "1")
    assert diff.returncode == 0
    assert diff.stdout == git("diff", result.base_commit, result.branch, cwd=ledger_repo)
    assert "+    for amount in amounts:" in diff.stdout
    assert "ledger/report.py | 4 ++--" in pullsmith("pr", "diff", "1", "--stat").stdout

    closed = pullsmith("pr", "close", "1")
    assert closed.returncode == 0 and "closed pull request #1" in closed.stdout
    assert "no open pull requests" in pullsmith("pr", "list", cwd=ledger_repo).stdout
    assert "closed" in pullsmith("pr", "list", "--state", "all", cwd=ledger_repo).stdout
    assert_refused(pullsmith("pr", "close", "1"), "pull request #1 is already closed")
    assert_refused(pullsmith("pr", "merge", "1"), "pull request #1 is closed; reopen it")
    reopened = pullsmith("pr", "reopen", "1")
    assert reopened.returncode == 0 and "reopened pull request #1" in reopened.stdout
    assert_refused(pullsmith("pr", "reopen", "1"), "pull request #1 is already open")

    assert_refused(pullsmith("pr", "show", "9"), "there is no pull request #9")
    assert_refused(pullsmith("pr", "diff", "no-such-task"), "no pull request belongs to task")

    # A deleted branch: reopening is refused, the stored description still shows.
    pullsmith("pr", "close", "1")
    git("branch", "-D", result.branch, cwd=ledger_repo)
    assert_refused(pullsmith("pr", "reopen", "1"), "no longer exists")
    assert "Tests pass." in pullsmith("pr", "show", "1").stdout


def test_list_is_scoped_to_the_current_repository(ledger_repo, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(ledger_repo, other)
    run_and_record(ledger_repo, tmp_path, good_replies(ledger_repo))
    run_and_record(other, tmp_path, good_replies(other), instruction="Fix the other copy.")
    here = pullsmith("pr", "list", cwd=ledger_repo).stdout
    assert "The ledger total" in here and "Fix the other copy" not in here
    there = pullsmith("pr", "list", "--repo", str(other)).stdout
    assert "Fix the other copy" in there and "The ledger total" not in there
    everywhere = pullsmith("pr", "list", "--all-repos", cwd=tmp_path).stdout
    assert "Fix the other copy" in everywhere and "The ledger total" in everywhere
    rows = json.loads(pullsmith("pr", "list", "--json", "--all-repos").stdout)
    assert [row["number"] for row in rows] == [2, 1]


def test_patch_applies_with_git_am_elsewhere(ledger_repo, tmp_path):
    result, pr = run_and_record(ledger_repo, tmp_path, good_replies(ledger_repo))
    with open(tmp_path / "x.patch", "wb") as out:  # pullsmith pr patch N > x.patch
        proc = subprocess.run(
            [sys.executable, "-c", "from pullsmith.cli import main; main()", "pr", "patch", "1"],
            stdout=out,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    patch = (tmp_path / "x.patch").read_text()
    assert patch.startswith("From ") and "Subject: [PATCH] total adds every amount" in patch

    elsewhere = tmp_path / "elsewhere"
    git("clone", "-q", str(ledger_repo), str(elsewhere), cwd=tmp_path)
    git("checkout", "-q", result.base_commit, cwd=elsewhere)
    git("am", "-q", str(tmp_path / "x.patch"), cwd=elsewhere)
    assert git("rev-parse", "HEAD^{tree}", cwd=elsewhere) == git(
        "rev-parse", f"{result.branch}^{{tree}}", cwd=ledger_repo
    )
    assert "Co-authored-by: pullsmith" in git("log", "-1", "--format=%B", cwd=elsewhere)


def test_recording_a_run_again_changes_nothing_twice(ledger_repo, tmp_path):
    from pullsmith.pr.local import record_run
    from pullsmith.task import Task

    result, pr = run_and_record(ledger_repo, tmp_path, good_replies(ledger_repo))
    task = Task(instruction=result.instruction, repo=str(ledger_repo), task_id=result.task_id)
    with Store.open(settings_for(tmp_path)) as store:
        again = record_run(store, task, result)
        assert again.pull_request.number == pr.number and not again.opened
        assert len(store.attempts(pr.number)) == 1
        assert len(store.pull_requests()) == 1
