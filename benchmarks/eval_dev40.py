"""The dev40 baseline: pullsmith on the 40 fixed HumanEvalFix tasks, its report kept in the repo.

    .venv/bin/python benchmarks/eval_dev40.py --out /tmp/eval-dev40-baseline
    .venv/bin/python benchmarks/eval_dev40.py --out /tmp/eval-dev40-baseline --resume
    .venv/bin/python benchmarks/eval_dev40.py --out /tmp/x --name dev40-gpt --model gpt-4.1-mini

Runs `pullsmith eval run suites/humanevalfix --subset dev40` (any further arguments are passed
on), then copies OUT/report.md to benchmarks/results/<name>.md (default: dev40-baseline). It
takes 40-80 minutes with the bundled model on two CPU cores; interrupted, it resumes with
--resume. Compare two runs with `pullsmith eval compare OUT_A OUT_B`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the run's output directory")
    parser.add_argument("--name", default="dev40-baseline", help="benchmarks/results/NAME.md")
    args, rest = parser.parse_known_args(argv)
    command = [
        sys.executable,
        "-c",
        "from pullsmith.cli import main; main()",
        "eval",
        "run",
        str(ROOT / "suites" / "humanevalfix"),
        "--subset",
        "dev40",
        "--out",
        str(args.out),
        *rest,
    ]
    status = subprocess.call(command)
    report = args.out / "report.md"
    if report.is_file():
        target = ROOT / "benchmarks" / "results" / f"{args.name}.md"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(report, target)
        print(f"copied {report} to {target}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
