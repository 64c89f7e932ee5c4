"""suites/pypi-bugs: the builder's tasks are well formed and their statements give nothing away."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pullsmith.eval.snapshot import apply_change, copy_tree, materialize
from pullsmith.eval.tasks import load_suite

SUITE = Path(__file__).resolve().parents[2] / "suites" / "pypi-bugs"
# The bugs injected and kept (bugs.jsonl); the issue aims at 40.
TASKS = 46


@pytest.fixture(scope="module")
def suite():
    return load_suite(SUITE)


def _names(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(word)}(?!\w)", text) is not None


def test_the_builder_loads_every_bug_with_unique_ids(suite):
    ids = [task.id for task in suite.tasks]
    assert len(ids) == len(set(ids)) == TASKS
    assert {task.metadata["library"] for task in suite.tasks} == {
        "jmespath",
        "semver",
        "webcolors",
        "mistune",
        "Markdown",
    }


def test_statements_never_name_the_bugs_file_or_function(suite):
    for task in suite.tasks:
        meta = task.metadata
        function = meta["bug_function"].rsplit(".", 1)[-1]
        for word in (meta["bug_file"], Path(meta["bug_file"]).name):
            assert not _names(task.statement, word), (task.id, word)
        # The report's own lines (test ids, error lines), not its fixed wording: markdown-01's
        # function is `TableProcessor.test`, and the wording says "1 test fails".
        reported = "\n".join(
            line for line in task.statement.splitlines() if line.startswith(("- ", "    "))
        )
        assert reported, task.id
        assert not _names(reported, function), (task.id, function)
        for test_id in meta["failing_tests"]:
            assert test_id in task.statement


def test_every_task_has_its_metadata_and_a_one_line_reference(suite):
    for task in suite.tasks:
        meta = task.metadata
        for key in ("library", "bug_file", "bug_function", "bug_line", "kind"):
            assert meta[key], (task.id, key)
        assert meta["reference_changed_lines"] == [meta["bug_line"]]
        assert task.reference is not None
        assert set(task.reference.files) == set(task.files) == {meta["bug_file"]}
        buggy = task.files[meta["bug_file"]].decode().splitlines()
        fixed = task.reference.files[meta["bug_file"]].decode().splitlines()
        changed = [n + 1 for n, (a, b) in enumerate(zip(buggy, fixed, strict=True)) if a != b]
        assert changed == [meta["bug_line"]]
        assert task.tests.fail_to_pass and task.tests.pass_to_pass


def test_the_hidden_tests_put_back_a_test_file_the_agent_changed(suite, tmp_path):
    if not suite.tasks:
        pytest.skip("bugs.jsonl holds no bugs yet (run build.py inject)")
    task = suite.tasks[0]
    base = tmp_path / "base"
    materialize(task, base, tmp_path / "clones")
    assert (base / "tests").is_dir()  # the agent sees the library's tests
    tree = tmp_path / "tree"
    copy_tree(base, tree)
    victim = sorted((tree / "tests").rglob("test_*.py"))[0]
    original = (base / victim.relative_to(tree)).read_text()
    victim.write_text("def test_nothing():\n    pass\n")
    apply_change(tree, task.tests.change, base)
    restored = victim.read_text()
    assert restored.startswith(original.rstrip("\n"))
    assert "def test_nothing" not in restored


def test_a_markdown_tree_finds_its_extensions_by_name_as_an_install_would(suite, tmp_path):
    # Markdown looks its extensions up by entry point; the tree carries the sdist's egg-info.
    task = next(task for task in suite.tasks if task.metadata["library"] == "Markdown")
    base = tmp_path / "base"
    materialize(task, base, tmp_path / "clones")
    code = "import markdown; print(markdown.markdown('|a|\\n|-|\\n|1|', extensions=['tables']))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=base, capture_output=True, text=True, check=True
    )
    assert "<table>" in out.stdout
