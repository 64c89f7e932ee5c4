"""The prompt-cache hit rate of the Anthropic provider on a replayed 10-turn run, and its cost.

    .venv/bin/python benchmarks/anthropic_cache.py [--model claude-sonnet-4-5] [--keep]

A 10-turn tools-protocol run on the example repository (examples/inventory): nine `shell`
calls (look around, run the tests, fix inventory/export.py, run them again, look at the diff)
and a `finish`, replayed in that order by the fake Messages API of the tests
(tests/fake_anthropic.py, on 127.0.0.1), through `run_task` with the real provider
(pullsmith.models.anthropic, the real `anthropic` SDK, streaming). The fake keeps a prompt
cache the way the API documents it (a prefix ending at a `cache_control` breakpoint, at least
1,024 tokens, read back at a later breakpoint or up to 20 blocks before one) and counts a token
per 4 characters of a block's JSON, so the token counts are the fake's; which tokens are read
from the cache, written to it or sent uncached follows from the breakpoints the provider set.

Printed, from the run's model.reply and task.finished events: per turn the prompt, cache-read,
cache-write and output tokens and the turn's cost; the hit rate (cache-read tokens / prompt
tokens, over the run); the cost pullsmith shows (task.finished `cost_usd`, at the shipped price
of `--model`); and what the same tokens would cost with no cache at all.

Everything lives in a temporary XDG_DATA_HOME / XDG_CONFIG_HOME (removed unless `--keep`).
"""

from __future__ import annotations

import os
import tempfile

if "PULLSMITH_BENCH_HOME" not in os.environ:
    os.environ["PULLSMITH_BENCH_HOME"] = tempfile.mkdtemp(prefix="pullsmith-anthropic-")
    _home = os.environ["PULLSMITH_BENCH_HOME"]
    os.environ["XDG_DATA_HOME"] = os.path.join(_home, "data")
    os.environ["XDG_CONFIG_HOME"] = os.path.join(_home, "config")
    for _var in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "PULLSMITH_MODEL",
        "PULLSMITH_PROVIDER",
        "PULLSMITH_SANDBOX",
        "PULLSMITH_DATA_DIR",
        "PULLSMITH_MAX_COST",
    ):
        os.environ.pop(_var, None)

import argparse  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_anthropic import API_KEY, MODELS, FakeAnthropic, text_block, tool_use  # noqa: E402

from pullsmith.config import load_settings  # noqa: E402
from pullsmith.engine import run_task  # noqa: E402
from pullsmith.events import Event  # noqa: E402
from pullsmith.models.base import Usage  # noqa: E402
from pullsmith.models.prices import pricing_for  # noqa: E402
from pullsmith.sandbox import bwrap_available  # noqa: E402
from pullsmith.task import Task  # noqa: E402

FIX = (
    "python3 -c \"import pathlib; p = pathlib.Path('inventory/export.py'); "
    "p.write_text(p.read_text().replace('range(len(rows) - 1)', 'range(len(rows))'))\""
)
COMMANDS = [
    "ls -R",
    "cat AGENTS.md README.md",
    "cat inventory/export.py",
    "cat tests/test_export.py",
    "python -m pytest -q",
    "grep -n 'range' inventory/export.py",
    FIX,
    "python -m pytest -q",
    "git diff",
]


def script() -> list[list[dict]]:
    turns = [
        [text_block(f"Step {n}."), tool_use(f"toolu_{n:02d}", "shell", command=command)]
        for n, command in enumerate(COMMANDS, start=1)
    ]
    turns.append([tool_use("toolu_10", "finish", summary="to_csv exports every row")])
    return turns


def make_repo(where: Path) -> Path:
    repo = where / "inventory"
    shutil.copytree(ROOT / "examples" / "inventory", repo)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "initial"]):
        subprocess.run(
            ["git", *args],
            cwd=repo,
            check=True,
            env={
                **os.environ,
                "GIT_AUTHOR_NAME": "bench",
                "GIT_AUTHOR_EMAIL": "bench@example.invalid",
                "GIT_COMMITTER_NAME": "bench",
                "GIT_COMMITTER_EMAIL": "bench@example.invalid",
            },
        )
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="claude-sonnet-4-5", choices=MODELS)
    parser.add_argument("--keep", action="store_true", help="Keep the temporary home.")
    args = parser.parse_args()
    home = Path(os.environ["PULLSMITH_BENCH_HOME"])
    sandbox = "bwrap" if bwrap_available() is None else "none"
    os.environ["ANTHROPIC_API_KEY"] = API_KEY
    try:
        repo = make_repo(home)
        events: list[Event] = []
        with FakeAnthropic(script()) as server:
            settings = load_settings(
                {"model": args.model, "base_url": server.base_url, "sandbox": sandbox},
                cwd=home,
            )
            result = run_task(
                Task(instruction="The CSV export drops the last row. Fix to_csv.", repo=str(repo)),
                settings,
                listeners=[events.append],
            )
        replies = [e.data for e in events if e.type == "model.reply"]
        finished = next(e.data for e in events if e.type == "task.finished")
        pricing = pricing_for(settings)
        assert pricing.price is not None
        print(f"# Anthropic prompt cache: {len(replies)}-turn replayed run, {args.model}\n")
        print(
            f"status {result.status} · {result.exit_reason} · sandbox {sandbox} · price "
            f"{pricing.source}: ${pricing.price.input}/M input, "
            f"${pricing.price.cached_input}/M cache read, ${pricing.price.cache_write}/M cache "
            f"write, ${pricing.price.output}/M output\n"
        )
        print("| turn | prompt | cache read | cache write | uncached | output | cost |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        total = Usage()
        for d in replies:
            usage = Usage(
                d["prompt_tokens"],
                d["completion_tokens"],
                d["cached_tokens"],
                d["cache_write_tokens"],
            )
            total.add(usage)
            uncached = usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens
            print(
                f"| {d['turn']} | {usage.prompt_tokens:,} | {usage.cached_tokens:,} | "
                f"{usage.cache_write_tokens:,} | {uncached:,} | {usage.completion_tokens:,} | "
                f"${d['cost_usd']:.6f} |"
            )
        rate = total.cached_tokens / total.prompt_tokens if total.prompt_tokens else 0.0
        uncached_cost = pricing.price.cost(Usage(total.prompt_tokens, total.completion_tokens))
        print()
        print(
            f"prompt-cache hit rate: {total.cached_tokens:,} cache-read tokens / "
            f"{total.prompt_tokens:,} prompt tokens = {100 * rate:.1f}%"
        )
        print(
            f"cache writes: {total.cache_write_tokens:,} tokens "
            f"({100 * total.cache_write_tokens / total.prompt_tokens:.1f}% of the prompt tokens)"
        )
        print(f"cost shown (task.finished cost_usd): ${finished['cost_usd']:.6f}")
        print(f"the same tokens with no prompt cache: ${uncached_cost:.6f}")
        print(
            f"requests the fake answered: {len(server.requests)} ({server.statuses.count(200)} × 200)"
        )
    finally:
        if args.keep:
            print(f"\nkept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
