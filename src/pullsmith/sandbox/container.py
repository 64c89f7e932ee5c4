"""The container backend: docker or podman, one container per sandbox (per attempt).

The container starts once, when the sandbox is made, with a keep-alive shell as PID 1 that
ignores every signal it can and reaps orphans; each command is a `docker exec` of
`bash -c COMMAND`, and the container is removed on close. It runs with:

- the workspace bind-mounted at its own path (read-only under the read-only policy), its git
  metadata read-only, `writable_roots`/`read_only_roots` mounted likewise; nothing else of the
  host is visible: no $HOME, no /run, no sockets;
- a read-only root filesystem (writable under `full-access`) and a tmpfs /tmp, which is also
  $HOME;
- `--network none` unless the policy allows the network;
- `--cap-drop ALL`, `--security-opt no-new-privileges`, the engine's default seccomp profile;
- `--memory` (no swap) and `--pids-limit` for the container as a whole, file-size and CPU-time
  ulimits per process, the user's uid:gid so files in the workspace stay theirs;
- `--pull never`: pullsmith never downloads an image; a missing one is a clear error.

After a command, whatever it left running is killed from inside (`kill -9 -1` spares only
PID 1 and the caller); after a timeout or a cancel (killing the engine's client stops nothing
inside), by a second `exec`. `apply_patch` is this package's own module, mounted read-only and
run by the image's `python3`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

from pullsmith.errors import UserError
from pullsmith.sandbox.base import CommandResult, OutputCallback, SandboxPolicy
from pullsmith.sandbox.bwrap import git_paths
from pullsmith.sandbox.process import cancelled_result, require_workspace, run_process

ENGINES: tuple[str, ...] = ("docker", "podman")
DEFAULT_IMAGE = "python:3.11-slim"
ENGINE_TIMEOUT_S = 20.0
TOOLS_DIR = "/opt/pullsmith"
CONTAINER_HOME = "/tmp"
# Variables whose host values mean nothing inside a container.
HOST_ONLY_ENV = ("PATH", "HOME", "SHELL", "USER", "LOGNAME")

# PID 1: ignores the signals a command could send it, restarts its sleep if killed, and
# reaps the orphans `wait` collects, so zombies never use up the pids limit.
KEEPALIVE = "trap '' HUP INT QUIT TERM USR1 USR2; while :; do sleep 86400 & wait; done"
# Runs one command under per-process ulimits, then kills whatever it left behind.
COMMAND_WRAPPER = (
    '{{ {ulimits}; }} 2>/dev/null; bash -c "$1"; status=$?; kill -9 -1 2>/dev/null; exit $status'
)
CLEANUP = "kill -9 -1 2>/dev/null; true"
# The edit tools on the container's PATH, run from this package's copy (standard library only).
EDIT_TOOLS = ("apply_patch", "replace_function", "search_replace")
TOOL_SHIM = '#!/bin/sh\nPYTHONPATH={lib} exec python3 -m pullsmith.tools.{name} "$@"\n'


def engine_error(engine: str) -> str | None:
    """None when `engine` (docker or podman) answers here, else why not."""
    binary = shutil.which(engine)
    if binary is None:
        return f"{engine} is not installed"
    return _engine_error(binary)


@functools.cache
def _engine_error(binary: str) -> str | None:
    try:
        probe = subprocess.run(
            [binary, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=ENGINE_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{Path(binary).name} did not answer ({exc})"
    if probe.returncode != 0 or not probe.stdout.strip():
        lines = (probe.stderr or probe.stdout).strip().splitlines()
        return lines[-1] if lines else f"{Path(binary).name} version failed"
    return None


def _ulimits(policy: SandboxPolicy) -> str:
    """bash `ulimit` commands for the policy's per-process limits (also set on the container,
    but not every engine applies those to `exec`)."""
    limits = policy.limits
    parts = ["ulimit -c 0"]
    if limits.file_size_bytes > 0:
        parts.append(f"ulimit -f {max(limits.file_size_bytes // 1024, 1)}")  # 1024-byte blocks
    if limits.cpu_seconds > 0:
        parts += [f"ulimit -H -t {limits.cpu_seconds + 5}", f"ulimit -S -t {limits.cpu_seconds}"]
    return "; ".join(parts)


class ContainerSandbox:
    """Runs commands in a container of their own; see the module docstring for what it can reach."""

    def __init__(
        self,
        workspace: Path,
        policy: SandboxPolicy | None = None,
        engine: str = "docker",
        image: str = DEFAULT_IMAGE,
        cancel: threading.Event | None = None,
    ) -> None:
        if engine not in ENGINES:
            raise UserError(f"Unknown container engine {engine!r}; choose docker or podman.")
        self.name = engine
        self.workspace = require_workspace(workspace)
        self.policy = policy or SandboxPolicy()
        self.image = image
        self.cancel = cancel
        binary = shutil.which(engine)
        if binary is None:
            raise UserError(f"{engine} is not installed; install it, or use the bwrap sandbox.")
        reason = _engine_error(binary)
        if reason is not None:
            raise UserError(
                f"{engine} is installed but its engine is not reachable ({reason}); start it "
                "(e.g. `sudo systemctl start docker`), or use the bwrap sandbox."
            )
        self.engine = binary
        self.image_path = self._image_path()
        self.lock = threading.Lock()
        self.tools = Path(tempfile.mkdtemp(prefix="pullsmith-tools-"))
        self.container: str | None = None
        try:
            self._write_tools()
            self.container = self._start()
        except BaseException:
            shutil.rmtree(self.tools, ignore_errors=True)
            raise

    def _engine(self, *args: str, timeout: float = ENGINE_TIMEOUT_S) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                [self.engine, *args],
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise UserError(
                f"{self.name} did not answer within {timeout:g} s ({args[0]}); check that its "
                "engine is healthy, or use the bwrap sandbox."
            ) from None

    def _image_path(self) -> str:
        """The image's PATH; a UserError when the image is not on this machine."""
        found = self._engine("image", "inspect", "--format", "{{json .Config.Env}}", self.image)
        if found.returncode != 0:
            raise UserError(
                f"The container image {self.image!r} is not on this machine and pullsmith never "
                f"pulls one itself; run `{self.name} pull {self.image}`, or set sandbox_image "
                "to an image you have."
            )
        with contextlib.suppress(ValueError, TypeError):
            for item in json.loads(found.stdout) or []:
                if item.startswith("PATH="):
                    return item.removeprefix("PATH=")
        return "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    def _write_tools(self) -> None:
        package = Path(__file__).resolve().parent.parent
        bin_dir = self.tools / "bin"
        bin_dir.mkdir()
        for name in EDIT_TOOLS:
            shim = bin_dir / name
            shim.write_text(TOOL_SHIM.format(lib=f"{TOOLS_DIR}/lib", name=name))
            shim.chmod(0o755)
        self.package = package
        self.tools.chmod(0o755)

    def run_args(self) -> list[str]:
        """`docker run` arguments, up to and including the image."""
        policy, limits = self.policy, self.policy.limits
        ws = str(self.workspace)
        full_access = Path("/") in [path.resolve() for path in policy.writable_roots]
        args = ["run", "--detach", "--rm", "--pull", "never", "--label", "pullsmith=1"]
        args += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
        args += ["--network", "bridge" if policy.network else "none"]
        if not full_access:
            args.append("--read-only")
        size = f",size={limits.memory_bytes}" if limits.memory_bytes > 0 else ""
        args += ["--tmpfs", f"/tmp:rw,exec,nosuid,nodev,mode=1777{size}"]
        if limits.memory_bytes > 0:
            args += [
                "--memory",
                str(limits.memory_bytes),
                "--memory-swap",
                str(limits.memory_bytes),
            ]
        if limits.processes > 0:
            args += ["--pids-limit", str(limits.processes)]
        if limits.file_size_bytes > 0:
            args += ["--ulimit", f"fsize={limits.file_size_bytes}:{limits.file_size_bytes}"]
        if limits.cpu_seconds > 0:
            args += ["--ulimit", f"cpu={limits.cpu_seconds}:{limits.cpu_seconds + 5}"]
        args += ["--ulimit", "core=0:0"]
        uid, gid = os.getuid(), os.getgid()
        if self.name == "podman" and uid != 0:
            args += ["--userns", "keep-id"]
        else:
            args += ["--user", f"{uid}:{gid}"]
        mode = "rw" if policy.workspace_writable else "ro"
        args += ["--volume", f"{ws}:{ws}:{mode}"]
        if not policy.git_writable:
            for path in git_paths(self.workspace):
                args += ["--volume", f"{path}:{path}:ro"]
        for root in policy.writable_roots:
            if root.resolve() != Path("/"):
                args += ["--volume", f"{root.resolve()}:{root.resolve()}:rw"]
        for root in policy.read_only_roots:
            args += ["--volume", f"{root.resolve()}:{root.resolve()}:ro"]
        for path in policy.hidden_paths:
            path = path.resolve()
            if not path.exists() or not path.is_relative_to(self.workspace):
                continue  # nothing else of the host is mounted
            if path.is_dir():
                args += ["--tmpfs", f"{path}:ro"]
            else:
                args += ["--volume", f"/dev/null:{path}:ro"]
        args += ["--volume", f"{self.tools / 'bin'}:{TOOLS_DIR}/bin:ro"]
        args += ["--volume", f"{self.package}:{TOOLS_DIR}/lib/pullsmith:ro"]
        args += ["--workdir", ws, "--entrypoint", "sh", self.image]
        return args

    def _start(self) -> str:
        started = self._engine(*self.run_args(), "-c", KEEPALIVE, timeout=60)
        if started.returncode != 0:
            message = (started.stderr or started.stdout).strip().splitlines()
            raise UserError(
                f"{self.name} could not start a container from {self.image!r} "
                f"({message[-1] if message else 'no message'}); check the image and the engine, "
                "or use the bwrap sandbox."
            )
        return started.stdout.strip()

    def exec_env(self) -> dict[str, str]:
        """The command's environment: the allowlist and the policy's own variables, minus
        what only makes sense on the host; PATH and HOME are the container's."""
        env = {
            name: os.environ[name]
            for name in self.policy.env_allowlist
            if name in os.environ and name not in HOST_ONLY_ENV
        }
        env.update({k: v for k, v in self.policy.env_set.items() if k not in HOST_ONLY_ENV})
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["HOME"] = CONTAINER_HOME
        env["PATH"] = f"{TOOLS_DIR}/bin:{self.image_path}"
        return env

    def exec_argv(self, command: str, stdin: bool) -> list[str]:
        argv = [self.engine, "exec"]
        if stdin:
            argv.append("--interactive")
        argv += ["--workdir", str(self.workspace)]
        for key, value in self.exec_env().items():
            argv += ["--env", f"{key}={value}"]
        assert self.container is not None
        wrapper = COMMAND_WRAPPER.format(ulimits=_ulimits(self.policy))
        return [*argv, self.container, "bash", "-c", wrapper, "pullsmith", command]

    def run(
        self,
        command: str,
        timeout_s: float | None = None,
        stdin: str | None = None,
        on_output: OutputCallback | None = None,
    ) -> CommandResult:
        """Run `command` with bash -c in the container and return what happened."""
        if self.container is None:
            raise UserError("This sandbox was closed; make a new one to run more commands.")
        with self.lock:
            if self.cancel is not None and self.cancel.is_set():
                return cancelled_result(command)  # nothing started, nothing to clean up
            # The engine client runs on the host, but the limits that matter are the
            # container's; the client gets no cgroup of its own.
            client_limits = replace(
                self.policy.limits,
                memory_bytes=0,
                processes=0,
                file_size_bytes=0,
                cpu_seconds=0,
                cgroup="off",
            )
            result = run_process(
                self.exec_argv(command, stdin is not None),
                command=command,
                cwd=self.workspace,
                # The engine's client, on the host: it needs DOCKER_HOST, its config and so on.
                env=os.environ,
                limits=client_limits,
                timeout_s=timeout_s,
                stdin=stdin,
                on_output=on_output,
                cancel=self.cancel,
            )
            if result.timed_out or result.cancelled:
                self._kill_leftovers()
            return result

    def _kill_leftovers(self) -> None:
        """Kill what a command left running in the container (killing the engine's client
        does not); start a fresh container if even that cannot run, e.g. while a fork bomb
        holds every pid the container may have."""
        assert self.container is not None
        cleaned = self._engine("exec", self.container, "sh", "-c", CLEANUP)
        if cleaned.returncode != 0:
            self._engine("rm", "--force", self.container, timeout=60)
            self.container = None
            self.container = self._start()

    def close(self) -> None:
        """Remove the container (and everything running in it)."""
        if self.container is not None:
            with contextlib.suppress(UserError):
                self._engine("rm", "--force", self.container, timeout=60)
            self.container = None
        shutil.rmtree(self.tools, ignore_errors=True)
