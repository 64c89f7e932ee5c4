"""Running one process for a sandbox backend: its own process group, a wall-clock timeout,
cancellation, merged and capped output, resource limits (limits.py) and a scrubbed environment.

Every backend builds an argv (bwrap's wrapper, or plain bash) and hands it to `run_process`, so
timeouts, output capping and clean-up behave the same whichever backend runs the command.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pullsmith.errors import UserError
from pullsmith.sandbox.base import MIB, CommandResult, Limits, OutputCallback, SandboxPolicy
from pullsmith.sandbox.limits import CommandCgroup, confine

READ_CHUNK = 64 * 1024
# After the command ends, output still in the pipe is read for at most this long: a process that
# left the process group (setsid) could otherwise hold the pipe open forever.
DRAIN_GRACE_S = 0.5
# Without a pidfd, how often to check whether the command has exited.
POLL_INTERVAL_S = 0.02
# How long a command killed at its timeout may take to go before we stop waiting for it.
KILL_WAIT_S = 5.0
# With a cancel event, how often to look at it while the command runs.
CANCEL_POLL_S = 0.1
CANCEL_NOTE = "[pullsmith: the command was cancelled]"
# The exit code of a command cancelled before it started (as if interrupted by SIGINT).
CANCELLED_EXIT_CODE = 130
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class OutputCapture:
    """Keeps the first and last `limit / 2` bytes of a stream, in memory bounded by `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, 0)
        self.head_limit = self.limit // 2
        self.tail_limit = self.limit - self.head_limit
        self.head = bytearray()
        self.tail: deque[bytes] = deque()
        self.tail_len = 0
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if not data or self.tail_limit == 0:
            return
        if len(data) >= self.tail_limit:
            self.tail.clear()
            self.tail.append(bytes(data[-self.tail_limit :]))
            self.tail_len = self.tail_limit
            return
        self.tail.append(bytes(data))
        self.tail_len += len(data)
        while self.tail_len > self.tail_limit:
            excess = self.tail_len - self.tail_limit
            first = self.tail[0]
            if len(first) <= excess:
                self.tail.popleft()
                self.tail_len -= len(first)
            else:
                self.tail[0] = first[excess:]
                self.tail_len -= excess

    @property
    def kept_bytes(self) -> int:
        return len(self.head) + self.tail_len

    @property
    def omitted_bytes(self) -> int:
        return self.total - self.kept_bytes

    def text(self) -> str:
        """The kept output as text, with a marker where the middle was left out."""
        tail = b"".join(self.tail)
        if not self.omitted_bytes:
            return (bytes(self.head) + tail).decode("utf-8", errors="replace")
        head_text = self.head.decode("utf-8", errors="replace")
        tail_text = tail.decode("utf-8", errors="replace")
        return f"{head_text}\n[... {self.omitted_bytes} bytes of output omitted ...]\n{tail_text}"


def sandbox_env(policy: SandboxPolicy) -> dict[str, str]:
    """The environment a confined command gets: the allowlisted variables and nothing else.

    The directory of this interpreter's scripts goes on PATH so `apply_patch` (a console script
    of this package) can be run by the command.
    """
    env = {name: os.environ[name] for name in policy.env_allowlist if name in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(policy.env_set)
    tools_dir = str(Path(sys.executable).parent)
    if tools_dir not in env["PATH"].split(os.pathsep):
        env["PATH"] = f"{tools_dir}{os.pathsep}{env['PATH']}"
    return env


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # With a pidfd this runs before the leader is reaped, so its pgid cannot have been reused;
    # the polling fallback (no pidfd) reaps first and accepts that small window.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def cancelled_result(command: str) -> CommandResult:
    """The result of a command cancelled before it started: it never ran."""
    return CommandResult(
        command=command,
        exit_code=CANCELLED_EXIT_CODE,
        output=CANCEL_NOTE + "\n",
        duration_s=0.0,
        cancelled=True,
        limit_hit="cancelled",
    )


@dataclass
class StartedProcess:
    """A confined process that `start_process` started and `finish_process` has not finished."""

    proc: subprocess.Popen[bytes]
    cgroup: CommandCgroup | None

    def kill(self) -> None:
        """SIGKILL its process group and its cgroup."""
        _kill_group(self.proc)
        if self.cgroup is not None:
            self.cgroup.kill()

    def discard(self) -> None:
        """Kill it, reap it, close its pipes and give its cgroup back (one never finished)."""
        if self.proc.returncode is None:
            self.kill()
        self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stdin):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if self.cgroup is not None:
            self.cgroup.release()


def start_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    limits: Limits,
    stdin_pipe: bool = False,
    pass_fds: Sequence[int] = (),
) -> StartedProcess:
    """Start `argv` in a new session and its own cgroup (if any), under `limits`' rlimits
    (see limits.py), its stdout and stderr merged into one pipe; stdin a pipe if
    `stdin_pipe`, else /dev/null. `finish_process` (or `discard`) ends it."""
    confinement = confine(argv, limits)
    cgroup = confinement.cgroup
    try:
        proc = subprocess.Popen(
            confinement.argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=confinement.preexec_fn,
            pass_fds=tuple(pass_fds),
        )
    except BaseException:
        if cgroup is not None:
            cgroup.release()
        raise
    return StartedProcess(proc, cgroup)


def run_process(
    argv: Sequence[str],
    *,
    command: str,
    cwd: Path,
    env: Mapping[str, str],
    limits: Limits,
    timeout_s: float | None = None,
    stdin: str | None = None,
    on_output: OutputCallback | None = None,
    pass_fds: Sequence[int] = (),
    cancel: threading.Event | None = None,
) -> CommandResult:
    """Run `argv` in a new session, under `limits` (see limits.py), and return what it did.

    At the timeout, when `cancel` is set, and also when the command ends, its process group and
    its cgroup (if it has one) are killed with SIGKILL, so nothing it started in the background
    outlives it. Without a cgroup, processes that made their own session escape the group kill;
    bwrap's PID namespace catches those. stdout and stderr are merged; the result keeps the
    first and last `limits.output_bytes / 2` bytes, `on_output` sees all of it as it comes.
    `pass_fds` are inherited by the command; the caller closes them.

    `cancel` is looked at every CANCEL_POLL_S while the command runs; once it is set the
    command is killed and the result says `cancelled`. Set before the start, nothing is started
    at all (`cancelled_result`).
    """
    if cancel is not None and cancel.is_set():
        return cancelled_result(command)
    started_at = time.monotonic()
    started = start_process(
        argv, cwd=cwd, env=env, limits=limits, stdin_pipe=stdin is not None, pass_fds=pass_fds
    )
    return finish_process(
        started,
        command=command,
        limits=limits,
        started_at=started_at,
        timeout_s=timeout_s,
        stdin=stdin,
        on_output=on_output,
        cancel=cancel,
    )


def finish_process(
    started: StartedProcess,
    *,
    command: str,
    limits: Limits,
    started_at: float,
    timeout_s: float | None = None,
    stdin: str | None = None,
    on_output: OutputCallback | None = None,
    cancel: threading.Event | None = None,
) -> CommandResult:
    """Run `started` to its end, as `run_process` describes; its timeout and duration count
    from `started_at` (time.monotonic()). `stdin` is written to its stdin pipe, if it has one
    (which is then closed, as it is when `stdin` is None)."""
    timeout = limits.timeout_s if timeout_s is None else timeout_s
    capture = OutputCapture(limits.output_bytes)
    proc, cgroup = started.proc, started.cgroup
    try:
        stopped = _communicate(
            proc, capture, stdin, started_at + timeout, started.kill, on_output, cancel
        )
    finally:
        if proc.returncode is None:
            started.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        limit_hit = cgroup.limit_hit() if cgroup is not None else None
        if cgroup is not None:
            cgroup.release()
    code = proc.returncode
    output = capture.text()
    if limit_hit is not None:
        output += _limit_note(limit_hit, limits)
    if stopped == "cancelled":
        if output and not output.endswith("\n"):
            output += "\n"
        output += CANCEL_NOTE + "\n"
    return CommandResult(
        command=command,
        exit_code=128 - code if code < 0 else code,
        output=output,
        duration_s=time.monotonic() - started_at,
        truncated=capture.omitted_bytes > 0,
        timed_out=stopped == "timeout",
        omitted_bytes=capture.omitted_bytes,
        limit_hit=stopped or limit_hit,
        cancelled=stopped == "cancelled",
    )


def _limit_note(limit: str, limits: Limits) -> str:
    if limit == "memory":
        what = f"a process was killed: the command reached its memory limit of {limits.memory_bytes // MIB} MiB"
    else:
        what = f"the command reached its limit of {limits.processes} processes; forks failed"
    return f"\n[pullsmith: {what}]\n"


def _communicate(
    proc: subprocess.Popen[bytes],
    capture: OutputCapture,
    stdin: str | None,
    deadline: float,
    kill: Callable[[], None],
    on_output: OutputCallback | None,
    cancel: threading.Event | None = None,
) -> str | None:
    """Pump stdin and stdout until the command has ended and its output is read.

    Returns why pullsmith killed the command, if it did: "timeout" for running past
    `deadline`, "cancelled" for `cancel` being set while it ran.
    """
    assert proc.stdout is not None
    out_fd = proc.stdout.fileno()
    pending = (stdin or "").encode()
    sel = selectors.DefaultSelector()
    sel.register(out_fd, selectors.EVENT_READ, "out")
    if proc.stdin is not None:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, "in")
    pidfd = _pidfd(proc.pid)
    if pidfd is not None:
        sel.register(pidfd, selectors.EVENT_READ, "exit")
    stopped: str | None = None  # why the command was killed: "timeout" or "cancelled"
    drain_until: float | None = None  # set once the command has ended

    def ended() -> None:
        nonlocal drain_until
        kill()
        drain_until = time.monotonic() + DRAIN_GRACE_S
        for key in list(sel.get_map().values()):
            if key.data in ("in", "exit"):
                sel.unregister(key.fileobj)
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    try:
        while True:
            now = time.monotonic()
            if drain_until is not None:
                if out_fd not in sel.get_map() or now >= drain_until:
                    break
                wait = drain_until - now
            else:
                if stopped is None:
                    if now >= deadline:
                        stopped = "timeout"
                    elif cancel is not None and cancel.is_set():
                        stopped = "cancelled"
                    if stopped is not None:
                        kill()
                        deadline = now + KILL_WAIT_S
                        continue
                elif now >= deadline:
                    break  # killed, yet not gone: stuck in the kernel; stop waiting
                wait = deadline - now
                if pidfd is None:
                    wait = min(wait, POLL_INTERVAL_S)
                if cancel is not None and stopped is None:
                    wait = min(wait, CANCEL_POLL_S)
            for key, _ in sel.select(wait):
                if key.fileobj not in sel.get_map():
                    continue  # unregistered by an earlier event of this round
                if key.data == "out":
                    data = os.read(out_fd, READ_CHUNK)
                    if data:
                        capture.add(data)
                        if on_output is not None:
                            on_output(data)
                    else:
                        sel.unregister(out_fd)
                elif key.data == "in":
                    try:
                        written = os.write(key.fd, pending[:READ_CHUNK])
                    except BrokenPipeError:
                        written = len(pending)
                    pending = pending[written:]
                    if not pending:
                        sel.unregister(key.fd)
                        assert proc.stdin is not None
                        proc.stdin.close()
                elif key.data == "exit" and drain_until is None:
                    ended()
            if drain_until is None and pidfd is None and proc.poll() is not None:
                ended()
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
    return stopped


def require_workspace(workspace: Path) -> Path:
    """`workspace`, resolved; a UserError if it is not a directory."""
    resolved = workspace.resolve()
    if not resolved.is_dir():
        raise UserError(
            f"The workspace {workspace} is not a directory; create it or point pullsmith at an "
            "existing checkout."
        )
    return resolved
