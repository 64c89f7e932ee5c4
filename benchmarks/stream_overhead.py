"""Whether streaming a reply slows the bundled model down: tokens/s streamed vs not.

    .venv/bin/python benchmarks/stream_overhead.py [--runs 5] [--tokens 160]
    .venv/bin/python benchmarks/stream_overhead.py --client-only [--tokens 2000]

`--client-only` measures what streaming costs pullsmith's side alone, whatever the machine's
load: a reply of `--tokens` pieces from the loopback server of the tests
(tests/fake_openai_stream.py, 127.0.0.1, no model), streamed and not, and the client's CPU
time (time.process_time) per piece; a token of the bundled model takes 50 to 300 ms to
generate on this machine, which that cost is to be compared with.

One llama.cpp server with the bundled model (pullsmith.models.local, 127.0.0.1 only), and
pullsmith's own provider (pullsmith.models.openai_compat.OpenAIModel) asking it the same
question `--runs` times streamed (`on_text`, as the interactive session asks) and `--runs` times
not, in alternating order so that a busy machine slows both alike. Each reply is exactly
`--tokens` tokens (`ignore_eos`) and the prompt is the same every time (llama.cpp's prompt
cache serves it after the warm-up), so what is timed is the generation. Printed: the median
tokens/s of each way (completion tokens / the call's wall time, as `model.reply` reports it),
the streamed replies' median time to the first piece, and the ratio streamed / not streamed
(of the medians, and the median of each run's own ratio).

Also checked once, and printed: that the streamed reply's last chunk carries the usage and
llama.cpp's `timings` (the raw SDK stream), that the streamed and plain calls report the same
token counts, and that a native tool call (asked for with `tool_choice: required`) comes out
the same streamed as not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import openai

from pullsmith.agent.protocol import TOOLS
from pullsmith.config import LOCAL_MODEL_NAME
from pullsmith.models.local import ensure_model, start_local_server
from pullsmith.models.openai_compat import OpenAIModel

QUESTION = [
    {"role": "system", "content": "You are a careful Python programmer."},
    {
        "role": "user",
        "content": "Explain, step by step, how to find the bug in a function that exports a "
        "list of rows to CSV but drops the last row, and how to test the fix.",
    },
]
TOOL_QUESTION = [
    {"role": "system", "content": "You fix bugs. Use the shell tool to run commands."},
    {"role": "user", "content": "Run the tests of this repository with `python -m pytest -q`."},
]


class CallingModel(OpenAIModel):
    """The provider with `tool_choice: required`, so that the small model surely makes a
    call (pullsmith itself asks with "auto")."""

    def _create(self, kwargs: dict) -> object:
        return super()._create({**kwargs, "tool_choice": "required"})


def timed(model: OpenAIModel, stream: bool) -> tuple[float, float | None, int]:
    """Tokens/s of one reply, seconds to its first piece (streamed only), its token count."""
    first: list[float] = []
    started = time.monotonic()

    def on_text(piece: str) -> None:
        if not first:
            first.append(time.monotonic() - started)

    reply = model.complete(QUESTION, temperature=0.0, on_text=on_text if stream else None)
    tokens = reply.usage.completion_tokens
    return tokens / reply.duration_s, (first[0] if first else None), tokens


def raw_stream_check(base_url: str) -> str:
    client = openai.OpenAI(base_url=base_url, api_key="none")
    chunks = list(
        client.chat.completions.create(
            model=LOCAL_MODEL_NAME,
            messages=QUESTION,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    timings = (last.model_extra or {}).get("timings") or {}
    return (
        f"{len(chunks)} chunks; last: usage={last.usage is not None} "
        f"(prompt {last.usage.prompt_tokens if last.usage else '?'}, completion "
        f"{last.usage.completion_tokens if last.usage else '?'}), timings={bool(timings)} "
        f"(cache_n {timings.get('cache_n')}, predicted_per_second "
        f"{round(timings.get('predicted_per_second') or 0, 1)})"
    )


def client_only(pieces: int, runs: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from fake_openai_stream import FakeStreamingServer, Scripted

    costs: dict[bool, list[float]] = {True: [], False: []}
    for run in range(runs):
        for stream in (run % 2 == 0, run % 2 != 0):
            reply = Scripted(pieces=[f" tok{i}" for i in range(pieces)], completion_tokens=pieces)
            server = FakeStreamingServer([reply])
            model = OpenAIModel("fake", base_url=server.base_url, api_key="none")
            try:
                cpu = time.process_time()
                model.complete(QUESTION, on_text=(lambda piece: None) if stream else None)
                costs[stream].append(time.process_time() - cpu)
            finally:
                model.close()
                server.close()
    # The server runs in this process too: its CPU time (sending the SSE chunks) is in both.
    per = {k: statistics.median(v) / pieces * 1e6 for k, v in costs.items()}
    print(f"a reply of {pieces} pieces from the loopback server, {runs} runs each way")
    print(f"not streamed: median {statistics.median(costs[False]) * 1e3:.1f} ms of CPU")
    print(f"streamed    : median {statistics.median(costs[True]) * 1e3:.1f} ms of CPU")
    print(f"streamed costs {per[True] - per[False]:.0f} µs of CPU more per piece")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument("--client-only", action="store_true")
    args = parser.parse_args()
    if args.client_only:
        client_only(args.tokens, args.runs)
        return
    server = start_local_server(ensure_model(progress=False), n_ctx=4096)
    try:
        model = OpenAIModel(
            LOCAL_MODEL_NAME,
            base_url=server.base_url,
            seed=1,
            max_reply_tokens=args.tokens,
            extra_body={"cache_prompt": True, "ignore_eos": True},
        )
        print("raw stream:", raw_stream_check(server.base_url), flush=True)
        timed(model, False)  # warm up: the prompt goes into the cache
        plain: list[float] = []
        streamed: list[float] = []
        firsts: list[float] = []
        counts = set()
        for run in range(args.runs):
            for stream in (run % 2 == 0, run % 2 != 0):
                rate, first, tokens = timed(model, stream)
                way = "streamed" if stream else "not streamed"
                print(f"  run {run + 1} {way}: {tokens} tokens, {rate:.1f} tokens/s", flush=True)
                counts.add(tokens)
                (streamed if stream else plain).append(rate)
                if first is not None:
                    firsts.append(first)
        tools_model = CallingModel(LOCAL_MODEL_NAME, base_url=server.base_url, seed=1)
        calls = [
            tools_model.complete(
                TOOL_QUESTION, temperature=0.0, tools=TOOLS, on_text=on_text
            ).tool_calls
            for on_text in (None, lambda piece: None)
        ]
        same_calls = [(c["name"], c["arguments"]) for c in calls[0]] == [
            (c["name"], c["arguments"]) for c in calls[1]
        ]
        m_plain, m_stream = statistics.median(plain), statistics.median(streamed)
        # Each run's two calls are next to each other, so their ratio is the least disturbed
        # by a machine whose load changes.
        ratios = [s / p for s, p in zip(streamed, plain, strict=True)]
        print(f"replies of {sorted(counts)} tokens, {args.runs} runs each way, alternating")
        print(f"not streamed: median {m_plain:.1f} tokens/s  {[round(x, 1) for x in plain]}")
        print(f"streamed    : median {m_stream:.1f} tokens/s  {[round(x, 1) for x in streamed]}")
        print(f"streamed / not streamed: {m_stream / m_plain:.3f} (of the medians)")
        print(
            f"streamed / not streamed, run by run: median {statistics.median(ratios):.3f}  "
            f"{[round(r, 3) for r in ratios]}"
        )
        print(f"streamed, time to the first piece: median {statistics.median(firsts):.2f} s")
        print(
            f"tool calls streamed == not streamed: {same_calls} ({len(calls[0])} call(s): "
            f"{calls[1]})"
        )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
