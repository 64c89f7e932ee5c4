"""The task format: task directories, JSONL suites, builders, subsets, and clear errors."""

from __future__ import annotations

import json

import pytest
from conftest import git
from eval_helpers import BUGGY_ADD, FIXED_ADD, HIDDEN_ADD, make_mini_suite, write

from pullsmith.errors import UserError
from pullsmith.eval.snapshot import init_repo, materialize
from pullsmith.eval.tasks import load_suite, patch_paths


def test_task_directories(tmp_path):
    suite = load_suite(make_mini_suite(tmp_path))
    assert suite.name == "mini" and [t.id for t in suite.tasks] == ["add", "mul"]
    add, mul = suite.tasks
    assert add.statement.startswith("add() in calc.py subtracts")
    assert add.tests.change.files == {"hidden_test_calc.py": HIDDEN_ADD.encode()}
    assert add.tests.fail_to_pass == ("python hidden_test_calc.py",) and add.tests.timeout_s == 20
    assert add.reference.files == {"calc.py": FIXED_ADD.encode()}
    assert add.metadata == {"bug_type": "operator misuse"}
    assert mul.tests.pass_to_pass == ("python test_mathx.py",)
    assert add.test_command == "python test_calc.py"
    assert mul.hidden_paths == {"hidden_test_mathx.py"}


def test_selection_by_ids_subset_and_limit(tmp_path):
    suite = load_suite(make_mini_suite(tmp_path))
    assert [t.id for t in suite.select(subset="first")] == ["add"]
    assert [t.id for t in suite.select(ids=["mul"])] == ["mul"]
    assert [t.id for t in suite.select(limit=1)] == ["add"]
    with pytest.raises(UserError, match="unknown subset 'dev99'.*known subsets: first"):
        suite.select(subset="dev99")
    with pytest.raises(UserError, match="not in suite mini: nope"):
        suite.select(ids=["nope"])


def test_snapshot_leaves_hidden_tests_out(tmp_path):
    task = load_suite(make_mini_suite(tmp_path)).tasks[0]
    # Even a snapshot that ships the hidden file does not give it to the agent.
    write(tmp_path / "mini" / "add" / "repo" / "hidden_test_calc.py", "print('leak')\n")
    task = load_suite(tmp_path / "mini").tasks[0]
    repo = tmp_path / "fresh"
    materialize(task, repo, tmp_path / "clones")
    init_repo(repo)
    assert sorted(git("ls-files", cwd=repo).split()) == ["calc.py", "test_calc.py"]
    assert (repo / "calc.py").read_text() == BUGGY_ADD
    assert git("rev-list", "--count", "HEAD", cwd=repo).strip() == "1"


def test_jsonl_suite_with_git_repo_commit_and_patch(tmp_path):
    origin = tmp_path / "origin"
    write(origin / "calc.py", BUGGY_ADD)
    git("init", "-q", "-b", "main", cwd=origin)
    git("add", "-A", cwd=origin)
    git("commit", "-q", "-m", "one", cwd=origin)
    first = git("rev-parse", "HEAD", cwd=origin).strip()
    write(origin / "calc.py", FIXED_ADD)
    git("commit", "-qam", "the fix, later in history", cwd=origin)
    rows = [
        {
            "id": "git-task",
            "statement": "fix add",
            "repo": "origin",
            "commit": first,
            "tests": {
                "patch": "--- /dev/null\n+++ b/t.py\n@@ -0,0 +1 @@\n+from calc import add\n",
                "fail_to_pass": ["python t.py"],
            },
        }
    ]
    path = tmp_path / "suite.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    suite = load_suite(path)
    assert suite.name == "suite"
    task = suite.tasks[0]
    assert task.repo == str(origin.resolve()) and task.commit == first
    assert task.hidden_paths == {"t.py"}
    repo = tmp_path / "fresh"
    materialize(task, repo, tmp_path / "clones")
    init_repo(repo)
    # The snapshot is the commit's tree, without the history that holds the fix.
    assert (repo / "calc.py").read_text() == BUGGY_ADD
    assert git("log", "--all", "--oneline", cwd=repo).count("\n") == 1


def test_builder_suite(tmp_path):
    suite_dir = tmp_path / "built"
    write(suite_dir / "suite.toml", 'name = "built"\nbuilder = "make.py"\n')
    write(
        suite_dir / "make.py",
        "def tasks(suite_dir):\n"
        "    return [{'id': f't{n}', 'statement': 's', 'files': {'a.py': ''},\n"
        "             'tests': {'fail_to_pass': ['true']}} for n in range(3)]\n",
    )
    suite = load_suite(suite_dir)
    assert suite.name == "built" and [t.id for t in suite.tasks] == ["t0", "t1", "t2"]
    assert suite.tasks[0].files == {"a.py": b""}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"statement": "s", "files": {"a": ""}, "tests": {"fail_to_pass": ["x"]}}, "has no id"),
        ({"id": "t", "files": {"a": ""}, "tests": {"fail_to_pass": ["x"]}}, "has no statement"),
        ({"id": "t", "statement": "s", "tests": {"fail_to_pass": ["x"]}}, "has no snapshot"),
        ({"id": "t", "statement": "s", "files": {"a": ""}}, "has no \\[tests\\] table"),
        ({"id": "t", "statement": "s", "files": {"a": ""}, "tests": {}}, "has no test commands"),
        (
            {"id": "t", "statement": "s", "files": {"../a": ""}, "tests": {"fail_to_pass": ["x"]}},
            "must be a relative path",
        ),
        (
            {"id": "t", "statement": "s", "files": {"a": ""}, "tests": {"fail_to_pas": ["x"]}},
            "unknown key\\(s\\) fail_to_pas",
        ),
        ({"id": "t", "statment": "s"}, "unknown key\\(s\\) statment"),
    ],
)
def test_malformed_tasks_fail_with_one_sentence(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError, match=message):
        load_suite(path)


def test_duplicate_ids_and_missing_suite(tmp_path):
    row = {"id": "t", "statement": "s", "files": {"a": ""}, "tests": {"fail_to_pass": ["x"]}}
    path = tmp_path / "dup.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(UserError, match="two tasks with id 't'"):
        load_suite(path)
    with pytest.raises(UserError, match="does not exist"):
        load_suite(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no tasks"):
        load_suite(tmp_path / "empty")


def test_patch_paths():
    patch = (
        "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n"
        "--- /dev/null\n+++ b/new/y.py\t2024-01-01\n@@ -0,0 +1 @@\n+c\n"
    )
    assert patch_paths(patch) == {"x.py", "new/y.py"}
