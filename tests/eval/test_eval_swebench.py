"""SWE-bench instances, read against a local clone: a tiny fake instance end to end."""

from __future__ import annotations

import json

import pytest
from conftest import bwrap_works, git
from eval_helpers import FINISH, PlanModel, heredoc, write

from pullsmith.config import load_settings
from pullsmith.errors import UserError
from pullsmith.eval.harness import EvalOptions, run_suite
from pullsmith.eval.scoring import check_suite
from pullsmith.eval.snapshot import init_repo, materialize
from pullsmith.eval.swebench import find_clone
from pullsmith.eval.tasks import load_suite

SANDBOX = "bwrap" if bwrap_works() else "none"

BUGGY = "def slugify(text):\n    return text.lower()\n"
FIXED = "def slugify(text):\n    return '-'.join(text.lower().split())\n"
OLD_TEST = "from widgets import slugify\n\n\ndef test_lower():\n    assert slugify('AB') == 'ab'\n"
NEW_TEST = OLD_TEST + "\n\ndef test_spaces():\n    assert slugify('A B') == 'a-b'\n"


@pytest.fixture
def instance(tmp_path):
    """acme/widgets cloned under repos/acme__widgets, and an instance file for its bug."""
    repo = tmp_path / "repos" / "acme__widgets"
    write(repo / "widgets.py", BUGGY)
    write(repo / "tests" / "test_widgets.py", OLD_TEST)
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "slugify", cwd=repo)
    base = git("rev-parse", "HEAD", cwd=repo).strip()
    write(repo / "widgets.py", FIXED)
    write(repo / "tests" / "test_widgets.py", NEW_TEST)
    git("commit", "-qam", "Fix #1: slugify joins words with dashes", cwd=repo)
    fix = git("rev-parse", "HEAD", cwd=repo).strip()
    row = {
        "instance_id": "acme__widgets-1",
        "repo": "acme/widgets",
        "base_commit": base,
        "problem_statement": "slugify('A B') should be 'a-b', it returns 'a b'.",
        "patch": git("diff", base, fix, "--", "widgets.py", cwd=repo),
        "test_patch": git("diff", base, fix, "--", "tests", cwd=repo),
        # As in the published datasets: JSON text, not lists.
        "FAIL_TO_PASS": json.dumps(["tests/test_widgets.py::test_spaces"]),
        "PASS_TO_PASS": json.dumps(["tests/test_widgets.py::test_lower"]),
        "version": "1.0",
        "hints_text": "",
        "created_at": "2024-01-01T00:00:00Z",
    }
    path = tmp_path / "swe.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return path


def test_instance_becomes_a_task(instance, tmp_path):
    suite = load_suite(instance, tmp_path / "repos")
    [task] = suite.tasks
    assert task.id == "acme__widgets-1" and task.statement.startswith("slugify('A B')")
    assert task.repo == str((tmp_path / "repos" / "acme__widgets").resolve())
    assert task.tests.fail_to_pass == ("python -m pytest -q tests/test_widgets.py::test_spaces",)
    assert task.tests.pass_to_pass == ("python -m pytest -q tests/test_widgets.py::test_lower",)
    assert task.hidden_paths == {"tests/test_widgets.py"}
    assert task.metadata["repo"] == "acme/widgets" and task.metadata["version"] == "1.0"
    assert task.reference is not None and "widgets.py" in task.reference.paths()
    # The agent's repository: the base commit's tree, none of the later history.
    fresh = tmp_path / "fresh"
    materialize(task, fresh, tmp_path / "clones")
    init_repo(fresh)
    assert (fresh / "widgets.py").read_text() == BUGGY
    assert (fresh / "tests" / "test_widgets.py").read_text() == OLD_TEST
    assert "Fix #1" not in git("log", "--all", "--format=%s", cwd=fresh)


def test_scorer_check_on_the_instance(instance, tmp_path):
    settings = load_settings({"sandbox": SANDBOX}, cwd=tmp_path)
    [result] = check_suite(load_suite(instance, tmp_path / "repos").tasks, settings)
    assert result.ok, result.problem
    assert [t.passed for t in result.base.tests] == [False, True]


def test_run_on_the_instance(instance, tmp_path):
    settings = load_settings({"sandbox": SANDBOX}, cwd=tmp_path)
    suite = load_suite(instance, tmp_path / "repos")
    model = PlanModel({"slugify": [heredoc("widgets.py", FIXED), FINISH]})
    run = run_suite(suite, suite.tasks, settings, EvalOptions(out=tmp_path / "out"), model)
    [record] = run.records
    assert record.resolved, record.score
    assert record.metadata["repo"] == "acme/widgets"


def test_custom_test_command_template(instance, tmp_path):
    suite = load_suite(
        instance, tmp_path / "repos", test_cmd="pytest -x {tests}", setup="pip --version"
    )
    task = suite.tasks[0]
    assert task.tests.fail_to_pass == ("pytest -x tests/test_widgets.py::test_spaces",)
    assert task.setup == "pip --version"
    with pytest.raises(UserError, match="must contain \\{tests\\}"):
        load_suite(instance, tmp_path / "repos", test_cmd="pytest")


def test_missing_clone_or_repos_dir(instance, tmp_path):
    with pytest.raises(UserError, match="pass --swebench-repos DIR"):
        load_suite(instance)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no local clone of acme/widgets"):
        load_suite(instance, tmp_path / "empty")
    assert find_clone(tmp_path / "repos", "acme/widgets").name == "acme__widgets"
