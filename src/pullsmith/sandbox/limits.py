"""Memory, process, file-size and CPU-time limits for one command.

Where this machine lets pullsmith make cgroups (v2 with the memory and pids controllers
delegated, or v1 with writable memory and pids hierarchies), every command runs in a cgroup of
its own (made for it, or reused from an earlier command once empty): `memory.max`/`memory.limit_in_bytes` bounds the
memory of all its processes together (swap included), `pids.max` how many it may run at once,
and killing the cgroup's members kills everything it started, whatever session or namespace
they moved to. That is what stops a fork bomb run by root, which RLIMIT_NPROC does not.

The rest are rlimits, set in front of the command rather than in a `preexec_fn` (Python code
between fork and exec can deadlock when other threads hold locks, and the service runs
sandboxes from threads): by a tiny `sh` that writes its own pid into the cgroup's
`cgroup.procs`, sets them with `ulimit` and execs the command, so nothing runs before it is in;
by util-linux `prlimit` when there is no cgroup.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import itertools
import os
import re
import resource
import shlex
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pullsmith.sandbox.base import MIB, Limits

CGROUP_PREFIX = "pullsmith-"
# How long to keep killing what an ended command left in its cgroup, and retrying a removal,
# before leaving the cgroup (a later start of pullsmith removes it once its pid is gone).
CGROUP_REMOVE_WAIT_S = 30.0
_names = itertools.count()

# The `ulimit` option of each rlimit a command in a cgroup needs, and its unit in bytes: the same
# in dash, bash and busybox sh (POSIX fixes -f at 512-byte blocks).
_ULIMIT_OPTIONS = {"fsize": ("-f", 512), "cpu": ("-t", 1), "core": ("-c", 512)}


@dataclass(frozen=True)
class CgroupParents:
    """Where this process may make command cgroups: one directory per controller."""

    version: int
    memory: Path
    pids: Path


@dataclass
class CommandCgroup:
    """The cgroup (v2) or pair of cgroups (v1: memory, pids) one command runs in."""

    version: int
    memory: Path
    pids: Path
    memory_bytes: int
    processes: int
    # The event counters when the current command started: a cgroup serves many commands.
    baseline: tuple[int, int] = (0, 0)

    @property
    def dirs(self) -> list[Path]:
        return [self.memory] if self.memory == self.pids else [self.memory, self.pids]

    @property
    def procs_files(self) -> list[str]:
        return [str(path / "cgroup.procs") for path in self.dirs]

    def members(self) -> list[int]:
        pids: set[int] = set()
        for path in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(line) for line in (path / "cgroup.procs").read_text().split())
        return sorted(pids)

    def kill(self) -> None:
        """SIGKILL every process in the cgroup now (one pass; `remove` finishes the job)."""
        kill_file = self.pids / "cgroup.kill"
        if self.version == 2 and kill_file.exists():
            with contextlib.suppress(OSError):
                kill_file.write_text("1")
                return
        for pid in self.members():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def _events(self) -> tuple[int, int]:
        """(OOM kills, refused forks) so far."""
        if self.version == 2:
            memory_events = _read_counters(self.memory / "memory.events")
        else:
            memory_events = _read_counters(self.memory / "memory.oom_control")
        pids_events = _read_counters(self.pids / "pids.events")
        return memory_events.get("oom_kill", 0), pids_events.get("max", 0)

    def start(self) -> None:
        """Mark the start of a command, for `limit_hit`."""
        self.baseline = self._events()

    def limit_hit(self) -> str | None:
        """Which limit the command ran into since `start`: "memory" (a process was
        OOM-killed), "processes" (a fork was refused), or None."""
        oom_kills, refused_forks = self._events()
        if oom_kills > self.baseline[0]:
            return "memory"
        if refused_forks > self.baseline[1]:
            return "processes"
        return None

    def release(self) -> None:
        """Kill what the command left and give the cgroup back for the next command.

        Killed processes take a few milliseconds to leave; rather than make the command wait,
        a cgroup not yet empty is handed to a thread that keeps killing until it is.
        """
        self.kill()
        if self.members():
            _Reaper.get().add(self)
        else:
            _POOL.put(self)

    def try_remove(self) -> bool:
        """Remove the directories; False while killed processes are still leaving them."""
        for path in self.dirs:
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    return False
                raise
        return True

    def remove(self) -> None:
        """Kill what is left and remove the directories (if busy, once they are empty)."""
        self.kill()
        with contextlib.suppress(OSError):
            if self.try_remove():
                return
        _Reaper.get().add(self, remove=True)


class _Reaper:
    """A daemon thread that empties cgroups whose commands ended, then pools or removes them."""

    _instance: _Reaper | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.pending: list[tuple[CommandCgroup, bool, float]] = []
        self.wake = threading.Condition()
        threading.Thread(target=self.loop, name="pullsmith-cgroup-reaper", daemon=True).start()

    @classmethod
    def get(cls) -> _Reaper:
        with cls._lock:
            # A forked child has the object but not the thread.
            if cls._instance is None or cls._instance.pid != os.getpid():
                cls._instance = cls()
            return cls._instance

    def add(self, group: CommandCgroup, remove: bool = False) -> None:
        with self.wake:
            self.pending.append((group, remove, time.monotonic() + CGROUP_REMOVE_WAIT_S))
            self.wake.notify()

    def loop(self) -> None:
        while True:
            with self.wake:
                while not self.pending:
                    self.wake.wait()
                batch, self.pending = self.pending, []
            keep = []
            for group, remove, deadline in batch:
                group.kill()
                if group.members():
                    if time.monotonic() < deadline:
                        keep.append((group, remove, deadline))
                    continue  # past the deadline: left for a later start to remove
                if not remove:
                    _POOL.put(group)
                    continue
                try:
                    if not group.try_remove() and time.monotonic() < deadline:
                        keep.append((group, remove, deadline))
                except OSError:
                    pass  # not ours to fix; a later start removes stale ones
            if keep:
                time.sleep(0.005)
                with self.wake:
                    self.pending.extend(keep)


class _Pool:
    """Empty command cgroups kept for the next command with the same limits.

    Making and removing a memory cgroup costs more than running `true` in bwrap; reusing one
    costs nothing. A cgroup only goes back once no process is left in it, and never serves two
    commands at once.
    """

    MAX_IDLE = 8

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.idle: dict[tuple[Path, Path, int, int], list[CommandCgroup]] = {}
        atexit.register(self.clear)

    @staticmethod
    def key(group: CommandCgroup) -> tuple[Path, Path, int, int]:
        return group.memory.parent, group.pids.parent, group.memory_bytes, group.processes

    def take(self, parents: CgroupParents, limits: Limits) -> CommandCgroup | None:
        with self.lock:
            self._forget_if_forked()
            key = (parents.memory, parents.pids, limits.memory_bytes, limits.processes)
            groups = self.idle.get(key)
            return groups.pop() if groups else None

    def put(self, group: CommandCgroup) -> None:
        with self.lock:
            self._forget_if_forked()
            groups = self.idle.setdefault(self.key(group), [])
            if len(groups) < self.MAX_IDLE and group.memory.name.startswith(
                f"{CGROUP_PREFIX}{self.pid}-"
            ):
                groups.append(group)
                return
        with contextlib.suppress(OSError):
            group.try_remove()

    def _forget_if_forked(self) -> None:
        # A forked child must not use its parent's cgroups: both would kill in them.
        if self.pid != os.getpid():
            self.pid = os.getpid()
            self.idle = {}

    def clear(self) -> None:
        """Remove every idle cgroup (at exit)."""
        with self.lock:
            if self.pid != os.getpid():
                return
            groups = [group for idle in self.idle.values() for group in idle]
            self.idle = {}
        for group in groups:
            with contextlib.suppress(OSError):
                group.try_remove()


_POOL = _Pool()


def _read_counters(path: Path) -> dict[str, int]:
    counters = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                counters[key] = int(value)
    return counters


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount point, root, fstype, super options) of every cgroup filesystem mounted here."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            before, _, after = line.partition(" - ")
            fields, tail = before.split(), after.split()
            if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
                continue
            point = fields[4].replace("\\040", " ")
            found.append((point, fields[3], tail[0], set(tail[2].split(","))))
    return found


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and under "" its v2 path."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                paths[name] = path
    return paths


def _join(point: str, root: str, path: str) -> Path:
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return Path(point) / path.lstrip("/")


def _v2_parent(path: Path) -> Path | None:
    """`path` when command cgroups with memory and pids limits can be made in it."""
    control = path / "cgroup.subtree_control"
    if not os.access(path, os.W_OK) or not control.exists():
        return None
    try:
        enabled = set(control.read_text().split())
        missing = {"memory", "pids"} - enabled
        if missing:
            # Refused (EBUSY) unless `path` has no processes of its own: the cgroup v2 rule.
            control.write_text(" ".join(f"+{name}" for name in sorted(missing)))
    except OSError:
        return None
    return path


@functools.cache
def cgroup_parents(setting: str = "auto") -> CgroupParents | None:
    """Where command cgroups go, or None when this machine does not let pullsmith make them.

    `setting` is Limits.cgroup: "off", "auto" (inside this process's own cgroups), or the path
    of a delegated cgroup v2 directory.
    """
    if setting == "off":
        return None
    if setting != "auto":
        parent = _v2_parent(Path(setting))
        return CgroupParents(2, parent, parent) if parent else None
    own = _own_cgroups()
    mounts = _mounts()
    v1 = {}
    for point, root, fstype, options in mounts:
        for controller in ("memory", "pids"):
            if fstype == "cgroup" and controller in options and controller in own:
                v1[controller] = _join(point, root, own[controller])
    if len(v1) == 2 and all(os.access(path, os.W_OK) for path in v1.values()):
        parents = CgroupParents(1, v1["memory"], v1["pids"])
        _remove_stale(parents)
        return parents
    for point, root, fstype, _ in mounts:
        if fstype == "cgroup2" and "" in own:
            parent = _v2_parent(_join(point, root, own[""]))
            if parent is not None:
                parents = CgroupParents(2, parent, parent)
                _remove_stale(parents)
                return parents
    return None


def _remove_stale(parents: CgroupParents) -> None:
    """Remove empty command cgroups left by pullsmith processes that are gone."""
    pattern = re.compile(re.escape(CGROUP_PREFIX) + r"(\d+)-")
    for parent in {parents.memory, parents.pids}:
        with contextlib.suppress(OSError):
            for entry in parent.iterdir():
                match = pattern.match(entry.name)
                if match and not Path(f"/proc/{match.group(1)}").exists():
                    with contextlib.suppress(OSError):
                        entry.rmdir()


def make_cgroup(limits: Limits) -> CommandCgroup | None:
    """A cgroup for one command under `limits` (a pooled one if there is one), or None (no
    cgroups here, or none wanted). Give it back with `release()`."""
    if limits.memory_bytes <= 0 and limits.processes <= 0:
        return None
    parents = cgroup_parents(limits.cgroup)
    if parents is None:
        return None
    group = _POOL.take(parents, limits)
    if group is None:
        name = f"{CGROUP_PREFIX}{os.getpid()}-{next(_names)}-{os.urandom(3).hex()}"
        group = CommandCgroup(
            version=parents.version,
            memory=parents.memory / name,
            pids=parents.pids / name,
            memory_bytes=limits.memory_bytes,
            processes=limits.processes,
        )
        try:
            for path in group.dirs:
                path.mkdir()
            _write_limits(group)
        except OSError:
            group.remove()
            return None
    group.start()
    return group


def _write_limits(group: CommandCgroup) -> None:
    memory, processes = group.memory_bytes, group.processes
    if group.version == 2:
        if memory > 0:
            (group.memory / "memory.max").write_text(str(memory))
            swap = group.memory / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
        if processes > 0:
            (group.pids / "pids.max").write_text(str(processes))
        return
    if memory > 0:
        (group.memory / "memory.limit_in_bytes").write_text(str(memory))
        swap = group.memory / "memory.memsw.limit_in_bytes"
        if swap.exists():
            # Memory plus swap: equal to the memory limit means no swap at all.
            swap.write_text(str(memory))
    if processes > 0:
        (group.pids / "pids.max").write_text(str(processes))


@functools.cache
def find_prlimit() -> str | None:
    return shutil.which("prlimit") or (
        "/usr/bin/prlimit" if os.access("/usr/bin/prlimit", os.X_OK) else None
    )


_RESOURCES = {
    "data": resource.RLIMIT_DATA,
    "fsize": resource.RLIMIT_FSIZE,
    "cpu": resource.RLIMIT_CPU,
    "core": resource.RLIMIT_CORE,
    "nproc": getattr(resource, "RLIMIT_NPROC", -1),
}


def rlimits(limits: Limits, cgroup: CommandCgroup | None) -> list[tuple[str, int, int]]:
    """(prlimit name, soft, hard) for `limits`, never above the hard limits this process has.

    Memory and processes are left to the cgroup when there is one: RLIMIT_DATA counts address
    space a process never touches, and RLIMIT_NPROC every process of the user on the machine.
    """
    values = [("core", 0, 0)]
    if limits.memory_bytes > 0 and cgroup is None:
        values.append(("data", limits.memory_bytes, limits.memory_bytes))
    if limits.file_size_bytes > 0:
        values.append(("fsize", limits.file_size_bytes, limits.file_size_bytes))
    if limits.cpu_seconds > 0:
        # The soft limit sends SIGXCPU; the hard one, a little later, SIGKILL.
        values.append(("cpu", limits.cpu_seconds, limits.cpu_seconds + 5))
    if limits.processes > 0 and cgroup is None and _RESOURCES["nproc"] >= 0:
        # RLIMIT_NPROC counts every process of the real user, so allow `processes` on top of
        # every task now on the machine. Root (also namespaced root) ignores it altogether.
        nproc = limits.processes + _tasks_on_machine()
        values.append(("nproc", nproc, nproc))
    capped = []
    for name, soft, hard in values:
        _, current_hard = resource.getrlimit(_RESOURCES[name])
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        capped.append((name, soft, hard))
    return capped


def _tasks_on_machine() -> int:
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[1])
    except (OSError, IndexError, ValueError):
        return 0


@dataclass
class Confinement:
    """How to start one command under its limits: the argv, and what to do around it."""

    argv: list[str]
    cgroup: CommandCgroup | None
    # Only when `prlimit` is missing: set the rlimits between fork and exec.
    preexec_fn: Callable[[], None] | None = None


def confine(argv: Sequence[str], limits: Limits) -> Confinement:
    """`argv` wrapped so that it runs in a new cgroup (if any) and under its rlimits.

    With a cgroup, one `sh` joins it, sets the rlimits with `ulimit` and execs `argv`; without
    one, `prlimit` sets them. Either way, one extra exec, and no Python between fork and exec
    (unless `prlimit` is missing).
    """
    cgroup = make_cgroup(limits)
    values = rlimits(limits, cgroup)
    if cgroup is not None:
        steps = [f"echo $$ > {shlex.quote(path)}" for path in cgroup.procs_files]
        for name, soft, hard in values:
            option, unit = _ULIMIT_OPTIONS[name]
            steps.append(f"ulimit {option} {hard // unit}")
            if soft != hard:
                steps.append(f"ulimit -S {option} {soft // unit}")
        script = (
            f"{{ {' && '.join(steps)}; }} || "
            "{ echo 'pullsmith: could not apply the limits' >&2; exit 125; }; "
            'exec "$@"'
        )
        return Confinement(["/bin/sh", "-c", script, "pullsmith-limits", *argv], cgroup)
    prlimit = find_prlimit()
    if prlimit is not None:
        options = [f"--{name}={soft}:{hard}" for name, soft, hard in values]
        return Confinement([prlimit, *options, "--", *argv], None)

    def preexec_fn() -> None:
        for name, soft, hard in values:
            resource.setrlimit(_RESOURCES[name], (soft, hard))

    return Confinement(list(argv), None, preexec_fn)


def describe(limits: Limits) -> str:
    """One line on how `limits` are enforced here, for people."""
    parents = cgroup_parents(limits.cgroup)
    how = f"cgroup v{parents.version}" if parents else "rlimits"
    parts = [f"timeout {limits.timeout_s:g} s"]
    if limits.memory_bytes > 0:
        parts.append(f"memory {limits.memory_bytes // MIB} MiB ({how})")
    if limits.processes > 0:
        nproc = "cgroup" if parents else "RLIMIT_NPROC, ignored by root"
        parts.append(f"{limits.processes} processes ({nproc})")
    if limits.file_size_bytes > 0:
        parts.append(f"files up to {limits.file_size_bytes // MIB} MiB")
    if limits.cpu_seconds > 0:
        parts.append(f"CPU {limits.cpu_seconds} s")
    parts.append(f"output {limits.output_bytes // 1024} KiB kept")
    return ", ".join(parts)
