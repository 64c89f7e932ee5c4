"""Round trip of `true` through each sandbox backend: median and p95 over N runs.

    .venv/bin/python benchmarks/sandbox_latency.py [--runs 300] [--gap-ms 100]

Every run goes through `Sandbox.run`, so it includes what a real command pays: its cgroup
(where there is one), the wrapper that applies the limits, bwrap's namespaces, mounts and
seccomp filter, and collecting the output. The backends take turns, BLOCK runs each, so that
a machine whose load changes during the benchmark slows them all alike, while each run still
follows one of its own kind (whose clean-up, e.g. of a network namespace, the kernel finishes
in the background). The last row, bwrap run
bare by subprocess (namespaces and a read-only / only), is this machine's floor. Container
backends are measured where an engine answers and has the image (nothing is pulled); they pay
one `docker exec` per command.

Before every timed run the benchmark waits `--gap-ms` (untimed, every case alike), as the
agent's commands wait for the model's next reply: bwrap starts each command's sandbox after
the previous command, so that is the time it has to get ready. `--gap-ms 0` measures commands
back to back. The row "bwrap, started at the command" runs the same argv as `Sandbox.run`
(limits wrapper, namespaces, mounts, seccomp, `bash -c`) through `run_process` with nothing
started ahead: the path every command took before that, for comparison in the same run. The
last column is each median over bare bwrap's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from pullsmith.sandbox import (
    DEFAULT_IMAGE,
    Sandbox,
    SandboxPolicy,
    bwrap_available,
    engine_error,
    make_sandbox,
    policy_preset,
)
from pullsmith.sandbox.bwrap import BwrapSandbox, find_bwrap
from pullsmith.sandbox.limits import cgroup_parents
from pullsmith.sandbox.process import run_process

BLOCK = 10
BARE = "bare bwrap (for scale)"


def sandbox_case(box: Sandbox) -> Callable[[], None]:
    def run() -> None:
        result = box.run("true")
        if result.exit_code != 0:
            raise SystemExit(f"{box.name}: `true` failed: {result.output}")

    return run


def cold_bwrap_case(box: BwrapSandbox) -> Callable[[], None]:
    """`true` as BwrapSandbox.run ran it when it started each sandbox at the command."""

    def run() -> None:
        argv = list(box.argv_prefix)
        fds: list[int] = []
        if box.seccomp is not None:
            read_end, write_end = os.pipe()
            fds.append(read_end)
            with open(write_end, "wb") as pipe:
                pipe.write(box.seccomp)
            argv += ["--seccomp", str(read_end)]
        argv += ["--", "bash", "-c", "true"]
        try:
            result = run_process(
                argv,
                command="true",
                cwd=box.workspace,
                env=box.env,
                limits=box.policy.limits,
                pass_fds=fds,
            )
        finally:
            for fd in fds:
                os.close(fd)
        if result.exit_code != 0:
            raise SystemExit(f"cold bwrap: `true` failed: {result.output}")

    return run


def bare_bwrap_case() -> Callable[[], None]:
    argv = [find_bwrap() or "bwrap", "--unshare-all", "--die-with-parent"]
    argv += ["--ro-bind", "/", "/", "true"]
    return lambda: subprocess.run(argv, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--gap-ms", type=float, default=100.0)
    args = parser.parse_args()
    policy = policy_preset("workspace-write")
    no_cgroup = replace(policy, limits=replace(policy.limits, cgroup="off"))
    parents = cgroup_parents("auto")
    cgroup = f"cgroup v{parents.version}" if parents else "no cgroup"
    wanted: list[tuple[str, str, SandboxPolicy]] = [("none", f"none ({cgroup})", policy)]
    if parents:
        wanted.append(("none", "none (rlimits only)", no_cgroup))
    if bwrap_available() is None:
        wanted.append(("bwrap", f"bwrap ({cgroup})", policy))
        if parents:
            wanted.append(("bwrap", "bwrap (rlimits only)", no_cgroup))
    else:
        print(f"bwrap: skipped ({bwrap_available()})")
    for engine in ("docker", "podman"):
        reason = engine_error(engine)
        if reason is None:
            wanted.append((engine, engine, policy))
        else:
            print(f"{engine}: skipped ({reason})")
    with tempfile.TemporaryDirectory() as workspace:
        boxes: list[Sandbox] = []
        cases: dict[str, Callable[[], None]] = {}
        for name, label, case_policy in wanted:
            try:
                box = make_sandbox(name, Path(workspace), case_policy, image=args.image)
            except Exception as exc:  # noqa: BLE001 - a backend that cannot start is reported
                print(f"{label}: could not start ({exc})")
                continue
            boxes.append(box)
            cases[label] = sandbox_case(box)
            if isinstance(box, BwrapSandbox) and case_policy is policy:
                cases[f"{label}, started at the command"] = cold_bwrap_case(box)
        if bwrap_available() is None:
            cases[BARE] = bare_bwrap_case()
        times: dict[str, list[float]] = {label: [] for label in cases}
        gap_s = args.gap_ms / 1000
        try:
            for case in cases.values():  # warm up
                for _ in range(BLOCK):
                    case()
            for _ in range(-(-args.runs // BLOCK)):
                for label, case in cases.items():
                    for _ in range(BLOCK):
                        time.sleep(gap_s)
                        started = time.perf_counter()
                        case()
                        times[label].append((time.perf_counter() - started) * 1000)
        finally:
            for box in boxes:
                box.close()
    load = os.getloadavg()[0]
    print(
        f"`true`, {args.runs} runs each, taking turns, {args.gap_ms:g} ms between runs "
        f"(ms; load average {load:.1f} at the end, {os.cpu_count()} CPUs):"
    )
    bare = times.get(BARE)
    floor = statistics.median(bare) if bare else None
    print(f"{'backend':40} {'median':>8} {'p95':>8} {'min':>8} {'/ bare':>7}")
    for label, samples in times.items():
        samples.sort()
        p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
        median = statistics.median(samples)
        ratio = f"{median / floor:7.2f}" if floor else ""
        print(f"{label:40} {median:8.2f} {p95:8.2f} {samples[0]:8.2f} {ratio}")


if __name__ == "__main__":
    main()
