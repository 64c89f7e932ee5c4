"""Words that match the change: the commit's and the PR's summary, written from the final diff.

A model's finish summary is written before pullsmith's last checks, and a small one often
describes what it meant to do ("replaced the recursion with a loop") rather than what the diff
does. Once the diff is final (after the shrink), the model is asked once more, in a short
prompt of its own, with that diff and pullsmith's test results in front of it. A prompt of its
own, rather than one more turn of the conversation: the new tokens are the same either way
(the diff and the results are new to the model in both), the conversation's earlier claims
are not in front of it, and the request fits any context window and either protocol (a
conversation ending in a tool call can not simply be followed by a question).

On the bundled model the prompt is most of the cost (~500 tokens read afresh, 17-26 s on a slow
day), so it holds only what the words need: the task's opening (TASK_CHARS), the diff, and the
last few lines of each test run; and the attempt asks only for a change whose tests do not fail
(attempt.Attempt._summarize), the one that can be merged.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pullsmith.agent.loop import clip
from pullsmith.models import Model
from pullsmith.models.base import Usage

DIFF_CHARS = 6000
OUTPUT_LINES = 3
TASK_CHARS = 400
SUMMARY_CHARS = 600
SUMMARY_LINES = 4

SUMMARY_SYSTEM = """\
You write the summary of a commit and its pull request. You are shown the task, the final \
diff (exactly what will be committed) and what the repository's tests said before and after \
the change. Describe only what the diff does; never claim a change the diff does not show. \
Reply with plain text only: first one line of at most 72 characters saying what the change \
does, then, only if it helps a reviewer, up to three short lines on how. No code blocks, no \
commands, no preamble."""

_FENCE = re.compile(r"^```[\w-]*\n(.*?)\n?```\s*$", re.S)
_FINISH = re.compile(r"""^\s*finish\s+(["'])(.*)\1\s*$""", re.S)
_THINK = re.compile(r"<think>.*?</think>", re.S)
_LABEL = re.compile(r"^(?:\*\*)?(?:summary|commit message|title)(?:\*\*)?\s*:\s*", re.I)


@dataclass
class Written:
    """The summary, and what asking for it cost."""

    text: str
    usage: Usage
    seconds: float


def test_lines(label: str, run: Any) -> str:
    """One test run in a line or a few: command, exit code, the end of its output."""
    if run is None:
        return f"{label}: not run."
    verdict = "timed out" if run.timed_out else ("pass" if run.exit_code == 0 else "fail")
    tail = [line for line in str(run.output).rstrip().splitlines() if line.strip()]
    tail = tail[-OUTPUT_LINES:] if run.exit_code else tail[-1:]
    body = "\n".join(tail)
    return f"{label}: `{run.command}` exit {run.exit_code} ({verdict})" + (
        f"\n```\n{body}\n```" if body else ""
    )


def task_opening(instruction: str, limit: int = TASK_CHARS) -> str:
    """The task's first `limit` characters, cut at a word (the diff says the rest)."""
    text = instruction.strip()
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit - 1)
    return text[: cut if cut > limit // 2 else limit - 1].rstrip() + " …"


def summary_request(
    instruction: str,
    diff: str,
    before: Any = None,
    after: Any = None,
    dropped: list[dict[str, Any]] | None = None,
) -> list[dict[str, str]]:
    """The messages asking for the summary of `diff`."""
    parts = [
        f"Task: {task_opening(instruction)}",
        f"The final diff:\n```diff\n{clip(diff, DIFF_CHARS).rstrip()}\n```",
        test_lines("Tests before the change", before),
        test_lines("Tests after the change (on this diff)", after),
    ]
    if dropped:
        where = ", ".join(f"{d.get('path')} line {d.get('old_start')}" for d in dropped)
        parts.append(
            f"Parts of the change the tests did not need were left out and are not in the diff "
            f"above ({where}); do not mention them."
        )
    parts.append("Write the summary of this diff.")
    return [
        {"role": "system", "content": SUMMARY_SYSTEM},
        {"role": "user", "content": "\n\n".join(parts)},
    ]


def clean_summary(text: str) -> str:
    """The summary in a reply: without reasoning tags, fences, a `finish "..."` wrapper or a
    "Summary:" label; at most SUMMARY_LINES lines and SUMMARY_CHARS characters."""
    text = _THINK.sub("", text or "").strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    finish = _FINISH.match(text)
    if finish:
        text = finish.group(2).strip()
    lines = [_LABEL.sub("", line.strip()).strip() for line in text.splitlines()]
    lines = [line.strip("`") for line in lines if line and not line.startswith("```")]
    text = "\n".join(lines[:SUMMARY_LINES])
    if len(text) > SUMMARY_CHARS:
        text = text[: SUMMARY_CHARS - 1].rstrip() + "…"
    return text


def write_summary(
    model: Model,
    messages: list[dict[str, str]],
    on_text: Callable[[str], None] | None = None,
) -> Written:
    """Ask `model` for the summary; raises whatever the model (or `on_text`, given each piece
    of the reply as it streams: a deadline) raises, and ValueError when the reply holds no
    summary."""
    started = time.monotonic()
    streamed: dict[str, Any] = {"on_text": on_text} if on_text is not None else {}
    reply = model.complete(messages, temperature=0.0, **streamed)  # type: ignore[arg-type]
    seconds = reply.duration_s or (time.monotonic() - started)
    text = clean_summary(reply.text)
    if not text:
        raise ValueError("the model's reply held no summary")
    return Written(text=text, usage=reply.usage, seconds=seconds)
