"""HumanEvalFix (Python) as pullsmith evaluation tasks, built on the fly from the bundled JSONL.

One small repository per row: `<entry_point>.py` holds the buggy function (`declaration` +
`buggy_solution`) and `test_<entry_point>.py` the row's `example_test` only (six rows have none,
and get no visible test). The row's full `test` is the hidden test, run as a script against the
module. The statement is the row's `instruction` plus where the bug and the tests are. The
`canonical_solution` is only the reference solution that `pullsmith eval check` scores; the
agent never sees it.

    python suites/humanevalfix/build.py subset dev40   # (re)write subsets/dev40.txt
    python suites/humanevalfix/build.py show Python-3  # print one task's files and statement

Only the standard library is used: pullsmith loads this file (see suite.toml) and reads the task
dicts it returns.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

DATA = "humanevalfix-python.jsonl"
SUBSET_SIZES = {"dev40": 40}
TEST_TIMEOUT_S = 10
_CHECK_CALL = re.compile(r"^\s*check\(\s*\w+\s*\)\s*$")


def read_rows(suite_dir: Path) -> list[dict[str, Any]]:
    path = Path(suite_dir) / DATA
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def task_id(row: dict[str, Any]) -> str:
    return row["task_id"].replace("/", "-")


def module_name(entry_point: str) -> str:
    """The module is named after the function, unless that would shadow a standard module."""
    if entry_point.isidentifier() and entry_point not in sys.stdlib_module_names:
        return entry_point
    return "solution"


def _without_check_call(test: str) -> str:
    lines = test.rstrip().splitlines()
    while lines and (not lines[-1].strip() or _CHECK_CALL.match(lines[-1])):
        lines.pop()
    return "\n".join(lines).strip("\n")


def visible_test(row: dict[str, Any], module: str) -> str:
    ep = row["entry_point"]
    return (
        f"from {module} import *  # noqa: F403\n\n\n"
        f"{_without_check_call(row['example_test'])}\n\n\n"
        f"def test_{ep}():\n"
        f"    check({ep})\n\n\n"
        'if __name__ == "__main__":\n'
        f"    test_{ep}()\n"
        '    print("ok")\n'
    )


def hidden_test(row: dict[str, Any], module: str) -> str:
    # HumanEval runs the test after the function in one namespace; the star import gives the
    # test the same names (helpers such as poly() included).
    return f"from {module} import *  # noqa: F403\n\n{row['test'].strip()}\n"


def statement(row: dict[str, Any], module: str) -> str:
    ep = row["entry_point"]
    where = (
        f"The function `{ep}` in `{module}.py` has a bug: it does not do what is described "
        f"above. Fix it in `{module}.py`."
    )
    if row["example_test"].strip():
        tests = f"The tests are in `test_{ep}.py`; run them with `python -m pytest -q`."
    else:
        tests = "There are no tests in the repository; check your fix by calling the function."
    return f"{row['instruction'].strip()}\n\n{where} {tests}"


def task(row: dict[str, Any]) -> dict[str, Any]:
    ep = row["entry_point"]
    module = module_name(ep)
    files = {f"{module}.py": row["declaration"] + row["buggy_solution"]}
    if row["example_test"].strip():
        files[f"test_{ep}.py"] = visible_test(row, module)
    hidden = f"hidden_test_{ep}.py"
    return {
        "id": task_id(row),
        "statement": statement(row, module),
        "files": files,
        "tests": {
            "files": {hidden: hidden_test(row, module)},
            "fail_to_pass": [f"python {hidden}"],
            "timeout_s": TEST_TIMEOUT_S,
        },
        "reference": {"files": {f"{module}.py": row["declaration"] + row["canonical_solution"]}},
        "metadata": {
            "source_id": row["task_id"],
            "bug_type": row["bug_type"],
            "failure_symptoms": row["failure_symptoms"],
            "entry_point": ep,
        },
    }


def tasks(suite_dir: Path) -> list[dict[str, Any]]:
    """Every task of the suite, in the order of the data file."""
    return [task(row) for row in read_rows(suite_dir)]


def stratified_subset(rows: list[dict[str, Any]], size: int) -> list[str]:
    """`size` task ids, stratified by bug_type: each type gets its share (largest remainder),
    picked evenly spaced through that type's tasks in data order; the same ids every time."""
    strata: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        strata[row["bug_type"]].append(task_id(row))
    total = len(rows)
    quotas = {kind: size * len(ids) / total for kind, ids in strata.items()}
    counts = {kind: int(quota) for kind, quota in quotas.items()}
    by_remainder = sorted(strata, key=lambda kind: (-(quotas[kind] - counts[kind]), kind))
    for kind in by_remainder[: size - sum(counts.values())]:
        counts[kind] += 1
    chosen: set[str] = set()
    for kind, ids in strata.items():
        k = counts[kind]
        chosen.update(ids[int((i + 0.5) * len(ids) / k)] for i in range(k))
    return [task_id(row) for row in rows if task_id(row) in chosen]


def _write_subset(suite_dir: Path, name: str) -> Path:
    rows = read_rows(suite_dir)
    ids = stratified_subset(rows, SUBSET_SIZES[name])
    kinds = {task_id(row): row["bug_type"] for row in rows}
    path = suite_dir / "subsets" / f"{name}.txt"
    path.parent.mkdir(exist_ok=True)
    header = (
        f"# {name}: {len(ids)} HumanEvalFix tasks stratified by bug_type; written by\n"
        f"# `python suites/humanevalfix/build.py subset {name}` (do not edit by hand).\n"
    )
    path.write_text(header + "".join(f"{i}  # {kinds[i]}\n" for i in ids), encoding="utf-8")
    return path


def main(argv: list[str]) -> int:
    suite_dir = Path(__file__).resolve().parent
    if len(argv) == 2 and argv[0] == "subset" and argv[1] in SUBSET_SIZES:
        print(_write_subset(suite_dir, argv[1]))
        return 0
    if len(argv) == 2 and argv[0] == "show":
        for item in tasks(suite_dir):
            if item["id"] == argv[1]:
                print(json.dumps({k: v for k, v in item.items() if k != "reference"}, indent=1))
                return 0
        print(f"no task {argv[1]}", file=sys.stderr)
        return 1
    print(__doc__.split("\n\n")[2], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
