"""Approvals: which of the agent's commands the person at the terminal is asked about.

`ApprovalPolicy` is pure logic over one `--approval` mode and what the person said "always" to:

- untrusted: ask before every command that is not a known read-only one (`is_read_only`);
- on-request: ask before a command that needs what the sandbox denies (the network, writing
  outside the workspace: `needs_outside`), offering to run it outside the sandbox;
- on-failure: ask only when a sandboxed command failed, whether to run it again outside;
- never: ask nothing (headless `exec`).

A question's answers are: run once, always allow this command for the session, or refuse with a
reason that goes to the model.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from pullsmith.agent.loop import Decision
from pullsmith.sandbox.base import CommandResult

MODES = ("untrusted", "on-request", "on-failure", "never")
CHOICES = ("once", "always", "refuse")

# Programs that only read (with the options below ruled out).
READ_ONLY_PROGRAMS = frozenset(
    "ls cat head tail grep egrep fgrep rg wc pwd echo printf nl file stat du df which sort uniq "
    "cut tr diff cmp tree basename dirname realpath true false date whoami less more".split()
)
READ_ONLY_GIT = frozenset("status log diff show rev-parse ls-files grep blame".split())
FIND_WRITES = frozenset("-exec -execdir -delete -ok -okdir -fprint -fprintf -fls".split())
OPERATORS = frozenset({"|", "||", "&&", ";", "&", "\n"})
# Programs whose usual uses need the network or write outside the workspace.
OUTSIDE_PROGRAMS = frozenset("curl wget ssh scp rsync sudo apt apt-get docker".split())
OUTSIDE_SUBCOMMANDS = {
    "pip": {"install", "download"},
    "pip3": {"install", "download"},
    "npm": {"install", "ci", "publish"},
    "yarn": {"install", "add"},
    "cargo": {"install", "fetch"},
    "git": {"push", "pull", "fetch", "clone"},
}


def _segments(command: str) -> list[list[str]] | None:
    """The simple commands of a command line (split at |, &&, ;, ...), or None when it holds
    something this reading can not judge (substitutions, heredocs, unbalanced quotes)."""
    if "`" in command or "$(" in command or "<<" in command or "<(" in command:
        return None
    lexer = shlex.shlex(command.replace("\n", " ; "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:
        return None
    segments: list[list[str]] = [[]]
    for token in tokens:
        if token in OPERATORS:
            segments.append([])
        else:
            segments[-1].append(token)
    return [s for s in segments if s]


def _writes(words: list[str]) -> bool:
    """Whether a simple command redirects output to a file (other than /dev/null)."""
    for index, word in enumerate(words):
        if word.endswith(">") or word.endswith(">>") or word in (">&", ">|"):
            target = words[index + 1] if index + 1 < len(words) else ""
            if target not in ("/dev/null", "1", "2", "&1", "&2"):
                return True
    return False


def _program(words: list[str]) -> tuple[str, list[str]]:
    """The program a simple command runs (after VAR=value assignments) and its arguments."""
    index = 0
    while index < len(words) and "=" in words[index] and not words[index].startswith("-"):
        index += 1
    rest = words[index:]
    return (rest[0].rsplit("/", 1)[-1], rest[1:]) if rest else ("", [])


def is_read_only(command: str) -> bool:
    """Whether every part of `command` is a known read-only program used read-only."""
    segments = _segments(command)
    if not segments:
        return False
    for words in segments:
        if _writes(words):
            return False
        program, args = _program(words)
        if program in READ_ONLY_PROGRAMS:
            continue
        if program == "find" and not FIND_WRITES.intersection(args):
            continue
        if program == "sed" and "-n" in args and not any(a.startswith("-i") for a in args):
            continue
        if program == "git" and args and args[0] in READ_ONLY_GIT:
            continue
        return False
    return True


def needs_outside(command: str) -> bool:
    """Whether `command` looks like it needs what the sandbox denies (network, the system)."""
    segments = _segments(command)
    if segments is None:
        segments = [command.split()]
    for words in segments:
        program, args = _program(words)
        if program in OUTSIDE_PROGRAMS:
            return True
        if program in ("python", "python3") and args[:2] == ["-m", "pip"]:
            program, args = "pip", args[2:]
        wanted = OUTSIDE_SUBCOMMANDS.get(program)
        if wanted and args and args[0] in wanted:
            return True
    return False


@dataclass(frozen=True)
class Ask:
    """A question for the person: may `command` run? `outside` says whether a yes runs it
    outside the sandbox; `failed` is the sandboxed run that failed, when that is the reason."""

    command: str
    outside: bool
    failed: CommandResult | None = None

    @property
    def question(self) -> str:
        if self.failed is not None:
            return (
                f"This command failed in the sandbox (exit {self.failed.exit_code}). "
                "Run it again outside the sandbox?"
            )
        if self.outside:
            return "This command needs more than the sandbox allows. Run it outside the sandbox?"
        return "Run this command (in the sandbox)?"


@dataclass
class ApprovalPolicy:
    """Decides, for one session, which commands to ask about; remembers the "always"s."""

    mode: str = "never"
    allowed: set[str] = field(default_factory=set)
    allowed_outside: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"approval must be one of {', '.join(MODES)}, not {self.mode!r}")

    def check(self, command: str, failed: CommandResult | None = None) -> Decision | Ask:
        """A Decision when no question is needed, else the Ask to put to the person."""
        key = command.strip()
        if failed is None:
            if key in self.allowed_outside:
                return Decision(outside_sandbox=True)
            if self.mode == "untrusted" and not (is_read_only(key) or key in self.allowed):
                return Ask(command, outside=False)
            if self.mode == "on-request" and needs_outside(key):
                return Ask(command, outside=True)
            return Decision()
        usable = not failed.timed_out and not getattr(failed, "cancelled", False)
        if self.mode == "on-failure" and usable:
            return Ask(command, outside=True, failed=failed)
        return Decision(run=False)  # keep the failed result; nothing is run again

    def answer(self, ask: Ask, choice: str, reason: str = "") -> Decision:
        """The Decision for the person's `choice` ("once", "always" or "refuse")."""
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {', '.join(CHOICES)}, not {choice!r}")
        if choice == "refuse":
            return Decision(run=False, reason=reason.strip() or "refused without a reason")
        if choice == "always":
            (self.allowed_outside if ask.outside else self.allowed).add(ask.command.strip())
        return Decision(outside_sandbox=ask.outside)
