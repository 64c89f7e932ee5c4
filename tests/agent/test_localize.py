"""Finding the function at fault in a package of many modules (agent/localize.py), and what
the first message shows of it (agent/context.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pullsmith.agent import failures
from pullsmith.agent.context import SOURCES_CHARS, evidence_sources, source_excerpt
from pullsmith.agent.failures import function_source, parse_test_output
from pullsmith.agent.localize import build_index, rank_functions, stems
from pullsmith.agent.prompts import TaskContext, first_message
from pullsmith.eval.snapshot import init_repo, materialize
from pullsmith.eval.tasks import load_suite

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "localization"


def pytest_output(root: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--rootdir={root}"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    return result.stdout + result.stderr


def task_repo(task_id: str, tmp_path: Path) -> tuple[Path, dict]:
    task = next(t for t in load_suite(FIXTURE).tasks if t.id == task_id)
    repo = tmp_path / task_id
    materialize(task, repo, tmp_path / "clones")
    init_repo(repo)
    return repo, task.metadata


@pytest.mark.parametrize("task_id", ["month-of", "debit-normal"])
def test_a_bug_two_calls_below_the_frames_ranks_in_the_top_few_and_is_shown(task_id, tmp_path):
    # The failing tests' frames are in the test file only (the wrong value is returned, not
    # raised); the function at fault is two calls below the one the test calls.
    repo, meta = task_repo(task_id, tmp_path)
    output = pytest_output(repo)
    report = parse_test_output(repo, output)
    assert report.failures and all(
        frame.path.startswith("tests/") for f in report.failures for frame in f.frames
    )
    ranked = rank_functions(repo, report)
    names = [(c.definition.path, c.definition.name) for c in ranked]
    assert (meta["bug_file"], meta["bug_function"]) in names[:5]
    assert all(not c.definition.is_test for c in ranked)
    sources = evidence_sources(repo, output)
    _, _, body = function_source(repo / meta["bug_file"], meta["bug_function"])
    shown = "\n\n".join(sources)
    assert body in shown and sum(len(piece) for piece in sources) <= SOURCES_CHARS
    # The code comes first, the failing tests last.
    assert sources[-1].startswith("tests/test_api.py:")
    message = first_message(
        TaskContext("fix it", "(files)", test_command="pytest", sources=tuple(sources))
    )
    assert body in message


def test_with_the_ranking_off_the_tracebacks_files_are_shown_instead(tmp_path):
    # localize = false: what the first message showed before the ranking, the files the
    # frames name and what they import; here the frames are in the test file only.
    repo, meta = task_repo("month-of", tmp_path)
    output = pytest_output(repo)
    ranked = evidence_sources(repo, output)
    unranked = evidence_sources(repo, output, rank=False)
    assert unranked != ranked
    assert any(piece.startswith("tests/test_api.py:") for piece in unranked)
    _, _, body = function_source(repo / meta["bug_file"], meta["bug_function"])
    assert body in "\n\n".join(ranked)


def test_a_single_file_task_is_shown_whole_as_before(tmp_path):
    # A humanevalfix task: the buggy file whole, then the test file whole.
    (tmp_path / "has_close.py").write_text(
        "def has_close_elements(numbers, threshold):\n"
        "    for i, a in enumerate(numbers):\n"
        "        for j, b in enumerate(numbers):\n"
        "            if i != j and abs(a - b) > threshold:\n"
        "                return True\n"
        "    return False\n"
    )
    (tmp_path / "test_has_close.py").write_text(
        "from has_close import has_close_elements\n\n\n"
        "def check(f):\n    assert f([1.0, 2.0, 3.0], 0.5) is False\n\n\n"
        "def test_has_close_elements():\n    check(has_close_elements)\n"
    )
    output = pytest_output(tmp_path)
    assert evidence_sources(tmp_path, output) == [
        source_excerpt(tmp_path, tmp_path / "has_close.py"),
        source_excerpt(tmp_path, tmp_path / "test_has_close.py"),
    ]


def test_nothing_is_ranked_without_failing_tests(tmp_path):
    repo, _ = task_repo("month-of", tmp_path)
    assert rank_functions(repo, failures.TestReport(failures=[], failed=0, passed=9)) == []
    assert evidence_sources(repo, "========= 9 passed in 0.1s =========") == []


def test_files_that_do_not_parse_are_skipped_and_the_rest_still_ranks(tmp_path):
    repo, meta = task_repo("debit-normal", tmp_path)
    (repo / "ledgerkit" / "broken.py").write_text("def half(:\n    return 1\n")
    (repo / "ledgerkit" / "binary.py").write_bytes(b"\xff\xfe\x00x = 1\n")
    index = build_index(repo)
    assert "ledgerkit/broken.py" in index.unparsable
    report = parse_test_output(repo, pytest_output(repo))
    names = [(c.definition.path, c.definition.name) for c in rank_functions(repo, report)]
    assert (meta["bug_file"], meta["bug_function"]) in names[:5]


def test_a_traceback_into_a_file_that_does_not_parse_shows_that_file(tmp_path):
    (tmp_path / "calc.py").write_text("def area(w, h:\n    return w * h\n")
    output = (
        "Traceback (most recent call last):\n"
        f'  File "{tmp_path}/main.py", line 1, in <module>\n'
        "    import calc\n"
        f'  File "{tmp_path}/calc.py", line 1\n'
        "    def area(w, h:\n"
        "SyntaxError: '(' was never closed\n"
    )
    (tmp_path / "main.py").write_text("import calc\n")
    shown = evidence_sources(tmp_path, output)
    assert any(piece.startswith("calc.py:") and "def area(w, h:" in piece for piece in shown)
    # Also when the words of the failure match a function elsewhere.
    (tmp_path / "shapes.py").write_text("def never_closed():\n    return 1\n")
    shown = evidence_sources(tmp_path, output)
    assert shown[0].startswith("calc.py:")


def _huge_repo(root: Path, modules: int = 120, functions: int = 25) -> None:
    package = root / "big"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for m in range(modules):
        lines = [f"from big.mod{m + 1} import f{m + 1}_0\n" if m + 1 < modules else "\n"]
        for f in range(functions):
            callee = f"f{m}_{f + 1}(x)" if f + 1 < functions else f"f{m + 1}_0(x)"
            if m + 1 == modules and f + 1 == functions:
                callee = "x"
            lines.append(
                f"\n\ndef f{m}_{f}(x):\n    '''Step {f} of module {m}.'''\n"
                + "".join(f"    x = x + {k}  # padding line {k}\n" for k in range(8))
                + f"    return {callee}\n"
            )
        (package / f"mod{m}.py").write_text("".join(lines))
    (root / "tests").mkdir()
    (root / "tests" / "test_big.py").write_text(
        "from big.mod0 import f0_0\n\n\ndef test_chain():\n    assert f0_0(1) == 0\n"
    )


def test_a_huge_repository_is_cut_to_the_budget(tmp_path):
    _huge_repo(tmp_path)
    output = textwrap.dedent(
        """\
        _________________________________ test_chain _________________________________

            def test_chain():
        >       assert f0_0(1) == 0
        E       assert 3001 == 0

        tests/test_big.py:5: AssertionError
        =========================== short test summary info ============================
        FAILED tests/test_big.py::test_chain - assert 3001 == 0
        ============================== 1 failed in 0.10s ===============================
        """
    )
    started = time.process_time()
    shown = evidence_sources(tmp_path, output)
    assert time.process_time() - started < 20
    assert sum(len(piece) for piece in shown) <= SOURCES_CHARS
    # The functions the test calls first, cut out of their (big) file.
    assert "def f0_0(x):" in shown[0] and "only the functions" in shown[0]
    assert shown[-1].startswith("tests/test_big.py:")
    small = build_index(tmp_path, first=["tests/test_big.py"], max_files=10)
    assert small.skipped_files == 112 and any(d.is_test for d in small.definitions)


def test_words_are_split_and_stemmed():
    assert stems("spending_by_month monthlyTotals balances") == [
        "spend",
        "month",
        "month",
        "total",
        "balanc",
    ]


def test_the_benchmark_measures_a_suite_without_a_model(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "localization_bench", ROOT / "benchmarks" / "localization.py"
    )
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    assert bench.main([str(FIXTURE), "--sandbox", "none", "--json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    records = {r["task_id"]: r for r in data["records"]}
    assert set(records) == {"month-of", "parse-amount", "debit-normal"}
    for task_id in ("month-of", "debit-normal"):
        record = records[task_id]
        assert record["file_shown"] and record["function_shown"] and record["rank"] <= 5
    assert all(r["test_exit_code"] == 1 and r["failing"] >= 1 for r in records.values())
    summary = data["summary"]
    assert summary["with_bug_metadata"] == 3 and summary["errors"] == 0
    assert 0 < summary["median_first_message_chars"] < 16000
