"""Follow-ups: more commits on a PR's branch, the earlier work compacted for the model."""

from __future__ import annotations

import pytest
from conftest import ScriptedModel, git
from pr_helpers import (
    EMPTY_TEST,
    FINISH_EMPTY,
    RUN_TESTS,
    assert_refused,
    failing_replies,
    fix_reply,
    follow_up_and_record,
    good_replies,
    ledger_repo_fixture,  # noqa: F401 (the ledger_repo fixture)
    pullsmith,
    run_and_record,
    settings_for,
)

from pullsmith.engine import run_task
from pullsmith.errors import UserError
from pullsmith.models.openai_compat import ModelError
from pullsmith.pr.followup import prepare_follow_up
from pullsmith.store import Store


def test_a_follow_up_adds_commits_and_updates_the_pr(ledger_repo, tmp_path):
    first, pr = run_and_record(ledger_repo, tmp_path, good_replies(ledger_repo))
    second, updated, model = follow_up_and_record(
        tmp_path, "1", "also handle empty input", [EMPTY_TEST, RUN_TESTS, FINISH_EMPTY]
    )
    assert second.status == "passed" and second.commit
    assert second.branch == first.branch and second.task_id != first.task_id
    # The new commit sits on top of the earlier one, on the same branch.
    assert git("rev-parse", f"{second.commit}^", cwd=ledger_repo).strip() == first.commit
    assert git("rev-parse", first.branch, cwd=ledger_repo).strip() == second.commit
    assert git("show", "--name-only", "--format=", second.commit, cwd=ledger_repo).split() == [
        "tests/test_empty.py"
    ]
    # The model was told what came before: task, summary, diff and last test result.
    first_message = model.seen[0][1]["content"]
    assert first_message.startswith("Task: also handle empty input")
    assert "The original task: The ledger total drops the last amount; fix it." in first_message
    assert "total adds every amount" in first_message
    assert "+    for amount in amounts:" in first_message
    assert "exited with code 0" in first_message and "2 passed" in first_message
    # The worktree made for the follow-up is gone again; the branch holds the work.
    assert second.worktree == ""
    assert len(git("worktree", "list", cwd=ledger_repo).splitlines()) == 1

    assert updated.number == pr.number and updated.head_commit == second.commit
    assert updated.checks == "passing"
    body = pullsmith("pr", "show", "1", "--raw").stdout
    assert "1. also handle empty input (run `" + second.task_id + "`)" in body
    assert body.index("### Run 2 of 2 — follow-up") < body.index("### Run 1 of 2 — first run")
    assert f"run `{second.task_id}`, event #{second.tests_after.event_id}" in body
    assert f"run `{first.task_id}`, event #{first.tests_after.event_id}" in body
    assert "tests/test_empty.py" in body and "| **2 files** |" in body
    with Store.open(settings_for(tmp_path)) as store:
        assert [a.run_id for a in store.attempts(1)] == [first.task_id, second.task_id]


def test_a_follow_up_can_turn_a_failing_pr_into_a_passing_one(ledger_repo, tmp_path):
    first, pr = run_and_record(ledger_repo, tmp_path, failing_replies())
    assert pr.checks == "failing"
    fix = fix_reply(ledger_repo)
    _, updated, _ = follow_up_and_record(
        tmp_path,
        first.task_id,
        "the test still fails; fix the loop",
        [fix, RUN_TESTS, FINISH_EMPTY],
    )
    assert updated.checks == "passing"
    body = updated.body
    assert body.startswith("> [!NOTE]\n> **Tests pass.**")
    newest, older = body.index("### Run 2 of 2"), body.index("### Run 1 of 2")
    assert newest < older
    assert "exit 1 (fail)" in body[older:]


def test_a_kept_worktree_is_reused_and_kept(ledger_repo, tmp_path):
    from pullsmith.pr.local import record_run
    from pullsmith.task import Task

    settings = settings_for(tmp_path)
    task = Task(instruction="fix the export", repo=str(ledger_repo), keep_worktree=True)
    result = run_task(task, settings, model=ScriptedModel(good_replies(ledger_repo)))
    with Store.open(settings) as store:
        record_run(store, task, result)
    assert result.worktree
    with Store.open(settings) as store:
        prepared = prepare_follow_up(store, settings, "1", "more")
    assert prepared.task.follow_up.worktree == result.worktree
    assert not prepared.recreated_worktree and prepared.task.keep_worktree


def test_follow_ups_that_can_not_be_done_are_refused(ledger_repo, tmp_path):
    first, pr = run_and_record(ledger_repo, tmp_path, good_replies(ledger_repo))
    settings = settings_for(tmp_path)

    def prepare(ref="1"):
        with Store.open(settings) as store:
            return prepare_follow_up(store, settings, ref, "more")

    with pytest.raises(UserError, match="there is no pull request #5"):
        prepare("5")
    # The branch checked out in the user's own tree: never touched, so refused.
    git("switch", "-q", first.branch, cwd=ledger_repo)
    with pytest.raises(UserError, match=f"is checked out in {ledger_repo}"):
        prepare()
    git("switch", "-q", "main", cwd=ledger_repo)
    assert_refused(
        pullsmith("exec", "--continue", "1", "--base", "main", "x"),
        "--base can not be used with --continue",
    )
    pullsmith("pr", "close", "1")
    with pytest.raises(UserError, match="is closed; reopen it"):
        prepare()
    assert_refused(pullsmith("exec", "--continue", "1", "more"), "is closed; reopen it")
    pullsmith("pr", "reopen", "1")
    assert pullsmith("pr", "merge", "1").returncode == 0
    with pytest.raises(UserError, match="already merged; start a new task"):
        prepare()
    assert_refused(
        pullsmith("exec", "--continue", "99", "more", subprocess_=True),
        "there is no pull request #99",
    )


def test_a_dirty_kept_worktree_is_refused(ledger_repo, tmp_path):
    run_and_record(ledger_repo, tmp_path, good_replies(ledger_repo))
    settings = settings_for(tmp_path)
    with Store.open(settings) as store:
        prepared = prepare_follow_up(store, settings, "1", "more")
    worktree = prepared.task.follow_up.worktree
    with open(f"{worktree}/ledger/report.py", "a") as handle:
        handle.write("# by hand\n")
    with Store.open(settings) as store, pytest.raises(UserError, match="has uncommitted changes"):
        prepare_follow_up(store, settings, "1", "more")


def test_a_follow_up_that_fails_at_once_keeps_the_branch(ledger_repo, tmp_path):
    first, pr = run_and_record(ledger_repo, tmp_path, good_replies(ledger_repo))

    class DeadModel(ScriptedModel):
        def complete(self, messages, temperature=None, **kw):
            raise ModelError("the model server could not be reached; start it and retry.")

    settings = settings_for(tmp_path)
    with Store.open(settings) as store:
        prepared = prepare_follow_up(store, settings, "1", "more")
    task = prepared.task
    result = run_task(task, settings, model=DeadModel([]))
    assert result.status == "error" and "could not be reached" in result.error
    assert git("rev-parse", first.branch, cwd=ledger_repo).strip() == first.commit
    assert len(git("worktree", "list", cwd=ledger_repo).splitlines()) == 1
    with Store.open(settings) as store:
        assert store.pull_request(1).state == "open"
