"""SWE-bench instances as evaluation tasks, given local clones of their repositories.

An instance (`instance_id, repo, base_commit, problem_statement, test_patch, FAIL_TO_PASS,
PASS_TO_PASS`, and usually the gold `patch`) becomes a task whose snapshot is `base_commit` of
the local clone, whose hidden tests are `test_patch`, and whose test commands run the
FAIL_TO_PASS and PASS_TO_PASS test ids through a command template (pytest by default). The gold
`patch` is the task's reference solution, used only by `pullsmith eval check`.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pullsmith.errors import UserError
from pullsmith.eval.tasks import Change, EvalTask, HiddenTests, patch_paths

REQUIRED = ("instance_id", "repo", "base_commit", "problem_statement", "test_patch")
DEFAULT_TEST_COMMAND = "python -m pytest -q {tests}"
METADATA_KEYS = ("repo", "version", "created_at", "environment_setup_commit", "difficulty")


def is_swebench_rows(rows: list[Any]) -> bool:
    return bool(rows) and all(
        isinstance(row, Mapping) and "instance_id" in row and "base_commit" in row for row in rows
    )


def _test_ids(value: Any, where: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        # The published datasets store these lists as JSON text.
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise UserError(f"{where} is neither a list nor JSON text of one; fix it.") from None
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise UserError(f"{where} must be a list of test ids; fix it.")
    return value


def find_clone(repos_dir: Path, repo: str) -> Path:
    """The local clone of `repo` ("owner/name") under `repos_dir`."""
    owner, _, name = repo.partition("/")
    candidates = [repos_dir / f"{owner}__{name}", repos_dir / owner / name, repos_dir / name]
    for candidate in candidates:
        if (candidate / ".git").exists() or (candidate / "HEAD").is_file():
            return candidate.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise UserError(
        f"no local clone of {repo} under {repos_dir} (looked for {looked}); "
        f"clone it there with `git clone https://github.com/{repo} {candidates[0]}`."
    )


def test_command(template: str, test_ids: list[str]) -> str:
    if "{tests}" not in template:
        raise UserError(
            "the SWE-bench test command template must contain {tests}, e.g. "
            f"'{DEFAULT_TEST_COMMAND}'."
        )
    return template.replace("{tests}", " ".join(shlex.quote(t) for t in test_ids))


def task_from_instance(
    row: Mapping[str, Any],
    repos_dir: Path,
    where: str,
    test_cmd: str = DEFAULT_TEST_COMMAND,
    setup: str | None = None,
    timeout_s: float | None = None,
) -> EvalTask:
    missing = [key for key in REQUIRED if not row.get(key)]
    if missing:
        raise UserError(f"{where} lacks {', '.join(missing)}; it is not a SWE-bench instance.")
    instance_id = str(row["instance_id"])
    where = f"{where} ({instance_id})"
    fail_to_pass = _test_ids(row.get("FAIL_TO_PASS"), f"{where} FAIL_TO_PASS")
    pass_to_pass = _test_ids(row.get("PASS_TO_PASS"), f"{where} PASS_TO_PASS")
    if not fail_to_pass:
        raise UserError(f"{where} has no FAIL_TO_PASS tests; nothing could score it.")
    test_patch = str(row["test_patch"])
    gold = str(row.get("patch") or "")
    return EvalTask(
        id=instance_id,
        statement=str(row["problem_statement"]),
        tests=HiddenTests(
            change=Change(patch=test_patch),
            fail_to_pass=(test_command(test_cmd, fail_to_pass),),
            pass_to_pass=(test_command(test_cmd, pass_to_pass),) if pass_to_pass else (),
            timeout_s=timeout_s,
        ),
        repo=str(find_clone(repos_dir, str(row["repo"]))),
        commit=str(row["base_commit"]),
        setup=setup,
        reference=Change(patch=gold) if gold.strip() else None,
        metadata={
            **{key: row[key] for key in METADATA_KEYS if row.get(key) is not None},
            "fail_to_pass": fail_to_pass,
            "pass_to_pass": pass_to_pass,
            "test_files": sorted(patch_paths(test_patch)),
        },
        source=where,
    )


def tasks_from_swebench(
    rows: list[Mapping[str, Any]],
    repos_dir: Path | None,
    source: str,
    test_cmd: str | None = None,
    setup: str | None = None,
    timeout_s: float | None = None,
) -> list[EvalTask]:
    """Tasks for SWE-bench `rows`; `repos_dir` holds a clone of each instance's repository."""
    if repos_dir is None:
        raise UserError(
            f"{source} holds SWE-bench instances; pass --swebench-repos DIR with a local clone "
            "of each repository (DIR/owner__name)."
        )
    repos_dir = Path(repos_dir).expanduser()
    if not repos_dir.is_dir():
        raise UserError(f"--swebench-repos {repos_dir} is not a directory; fix the path.")
    return [
        task_from_instance(
            row,
            repos_dir,
            f"{source}:{number}",
            test_cmd=test_cmd or DEFAULT_TEST_COMMAND,
            setup=setup,
            timeout_s=timeout_s,
        )
        for number, row in enumerate(rows, 1)
    ]
