"""limits.py: a cgroup per command where the machine allows one, rlimits through prlimit."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sandbox_helpers import busy_cgroups, marker, needs_bwrap, processes_with

from pullsmith.sandbox import NoSandbox, describe, make_sandbox
from pullsmith.sandbox import limits as limits_module
from pullsmith.sandbox.base import MIB, Limits, SandboxPolicy, policy_preset
from pullsmith.sandbox.limits import cgroup_parents, confine, make_cgroup, rlimits
from pullsmith.sandbox.process import run_process, sandbox_env

needs_cgroup = pytest.mark.skipif(
    cgroup_parents("auto") is None, reason="this machine lets pullsmith make no cgroups"
)


def run(command: str, cwd: Path, **limits: object):
    return run_process(
        ["bash", "-c", command],
        command=command,
        cwd=cwd,
        env=sandbox_env(SandboxPolicy()),
        limits=Limits(**limits),  # type: ignore[arg-type]
    )


def test_rlimits_leave_memory_and_processes_to_a_cgroup():
    limits = Limits(memory_bytes=100 * MIB, processes=10, file_size_bytes=MIB, cpu_seconds=3)
    without = {name: (soft, hard) for name, soft, hard in rlimits(limits, None)}
    assert without["data"] == (100 * MIB, 100 * MIB)
    assert without["fsize"] == (MIB, MIB) and without["cpu"] == (3, 8)
    assert without["core"] == (0, 0) and without["nproc"][0] >= 10
    group = limits_module.CommandCgroup(1, Path("/x"), Path("/y"), 100 * MIB, 10)
    assert {name for name, _, _ in rlimits(limits, group)} == {"core", "fsize", "cpu"}
    assert {name for name, _, _ in rlimits(Limits(0, 0, 0, 0, 0, 0), None)} == {"core"}


def test_confine_uses_prlimit_not_preexec_fn(monkeypatch):
    if limits_module.find_prlimit() is None:
        pytest.skip("no prlimit here")
    confinement = confine(["true"], Limits(cgroup="off"))
    assert confinement.preexec_fn is None and confinement.cgroup is None
    assert Path(confinement.argv[0]).name == "prlimit" and confinement.argv[-2:] == ["--", "true"]


def test_without_prlimit_the_limits_still_hold(tmp_path, monkeypatch):
    monkeypatch.setattr(limits_module, "find_prlimit", lambda: None)
    result = run("head -c 3000000 /dev/zero > big; echo status=$?", tmp_path, file_size_bytes=MIB)
    assert "status=153" in result.output and (tmp_path / "big").stat().st_size == MIB


@needs_cgroup
def test_each_command_runs_in_a_cgroup_left_empty_and_reused(tmp_path):
    first = run("cat /proc/self/cgroup", tmp_path)
    assert f"pullsmith-{os.getpid()}-" in first.output
    assert busy_cgroups() == []
    second = run("cat /proc/self/cgroup", tmp_path)
    assert second.output == first.output  # the same, emptied cgroup


@needs_cgroup
def test_pooled_cgroups_are_removed_at_exit(tmp_path):
    code = (
        "from pathlib import Path; from pullsmith.sandbox.process import run_process, sandbox_env; "
        "from pullsmith.sandbox.base import Limits, SandboxPolicy; "
        "print(run_process(['cat', '/proc/self/cgroup'], command='', cwd=Path('.'), "
        "env=sandbox_env(SandboxPolicy()), limits=Limits()).output)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    name = next(part for part in proc.stdout.split("/") if part.startswith("pullsmith-"))
    parents = cgroup_parents("auto")
    assert parents is not None
    assert not (parents.pids / name.strip()).exists()
    assert not (parents.memory / name.strip()).exists()


@needs_cgroup
def test_cgroup_limits_are_written():
    group = make_cgroup(Limits(memory_bytes=200 * MIB, processes=33))
    assert group is not None
    try:
        assert (group.pids / "pids.max").read_text().strip() == "33"
        memory_file = "memory.max" if group.version == 2 else "memory.limit_in_bytes"
        assert int((group.memory / memory_file).read_text()) == 200 * MIB
    finally:
        group.remove()
    assert not group.memory.exists() and not group.pids.exists()


def test_cgroups_can_be_turned_off(tmp_path):
    assert make_cgroup(Limits(cgroup="off")) is None
    assert "pullsmith-" not in run("cat /proc/self/cgroup", tmp_path, cgroup="off").output


def test_an_unusable_cgroup_directory_falls_back_to_rlimits(tmp_path):
    setting = str(tmp_path / "not-a-cgroup")
    assert cgroup_parents(setting) is None
    result = run("echo ok", tmp_path, cgroup=setting)
    assert result.output == "ok\n"


@needs_cgroup
def test_a_process_that_left_the_session_dies_with_the_command(tmp_path):
    tag = marker()
    box = NoSandbox(tmp_path)
    result = box.run(f"setsid sleep 1000.{tag} > /dev/null 2>&1 & echo started")
    assert result.output == "started\n" and result.duration_s < 5
    # The cgroup is emptied by a background reaper right after the command returns.
    deadline = time.monotonic() + 5
    while processes_with(f"1000.{tag}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(f"1000.{tag}") == []


@needs_cgroup
def test_process_limit_is_reported(tmp_path):
    code = (
        "import os, time\n"
        "for _ in range(20):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "    except OSError as exc:\n"
        "        print('refused:', exc.strerror)\n"
        "        break\n"
    )
    result = run(f'{sys.executable} -c "{code}"', tmp_path, processes=8)
    assert "refused: Resource temporarily unavailable" in result.output
    assert result.limit_hit == "processes" and "limit of 8 processes" in result.output


@needs_bwrap
def test_sandboxes_run_from_many_threads_at_once(tmp_path):
    boxes = [make_sandbox("bwrap", tmp_path), NoSandbox(tmp_path)]
    results: list = []

    def work(index: int) -> None:
        box = boxes[index % 2]
        results.append(box.run(f"echo {index}; head -c 100000 /dev/zero | wc -c"))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 16
    assert all(r.exit_code == 0 and r.output.endswith("100000\n") for r in results)
    for box in boxes:
        box.close()  # bwrap's sandbox started for a next command holds a cgroup until then
    assert busy_cgroups() == []


def test_describe_says_how_limits_are_enforced():
    rows = describe("bwrap", policy_preset("read-only"))
    assert "workspace read-only" in rows[0] and "network off" in rows[1]
    assert "timeout 120 s" in rows[2] and "memory 4096 MiB" in rows[2]
    assert "unconfined" in describe("none", SandboxPolicy())[0]
