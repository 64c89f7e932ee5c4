"""What a pytest run in the agent's sandbox costs with and without pullsmith's own pytest plugins.

The sandbox's Python is pullsmith's environment, whose test tools (schemathesis, hypothesis)
register pytest plugins that every pytest start imports. `pytest_skip_plugins` keeps them out.
This runs `python -m pytest -q` on a one-test repository in the sandbox (the agent's policy, as
an attempt's own test runs get it), alternating the two settings, and prints the median wall
time of each and their ratio.

    .venv/bin/python benchmarks/pytest_start.py --runs 15
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

from pullsmith.config import Settings
from pullsmith.sandbox import make_sandbox
from pullsmith.sandbox.policy import agent_policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--sandbox", default="bwrap")
    args = parser.parse_args()
    repo = Path(tempfile.mkdtemp(prefix="pytest-start-"))
    (repo / "test_one.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    default = Settings(sandbox=args.sandbox)
    every = dataclasses.replace(default, pytest_skip_plugins="")
    boxes = {
        "all plugins": make_sandbox(args.sandbox, repo, agent_policy(every)),
        "skip_plugins (default)": make_sandbox(args.sandbox, repo, agent_policy(default)),
    }
    times: dict[str, list[float]] = {name: [] for name in boxes}
    for _ in range(args.runs):
        for name, box in boxes.items():
            result = box.run("python -m pytest -q", timeout_s=120)
            if result.exit_code != 0:
                raise SystemExit(f"{name}: pytest failed ({result.exit_code}): {result.output}")
            times[name].append(result.duration_s)
    for box in boxes.values():
        box.close()
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"python -m pytest -q on one test, {args.sandbox} sandbox, {args.runs} runs each, alternating"
    )
    for name, value in medians.items():
        print(f"  {name:<24} median {value * 1000:7.0f} ms")
    ratio = medians["all plugins"] / medians["skip_plugins (default)"]
    print(f"  all plugins / skip_plugins: {ratio:.2f}x")


if __name__ == "__main__":
    main()
