"""The bundled model's reply latency around a context compaction.

    .venv/bin/python benchmarks/compaction_latency.py [--runs 3]

Each run grows one conversation the way a long run does: the system prompt and a task, then
turns of a command (`cat` of a file) and its output (~1,300 characters of code-like lines, a
different file each turn and each run, so no run is served from another's cache), asking the
model for its next reply after every turn, until the conversation and a reply would no longer
fit the 8,192-token window. Then `compact()` (pullsmith.agent.compaction, as the agent loop
calls it) has the model summarize the older turns, and the model is asked for its next reply
on the compacted conversation, then on that conversation one turn longer.

Printed per run and as medians: the seconds (and prompt tokens, and how many of them came from
llama.cpp's prompt cache) of the last reply before the compaction, of the summary request, of
the first reply after it (the cache holds the prefix up to the summary only), and of the
second reply after it (append-only again, so cached). The ratio first-after / last-before is
what a compaction costs a turn once.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pullsmith.agent.compaction import compact, message_chars  # noqa: E402
from pullsmith.agent.prompts import SYSTEM_PROMPT, observation  # noqa: E402
from pullsmith.agent.protocol import protocol_for  # noqa: E402
from pullsmith.config import load_settings  # noqa: E402
from pullsmith.models import open_model  # noqa: E402
from pullsmith.models.base import Message, Model, Reply  # noqa: E402

WINDOW = 8192
REPLY_TOKENS = 2048


@dataclass
class Call:
    seconds: float
    prompt: int
    cached: int


def lines(run: int, turn: int) -> str:
    return "\n".join(
        f"def rule_{run}_{turn}_{n}(row): return row.get('k{n}', 0) * {n + turn} + {run}"
        for n in range(20)
    )


def ask(model: Model, messages: list[Message]) -> tuple[Reply, Call]:
    started = time.monotonic()
    reply = model.complete(messages, stop=["\n```\n"])
    call = Call(time.monotonic() - started, reply.usage.prompt_tokens, reply.usage.cached_tokens)
    return reply, call


def one_run(model: Model, run: int) -> dict[str, Call]:
    messages: list[Message] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": "Read the rule files in rules/ one by one with cat; I will ask about "
            "them later.",
        },
    ]
    turn = 0
    last: Call | None = None
    while True:
        command = f"cat rules/part_{run}_{turn}.py"
        messages += [
            {"role": "assistant", "content": f"```bash\n{command}\n```"},
            {"role": "user", "content": observation(0, lines(run, turn))},
        ]
        turn += 1
        counted = (last.prompt if last else 0) + 60  # the last prompt, its reply, this turn
        estimate = counted + message_chars(messages[-1]) // 3 + 20
        if last is not None and estimate + REPLY_TOKENS > WINDOW:
            break
        _, last = ask(model, messages)
    assert last is not None
    started = time.monotonic()
    done = compact(model, messages, protocol_for("text"), window=WINDOW)
    summary = Call(time.monotonic() - started, done.usage.prompt_tokens, done.usage.cached_tokens)
    if done.fallback:
        raise SystemExit(f"run {run}: the model wrote no summary ({done.fallback})")
    reply, first = ask(model, done.messages)
    grown = [
        *done.messages,
        {"role": "assistant", "content": reply.text or "```bash\nls\n```"},
        {"role": "user", "content": observation(0, lines(run, turn))},
    ]
    _, second = ask(model, grown)
    print(
        f"run {run + 1}: {turn} turns, {done.dropped_turns} dropped; before {last.seconds:.1f} s "
        f"({last.prompt} prompt, {last.cached} cached) · summary {summary.seconds:.1f} s "
        f"({summary.prompt}, {summary.cached} cached) · first after {first.seconds:.1f} s "
        f"({first.prompt}, {first.cached} cached) · second after {second.seconds:.1f} s "
        f"({second.prompt}, {second.cached} cached)",
        flush=True,
    )
    return {"before": last, "summary": summary, "first after": first, "second after": second}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    settings = load_settings({"max_reply_tokens": 256, "temperature": 0.0})
    if not settings.uses_local_model:
        raise SystemExit("this benchmark measures the bundled model; unset the API settings.")
    model = open_model(settings)
    try:
        results = [one_run(model, run) for run in range(args.runs)]
    finally:
        model.close()
    print("\n| reply | median s | median prompt tokens | median cached |")
    print("|---|---:|---:|---:|")
    for key in ("before", "summary", "first after", "second after"):
        calls = [r[key] for r in results]
        print(
            f"| {key} | {statistics.median(c.seconds for c in calls):.1f} | "
            f"{statistics.median(c.prompt for c in calls):.0f} | "
            f"{statistics.median(c.cached for c in calls):.0f} |"
        )
    ratio = statistics.median(r["first after"].seconds / r["before"].seconds for r in results)
    print(f"\nfirst reply after a compaction / last reply before it: {ratio:.2f}x (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
