"""The public suite: 164 HumanEvalFix tasks, the dev40 subset, and the proof that the scorer is
right (every canonical solution passes, every buggy original fails)."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import bwrap_works

from pullsmith.config import load_settings
from pullsmith.eval.scoring import check_suite
from pullsmith.eval.tasks import load_suite, read_id_list

SUITE = Path(__file__).resolve().parents[2] / "suites" / "humanevalfix"
SANDBOX = "bwrap" if bwrap_works() else "none"


def builder():
    spec = importlib.util.spec_from_file_location("humanevalfix_build", SUITE / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def suite():
    return load_suite(SUITE)


@pytest.fixture(scope="module")
def rows():
    return [json.loads(line) for line in (SUITE / "humanevalfix-python.jsonl").open()]


def test_suite_is_self_contained_and_complete(suite, rows):
    assert suite.name == "humanevalfix" and len(suite.tasks) == len(rows) == 164
    assert [t.id for t in suite.tasks][:3] == ["Python-0", "Python-1", "Python-2"]
    assert "Copyright (c) 2023 Muennighoff" in (SUITE / "LICENSE-humanevalpack").read_text()


def test_tasks_never_show_the_solution_or_the_hidden_test(suite, rows):
    for task, row in zip(suite.tasks, rows, strict=True):
        ep = row["entry_point"]
        shown = task.statement + "".join(data.decode() for data in task.files.values())
        assert row["canonical_solution"] not in shown, task.id
        assert row["test"].strip() not in shown, task.id
        assert row["instruction"].strip() in task.statement
        assert task.files[f"{ep}.py"].decode() == row["declaration"] + row["buggy_solution"]
        assert not set(task.files) & task.hidden_paths
        if row["example_test"].strip():
            assert f"test_{ep}.py" in task.statement
            assert (
                row["example_test"].strip().splitlines()[1] in task.files[f"test_{ep}.py"].decode()
            )
        else:
            assert set(task.files) == {f"{ep}.py"}
        assert task.reference.files[f"{ep}.py"].decode().endswith(row["canonical_solution"])
        assert task.metadata["bug_type"] == row["bug_type"]


def test_dev40_is_fixed_and_stratified(suite, rows):
    ids = read_id_list(SUITE / "subsets" / "dev40.txt")
    assert ids == builder().stratified_subset(rows, 40)
    assert len(ids) == len(set(ids)) == 40
    assert [t.id for t in suite.select(subset="dev40")] == ids
    kinds = {t.id: t.metadata["bug_type"] for t in suite.tasks}
    chosen = Counter(kinds[i] for i in ids)
    overall = Counter(kinds.values())
    assert set(chosen) == set(overall)
    for kind, count in overall.items():
        assert abs(chosen[kind] - 40 * count / 164) < 1, kind


def test_scorer_passes_every_canonical_solution_and_fails_every_buggy_one(suite, tmp_path):
    settings = load_settings({"sandbox": SANDBOX}, cwd=tmp_path)
    started = time.monotonic()
    results = check_suite(suite.tasks, settings, jobs=max(2, os.cpu_count() or 1))
    seconds = time.monotonic() - started
    assert len(results) == 164
    assert sum(r.reference is not None and r.reference.resolved for r in results) == 164, [
        (r.task_id, r.problem) for r in results if not r.ok
    ]
    assert sum(r.base.resolved for r in results) == 0
    print(f"scorer check: 164 canonical pass, 164 buggy fail, {seconds:.1f} s")
