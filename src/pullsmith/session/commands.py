"""`pullsmith` (no command) / `pullsmith session`, and `pullsmith resume`."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pullsmith.config import Settings
from pullsmith.errors import UserError
from pullsmith.session.approval import MODES
from pullsmith.session.core import Session
from pullsmith.session.record import SessionRecord, sessions_of
from pullsmith.workspace import resolve_repo

DEFAULT_APPROVAL = "on-failure"


def approval_option(func: Any) -> Any:
    return click.option(
        "--approval",
        type=click.Choice(MODES),
        default=DEFAULT_APPROVAL,
        show_default=True,
        help="When to ask before a command: untrusted (all but known read-only ones), "
        "on-request (those that need more than the sandbox), on-failure (to re-run a failed one "
        "outside the sandbox), never.",
    )(func)


def repository_here(repo: str = ".") -> Path:
    """The repository the session works on; one sentence when there is none."""
    path = Path(repo).expanduser().resolve()
    try:
        return resolve_repo(path, Path("/nonexistent"))
    except UserError:
        raise UserError(
            f"{path} is not in a git repository; run pullsmith inside one (`pullsmith --help` "
            "lists the other commands)."
        ) from None


def open_session(settings: Settings, approval: str, repo: str = ".") -> None:
    from pullsmith.session.terminal import SessionApp

    root = repository_here(repo)
    SessionApp(settings, approval, repo=root).run()


def resume_session(settings: Settings, approval: str, session_id: str | None, last: bool) -> None:
    from pullsmith.session.terminal import SessionApp

    root = repository_here()
    if session_id is None:
        records = sessions_of(settings.data_dir, root)
        if not records:
            raise UserError(f"{root} has no sessions to resume; `pullsmith` starts one.")
        if last:
            record = records[0]
        else:
            record = choose(records)
        session_id = record.id
    session = Session.load(settings, session_id)
    if Path(session.record.repo) != root:
        raise UserError(
            f"session {session_id} belongs to {session.record.repo}; resume it from there."
        )
    SessionApp(settings, approval, session=session).run()


def when(stamp: float) -> str:
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M")


def session_table(records: list[SessionRecord]) -> Table:
    table = Table(title="sessions of this repository", title_justify="left")
    for column in ("#", "when", "first request", "branch", "turns", "state", "id"):
        table.add_column(column)
    for index, record in enumerate(records, start=1):
        first = " ".join(record.first_request.split())
        table.add_row(
            str(index),
            when(record.updated),
            escape(first[:50] + ("…" if len(first) > 50 else "")) or "(none yet)",
            escape(record.branch),
            str(len(record.turns)),
            escape(record.state),
            record.id,
        )
    return table


def choose(records: list[SessionRecord]) -> SessionRecord:
    console = Console(highlight=False, soft_wrap=True)
    console.print(session_table(records))
    if not sys.stdin.isatty():
        raise UserError("pass the id of the session to resume, or --last for the latest one.")
    answer = click.prompt("resume which (#)", default="1", show_default=True)
    try:
        index = int(answer)
    except ValueError:
        index = 0
    if not 1 <= index <= len(records):
        raise UserError(f"{answer!r} is not one of the numbers listed (1 to {len(records)}).")
    return records[index - 1]
