"""The text protocol: one fenced shell block per reply, and the finish command."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(r"^```[ \t]*([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
FINISH_LINE = re.compile(r"^\s*finish(?:\s|$)")
HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")


class FormatError(Exception):
    """The reply did not hold exactly one shell block; the message tells the model how to fix it."""


@dataclass(frozen=True)
class Action:
    """What one reply asks for: a command to run, then possibly the end of the task."""

    command: str
    finish: bool = False
    summary: str = ""
    ignored_blocks: int = 0

    @property
    def note(self) -> str:
        """The correction owed to the model when it wrote more than one block."""
        if not self.ignored_blocks:
            return ""
        return (
            f"Note: your reply had {self.ignored_blocks + 1} ```bash blocks; I ran only the first. "
            "Send exactly one block per reply and wait for its output."
        )


def _shell_blocks(text: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang.lower() in SHELL_LANGS]


def _parse_summary(arg: str) -> str:
    arg = arg.strip()
    if not arg:
        return ""
    try:
        return " ".join(shlex.split(arg))
    except ValueError:
        return arg.strip("'\"")


def close_heredocs(command: str) -> str:
    """Add the terminator of a heredoc the model opened but never closed.

    Small models often end the fenced block right after a whole-file heredoc; bash would then
    warn and still write the file, but anything after it would become file content.
    """
    lines = command.splitlines()
    index = 0
    while index < len(lines):
        match = HEREDOC.search(lines[index])
        index += 1
        if not match:
            continue
        delimiter = match.group(2)
        strip_tabs = lines[index - 1][match.start() : match.start() + 3] == "<<-"
        while index < len(lines):
            line = lines[index].lstrip("\t") if strip_tabs else lines[index]
            index += 1
            if line.rstrip() == delimiter:
                break
        else:
            lines.append(delimiter)
            break
    return "\n".join(lines)


def parse_action(text: str) -> Action:
    """Turn a model reply into an Action, or raise FormatError saying what was wrong."""
    blocks = _shell_blocks(text)
    if not blocks:
        # A bare `finish "..."` line is unambiguous; small models often leave out the fence.
        for line in text.splitlines():
            if FINISH_LINE.match(line):
                return Action(command="", finish=True, summary=_parse_summary(line.strip()[6:]))
        raise FormatError(
            "Your reply had no ```bash block. Reply with exactly one ```bash block holding the "
            'command to run next, or `finish "summary"` when the task is done.'
        )
    # Small models often write edit, test run and finish as three blocks in one reply. Running
    # the first and saying so keeps the turn; refusing the whole reply would waste it.
    ignored = len(blocks) - 1
    body = close_heredocs(blocks[0].strip("\n"))
    lines = body.rstrip().splitlines()
    # The finish command ends the block; its summary may span several lines.
    for index in range(len(lines) - 1, -1, -1):
        if FINISH_LINE.match(lines[index]):
            rest = "\n".join(lines[index:]).strip()[len("finish") :]
            return Action(
                command="\n".join(lines[:index]).strip("\n"),
                finish=True,
                summary=_parse_summary(rest),
                ignored_blocks=ignored,
            )
    if not body.strip():
        raise FormatError("Your ```bash block was empty. Put the command to run inside it.")
    return Action(command=body, ignored_blocks=ignored)
