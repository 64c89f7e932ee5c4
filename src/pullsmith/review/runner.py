"""One review start to end: ask the model, read its findings, check the P0/P1 ones.

The conversation is append-only: the system prompt and the numbered diff, the review reply
(one retry on a malformed one), then for each P0/P1 finding its own branch off that prefix
asking for a demonstration command (one retry), which the `Checker` runs on both trees.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from pullsmith.config import Settings
from pullsmith.models.base import Message, Model, Reply
from pullsmith.review.checker import Checker, is_demonstrated
from pullsmith.review.diff import Change, file_lines
from pullsmith.review.prompt import (
    DEMONSTRATE,
    DEMONSTRATE_REMINDER,
    FORMAT_REMINDER,
    SYSTEM,
    demonstration_command,
    enclosing_code,
    findings_from,
    first_message,
    parse_review,
    review_rules,
)
from pullsmith.review.schema import Demonstration, Dropped, Review, ReviewUsage

# At most this many P0/P1 findings are checked (each costs a model call and two commands).
MAX_CHECKED = 3
Progress = Callable[[str], None]


class _Calls:
    """The model, counting what it used."""

    def __init__(self, model: Model, settings: Settings) -> None:
        self.model = model
        self.usage = ReviewUsage()
        self.seed = settings.seed

    def __call__(self, messages: list[Message]) -> Reply:
        reply = self.model.complete(messages, temperature=0.0, seed=self.seed)
        self.usage.model_calls += 1
        self.usage.prompt_tokens += reply.usage.prompt_tokens
        self.usage.completion_tokens += reply.usage.completion_tokens
        return reply


def rules_for(change: Change) -> str | None:
    """The review rules of AGENTS.md as the base has it (a change can not rewrite the rules it
    is reviewed by), else as the change has it (a repository's first AGENTS.md)."""
    for rev in (change.base, change.head):
        text = "\n".join(file_lines(change.repo, rev, "AGENTS.md"))
        if text:
            return review_rules(text)
    return None


def review_change(
    change: Change,
    model: Model,
    settings: Settings,
    *,
    focus: str | None = None,
    check: bool = True,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> Review:
    """Review `change` with `model`; with `check`, demonstrate its P0/P1 findings."""
    say = progress or (lambda _text: None)
    started = time.monotonic()
    calls = _Calls(model, settings)
    rules = rules_for(change)
    messages: list[Message] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": first_message(change, focus, rules)},
    ]
    say("reading the change")
    reply = calls(messages)
    parsed = parse_review(reply.text)
    messages.append({"role": "assistant", "content": reply.text})
    dropped: list[Dropped] = []
    if parsed.empty:
        say("the reply was malformed; asking again")
        messages.append({"role": "user", "content": FORMAT_REMINDER})
        reply = calls(messages)
        messages.append({"role": "assistant", "content": reply.text})
        parsed = parse_review(reply.text)
        if parsed.empty:
            dropped.append(
                Dropped(
                    title="(the whole reply)",
                    reason="the model's reply could not be read as findings, twice",
                )
            )
    findings, more_dropped = findings_from(parsed, change)
    dropped += more_dropped
    serious = [f for f in findings if f.priority in ("P0", "P1")]
    verdict = parsed.verdict or ("incorrect" if serious else "correct")
    reasoning = parsed.reason or (
        "The model gave no reasoning; the verdict follows from its findings."
        if not parsed.empty
        else "The model's reply could not be read, so no finding is reported."
    )
    if check and serious:
        prefix = list(messages)
        with Checker(change, settings, cancel=cancel) as checker:
            for index, finding in enumerate(serious, start=1):
                if index > MAX_CHECKED:
                    finding.check = "not checked"
                    continue
                if cancel is not None and cancel.is_set():
                    break
                say(f"checking finding {index} of {len(serious)}: {finding.title}")
                where = finding.location
                ask = DEMONSTRATE.format(
                    index=index,
                    title=finding.title.replace('"', "'"),
                    location=where,
                    code=enclosing_code(
                        file_lines(change.repo, change.head, where.path),
                        where.start_line,
                        where.end_line,
                    ),
                )
                branch = [*prefix, {"role": "user", "content": ask}]
                answer = calls(branch)
                command = demonstration_command(answer.text)
                if command is None:
                    branch += [
                        {"role": "assistant", "content": answer.text},
                        {"role": "user", "content": DEMONSTRATE_REMINDER},
                    ]
                    command = demonstration_command(calls(branch).text)
                if command is None:
                    finding.check = "not demonstrated"
                    finding.demonstration = Demonstration(
                        command="",
                        reason="The model wrote no command to demonstrate it.",
                    )
                    continue
                say(f"running: {command.splitlines()[0][:80]}")
                demonstration = checker.demonstrate(finding, command)
                finding.demonstration = demonstration
                finding.check = (
                    "demonstrated" if is_demonstrated(demonstration) else "not demonstrated"
                )
    return Review(
        repo=str(change.repo),
        target=change.label,
        base=change.base,
        head=change.head,
        focus=focus,
        rules=rules,
        model=getattr(model, "name", "") or str(settings.model or ""),
        findings=findings,
        verdict=verdict,  # type: ignore[arg-type]
        reasoning=reasoning,
        dropped=dropped,
        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        seconds=round(time.monotonic() - started, 2),
        usage=calls.usage,
    )
