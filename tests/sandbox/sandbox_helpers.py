"""What the sandbox tests share: which backends can run here, and host-side probes."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from pullsmith.sandbox import bwrap_available, engine_error
from pullsmith.sandbox.limits import cgroup_parents

BWRAP_REASON = bwrap_available()
needs_bwrap = pytest.mark.skipif(
    BWRAP_REASON is not None, reason=f"bwrap cannot sandbox here: {BWRAP_REASON}"
)
CONTAINER_IMAGE = os.environ.get("PULLSMITH_TEST_IMAGE", "python:3.11-slim")


def backend_skip_reason(name: str) -> str | None:
    """Why backend `name` cannot be tested here, or None."""
    if name == "bwrap":
        return BWRAP_REASON and f"bwrap cannot sandbox here: {BWRAP_REASON}"
    reason = engine_error(name)
    if reason is not None:
        return f"no {name} engine answers here: {reason}"
    found = subprocess.run(
        [name, "image", "inspect", CONTAINER_IMAGE], capture_output=True, timeout=30
    )
    if found.returncode != 0:
        return f"{name} has no {CONTAINER_IMAGE} image (tests never pull one)"
    return None


def fork_bomb_skip_reason() -> str | None:
    """A fork bomb is only safe to run where something bounds the number of processes."""
    if cgroup_parents("auto") is None and os.geteuid() == 0:
        return "no cgroup pids controller here, and root ignores RLIMIT_NPROC"
    return None


def marker() -> str:
    """A number unlikely to appear anywhere else, usable in command lines (`sleep 1000.N`)."""
    return f"{uuid.uuid4().int % 10**9:09d}"


def processes_with(text: str) -> list[int]:
    """Pids of live (non-zombie) processes on the host whose command line, its arguments
    joined by spaces, contains `text`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text.encode() in cmdline and state != "Z":
            found.append(int(entry))
    return found


def busy_cgroups(wait_s: float = 2.0) -> list[str]:
    """Command cgroups of this test process that still hold a process after `wait_s` (what an
    ended command left is killed in the background, a few milliseconds after it)."""
    deadline = time.monotonic() + wait_s
    while True:
        found = _busy_cgroups()
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.01)


def _busy_cgroups() -> list[str]:
    parents = cgroup_parents("auto")
    if parents is None:
        return []
    prefix = f"pullsmith-{os.getpid()}-"
    busy = []
    for parent in {parents.memory, parents.pids}:
        for entry in parent.iterdir():
            if entry.name.startswith(prefix):
                try:
                    if (entry / "cgroup.procs").read_text().strip():
                        busy.append(entry.name)
                except OSError:
                    pass  # removed meanwhile
    return busy
