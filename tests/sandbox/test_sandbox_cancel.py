"""Cancelling a running command: the sandbox's cancel event kills it, and stops later ones.

Real processes throughout, and real bwrap where it can run; the container backend's cancel is
tested with the fake engine in test_container.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sandbox_helpers import busy_cgroups, marker, needs_bwrap, processes_with

from pullsmith.sandbox import make_sandbox
from pullsmith.sandbox.base import CommandResult, Limits, SandboxPolicy
from pullsmith.sandbox.process import CANCEL_NOTE, run_process, sandbox_env

# Generous bounds: only a hang (the 60 s sleep running out) should fail a test.
BOUND_S = 10.0


@pytest.fixture
def cancel() -> Iterator[threading.Event]:
    """The sandbox's cancel event; set at teardown too, so a failing test leaves nothing
    running for the next to trip over."""
    event = threading.Event()
    yield event
    event.set()


def wait_for(condition: Callable[[], object], timeout_s: float = BOUND_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def gone(pid: int) -> bool:
    """Whether process `pid` no longer runs on the host: gone, or a zombie (bwrap's inner
    process, orphaned, waits for an init that may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def sleeps(tag: str) -> list[int]:
    """The host pids of the `sleep 60.TAG` processes themselves (bwrap's and bash's command
    lines hold the text too)."""
    found = []
    for pid in processes_with(tag):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\0"):
                found.append(pid)
        except OSError:
            pass
    return found


def in_thread(run: Callable[[], CommandResult]) -> tuple[threading.Thread, list[CommandResult]]:
    results: list[CommandResult] = []
    thread = threading.Thread(target=lambda: results.append(run()), daemon=True)
    thread.start()
    return thread, results


def run(command: str, cwd: Path, cancel: threading.Event | None) -> CommandResult:
    return run_process(
        ["bash", "-c", command],
        command=command,
        cwd=cwd,
        env=sandbox_env(SandboxPolicy()),
        limits=Limits(),
        cancel=cancel,
    )


def test_cancel_kills_a_running_command_and_its_process_group(tmp_path, cancel):
    tag = marker()
    command = f"echo $$ > pid; sleep 60.{tag} & echo $! > child; echo started; wait"
    started = time.monotonic()
    thread, results = in_thread(lambda: run(command, tmp_path, cancel))
    assert wait_for(lambda: (tmp_path / "child").is_file() and (tmp_path / "child").read_text())
    shell = int((tmp_path / "pid").read_text())
    child = int((tmp_path / "child").read_text())
    assert not gone(shell) and not gone(child)
    time.sleep(0.5)
    cancel.set()
    thread.join(BOUND_S)
    assert not thread.is_alive(), "the command was not stopped"
    assert time.monotonic() - started < BOUND_S
    (result,) = results
    assert result.cancelled and result.limit_hit == "cancelled"
    assert not result.timed_out
    assert result.exit_code == 128 + 9  # SIGKILL
    assert result.output == f"started\n{CANCEL_NOTE}\n"
    assert gone(shell)
    assert wait_for(lambda: gone(child)), "the background sleep outlived the cancel"
    assert processes_with(f"sleep 60.{tag}") == []
    assert busy_cgroups() == []


def test_the_note_goes_on_a_line_of_its_own(tmp_path, cancel):
    thread, results = in_thread(lambda: run("printf partial; exec sleep 60", tmp_path, cancel))
    time.sleep(0.5)
    cancel.set()
    thread.join(BOUND_S)
    assert not thread.is_alive()
    assert results[0].output == f"partial\n{CANCEL_NOTE}\n"


def test_a_cancel_set_before_the_start_starts_nothing(tmp_path, cancel):
    cancel.set()
    result = run("touch started", tmp_path, cancel)
    assert result.cancelled and result.limit_hit == "cancelled"
    assert result.exit_code == 130
    assert result.output == f"{CANCEL_NOTE}\n"
    assert not (tmp_path / "started").exists()


def test_an_unset_cancel_changes_nothing(tmp_path, cancel):
    result = run("echo out; echo err >&2; exit 3", tmp_path, cancel)
    assert result.exit_code == 3 and result.output == "out\nerr\n"
    assert not result.cancelled and result.limit_hit is None and not result.timed_out
    timed = run_process(
        ["bash", "-c", "sleep 60"],
        command="sleep 60",
        cwd=tmp_path,
        env=sandbox_env(SandboxPolicy()),
        limits=Limits(),
        timeout_s=0.3,
        cancel=cancel,
    )
    assert timed.timed_out and timed.limit_hit == "timeout" and not timed.cancelled
    assert CANCEL_NOTE not in timed.output


def test_none_backend_cancel_stops_this_command_and_the_next(tmp_path, cancel):
    box = make_sandbox("none", tmp_path, cancel=cancel)
    assert box.run("echo hi").output == "hi\n"
    thread, results = in_thread(lambda: box.run("echo $$ > pid; exec sleep 60"))
    assert wait_for(lambda: (tmp_path / "pid").is_file() and (tmp_path / "pid").read_text())
    pid = int((tmp_path / "pid").read_text())
    time.sleep(0.5)
    cancel.set()
    thread.join(BOUND_S)
    assert not thread.is_alive()
    assert results[0].cancelled
    assert gone(pid)
    after = box.run("touch later")
    assert after.cancelled and after.exit_code == 130
    assert not (tmp_path / "later").exists()


@needs_bwrap
def test_bwrap_cancel_kills_everything_in_the_sandbox(tmp_path, cancel):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    box = make_sandbox("bwrap", workspace, cancel=cancel)
    assert not box.run("true").cancelled
    tag = marker()
    # $$ inside is a pid of the sandbox's own namespace: find the host's pids by the marker.
    command = f"sleep 60.{tag} & setsid sleep 60.{tag} & echo started; wait"
    thread, results = in_thread(lambda: box.run(command))
    assert wait_for(lambda: len(sleeps(tag)) == 2)
    # The shell and both sleeps (bwrap's command lines hold only the launcher, which got the
    # command from a memfd).
    pids = processes_with(tag)
    assert len(pids) >= 3
    time.sleep(0.5)
    cancel.set()
    thread.join(BOUND_S)
    assert not thread.is_alive(), "the sandboxed command was not stopped"
    (result,) = results
    assert result.cancelled and result.limit_hit == "cancelled"
    assert result.output.startswith("started\n") and result.output.endswith(f"{CANCEL_NOTE}\n")
    assert wait_for(lambda: all(gone(pid) for pid in pids)), "a process outlived the cancel"
    assert busy_cgroups() == []
    later = box.run(f"touch {workspace}/later")
    assert later.cancelled and later.exit_code == 130
    assert not (workspace / "later").exists()


@needs_bwrap
def test_bwrap_pre_set_cancel_starts_no_sandbox(tmp_path, cancel):
    cancel.set()
    box = make_sandbox("bwrap", tmp_path, cancel=cancel)
    result = box.run("touch started")
    assert result.cancelled and result.exit_code == 130
    assert not (tmp_path / "started").exists()
