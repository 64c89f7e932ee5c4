"""Evaluation: task suites, hidden-test scoring, runs over a suite, and their reports."""

from __future__ import annotations

from pullsmith.eval.harness import EvalOptions, EvalRun, TaskRecord, load_records, run_suite
from pullsmith.eval.report import build_report, compare, load_report, wilson_interval
from pullsmith.eval.scoring import CheckResult, Score, check_suite, score_tree
from pullsmith.eval.tasks import Change, EvalTask, HiddenTests, Suite, load_suite

__all__ = [
    "Change",
    "CheckResult",
    "EvalOptions",
    "EvalRun",
    "EvalTask",
    "HiddenTests",
    "Score",
    "Suite",
    "TaskRecord",
    "build_report",
    "check_suite",
    "compare",
    "load_records",
    "load_report",
    "load_suite",
    "run_suite",
    "score_tree",
    "wilson_interval",
]
