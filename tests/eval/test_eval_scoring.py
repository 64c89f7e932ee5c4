"""Scoring: hidden tests are restored over the agent's result, so editing them changes nothing."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import bwrap_works, git
from eval_helpers import (
    FINISH,
    FIX_PLANS,
    FIXED_ADD,
    FIXED_MUL,
    PlanModel,
    heredoc,
    make_mini_suite,
    write,
)

from pullsmith.config import load_settings
from pullsmith.engine import Engine
from pullsmith.eval.harness import EvalOptions, run_one
from pullsmith.eval.scoring import check_suite, score_tree
from pullsmith.eval.snapshot import copy_tree, materialize
from pullsmith.eval.tasks import Change, load_suite
from pullsmith.events import read_events
from pullsmith.executors import ThreadExecutor

SANDBOX = "bwrap" if bwrap_works() else "none"
PASSING_FAKE = "print('all good')\n"


@pytest.fixture
def settings(tmp_path):
    return load_settings({"sandbox": SANDBOX}, cwd=tmp_path)


@pytest.fixture
def mini(tmp_path):
    return load_suite(make_mini_suite(tmp_path))


def run(task, settings, tmp_path, replies):
    opts = EvalOptions(out=tmp_path / "out")
    engine = Engine(settings, ThreadExecutor(1, model=PlanModel({"": replies})))
    try:
        return run_one(task, settings, opts, opts.out, engine)
    finally:
        engine.close()


def test_fixing_the_code_resolves(mini, settings, tmp_path):
    record = run(mini.tasks[0], settings, tmp_path, FIX_PLANS["calc.py"])
    assert record.resolved and record.status == "passed" and record.exit_reason == "finished"
    assert record.turns == 2 and record.prompt_tokens == 200 and record.completion_tokens == 40
    assert "+    return a + b" in record.diff
    assert record.score["tests"][0]["kind"] == "fail_to_pass"
    assert "hidden ok" in record.score["tests"][0]["output"]
    assert record.run_log.endswith("events.jsonl")
    # The run log outlives the task's scratch repository; the task's test command was used.
    events = read_events(Path(record.run_log))
    assert {e.data["command"] for e in events if e.type == "tests.ran"} == {"python test_calc.py"}
    assert not (tmp_path / "out" / "work" / "add").exists()


def test_faking_the_hidden_tests_does_not_resolve(mini, settings, tmp_path):
    # The agent writes a hidden-test file that passes and guts the visible test, but leaves
    # the bug: the restored hidden tests still fail.
    cheat = [
        heredoc("hidden_test_calc.py", PASSING_FAKE),
        heredoc("test_calc.py", "print('fine')\n"),
        FINISH,
    ]
    # Without the diff shrink, which would leave out the fake (the visible tests pass without it).
    no_shrink = replace(settings, shrink_diff=False)
    record = run(mini.tasks[0], no_shrink, tmp_path, cheat)
    assert "hidden_test_calc.py" in record.diff  # the fake is in the agent's branch ...
    assert not record.resolved  # ... and changes nothing
    assert record.score["tests"][0]["exit_code"] != 0
    assert "AssertionError" in record.score["tests"][0]["output"]


def test_breaking_the_hidden_tests_does_not_unresolve(mini, settings, tmp_path):
    fix_and_break = [
        heredoc("calc.py", FIXED_ADD),
        heredoc("hidden_test_calc.py", "raise SystemExit(3)\n"),
        FINISH,
    ]
    record = run(mini.tasks[0], settings, tmp_path, fix_and_break)
    assert record.resolved


def test_pass_to_pass_must_keep_passing(mini, settings, tmp_path):
    mul = mini.tasks[1]
    # Fixed code, but the visible test (a pass-to-pass command) is broken by the agent.
    replies = [
        heredoc("mathx.py", FIXED_MUL),
        heredoc("test_mathx.py", "raise SystemExit(1)\n"),
        FINISH,
    ]
    record = run(mul, settings, tmp_path, replies)
    kinds = {t["kind"]: t["exit_code"] for t in record.score["tests"]}
    assert kinds["fail_to_pass"] == 0 and kinds["pass_to_pass"] != 0
    assert not record.resolved


def test_hidden_test_patch_applies_to_base_versions(tmp_path, settings):
    origin = tmp_path / "origin"
    write(origin / "calc.py", "def add(a, b):\n    return a - b\n")
    write(
        origin / "test_calc.py",
        "from calc import add\n\n\ndef test_zero():\n    assert add(0, 0) == 0\n",
    )
    git("init", "-q", "-b", "main", cwd=origin)
    git("add", "-A", cwd=origin)
    git("commit", "-q", "-m", "base", cwd=origin)
    base = git("rev-parse", "HEAD", cwd=origin).strip()
    test_patch = (
        "diff --git a/test_calc.py b/test_calc.py\n--- a/test_calc.py\n+++ b/test_calc.py\n"
        "@@ -3,3 +3,7 @@ from calc import add\n \n def test_zero():\n     assert add(0, 0) == 0\n"
        "+\n+\n+def test_add():\n+    assert add(2, 3) == 5\n"
    )
    row = {
        "id": "patched",
        "statement": "add() subtracts",
        "repo": "origin",
        "commit": base,
        "tests": {"patch": test_patch, "fail_to_pass": ["python -m pytest -q test_calc.py"]},
        "reference": {"files": {"calc.py": FIXED_ADD}},
    }
    (tmp_path / "s.jsonl").write_text(json.dumps(row) + "\n")
    task = load_suite(tmp_path / "s.jsonl").tasks[0]
    # The agent fixes the code and rewrites the test file the patch touches: the patch
    # still applies (to the base version) and the score is the real one.
    replies = [
        heredoc("calc.py", FIXED_ADD),
        heredoc("test_calc.py", "def test_nothing():\n    pass\n"),
        FINISH,
    ]
    record = run(task, settings, tmp_path, replies)
    assert record.resolved, record.score
    assert "2 passed" in record.score["tests"][0]["output"]
    [check] = check_suite([task], settings)
    assert check.ok and not check.base.resolved and check.reference.resolved


def test_score_tree_reports_an_unappliable_patch(tmp_path, settings, mini):
    task = mini.tasks[0]
    base = tmp_path / "base"
    materialize(task, base, tmp_path / "clones")
    tree = tmp_path / "tree"
    copy_tree(base, tree)
    broken = replace(
        task,
        tests=replace(
            task.tests, change=Change(patch="--- a/nope.py\n+++ b/nope.py\n@@ -1 +1 @@\n-x\n+y\n")
        ),
    )
    score = score_tree(broken, tree, base, settings)
    assert not score.resolved and "could not be restored" in score.error


def test_timeout_counts_as_failure(tmp_path, settings, mini):
    task = mini.tasks[0]
    base = tmp_path / "base"
    materialize(task, base, tmp_path / "clones")
    tree = tmp_path / "tree"
    copy_tree(base, tree)
    write(tree / "calc.py", "def add(a, b):\n    while True:\n        pass\n")
    score = score_tree(task, tree, base, settings, timeout_s=1)
    assert not score.resolved and score.tests[0].timed_out


def test_check_suite_proves_the_scorer(mini, settings):
    results = check_suite(mini.tasks, settings, jobs=2)
    assert [r.task_id for r in results] == ["add", "mul"]
    assert all(r.ok for r in results), [r.problem for r in results]
