"""Context compaction: when a conversation nears the model's context window, its older turns are
replaced by a summary the model writes, so the run goes on instead of stopping.

What stays verbatim: the system prompt, the first user message (the task, its files and the
failing tests' output), the request being worked on now (a session's latest, when it is not the
first), and the last turns. The turns in between go; in their place come two messages, the
model's summary as an assistant message and a user message saying what was dropped (with the
dropped commands and their exit codes, which pullsmith knows for certain), so roles still
alternate and every tool call keeps its answer.

The summary is asked for with the conversation as it stood after the last dropped turn plus one
instruction, so a provider's prompt cache serves nearly all of that request. After a compaction
the history is append-only again until the next one; the prompt cache is lost once, from the
summary on.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pullsmith.agent.protocol import ActionProtocol, parse_action
from pullsmith.models.base import COMPACTION_REQUEST, Message, Model, Reply, Usage

SUMMARY_REQUEST = COMPACTION_REQUEST
SUMMARY_INTRO = "Summary of my earlier work on this task (older turns were compacted):\n"
DROPPED_NOTE = (
    "({turns} earlier turn(s) were compacted into the summary above to fit the context window. "
    "Commands they ran, with exit codes: {commands}.)"
)
CURRENT_REQUEST = "The request you are working on now:\n\n{request}"
# Tokens the summary request keeps free for the summary, and the tokens per character assumed
# for it when nothing was counted yet (code often takes fewer than 3 characters a token).
SUMMARY_RESERVE = 600
UNCOUNTED_TOKENS_PER_CHAR = 0.4
CODE_BLOCK = re.compile(r"```.*?(```|\Z)", re.DOTALL)
SUMMARY_CHARS = 1500


class CompactionError(Exception):
    """Nothing can be dropped: the conversation is only its kept parts."""


@dataclass
class Compaction:
    """A compacted conversation and what was dropped to make it."""

    messages: list[Message]
    summary: str
    dropped_turns: int
    dropped_messages: int
    kept_turns: int
    chars_before: int
    chars_after: int
    # Where the summary now stands in `messages` (the first dropped message stood there).
    at: int = 2
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0
    # Why the model's summary was not used, when it was not ("" when it was).
    fallback: str = ""
    # The summary request and the model's reply as sent and received (for the transcript).
    request: list[Message] = field(default_factory=list)


def message_chars(message: Message) -> int:
    """The characters of a message the model reads: its content and its tool calls."""
    calls = message.get("tool_calls") or []
    return len(message.get("content") or "") + sum(
        len(c["function"]["name"]) + len(c["function"]["arguments"]) for c in calls
    )


def turns_of(messages: list[Message], start: int = 2) -> list[tuple[int, int]]:
    """The turns from `start` on as [begin, end) ranges: an assistant message and the
    messages answering it, up to the next assistant message."""
    begins = [i for i in range(start, len(messages)) if messages[i].get("role") == "assistant"]
    return [
        (b, begins[k + 1] if k + 1 < len(begins) else len(messages)) for k, b in enumerate(begins)
    ]


def compact(
    model: Model,
    messages: list[Message],
    wire: ActionProtocol,
    *,
    current: int | None = None,
    keep_turns: int = 2,
    temperature: float | None = None,
    window: int | None = None,
    tokens_per_char: float | None = None,
    on_text: Callable[[str], None] | None = None,
) -> Compaction:
    """Replace the older turns of `messages` by a summary the model writes.

    `messages` start with the system prompt and the first user message; `current` is the index
    of the user message holding the request being worked on now (kept verbatim when it would
    be dropped). The last `keep_turns` turns stay as they are (fewer when there are not more
    than that; at least one turn is always dropped). Raises CompactionError when there is no
    turn to drop. A summary call that fails, or a reply with no text, falls back to a summary
    pullsmith writes itself from the dropped commands (`fallback` says why); so does one that
    `on_text`, given each piece of the reply as it streams, stops (a cancel, a time limit).
    """
    turns = turns_of(messages)
    if not turns:
        raise CompactionError("there are no turns to compact yet")
    keep = max(0, min(keep_turns, len(turns) - 1))
    dropped = turns[: len(turns) - keep]
    drop_from, drop_to = dropped[0][0], dropped[-1][1]
    head, middle, tail = messages[:drop_from], messages[drop_from:drop_to], messages[drop_to:]

    started = time.monotonic()
    usage = Usage()
    fallback = ""
    summary = ""
    asked: Message = {"role": "user", "content": SUMMARY_REQUEST}
    answered: Message = {"role": "assistant", "content": ""}
    shown = _fitting(messages, dropped, window, tokens_per_char or UNCOUNTED_TOKENS_PER_CHAR)
    request: list[Message] = []
    if shown is None:
        fallback = "the turns to drop do not fit in the window for a summary request"
    else:
        request = [*messages[:shown], asked]
        options = {k: v for k, v in wire.request().items() if k != "stop"}
        if on_text is not None:
            options["on_text"] = on_text
        try:
            reply: Reply = model.complete(request, temperature=temperature, **options)
            answered = {"role": "assistant", "content": reply.text}
            usage = reply.usage
            summary = _clean(reply.text)
            if not summary:
                fallback = "the model's reply had no summary in it"
        except Exception as exc:  # noqa: BLE001 - any provider failure: our own words instead
            fallback = f"the summary request failed ({_one_line(exc)})"
    commands = dropped_commands(middle)
    if not summary:
        summary = "I ran: " + (", ".join(commands) if commands else "no commands") + "."
    note = DROPPED_NOTE.format(
        turns=len(dropped), commands=", ".join(commands) if commands else "none"
    )
    if current is not None and drop_from <= current < drop_to:
        note += "\n\n" + CURRENT_REQUEST.format(request=messages[current].get("content") or "")
    compacted = [
        *head,
        {"role": "assistant", "content": SUMMARY_INTRO + summary},
        {"role": "user", "content": note},
        *tail,
    ]
    return Compaction(
        messages=compacted,
        summary=summary,
        dropped_turns=len(dropped),
        dropped_messages=len(middle),
        kept_turns=keep,
        chars_before=sum(message_chars(m) for m in messages),
        chars_after=sum(message_chars(m) for m in compacted),
        at=drop_from,
        usage=usage,
        seconds=round(time.monotonic() - started, 3),
        fallback=fallback,
        request=[asked, answered] if request else [],
    )


def _fitting(
    messages: list[Message],
    dropped: list[tuple[int, int]],
    window: int | None,
    tokens_per_char: float,
) -> int | None:
    """Where the summary request's conversation ends: after the last dropped turn that fits in
    `window` with the request and SUMMARY_RESERVE to spare; None when not even the first does."""
    if window is None:
        return dropped[-1][1]
    budget = window - SUMMARY_RESERVE - len(SUMMARY_REQUEST) * tokens_per_char
    chars = sum(message_chars(m) for m in messages[: dropped[0][0]])
    end = None
    for begin, finish in dropped:
        chars += sum(message_chars(m) for m in messages[begin:finish])
        if chars * tokens_per_char > budget:
            break
        end = finish
    return end


def dropped_commands(messages: list[Message]) -> list[str]:
    """Each command the dropped assistant replies ran, shortened, with the exit code its
    observation reported (`?` when it is not known)."""
    found: list[str] = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        command = _command_of(message)
        if not command:
            continue
        answer = messages[index + 1] if index + 1 < len(messages) else {}
        code = re.search(r"exit code (-?\d+)", str(answer.get("content") or ""))
        first = command.strip().splitlines()[0] if command.strip() else command
        short = first if len(first) <= 60 else first[:57] + "..."
        found.append(f"`{short}` → {code.group(1) if code else '?'}")
    return found


def _command_of(message: Message) -> str:
    for call in message.get("tool_calls") or []:
        if call["function"]["name"] == "shell":
            return _argument(call["function"]["arguments"], "command")
    try:
        return parse_action(message.get("content") or "").command
    except Exception:  # noqa: BLE001 - a malformed reply ran nothing
        return ""


def _argument(raw: str, name: str) -> str:
    try:
        value: Any = json.loads(raw)
    except ValueError:
        return ""
    return str(value.get(name) or "") if isinstance(value, dict) else ""


def _clean(text: str) -> str:
    text = CODE_BLOCK.sub("", text or "").strip()
    text = text.removeprefix(SUMMARY_INTRO.strip()).strip()
    if len(text) > SUMMARY_CHARS:
        text = text[:SUMMARY_CHARS].rsplit(" ", 1)[0] + " …"
    return text


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] if text else type(exc).__name__
