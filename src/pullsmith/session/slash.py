"""Slash commands of the interactive session: their names, help and parsing."""

from __future__ import annotations

from dataclasses import dataclass

from pullsmith.errors import UserError

# name -> (argument it takes or "", what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "diff": ("", "show the session's change so far"),
    "undo": ("", "go back to the previous checkpoint (files and the model's history)"),
    "apply": ("", "bring the change into your working tree as uncommitted edits"),
    "pr": ("", "record a local pull request of the session, with its evidence"),
    "test": ("", "run the repository's tests now"),
    "compact": ("", "replace the older turns of the conversation by the model's summary"),
    "model": ("NAME", "use the model NAME from the next request on"),
    "status": ("", "show the session, the model, tokens and the sandbox"),
    "new": ("", "start a new session (this one stays saved)"),
    "help": ("", "list these commands"),
    "quit": ("", "leave the session (Ctrl-D does too); `pullsmith resume` continues it"),
}


@dataclass(frozen=True)
class Slash:
    name: str
    arg: str = ""


def parse(line: str) -> Slash | None:
    """The slash command `line` holds, or None when it is a request for the agent.

    A line starting with `//` is a request that starts with `/`. UserError for an unknown
    command or a wrong argument.
    """
    text = line.strip()
    if not text.startswith("/") or text.startswith("//"):
        return None
    name, _, arg = text[1:].partition(" ")
    name, arg = name.lower(), arg.strip()
    if name not in COMMANDS:
        raise UserError(f"there is no command /{name}; /help lists the commands.")
    wants = COMMANDS[name][0]
    if wants and not arg:
        raise UserError(f"/{name} needs {wants}, e.g. /{name} gpt-4.1-mini.")
    if not wants and arg:
        raise UserError(f"/{name} takes no argument; /help lists the commands.")
    return Slash(name, arg)


def request_text(line: str) -> str:
    """The request a non-command line holds (`//x` is the request `/x`)."""
    text = line.strip()
    return text[1:] if text.startswith("//") else text


def help_lines() -> list[str]:
    return [f"/{name}{' ' + arg if arg else ''}  {what}" for name, (arg, what) in COMMANDS.items()]
