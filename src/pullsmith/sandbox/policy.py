"""The policy for the agent's commands, built from settings alone.

`agent_policy` depends only on its arguments (and, as `sandbox_env` does, on this interpreter's
scripts directory and $PATH): the configuration files to hide come from `settings.config_files`,
not from the current directory.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

from pullsmith.config import Settings, user_config_path
from pullsmith.sandbox.base import MIB, Limits, SandboxPolicy, policy_preset
from pullsmith.sandbox.process import DEFAULT_PATH


def agent_policy(settings: Settings, hidden: Iterable[str | Path] = ()) -> SandboxPolicy:
    """The policy for the agent's commands: the `sandbox_policy` preset and limits of
    `settings`, our own tools on PATH, no caches left in the diff, and pullsmith's own
    configuration (which may hold API keys: the user's configuration directory and every file
    in `settings.config_files`), its run logs and `hidden` out of sight."""
    tools_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", DEFAULT_PATH)
    candidates = (
        user_config_path().parent,
        *settings.config_files,
        settings.runs_dir,
        *(Path(item) for item in hidden),
    )
    return policy_preset(
        settings.sandbox_policy,
        env_set={
            "PATH": f"{tools_dir}:{path}",
            "PYTHONDONTWRITEBYTECODE": "1",
            **pytest_env(settings.pytest_timeout_s, settings.pytest_skip_plugins),
        },
        hidden_paths=tuple(dict.fromkeys(candidates)),
        limits=Limits(
            timeout_s=settings.command_timeout_s,
            output_bytes=settings.sandbox_output_kb * 1024,
            memory_bytes=settings.sandbox_memory_mb * MIB,
            processes=settings.sandbox_processes,
            file_size_bytes=settings.sandbox_file_size_mb * MIB,
            cpu_seconds=settings.sandbox_cpu_s,
            cgroup=settings.sandbox_cgroup,
        ),
    )


def pytest_env(per_test_s: float, skip_plugins: str = "") -> dict[str, str]:
    """The environment that makes pytest (and only pytest) stop a test running longer than
    `per_test_s` seconds: pytest-timeout reads PYTEST_TIMEOUT where the sandbox's Python has
    it; elsewhere faulthandler dumps the stack of a test still running at 1.5 times that (the
    test run's own timeout then ends it). 0: no per-test limit. `skip_plugins` (comma-separated)
    are plugins of the sandbox's Python that pytest does not load (`-p no:NAME`)."""
    options = "-p no:cacheprovider"
    for name in filter(None, (part.strip() for part in skip_plugins.split(","))):
        options += f" -p no:{name}"
    if per_test_s <= 0:
        return {"PYTEST_ADDOPTS": options}
    return {
        "PYTEST_ADDOPTS": f"{options} -o faulthandler_timeout={per_test_s * 1.5:g}",
        "PYTEST_TIMEOUT": f"{per_test_s:g}",
    }
