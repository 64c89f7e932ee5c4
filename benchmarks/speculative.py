"""Speculative decoding of the bundled model: is a reply that copies its prompt faster?

    .venv/bin/python benchmarks/speculative.py [--runs 3] [--ngram 12:48,6:24,4:16]
                                               [--draft PATH.gguf]

One llama.cpp server per configuration, started as pullsmith starts it (LocalServer, 8,192
tokens of context, 2 threads, one slot), one after the other: "off", then ngram-simple with
each `--ngram N:M` (N tokens matched earlier in the context, M drafted), then draft-simple
with `--draft` when a draft GGUF with the bundled model's vocabulary is given (no such file
ships with pullsmith; without one the draft mode is reported as not measured).

Each configuration answers two requests `--runs` times, at temperature 0:

- rewrite: the system prompt, a ~100-line Python file and a failing test, asking for the
  whole file back with a one-line fix as a `cat > file <<'EOF'` block (the whole-file edit
  form), so the reply mostly copies the prompt;
- short: a demo-like first turn, one short bash command and a sentence, that copies little.

Printed per configuration and request: median generation tokens/s (llama.cpp's own
`timings.predicted_per_second`, which leaves out the prompt), the ratio to "off", median
seconds of the whole request, drafted and accepted tokens, and whether the text is the same
as "off" gave (and the same in every run). Prompts are not cached between runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pullsmith.agent.prompts import SYSTEM_PROMPT  # noqa: E402
from pullsmith.config import Speculation  # noqa: E402
from pullsmith.models.local import LocalServer  # noqa: E402
from pullsmith.models.weights import ensure_model  # noqa: E402

# 127.0.0.1 only, never through a proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def source_file() -> str:
    """~100 lines of ordinary Python with one bug: `median` of an even-length list."""
    lines = [
        '"""Small statistics helpers for the report generator."""',
        "",
        "from __future__ import annotations",
        "",
        "import math",
        "from collections.abc import Iterable, Sequence",
        "",
        "",
        "def mean(values: Sequence[float]) -> float:",
        '    """The arithmetic mean; 0.0 for no values."""',
        "    if not values:",
        "        return 0.0",
        "    return sum(values) / len(values)",
        "",
        "",
        "def median(values: Sequence[float]) -> float:",
        '    """The middle value; the mean of the two middle ones for an even count."""',
        "    if not values:",
        "        return 0.0",
        "    ordered = sorted(values)",
        "    middle = len(ordered) // 2",
        "    if len(ordered) % 2 == 1:",
        "        return ordered[middle]",
        "    return (ordered[middle] + ordered[middle + 1]) / 2",
        "",
        "",
    ]
    for name, op, doc in (
        ("variance", "(v - centre) ** 2", "The population variance."),
        ("mean_abs_deviation", "abs(v - centre)", "The mean absolute deviation."),
        ("mean_cubed_deviation", "(v - centre) ** 3", "The mean cubed deviation."),
    ):
        lines += [
            f"def {name}(values: Sequence[float]) -> float:",
            f'    """{doc}"""',
            "    if not values:",
            "        return 0.0",
            "    centre = mean(values)",
            f"    return sum({op} for v in values) / len(values)",
            "",
            "",
        ]
    lines += [
        "def stdev(values: Sequence[float]) -> float:",
        '    """The population standard deviation."""',
        "    return math.sqrt(variance(values))",
        "",
        "",
        "def clamp(value: float, low: float, high: float) -> float:",
        '    """`value` limited to the range from `low` to `high`."""',
        "    return max(low, min(high, value))",
        "",
        "",
        "def percentile(values: Sequence[float], fraction: float) -> float:",
        '    """The value below which `fraction` of the values lie (nearest rank)."""',
        "    if not values:",
        "        return 0.0",
        "    ordered = sorted(values)",
        "    rank = math.ceil(clamp(fraction, 0.0, 1.0) * len(ordered))",
        "    return ordered[max(rank - 1, 0)]",
        "",
        "",
        "def normalise(values: Iterable[float]) -> list[float]:",
        '    """The values scaled to the range 0..1 (all 0.0 when they are equal)."""',
        "    items = list(values)",
        "    if not items:",
        "        return []",
        "    low, high = min(items), max(items)",
        "    if high == low:",
        "        return [0.0 for _ in items]",
        "    return [(v - low) / (high - low) for v in items]",
        "",
        "",
        "def moving_average(values: Sequence[float], window: int) -> list[float]:",
        '    """The mean of each run of `window` consecutive values."""',
        "    if window <= 0:",
        '        raise ValueError("window must be positive")',
        "    return [mean(values[i : i + window]) for i in range(len(values) - window + 1)]",
        "",
        "",
        "def histogram(values: Iterable[float], buckets: int) -> list[int]:",
        '    """How many values fall in each of `buckets` equal slices of their range."""',
        "    items = normalise(values)",
        "    counts = [0] * buckets",
        "    for v in items:",
        "        counts[min(int(v * buckets), buckets - 1)] += 1",
        "    return counts",
        "",
        "",
        "def summary(values: Sequence[float]) -> dict[str, float]:",
        '    """The numbers the report prints for one column."""',
        "    return {",
        '        "mean": mean(values),',
        '        "median": median(values),',
        '        "stdev": stdev(values),',
        '        "p90": percentile(values, 0.9),',
        "    }",
    ]
    return "\n".join(lines) + "\n"


def rewrite_messages() -> list[dict[str, str]]:
    task = (
        "Task: `median([1, 2, 3, 4])` must be 2.5 but raises IndexError; fix it.\n\n"
        "Failing test:\n```\ntests/test_stats.py::test_median_even FAILED\n"
        "IndexError: list index out of range\n```\n\n"
        f"Source of stats.py:\n```python\n{source_file()}```\n\n"
        "Reply with one ```bash block that rewrites stats.py whole with "
        "`cat > stats.py <<'EOF'` (every line of the file, the fix included) and nothing else."
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": task}]


def short_messages() -> list[dict[str, str]]:
    task = (
        "Task: the test suite of this repository fails on a fresh checkout; find out why.\n\n"
        "Start by running the tests. Reply with one sentence and one ```bash block."
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": task}]


REQUESTS = {"rewrite": (rewrite_messages, 2048), "short": (short_messages, 160)}


@dataclass
class Result:
    tokens_per_s: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    drafted: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)


def ask(base_url: str, request: str) -> tuple[str, float, float, int, int]:
    """(text, generation tokens/s, seconds, drafted, accepted) of one chat completion."""
    build, max_tokens = REQUESTS[request]
    body = {
        "model": "local",
        "messages": build(),
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "seed": 1234,
        # Every run pays its prompt, so the seconds compare; tokens/s leaves the prompt out.
        "cache_prompt": False,
    }
    http = urllib.request.Request(
        base_url + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    started = time.monotonic()
    with OPENER.open(http, timeout=1800) as response:
        answer = json.loads(response.read())
    seconds = time.monotonic() - started
    text = answer["choices"][0]["message"].get("content") or ""
    timings = answer.get("timings") or {}
    tokens = answer.get("usage", {}).get("completion_tokens", 0)
    rate = float(timings.get("predicted_per_second") or tokens / seconds)
    return (
        text,
        rate,
        seconds,
        int(timings.get("draft_n", 0)),
        int(timings.get("draft_n_accepted", 0)),
    )


def measure(model_path: Path, name: str, speculation: Speculation, runs: int) -> dict[str, Result]:
    results = {request: Result() for request in REQUESTS}
    log = Path(tempfile.gettempdir()) / f"pullsmith-speculative-{name}.log"
    print(f"\n{name}: starting the server (log {log})", flush=True)
    with LocalServer(model_path, speculation=speculation, log_path=log) as server:
        ask(server.base_url, "short")  # warm up
        for run in range(runs):
            for request in REQUESTS:
                text, rate, seconds, drafted, accepted = ask(server.base_url, request)
                result = results[request]
                result.tokens_per_s.append(rate)
                result.seconds.append(seconds)
                result.drafted.append(drafted)
                result.accepted.append(accepted)
                result.texts.append(text)
                print(
                    f"  run {run + 1} {request:7}: {rate:6.1f} tok/s, {seconds:6.1f} s, "
                    f"{accepted}/{drafted} draft tokens accepted, {len(text)} chars",
                    flush=True,
                )
    if speculation.enabled and not any(results["rewrite"].drafted):
        print(f"  {name}: no tokens were drafted; see {log} for why", flush=True)
    return results


def configurations(args: argparse.Namespace) -> list[tuple[str, Speculation]]:
    configs = [("off", Speculation())]
    for pair in filter(None, args.ngram.split(",")):
        n, m = (int(part) for part in pair.split(":"))
        configs.append((f"ngram-{n}-{m}", Speculation(mode="ngram", ngram_size=n, draft_max=m)))
    if args.draft:
        draft = Path(args.draft).expanduser()
        if not draft.is_file():
            raise SystemExit(f"the draft model {draft} does not exist")
        configs.append(
            (
                f"draft-{args.draft_max}",
                Speculation(mode="draft", model=draft, draft_max=args.draft_max),
            )
        )
    return configs


def first_difference(a: str, b: str) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--ngram", default="12:48,6:24,4:16", help="ngram sizes N:M, comma-separated"
    )
    parser.add_argument("--draft", default=None, help="a draft GGUF (Qwen2.5 0.5B vocabulary)")
    parser.add_argument("--draft-max", type=int, default=8)
    args = parser.parse_args(argv)
    model_path = ensure_model(progress=False)
    measured = {
        name: measure(model_path, name, spec, args.runs) for name, spec in configurations(args)
    }

    off = measured["off"]
    print(f"\nmedians over {args.runs} runs, temperature 0, generation tokens/s from llama.cpp")
    print("| config | request | tok/s | vs off | s | accepted/drafted | same text as off |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, results in measured.items():
        for request, result in results.items():
            rate = statistics.median(result.tokens_per_s)
            base = statistics.median(off[request].tokens_per_s)
            reference = off[request].texts[0]
            same = all(text == reference for text in result.texts)
            if same:
                verdict = "yes"
            else:
                diffs = [first_difference(t, reference) for t in result.texts if t != reference]
                verdict = f"NO (from char {min(diffs)})"
            if len(set(result.texts)) > 1:
                verdict += ", runs differ"
            print(
                f"| {name} | {request} | {rate:.1f} | {rate / base:.2f}x | "
                f"{statistics.median(result.seconds):.1f} | "
                f"{statistics.median(result.accepted):.0f}/{statistics.median(result.drafted):.0f}"
                f" | {verdict} |"
            )
    if not args.draft:
        print(
            "\ndraft: not measured (no --draft GGUF; pullsmith ships no draft model and none with "
            "the bundled model's vocabulary is on this machine)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
