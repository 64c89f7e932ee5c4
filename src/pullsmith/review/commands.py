"""`pullsmith review`: review a change in a repository, or a local pull request."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console

from pullsmith.cli_options import settings_from_flags
from pullsmith.config import Settings
from pullsmith.errors import UserError
from pullsmith.models.base import Model
from pullsmith.review.diff import repo_root, resolve_change
from pullsmith.review.render import print_review
from pullsmith.review.runner import review_change
from pullsmith.review.schema import Review, review_schema

SANDBOX_CHOICES = ["bwrap", "docker", "podman", "none"]


def progress_printer(as_json: bool) -> Callable[[str], None]:
    """Progress lines on stderr at a terminal (never with --json)."""
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    quiet = as_json or not console.is_terminal

    def say(text: str) -> None:
        if not quiet:
            console.print(f"[dim]· {text}[/]", highlight=False)

    return say


def open_review_model(settings: Settings) -> Model:
    from pullsmith.models import open_model

    return open_model(settings, progress=False)


def emit(review: Review, as_json: bool, repo: Path | None = None) -> None:
    if as_json:
        print(review.model_dump_json(indent=1))
        return
    print_review(Console(highlight=False, soft_wrap=True, emoji=False), review, repo)


@click.command("review")
@click.option("--repo", default=".", show_default=True, help="The repository's path.")
@click.option(
    "--base", default=None, metavar="REF", help="Review the change since the merge base with REF."
)
@click.option("--commit", default=None, metavar="SHA", help="Review the change one commit made.")
@click.option(
    "--uncommitted",
    is_flag=True,
    help="Review the working tree's changes, untracked files too (the default).",
)
@click.option(
    "--pr",
    "pr_ref",
    default=None,
    metavar="N",
    help="Review local pull request N (stored with it).",
)
@click.option("--focus", default=None, help="What to look at most, in words.")
@click.option("--no-check", is_flag=True, help="Do not run demonstrations of P0/P1 findings.")
@click.option("--json", "as_json", is_flag=True, help="Print the review as JSON (docs/review.md).")
@click.option(
    "--schema", "print_schema", is_flag=True, help="Print the JSON Schema of --json and exit."
)
@click.option("--model", default=None, help="Model name (default: the bundled local model).")
@click.option("--base-url", default=None, help="OpenAI-compatible API base URL.")
@click.option("--sandbox", type=click.Choice(SANDBOX_CHOICES), default=None, help="Default bwrap.")
def review_command(
    repo: str,
    base: str | None,
    commit: str | None,
    uncommitted: bool,
    pr_ref: str | None,
    focus: str | None,
    no_check: bool,
    as_json: bool,
    print_schema: bool,
    model: str | None,
    base_url: str | None,
    sandbox: str | None,
) -> None:
    """Review a change: prioritised findings tied to its lines, the serious ones checked by
    running a demonstration in the sandbox, and a verdict."""
    if print_schema:
        print(json.dumps(review_schema(), indent=1))
        return
    settings = settings_from_flags(model=model, base_url=base_url, sandbox=sandbox)
    say = progress_printer(as_json)
    if pr_ref is not None:
        flags = [n for n, v in (("--base", base), ("--commit", commit)) if v] + (
            ["--uncommitted"] if uncommitted else []
        )
        if flags:
            raise UserError(
                f"--pr can not be used with {' or '.join(flags)}; a pull request is its own range."
            )
        from pullsmith.review.pull_request import review_pull_request

        review, path = review_pull_request(
            settings,
            pr_ref,
            focus=focus,
            check=not no_check,
            progress=say,
            open_model=open_review_model,
        )
        emit(review, as_json, path)
        return
    root = repo_root(Path(repo))
    change = resolve_change(root, base=base, commit=commit, uncommitted=uncommitted)
    model_ = open_review_model(settings)
    try:
        review = review_change(
            change, model_, settings, focus=focus, check=not no_check, progress=say
        )
    finally:
        model_.close()
    emit(review, as_json, root)
