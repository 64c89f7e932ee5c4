"""Two attempts at once: does a llama.cpp server with two slots beat one slot taking turns?

    .venv/bin/python benchmarks/parallel_slots.py [--runs 3] [--tokens 160]

Best-of-N runs attempts that share the bundled model. Each request here looks like an
attempt's first turn: a ~1,500-token prompt (system prompt, task, failing test, source) and a
reply of `--tokens` tokens. The two requests of a pair differ in their last line, as two
attempts sampled at different temperatures do. "one slot" sends the pair one after the other
to a server with `parallel=1`; "two slots" sends it at once, from two threads, to a server
with `parallel=2` (the same context per slot). Printed: median seconds per pair over `--runs`
pairs, and the ratio (above 1 means two slots finish a pair faster).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import openai

from pullsmith.agent.prompts import SYSTEM_PROMPT
from pullsmith.models.local import LocalServer
from pullsmith.models.weights import ensure_model

SOURCE = "\n".join(
    f"def helper_{i}(values):\n    total = 0\n    for v in values:\n        total += v * {i}\n"
    f"    return total\n"
    for i in range(40)
)


def messages(tag: int) -> list[dict[str, str]]:
    task = (
        "Task: helper_7 must return the sum of the values times 7; it is wrong for empty "
        f"lists.\n\nSource of calc.py:\n```\n{SOURCE}\n```\n\nAttempt {tag}. Reply with one "
        "```bash block."
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": task}]


def pair(client: openai.OpenAI, tokens: int, together: bool, run: int) -> float:
    def one(tag: int) -> None:
        client.chat.completions.create(
            model="local",
            messages=messages(tag),
            max_tokens=tokens,
            temperature=0.7,
            seed=run * 10 + tag,
            # No cache reuse between runs: every pair pays its prompt, as new attempts do.
            extra_body={"cache_prompt": False, "ignore_eos": True},
        )

    started = time.monotonic()
    if together:
        threads = [threading.Thread(target=one, args=(tag,)) for tag in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        one(1)
        one(2)
    return time.monotonic() - started


def measure(model_path: object, parallel: int, runs: int, tokens: int) -> list[float]:
    with LocalServer(model_path, parallel=parallel) as server:  # type: ignore[arg-type]
        client = openai.OpenAI(base_url=server.base_url, api_key="none", timeout=600)
        pair(client, 8, parallel > 1, -1)  # warm up
        return [pair(client, tokens, parallel > 1, run) for run in range(runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=160)
    args = parser.parse_args()
    model_path = ensure_model(progress=False)
    one = measure(model_path, 1, args.runs, args.tokens)
    two = measure(model_path, 2, args.runs, args.tokens)
    m1, m2 = statistics.median(one), statistics.median(two)
    print(f"pairs of requests: ~1.5k-token prompt + {args.tokens} generated tokens each")
    print(f"one slot, in turn : median {m1:.1f} s per pair  {[round(x, 1) for x in one]}")
    print(f"two slots, at once: median {m2:.1f} s per pair  {[round(x, 1) for x in two]}")
    print(f"speed-up of two slots: {m1 / m2:.2f}x")


if __name__ == "__main__":
    main()
