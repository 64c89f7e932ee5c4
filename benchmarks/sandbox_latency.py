"""Round trip of `true` through each sandbox backend: median and p95 over N runs.

    .venv/bin/python benchmarks/sandbox_latency.py [--runs 300]

Every run goes through `Sandbox.run`, so it includes what a real command pays: its cgroup
(where there is one), the wrapper that applies the limits, bwrap's namespaces, mounts and
seccomp filter, and collecting the output. The backends take turns, BLOCK runs each, so that
a machine whose load changes during the benchmark slows them all alike, while each run still
follows one of its own kind (whose clean-up, e.g. of a network namespace, the kernel finishes
in the background). The last row, bwrap run
bare by subprocess (namespaces and a read-only / only), is this machine's floor. Container
backends are measured where an engine answers and has the image (nothing is pulled); they pay
one `docker exec` per command.
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
from pullsmith.sandbox.bwrap import find_bwrap
from pullsmith.sandbox.limits import cgroup_parents

BLOCK = 10


def sandbox_case(box: Sandbox) -> Callable[[], None]:
    def run() -> None:
        result = box.run("true")
        if result.exit_code != 0:
            raise SystemExit(f"{box.name}: `true` failed: {result.output}")

    return run


def bare_bwrap_case() -> Callable[[], None]:
    argv = [find_bwrap() or "bwrap", "--unshare-all", "--die-with-parent"]
    argv += ["--ro-bind", "/", "/", "true"]
    return lambda: subprocess.run(argv, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--image", default=DEFAULT_IMAGE)
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
        if bwrap_available() is None:
            cases["bare bwrap (for scale)"] = bare_bwrap_case()
        times: dict[str, list[float]] = {label: [] for label in cases}
        try:
            for case in cases.values():  # warm up
                for _ in range(BLOCK):
                    case()
            for _ in range(-(-args.runs // BLOCK)):
                for label, case in cases.items():
                    for _ in range(BLOCK):
                        started = time.perf_counter()
                        case()
                        times[label].append((time.perf_counter() - started) * 1000)
        finally:
            for box in boxes:
                box.close()
    load = os.getloadavg()[0]
    print(
        f"`true`, {args.runs} runs each, taking turns (ms; load average {load:.1f}, {os.cpu_count()} CPUs):"
    )
    print(f"{'backend':28} {'median':>8} {'p95':>8} {'min':>8}")
    for label, samples in times.items():
        samples.sort()
        p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
        print(f"{label:28} {statistics.median(samples):8.2f} {p95:8.2f} {samples[0]:8.2f}")


if __name__ == "__main__":
    main()
