"""Shared helpers for the pull request tests: real runs with a scripted model, and the CLI."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ScriptedModel, bwrap_works, git

from pullsmith.attempt import run_dir_for
from pullsmith.config import load_settings
from pullsmith.engine import run_task
from pullsmith.pr.followup import prepare_follow_up
from pullsmith.pr.local import record_run
from pullsmith.pr.publish import LocalPublisher
from pullsmith.store import Store
from pullsmith.task import Task

SANDBOX = "bwrap" if bwrap_works() else "none"
INSTRUCTION = "The ledger total drops the last amount; fix it."

# The repository the runs work on. Its files live here, not as files on disk, so pytest does
# not collect its (failing) test, and so other tests' example repositories can change freely.
REPORT = (
    '"""Totals for ledger rows."""\n'
    "\n\n"
    "def total(amounts):\n"
    '    """The sum of every amount."""\n'
    "    result = 0\n"
    "    for i in range(len(amounts) - 1):\n"
    "        result += amounts[i]\n"
    "    return result\n"
)
FIXED_REPORT = REPORT.replace(
    "    for i in range(len(amounts) - 1):\n        result += amounts[i]\n",
    "    for amount in amounts:\n        result += amount\n",
)
LEDGER_FILES = {
    "AGENTS.md": "# Notes for coding agents\n\n- Test command: `python -m pytest -q`\n",
    "README.md": "A tiny ledger.\n",
    "ledger/__init__.py": "",
    "ledger/report.py": REPORT,
    "tests/test_report.py": (
        "from ledger.report import total\n\n\n"
        "def test_total_counts_every_amount():\n"
        "    assert total([5, 10, 20]) == 35\n\n\n"
        "def test_total_of_one():\n"
        "    assert total([7]) == 7\n"
    ),
}
REPORT_DOC = '    """The sum of every amount."""\n'


# Settings from the developer's own environment that would send these tests elsewhere.
OUTSIDE_SETTINGS = (
    "PULLSMITH_DATABASE_URL",
    "PULLSMITH_GITHUB_API_URL",
    "PULLSMITH_GITHUB_REPO",
    "PULLSMITH_DATA_DIR",
    "PULLSMITH_TEST_COMMAND",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "GH_ENTERPRISE_TOKEN",
    "GITHUB_ENTERPRISE_TOKEN",
    "GH_CONFIG_DIR",
)


@pytest.fixture(name="ledger_repo")
def ledger_repo_fixture(tmp_path, monkeypatch) -> Path:
    """A small repository with one bug and a test that shows it, freshly committed.

    The developer's own store, GitHub and data settings are cleared for the test.
    """
    for name in OUTSIDE_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    repo = tmp_path / "ledger"
    for name, text in LEDGER_FILES.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "initial", cwd=repo)
    return repo


def fix_reply(repo: Path | None = None) -> str:
    return (
        "The loop skips the last amount.\n```bash\ncat > ledger/report.py <<'EOF'\n"
        + FIXED_REPORT
        + "EOF\n```"
    )


RUN_TESTS = "```bash\npython -m pytest -q\n```"
FINISH = '```bash\nfinish "total adds every amount"\n```'
# A change that does not fix anything, and a model that claims it does.
BAD_EDIT = "I will fix it.\n```bash\necho '# looked at this' >> ledger/report.py\n```"
FALSE_CLAIM = "Fixed the total; all tests pass now"
# Each finish worded differently: the loop sends an exact repeat back as malformed.
FALSE_FINISHES = [
    '```bash\nfinish "The total is fixed"\n```',
    '```bash\nfinish "Fixed the total, really"\n```',
    f'```bash\nfinish "{FALSE_CLAIM}"\n```',
]

EMPTY_TEST = (
    "Add a test for empty input.\n```bash\ncat > tests/test_empty.py <<'EOF'\n"
    "from ledger.report import total\n\n\n"
    "def test_total_of_nothing():\n"
    "    assert total([]) == 0\n"
    "EOF\n```"
)
FINISH_EMPTY = '```bash\nfinish "total handles empty input, with a test"\n```'


def idle_replies() -> list[str]:
    """A model that changes nothing and says it is done, three times over."""
    return [f'```bash\nfinish "nothing to do ({n})"\n```' for n in range(3)]


def good_replies(repo: Path | None = None) -> list[str]:
    return [fix_reply(), RUN_TESTS, FINISH]


def failing_replies() -> list[str]:
    return [BAD_EDIT, *FALSE_FINISHES]


def settings_for(tmp_path: Path, **extra):
    return load_settings({"sandbox": SANDBOX, **extra}, cwd=tmp_path)


def run_and_record(repo: Path, tmp_path: Path, replies: list[str], instruction: str = INSTRUCTION):
    """A real run with a scripted model, recorded as the CLI records it: (result, PR or None)."""
    settings = settings_for(tmp_path)
    task = Task(instruction=instruction, repo=str(repo))
    result = run_task(
        task, settings, model=ScriptedModel(replies), publisher=LocalPublisher(settings)
    )
    return result, _pull_request(settings, result.pull_request)


def _pull_request(settings, number):
    if number is None:
        return None
    with Store.open(settings) as store:
        return store.pull_request(number)


def follow_up_and_record(tmp_path: Path, ref: str, instruction: str, replies: list[str]):
    settings = settings_for(tmp_path)
    with Store.open(settings) as store:
        prepared = prepare_follow_up(store, settings, ref, instruction)
    task = prepared.task
    model = ScriptedModel(replies)
    result = run_task(task, settings, model=model, publisher=LocalPublisher(settings))
    assert result.pull_request == prepared.pull_request.number
    return result, _pull_request(settings, result.pull_request), model


def pullsmith(
    *args: str,
    cwd: Path | None = None,
    env: dict | None = None,
    subprocess_: bool = False,
) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: in this process (fast), or with `subprocess_` in a child."""
    if subprocess_:
        return subprocess.run(
            [sys.executable, "-c", "from pullsmith.cli import main; main()", *args],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
    from pullsmith.cli import main

    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="")
    stderr = io.StringIO()
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    code = 0
    try:
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    stdout.flush()
    out = stdout.buffer.getvalue().decode("utf-8")
    return subprocess.CompletedProcess(list(args), code, out, stderr.getvalue())


def assert_refused(proc: subprocess.CompletedProcess, fragment: str) -> None:
    """One clear sentence on stderr, a non-zero exit, no traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert fragment in proc.stderr, proc.stderr
    assert proc.stderr.startswith("pullsmith: "), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def repo_state(repo: Path) -> dict:
    """Everything a refused merge must leave as it was, byte for byte."""
    git_dir = repo / ".git"
    files = {}
    for path in sorted(repo.rglob("*")):
        if ".git" in path.relative_to(repo).parts or not path.is_file():
            continue
        files[str(path.relative_to(repo))] = hashlib.sha256(path.read_bytes()).hexdigest()
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname) %(objectname)"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    status = subprocess.run(
        [
            "git",
            "--no-optional-locks",
            "status",
            "--porcelain=v2",
            "--branch",
            "--untracked-files=all",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {
        "HEAD": (git_dir / "HEAD").read_bytes(),
        "head_commit": git("rev-parse", "HEAD", cwd=repo),
        "index": (git_dir / "index").read_bytes(),
        "refs": refs,
        "status": status,
        "files": files,
        "merge_head": (git_dir / "MERGE_HEAD").exists(),
    }


def make_pr(
    repo: Path,
    tmp_path: Path,
    files: dict[str, str],
    base: str | None = None,
    message: str = "Add a change",
    instruction: str = "Make a change.",
):
    """A PR without a model: a branch with one commit, recorded as a run would be."""
    from pullsmith.task import AttemptResult
    from pullsmith.workspace import Workspace

    settings = settings_for(tmp_path)
    task = Task(instruction=instruction, repo=str(repo), base=base)
    workspace = Workspace.create(repo, task.task_id, settings.worktrees_dir, base=base)
    for name, text in files.items():
        path = workspace.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    commit = workspace.commit(message)
    run_dir = run_dir_for(settings, task.task_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    result = AttemptResult(
        task_id=task.task_id,
        status="untested",
        exit_reason="finished",
        instruction=instruction,
        repo=str(workspace.repo),
        branch=workspace.branch,
        base_commit=workspace.base_commit,
        worktree="",
        run_dir=str(run_dir),
        base_ref=workspace.base_ref,
        summary=message,
        commit=commit,
    )
    workspace.remove()
    with Store.open(settings) as store:
        return record_run(store, task, result).pull_request


def commit_file(repo: Path, name: str, text: str, message: str = "user change") -> str:
    path = repo / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    git("add", name, cwd=repo)
    git("commit", "-q", "-m", message, cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo).strip()
