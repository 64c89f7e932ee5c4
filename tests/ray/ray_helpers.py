"""Shared helpers for the Ray tests: one real local Ray instance for the whole session.

The instance is a head node with 2 CPUs in a temporary directory, on 127.0.0.1 only (Ray's
single-node mode, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, keeps every address on the loopback),
with no dashboard, no usage statistics and no token file in the real home. It is started by the
first test that asks for it and shut down at the end of the session. `ray_env()` is what a
`pullsmith` child process needs to join it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "service"))
from service_helpers import write_history  # noqa: E402

# A one-file repository whose test is a plain script (milliseconds, not pytest's seconds).
INSTRUCTION = "add() in calc.py subtracts; make it add."
TEST_COMMAND = "python calc.py"
BUGGY = (
    "def add(a, b):\n"
    "    return a - b\n"
    "\n"
    "\n"
    'if __name__ == "__main__":\n'
    '    assert add(2, 3) == 5, f"add(2, 3) is {add(2, 3)}, not 5"\n'
)
# Another size than the bug's: a same-size edit within a second can go unseen by git.
FIXED = BUGGY.replace("    return a - b\n", "    return a + b  # fixed\n")
FIX = f"add() subtracts.\n```bash\ncat > calc.py <<'EOF'\n{FIXED}EOF\n```"
FINISH = '```bash\nfinish "add() adds"\n```'
GOOD_REPLIES = [FIX, FINISH]

# Before ray is imported anywhere in this process: these are read when it is.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
}
os.environ.update(RAY_ENV)
RAY_CPUS = 2

_ADDRESS: dict[str, str] = {}


def ray_env(**extra: str) -> dict[str, str]:
    """Environment variables for a child process that joins the session's Ray instance."""
    return {**RAY_ENV, "PULLSMITH_RAY_ADDRESS": _ADDRESS["gcs"], **extra}


@pytest.fixture(scope="session", name="ray_cluster")
def ray_cluster_fixture() -> Iterator[str]:
    """The session's Ray instance; its GCS address (host:port on 127.0.0.1).

    Each test module imports this fixture, which makes it one fixture per module: the first
    starts Ray, the others share it, and the last one finalized (at the end of the session)
    shuts it down."""
    pytest.importorskip("ray", reason="ray is not installed (make test installs pullsmith[ray])")
    if not _USERS:
        _start()
    _USERS.append(1)
    try:
        yield _ADDRESS["gcs"]
    finally:
        _USERS.pop()
        if not _USERS:
            _stop()


_USERS: list[int] = []
_DIRS: list[Path] = []


def _start() -> None:
    import ray

    # Ray's socket paths must stay short: a directory right under /tmp, not pytest's.
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    home = Path(tempfile.mkdtemp(prefix="ray-home-", dir="/tmp"))
    _DIRS[:] = [temp, home]
    # The workers inherit this process's environment: an identity for their commits.
    for name, value in (
        ("GIT_AUTHOR_NAME", "Test User"),
        ("GIT_AUTHOR_EMAIL", "test@example.invalid"),
        ("GIT_COMMITTER_NAME", "Test User"),
        ("GIT_COMMITTER_EMAIL", "test@example.invalid"),
    ):
        os.environ.setdefault(name, value)
    context = ray.init(
        num_cpus=RAY_CPUS,
        _temp_dir=str(temp),
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        namespace="pullsmith",
        log_to_driver=False,
        configure_logging=False,
        # Nothing of the workers' lands in the real home's configuration.
        runtime_env={"env_vars": {"XDG_CONFIG_HOME": str(home / "config")}},
    )
    _ADDRESS["gcs"] = context.address_info["gcs_address"]
    assert _ADDRESS["gcs"].startswith("127.0.0.1:"), _ADDRESS


def _stop() -> None:
    import ray

    ray.shutdown()
    for path in _DIRS:
        shutil.rmtree(path, ignore_errors=True)


def make_repo(path: Path) -> Path:
    from conftest import git

    path.mkdir(parents=True)
    (path / "calc.py").write_text(BUGGY, encoding="utf-8")
    git("init", "-q", "-b", "main", cwd=path)
    git("add", "-A", cwd=path)
    git("commit", "-q", "-m", "initial", cwd=path)
    return path


def record(root: Path, settings, replies: list[str] | None = None) -> tuple[str, Path]:
    """One real run of the example repository with a scripted model, through the local
    executor: (its replay spec, the repository)."""
    from conftest import ScriptedModel

    from pullsmith.engine import run_task
    from pullsmith.task import Task

    repo = make_repo(root / "recorded-repo")
    result = run_task(
        Task(instruction=INSTRUCTION, repo=str(repo)),
        settings,
        model=ScriptedModel(list(replies or GOOD_REPLIES)),
    )
    assert result.status == "passed", result.error
    return f"replay:{result.run_dir}", repo


def slow_recording(root: Path, seconds: int) -> str:
    """A recording whose first command sleeps `seconds`, then the good run."""
    return "replay:" + str(
        write_history(
            root / f"slow-{seconds}",
            [f"First, a pause.\n```bash\nsleep {seconds}\n```", *GOOD_REPLIES],
        )
    )


def event_types(path: Path) -> list[str]:
    return [json.loads(line)["type"] for line in path.read_text().splitlines() if line.strip()]
