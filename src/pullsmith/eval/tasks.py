"""Evaluation tasks and suites: what a task is, and how suites are read from disk.

A task is a repository snapshot, a statement in words, an optional setup command and hidden
tests. The same keys are used in a task directory's `task.toml`, in a line of a JSONL suite and
in what a suite's builder returns:

    id            the task's name (a task directory's name by default)
    statement     what the agent is asked to do
    repo          a directory (relative to the file that names it) or a git URL
    commit        with `repo`: export this commit of a git repository instead of copying files
    files         {path: text} written over the snapshot (or the whole snapshot, without `repo`)
    setup         a shell command run in the snapshot before the agent starts and before scoring
    test_command  the visible test command the agent is told about (detected when absent)
    [tests]       the hidden tests, never in the agent's repository:
        files / files_dir    files restored over the result before scoring
        patch / patch_file   a patch applied to the result (touched files reset to the base first)
        fail_to_pass         commands that must pass after the change
        pass_to_pass         commands that must keep passing
        timeout_s            per-command timeout
    [reference]   a known solution (files / files_dir / patch / patch_file), only ever used by
                  `pullsmith eval check` to prove that the scorer tells right from wrong
    [metadata]    free-form (bug_type, source id, ...), copied into the records

A suite is a directory of task directories (each with a `task.toml`), one JSONL file, a
SWE-bench instance file (see swebench.py), or a directory whose `suite.toml` names a builder
(a Python file with `tasks(suite_dir)` returning task dicts) or a JSONL file.
"""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pullsmith.errors import UserError
from pullsmith.workspace import is_url

TASK_FILE = "task.toml"
SUITE_FILE = "suite.toml"
SUBSETS_DIR = "subsets"
DEFAULT_TEST_TIMEOUT_S = 120.0

_TASK_KEYS = {
    "id",
    "statement",
    "repo",
    "commit",
    "files",
    "setup",
    "test_command",
    "tests",
    "reference",
    "metadata",
}
_TEST_KEYS = {
    "files",
    "files_dir",
    "patch",
    "patch_file",
    "fail_to_pass",
    "pass_to_pass",
    "timeout_s",
}
_CHANGE_KEYS = {"files", "files_dir", "patch", "patch_file"}
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, eq=False)
class Change:
    """Files to write over a tree and/or a patch to apply to it."""

    files: dict[str, bytes] = field(default_factory=dict)
    patch: str = ""

    @property
    def empty(self) -> bool:
        return not self.files and not self.patch.strip()

    def paths(self) -> set[str]:
        """Every path this change writes, creates or deletes."""
        return set(self.files) | patch_paths(self.patch)


@dataclass(frozen=True, eq=False)
class HiddenTests:
    """What scores a task: restored over the result, then run in the sandbox."""

    change: Change = field(default_factory=Change)
    fail_to_pass: tuple[str, ...] = ()
    pass_to_pass: tuple[str, ...] = ()
    timeout_s: float | None = None

    @property
    def commands(self) -> list[tuple[str, str]]:
        return [("fail_to_pass", c) for c in self.fail_to_pass] + [
            ("pass_to_pass", c) for c in self.pass_to_pass
        ]


@dataclass(frozen=True, eq=False)
class EvalTask:
    id: str
    statement: str
    tests: HiddenTests
    repo: str | None = None
    commit: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    setup: str | None = None
    test_command: str | None = None
    reference: Change | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def safe_id(self) -> str:
        """The id as a file and branch name."""
        return _SAFE_ID.sub("-", self.id).strip(".-") or "task"

    @property
    def hidden_paths(self) -> set[str]:
        return self.tests.change.paths()


@dataclass
class Suite:
    name: str
    path: Path
    tasks: list[EvalTask]
    subsets_dir: Path | None = None

    def subset_ids(self, name: str) -> list[str]:
        """The ids of subset `name` (a file under the suite's subsets/, or a path to one)."""
        candidates = [Path(name)]
        if self.subsets_dir is not None:
            candidates.insert(0, self.subsets_dir / f"{name}.txt")
        for candidate in candidates:
            if candidate.is_file():
                return read_id_list(candidate)
        known = (
            sorted(p.stem for p in self.subsets_dir.glob("*.txt"))
            if self.subsets_dir and self.subsets_dir.is_dir()
            else []
        )
        hint = f"known subsets: {', '.join(known)}" if known else "this suite defines no subsets"
        raise UserError(f"unknown subset '{name}' for suite {self.name} ({hint}); pick one.")

    def select(
        self,
        ids: Iterable[str] | None = None,
        subset: str | None = None,
        limit: int | None = None,
    ) -> list[EvalTask]:
        """The tasks chosen by ids and/or a subset (in suite order), cut to `limit`."""
        by_id = {task.id: task for task in self.tasks}
        chosen = list(self.tasks)
        filters = []
        if ids is not None:
            filters.append(("--tasks", list(ids)))
        if subset:
            filters.append((f"subset {subset}", self.subset_ids(subset)))
        for label, wanted in filters:
            unknown = [i for i in wanted if i not in by_id]
            if unknown:
                raise UserError(
                    f"{label} names task(s) not in suite {self.name}: {', '.join(unknown[:5])}"
                    f"{' …' if len(unknown) > 5 else ''}; check the ids."
                )
            keep = set(wanted)
            chosen = [task for task in chosen if task.id in keep]
        if limit is not None:
            if limit < 1:
                raise UserError("--limit must be at least 1.")
            chosen = chosen[:limit]
        return chosen


def read_id_list(path: Path) -> list[str]:
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.append(line)
    return ids


# --- patches ------------------------------------------------------------------------------


def _patch_path(raw: str) -> str | None:
    raw = raw.split("\t", 1)[0].strip()
    if raw.startswith('"') and raw.endswith('"'):
        raw = raw[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
    if raw == "/dev/null":
        return None
    if raw[:2] in ("a/", "b/"):
        raw = raw[2:]
    return raw


def patch_paths(patch: str) -> set[str]:
    """The files a unified diff touches (both sides of a rename)."""
    paths: set[str] = set()
    for line in patch.splitlines():
        if line.startswith(("--- ", "+++ ")):
            path = _patch_path(line[4:])
            if path:
                paths.add(path)
        elif line.startswith(("rename from ", "rename to ", "copy to ")):
            paths.add(line.split(" ", 2)[2].strip())
    return paths


# --- parsing ------------------------------------------------------------------------------


def _check_rel_path(path: str, where: str) -> str:
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or pure.parts[:1] == (".git",):
        raise UserError(
            f"{where}: '{path}' must be a relative path inside the repository (no '..', not .git)."
        )
    return pure.as_posix()


def _read_dir(root: Path, where: str) -> dict[str, bytes]:
    if not root.is_dir():
        raise UserError(f"{where}: {root} is not a directory; fix the path.")
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and ".git" not in path.relative_to(root).parts:
            files[path.relative_to(root).as_posix()] = path.read_bytes()
    return files


def _inline_files(value: Any, where: str) -> dict[str, bytes]:
    if not isinstance(value, Mapping):
        raise UserError(f"{where} must be a table of path = text; fix it.")
    files = {}
    for path, text in value.items():
        if not isinstance(text, str):
            raise UserError(f"{where}.{path} must be text; fix it.")
        files[_check_rel_path(str(path), where)] = text.encode("utf-8")
    return files


def _change(data: Mapping[str, Any], base_dir: Path, where: str, keys: set[str]) -> Change:
    unknown = set(data) - keys
    if unknown:
        raise UserError(
            f"{where} has unknown key(s) {', '.join(sorted(unknown))}; valid: "
            f"{', '.join(sorted(keys))}."
        )
    files: dict[str, bytes] = {}
    if "files_dir" in data:
        files.update(_read_dir(base_dir / str(data["files_dir"]), f"{where}.files_dir"))
    if "files" in data:
        files.update(_inline_files(data["files"], f"{where}.files"))
    patch = ""
    if "patch_file" in data:
        patch_file = base_dir / str(data["patch_file"])
        if not patch_file.is_file():
            raise UserError(f"{where}.patch_file: {patch_file} does not exist; fix the path.")
        patch = patch_file.read_text(encoding="utf-8")
    if "patch" in data:
        if not isinstance(data["patch"], str):
            raise UserError(f"{where}.patch must be the text of a patch; fix it.")
        patch += data["patch"]
    return Change(files=files, patch=patch)


def _commands(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(c, str) and c.strip() for c in value):
        raise UserError(f"{where} must be a list of shell commands; fix it.")
    return tuple(value)


def _text(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise UserError(f"{where}: '{key}' must be text; fix it.")
    return value


def task_from_dict(
    data: Mapping[str, Any], base_dir: Path, source: str, default_id: str | None = None
) -> EvalTask:
    """Build a task from its keys (see the module docstring); paths are relative to base_dir."""
    where = source
    if not isinstance(data, Mapping):
        raise UserError(f"{where} is not a table of task keys; fix it.")
    unknown = set(data) - _TASK_KEYS
    if unknown:
        raise UserError(
            f"{where} has unknown key(s) {', '.join(sorted(unknown))}; valid: "
            f"{', '.join(sorted(_TASK_KEYS))}."
        )
    task_id = data.get("id", default_id)
    if not isinstance(task_id, str | int) or not str(task_id).strip():
        raise UserError(f"{where} has no id; give every task an 'id'.")
    task_id = str(task_id).strip()
    where = f"{source} (task {task_id})"
    statement = _text(data, "statement", where)
    if not statement or not statement.strip():
        raise UserError(f"{where} has no statement; say in words what the agent should do.")
    repo = _text(data, "repo", where)
    if repo is not None and not is_url(repo):
        repo_path = (base_dir / repo).resolve()
        if not repo_path.is_dir():
            raise UserError(f"{where}: repo {repo_path} is not a directory; fix the path.")
        repo = str(repo_path)
    files = _inline_files(data["files"], f"{where}.files") if "files" in data else {}
    if repo is None and not files:
        raise UserError(f"{where} has no snapshot; give it a 'repo' or 'files'.")
    commit = _text(data, "commit", where)
    if commit is not None and repo is None:
        raise UserError(f"{where} names a commit but no repo; add the 'repo' it belongs to.")
    tests_data = data.get("tests")
    if not isinstance(tests_data, Mapping):
        raise UserError(f"{where} has no [tests] table; hidden tests decide whether it is solved.")
    unknown = set(tests_data) - _TEST_KEYS
    if unknown:
        raise UserError(
            f"{where}.tests has unknown key(s) {', '.join(sorted(unknown))}; valid: "
            f"{', '.join(sorted(_TEST_KEYS))}."
        )
    change = _change(
        {k: v for k, v in tests_data.items() if k in _CHANGE_KEYS},
        base_dir,
        f"{where}.tests",
        _CHANGE_KEYS,
    )
    fail_to_pass = _commands(tests_data.get("fail_to_pass"), f"{where}.tests.fail_to_pass")
    pass_to_pass = _commands(tests_data.get("pass_to_pass"), f"{where}.tests.pass_to_pass")
    if not fail_to_pass and not pass_to_pass:
        raise UserError(
            f"{where} has no test commands; list them in tests.fail_to_pass (and pass_to_pass)."
        )
    timeout = tests_data.get("timeout_s")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise UserError(f"{where}: tests.timeout_s must be a positive number of seconds.")
    for path in change.paths():
        _check_rel_path(path, f"{where}.tests")
    reference = None
    if data.get("reference") is not None:
        if not isinstance(data["reference"], Mapping):
            raise UserError(f"{where}: [reference] must be a table; fix it.")
        reference = _change(data["reference"], base_dir, f"{where}.reference", _CHANGE_KEYS)
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise UserError(f"{where}: [metadata] must be a table; fix it.")
    return EvalTask(
        id=task_id,
        statement=statement,
        tests=HiddenTests(
            change=change,
            fail_to_pass=fail_to_pass,
            pass_to_pass=pass_to_pass,
            timeout_s=float(timeout) if timeout is not None else None,
        ),
        repo=repo,
        commit=commit,
        files=files,
        setup=_text(data, "setup", where),
        test_command=_text(data, "test_command", where),
        reference=reference if reference is not None and not reference.empty else None,
        metadata=dict(metadata),
        source=source,
    )


# --- suites -------------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid TOML ({exc}); fix it.") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file (or a JSON array)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" or text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} is not valid JSON ({exc}); fix it.") from None
        if not isinstance(rows, list):
            raise UserError(f"{path} must hold a list of tasks; fix it.")
        return rows
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number} is not valid JSON ({exc}); fix that line.") from None
    return rows


def _tasks_from_rows(rows: list[Any], base_dir: Path, source: str) -> list[EvalTask]:
    return [
        task_from_dict(row, base_dir, f"{source}:{number}") for number, row in enumerate(rows, 1)
    ]


def _check_unique(tasks: list[EvalTask], where: str) -> list[EvalTask]:
    seen: set[str] = set()
    for task in tasks:
        if task.id in seen:
            raise UserError(f"{where} has two tasks with id '{task.id}'; ids must be unique.")
        seen.add(task.id)
    return tasks


def _load_builder(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"pullsmith_suite_{path.parent.name}", path)
    if spec is None or spec.loader is None:
        raise UserError(f"{path} can not be loaded as a Python file; fix it.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "tasks", None)):
        raise UserError(f"{path} has no tasks(suite_dir) function; a suite builder needs one.")
    return module


def load_suite(
    path: str | Path,
    swebench_repos: Path | None = None,
    test_cmd: str | None = None,
    setup: str | None = None,
    timeout_s: float | None = None,
) -> Suite:
    """Read the suite at `path` (see the module docstring for the forms a suite takes).

    The other arguments are for SWE-bench instance files only: where the clones are, the test
    command template, a setup command and a per-test timeout (see swebench.py).
    """
    swebench: dict[str, Any] = {"test_cmd": test_cmd, "setup": setup, "timeout_s": timeout_s}
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"suite {path} does not exist; pass a suite directory or JSONL file.")
    path = path.resolve()
    if path.is_file():
        rows = read_jsonl(path)
        from pullsmith.eval.swebench import is_swebench_rows, tasks_from_swebench

        subsets = path.parent / SUBSETS_DIR
        if is_swebench_rows(rows):
            tasks = tasks_from_swebench(rows, swebench_repos, str(path), **swebench)
        else:
            tasks = _tasks_from_rows(rows, path.parent, path.name)
        return Suite(path.stem, path, _check_unique(tasks, str(path)), subsets)
    if (path / SUITE_FILE).is_file():
        meta = _read_toml(path / SUITE_FILE)
        name = str(meta.get("name") or path.name)
        if "builder" in meta:
            module = _load_builder(path / str(meta["builder"]))
            rows = list(module.tasks(path))
            tasks = _tasks_from_rows(rows, path, f"{name} (built by {meta['builder']})")
        elif "tasks" in meta:
            tasks = load_suite(path / str(meta["tasks"]), swebench_repos, **swebench).tasks
        else:
            raise UserError(f"{path / SUITE_FILE} names neither a builder nor a tasks file.")
        return Suite(name, path, _check_unique(tasks, str(path)), path / SUBSETS_DIR)
    if (path / TASK_FILE).is_file():
        task = task_from_dict(_read_toml(path / TASK_FILE), path, str(path / TASK_FILE), path.name)
        return Suite(path.name, path, [task], None)
    task_files = sorted(path.glob(f"*/{TASK_FILE}"))
    if not task_files:
        raise UserError(
            f"{path} holds no tasks (no {SUITE_FILE}, and no */{TASK_FILE}); "
            "pass a suite directory or JSONL file."
        )
    tasks = [
        task_from_dict(_read_toml(file), file.parent, str(file), file.parent.name)
        for file in task_files
    ]
    return Suite(path.name, path, _check_unique(tasks, str(path)), path / SUBSETS_DIR)
