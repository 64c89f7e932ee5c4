"""Reports: the Wilson interval, medians per task and per resolved task, Markdown, compare."""

from __future__ import annotations

import json

import pytest

from pullsmith.errors import UserError
from pullsmith.eval.harness import TaskRecord
from pullsmith.eval.report import (
    build_report,
    compare,
    load_report,
    render_compare_markdown,
    render_markdown,
    wilson_interval,
    write_reports,
)


def record(task_id, resolved, wall, tokens, turns=3, **extra):
    return TaskRecord(
        task_id=task_id,
        resolved=resolved,
        turns=turns,
        wall_seconds=wall,
        model_seconds=wall / 2,
        prompt_tokens=tokens - 100,
        completion_tokens=100,
        cached_tokens=tokens // 2,
        exit_reason="finished" if resolved else "turn limit reached (20 turns)",
        **extra,
    )


def test_wilson_interval():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(0.7225, abs=1e-4) and high == 1.0
    low, high = wilson_interval(0, 40)
    assert low == 0.0 and high == pytest.approx(0.0876, abs=1e-4)


def sample_report():
    meta = {
        "suite": "mini",
        "subset": "dev3",
        "model": "m",
        "sandbox": "bwrap",
        "max_turns": 20,
        "selection": ["a", "b", "c", "d"],
    }
    records = [
        record("c", False, 90.0, 9000, metadata={"bug_type": "x"}),
        record("a", True, 10.0, 1000, turns=2, metadata={"bug_type": "x"}),
        record("b", True, 30.0, 3000, metadata={"bug_type": "y"}),
    ]
    records[0].error_kind, records[0].error = "model", "the model server went away"
    return build_report(meta, records)


def test_totals_and_medians():
    report = sample_report()
    t = report["totals"]
    assert (t["selected"], t["done"], t["resolved"], t["errors"]) == (4, 3, 2, 1)
    assert t["resolve_rate"] == pytest.approx(2 / 3)
    assert t["per_task"]["median_wall_seconds"] == 30.0
    assert t["per_task"]["median_tokens"] == 3000
    assert t["per_resolved_task"]["median_wall_seconds"] == 20.0
    assert t["per_resolved_task"]["median_tokens"] == 2000
    assert t["per_resolved_task"]["median_turns"] == 2.5
    assert t["sum_prompt_tokens"] == 12700 and t["sum_cached_tokens"] == 6500
    assert report["pending"] == ["d"]
    assert [r["task_id"] for r in report["tasks"]] == ["a", "b", "c"]  # selection order
    assert report["groups"]["bug_type"] == {
        "x": {"done": 2, "resolved": 1},
        "y": {"done": 1, "resolved": 1},
    }


def test_markdown():
    md = render_markdown(sample_report())
    assert md.startswith("# Evaluation: mini (dev3)")
    assert "**2 / 3 resolved (66.7%, 95% CI 20.8%–93.9%)**" in md
    assert "Partial: 3 of 4 tasks done, 1 not yet run." in md
    assert "| wall time | 30 s | 20 s |" in md
    assert "| tokens (prompt + completion) | 3,000 | 2,000 |" in md
    assert "| a | ✅ | 2 | 10 | 5 | 900 | 100 | 500 | unknown | finished |" in md
    assert "| c | ❌ |" in md and "error (model): the model server went away" in md
    assert "## By bug type" in md and "| x | 1 / 2 | 50.0% |" in md


def test_compare_shows_flips(tmp_path):
    meta = {"suite": "s", "model": "m", "selection": ["a", "b", "c", "d"]}
    a = build_report(
        meta, [record("a", True, 5, 500), record("b", False, 5, 500), record("c", True, 5, 500)]
    )
    b = build_report(
        {**meta, "model": "m2"},
        [record("a", False, 6, 600), record("b", True, 6, 600), record("d", True, 6, 600)],
    )
    (tmp_path / "a").mkdir()
    write_reports(tmp_path / "a", a)
    (tmp_path / "b.json").write_text(json.dumps(b))
    cmp = compare(load_report(tmp_path / "a"), load_report(tmp_path / "b.json"))
    assert cmp["shared"] == 2 and cmp["fixed"] == ["b"] and cmp["broken"] == ["a"]
    assert cmp["only_a"] == ["c"] and cmp["only_b"] == ["d"]
    md = render_compare_markdown(cmp)
    assert "| a | ✅ | ❌ | broken |" in md and "| b | ❌ | ✅ | fixed |" in md
    assert "fixed in B (unresolved in A): b" in md


def test_load_report_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_report(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(UserError, match="is not a pullsmith eval report"):
        load_report(tmp_path / "x.json")
