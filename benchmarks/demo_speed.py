"""Generation speed on the demo, speculative decoding off and on, as a ratio in one run.

    .venv/bin/python benchmarks/demo_speed.py [--runs 3] [--modes off,ngram]

Runs `examples/demo.sh` (`make demo`'s job: the inventory repository's CSV bug, bundled
model, `--attempts 3 --until-pass`) `--runs` times per mode, the modes taking turns (off,
ngram, off, ngram, ...), each with `PULLSMITH_SPECULATIVE=<mode>` and a data directory of its
own, and reads llama.cpp's timings from the server log each run leaves in its run directory.
Printed per mode: the median over runs of generation tokens/s (the run's generated tokens
over the time spent generating them; prompt processing left out), of prompt tokens/s, of
wall seconds and of generated tokens, whether the demo resolved, and the ratio of each median
to the first mode's. The model samples at the configured temperature, so two runs need not
write the same replies: the tokens/s is the figure to compare, not the wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attempt_time import server_timings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def one_run(mode: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"demo-speed-{mode}-") as tmp:
        env = {**os.environ, "PULLSMITH_SPECULATIVE": mode, "XDG_DATA_HOME": tmp}
        env.pop("PULLSMITH_DATA_DIR", None)
        started = time.monotonic()
        done = subprocess.run(
            ["bash", str(ROOT / "examples" / "demo.sh")],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.monotonic() - started
        totals = {"gen_tokens": 0.0, "gen_ms": 0.0, "prompt_tokens": 0.0, "prompt_ms": 0.0}
        for log in Path(tmp).rglob("model-server.log"):
            timing = server_timings(log)
            for key in totals:
                totals[key] += sum(timing[key])
    if not totals["gen_ms"]:
        raise SystemExit(f"the demo ({mode}) left no model timings:\n{done.stdout[-2000:]}")
    return {
        "gen_tps": totals["gen_tokens"] / totals["gen_ms"] * 1000,
        "prompt_tps": totals["prompt_tokens"] / totals["prompt_ms"] * 1000
        if totals["prompt_ms"]
        else 0.0,
        "wall_s": wall,
        "gen_tokens": totals["gen_tokens"],
        "resolved": float(done.returncode == 0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", default="off,ngram")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for n in range(args.runs):
        for mode in modes:
            figures = one_run(mode)
            runs[mode].append(figures)
            print(
                f"run {n + 1} {mode}: {figures['gen_tps']:.1f} gen tok/s, "
                f"{figures['prompt_tps']:.1f} prompt tok/s, {figures['wall_s']:.0f} s, "
                f"{figures['gen_tokens']:.0f} tokens, resolved {bool(figures['resolved'])}",
                flush=True,
            )
    medians = {m: {k: statistics.median(r[k] for r in runs[m]) for k in runs[m][0]} for m in modes}
    base = medians[modes[0]]
    print(f"\nmedians over {args.runs} run(s); ratio to {modes[0]}")
    print("| mode | gen tok/s | ratio | prompt tok/s | wall s | generated tokens | resolved |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode in modes:
        m = medians[mode]
        resolved = sum(int(r["resolved"]) for r in runs[mode])
        print(
            f"| {mode} | {m['gen_tps']:.1f} | {m['gen_tps'] / base['gen_tps']:.2f}x | "
            f"{m['prompt_tps']:.1f} | {m['wall_s']:.0f} | {m['gen_tokens']:.0f} | "
            f"{resolved}/{args.runs} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
