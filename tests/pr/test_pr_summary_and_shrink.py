"""Words that match the change, and what the diff shrink left out, in the commit and the PR."""

from __future__ import annotations

from conftest import ScriptedModel, git
from pr_helpers import (  # noqa: F401 (the ledger_repo fixture)
    FALSE_CLAIM,
    FINISH,
    FIXED_REPORT,
    REPORT,
    REPORT_DOC,
    failing_replies,
    ledger_repo_fixture,
    settings_for,
)

from pullsmith.agent.summary import clean_summary, summary_request
from pullsmith.attempt import run_dir_for
from pullsmith.engine import run_task
from pullsmith.events import read_events
from pullsmith.pr.publish import LocalPublisher
from pullsmith.store import Store
from pullsmith.task import Task, TestRun

INSTRUCTION = "The ledger total drops the last amount; fix it."
MODULE_DOC = '"""Totals for ledger rows."""\n'
# A whole-file rewrite that fixes the loop and loses both docstrings on the way.
SLOPPY = FIXED_REPORT.replace(REPORT_DOC, "").replace(MODULE_DOC, "")
REWRITE = f"Rewrite it.\n```bash\ncat > ledger/report.py <<'EOF'\n{SLOPPY}EOF\n```"
WRITTEN = "Count every amount in total()\nThe loop now walks the amounts themselves."


def run(repo, tmp_path, replies, **extra):
    settings = settings_for(tmp_path, **extra)
    model = ScriptedModel(replies)
    task = Task(instruction=INSTRUCTION, repo=str(repo))
    result = run_task(task, settings, model=model, publisher=LocalPublisher(settings))
    with Store.open(settings) as store:
        pr = store.pull_request(result.pull_request)
    events = read_events(run_dir_for(settings, result.task_id) / "events.jsonl")
    return result, model, pr, events


def test_the_summary_is_written_from_the_final_diff(ledger_repo, tmp_path):
    assert SLOPPY != FIXED_REPORT and REPORT_DOC not in SLOPPY
    result, model, pr, events = run(
        ledger_repo, tmp_path, [REWRITE, FINISH, WRITTEN], summary_from_diff=True
    )
    assert result.status == "passed" and result.summary_source == "diff"
    assert result.summary == WRITTEN and result.finish_summary == "total adds every amount"
    # The model saw the final diff (the shrunk one: the docstrings are back) and the tests.
    asked = model.seen[-1]
    assert asked[0]["role"] == "system" and len(asked) == 2
    prompt = asked[1]["content"]
    assert "+    for amount in amounts:" in prompt and "Tests after the change" in prompt
    assert '-    """The sum' not in prompt and "were left out" in prompt
    assert "total adds every amount" not in prompt  # its earlier claim is not in front of it
    (written,) = [e for e in events if e.type == "summary.written"]
    assert written.data["source"] == "diff" and written.data["prompt_tokens"] == 100
    # The commit: the written summary, marked as the model's words, and what was left out.
    message = git("log", "-1", "--format=%B", result.branch, cwd=ledger_repo)
    assert message.startswith("Count every amount in total()\n\nThe loop now walks")
    assert "the model's words, written from the final diff" in message
    assert "Left out (the tests pass without it): ledger/report.py:1 (comment)" in message
    committed = git("show", f"{result.branch}:ledger/report.py", cwd=ledger_repo)
    assert committed == FIXED_REPORT
    # The PR: the summary's origin, and each hunk left out with its diff.
    body = pr.body
    assert "written after it saw the final diff and pullsmith's test results" in body
    assert "> Count every amount in total()" in body
    assert "**Left out by pullsmith:** 2 hunks" in body and "them) were reverted" in body
    assert "`ledger/report.py` line 1: comment" in body and '-    """The sum' in body
    assert result.tests_after.phase == "shrink"


def test_when_asking_again_fails_the_finish_summary_is_used_and_said(ledger_repo, tmp_path):
    fix = f"Fix it.\n```bash\ncat > ledger/report.py <<'EOF'\n{FIXED_REPORT}EOF\n```"
    # The scripted model has no reply left for the summary: the call fails.
    result, model, pr, events = run(ledger_repo, tmp_path, [fix, FINISH], summary_from_diff=True)
    assert result.status == "passed" and result.summary == "total adds every amount"
    assert result.summary_source == "finish"
    (written,) = [e for e in events if e.type == "summary.written"]
    assert written.data["source"] == "finish" and "ran out of replies" in written.data["error"]
    assert "asking it again with the final diff failed" in pr.body
    (shrunk,) = [e for e in events if e.type == "diff.shrunk"]
    assert shrunk.data["status"] == "skipped" and "one hunk" in shrunk.data["reason"]
    assert "pullsmith left the diff as it is: the diff is one hunk" in pr.body


def test_a_change_the_tests_fail_is_not_summarized_again(ledger_repo, tmp_path):
    # The model's last finish is refused and it runs out of finishes: the attempt failed.
    replies = failing_replies()
    result, model, pr, events = run(ledger_repo, tmp_path, replies, summary_from_diff=True)
    assert result.status == "failed" and result.summary == FALSE_CLAIM
    assert len(model.seen) == len(replies)  # no request for a summary was made
    (written,) = [e for e in events if e.type == "summary.written"]
    assert written.data["source"] == "finish" and written.data["error"] is None
    assert written.data["reason"] == "the tests fail after this change"
    assert "not asked again, since the tests fail after this change" in pr.body


def test_with_the_setting_off_the_finish_summary_is_used(ledger_repo, tmp_path):
    fix = f"Fix it.\n```bash\ncat > ledger/report.py <<'EOF'\n{FIXED_REPORT}EOF\n```"
    result, model, pr, events = run(ledger_repo, tmp_path, [fix, FINISH])
    assert result.summary == "total adds every amount" and len(model.seen) == 2
    (written,) = [e for e in events if e.type == "summary.written"]
    assert written.data["source"] == "finish" and written.data["error"] is None
    assert "written when it finished, before pullsmith's last checks" in pr.body
    message = git("log", "-1", "--format=%B", result.branch, cwd=ledger_repo)
    assert "the model's words, from when it finished" in message


def test_a_reply_is_cleaned_to_the_summary():
    assert clean_summary('```bash\nfinish "fixed the loop"\n```') == "fixed the loop"
    assert clean_summary("<think>hmm</think>Summary: **x**") == "**x**"
    assert clean_summary("a\nb\nc\nd\ne\nf") == "a\nb\nc\nd"
    assert clean_summary("   ") == ""
    assert len(clean_summary("y" * 5000)) == 600


def test_the_request_holds_the_diff_and_the_tests():
    before = TestRun("before", "pytest -q", 1, "FAILED t::x\n1 failed", 1.0, False, 3)
    after = TestRun("after", "pytest -q", 0, "....\n2 passed", 1.0, False, 9)
    messages = summary_request("Fix it.", "diff --git a/x b/x\n+new\n" * 1000, before, after)
    user = messages[1]["content"]
    assert "Task: Fix it." in user and "characters cut" in user and len(user) < 8000
    assert "`pytest -q` exit 1 (fail)\n```\nFAILED t::x\n1 failed" in user
    assert "`pytest -q` exit 0 (pass)\n```\n2 passed\n```" in user
    long_task = "Fix the parser. " + "It reads the header wrong. " * 40
    (opening,) = [p for p in summary_request(long_task, "+x")[1]["content"].split("\n\n")[:1]]
    assert opening.startswith("Task: Fix the parser.") and opening.endswith(" …")
    assert len(opening) <= len("Task: ") + 402 and "wrong. It" in opening
    assert REPORT  # the fixture's source is the one the runs above change
