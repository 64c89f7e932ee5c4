"""`pullsmith pr ...` and the pull request steps of `pullsmith exec`.

The `pr` command group lives here rather than in cli.py so the PR layer keeps its commands
next to what they call; cli.py adds the group and calls the exec helpers below.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape

from pullsmith.config import Settings, load_settings
from pullsmith.errors import UserError
from pullsmith.pr import local
from pullsmith.store import PR_STATES, PullRequestRecord, Store
from pullsmith.task import Task
from pullsmith.workspace import git

CHECK_STYLES = {"passing": "green", "failing": "red", "error": "red", "untested": "yellow"}
STATE_STYLES = {"open": "green", "merged": "magenta", "closed": "red"}
_ALERT = re.compile(r"^> \[!(NOTE|TIP|IMPORTANT|WARNING|CAUTION)\]\n", re.M)


def _settings() -> Settings:
    return load_settings()


def _store(settings: Settings) -> Store:
    return Store.open(settings)


def _repo_of(path: Path) -> str | None:
    """The repository `path` belongs to (its main checkout for a linked worktree), or None."""
    try:
        top = git("rev-parse", "--show-toplevel", cwd=path, check=False).strip()
        common = git(
            "rev-parse", "--path-format=absolute", "--git-common-dir", cwd=path, check=False
        ).strip()
    except UserError:
        return None
    if not top:
        return None
    if common and Path(common).name == ".git":
        return str(Path(common).parent.resolve())
    return str(Path(top).resolve())


def _pr_dict(pr: PullRequestRecord) -> dict[str, Any]:
    data = {column.key: getattr(pr, column.key) for column in pr.__table__.columns}
    return {k: (v.isoformat() + "Z" if hasattr(v, "isoformat") else v) for k, v in data.items()}


def _when(pr: PullRequestRecord) -> str:
    return pr.updated_at.strftime("%Y-%m-%d %H:%M") if pr.updated_at else ""


def _for_terminal(body: str) -> str:
    # GitHub's alert markers mean nothing to a terminal renderer; the bold verdict stays.
    return _ALERT.sub("", body)


# --- the `pr` group ----------------------------------------------------------------------


@click.group("pr")
def pr_group() -> None:
    """Pull requests made by runs: list, review, merge, publish."""


@pr_group.command("list")
@click.option(
    "--state",
    type=click.Choice([*PR_STATES, "all"]),
    default="open",
    show_default=True,
    help="Which pull requests to list.",
)
@click.option("--repo", default=None, help="Only this repository's (default: the current one).")
@click.option("--all-repos", is_flag=True, help="List the pull requests of every repository.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(state: str, repo: str | None, all_repos: bool, as_json: bool) -> None:
    """List pull requests, newest first."""
    settings = _settings()
    if all_repos:
        where = None
    elif repo is not None:
        path = Path(repo).expanduser()
        if not path.exists():
            raise UserError(f"{repo} does not exist; pass --repo with a repository's path.")
        where = _repo_of(path) or str(path.resolve())
    else:
        where = _repo_of(Path.cwd())
    states = None if state == "all" else (state,)
    with _store(settings) as store:
        prs = store.pull_requests(repo=where, states=states)
        counts = store.count_pull_requests(repo=where)
    if as_json:
        print(json.dumps([_pr_dict(pr) for pr in prs], indent=1))
        return
    console = Console(highlight=False, soft_wrap=True)
    scope = f" in {where}" if where else ""
    if not prs:
        console.print(
            escape(f"no {state if state != 'all' else ''} pull requests{scope}.".replace("  ", " "))
        )
    else:
        _print_table(console, prs)
    others = sum(n for s, n in counts.items() if states is not None and s not in states)
    if others:
        console.print(
            f"[dim]{others} more not {state}; `pullsmith pr list --state all` lists them.[/]"
        )


def _print_table(console: Console, prs: list[PullRequestRecord]) -> None:
    """Aligned columns that never wrap, coloured on a terminal; titles cut only there."""
    rows = [
        (
            f"#{pr.number}",
            pr.state,
            pr.checks,
            _clip(pr.title, 60) if console.is_terminal else pr.title,
            f"{pr.head} → {pr.base}",
            _when(pr),
        )
        for pr in prs
    ]
    header = ("#", "STATE", "TESTS", "TITLE", "BRANCH", "UPDATED")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...], styles: tuple[str, ...]) -> str:
        cells = []
        for text, width, style in zip(row, widths, styles, strict=True):
            padded = escape(text) + " " * (width - len(text))
            cells.append(f"[{style}]{padded}[/]" if style else padded)
        return "  ".join(cells).rstrip()

    console.print(line(header, ("dim",) * len(header)), soft_wrap=True)
    for pr, row in zip(prs, rows, strict=True):
        styles = (
            "bold",
            STATE_STYLES.get(pr.state, ""),
            CHECK_STYLES.get(pr.checks, ""),
            "",
            "cyan",
            "dim",
        )
        console.print(line(row, styles), soft_wrap=True)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@pr_group.command("show")
@click.argument("ref")
@click.option("--raw", is_flag=True, help="Print the description's Markdown as it is.")
@click.option("--json", "as_json", is_flag=True, help="Print the pull request as JSON.")
def show_command(ref: str, raw: bool, as_json: bool) -> None:
    """Show pull request REF (a number, or a task id) with its description and evidence."""
    settings = _settings()
    with _store(settings) as store:
        pr = store.find_pull_request(ref)
        if pr.state == "open":
            try:
                pr = local.refresh(store, pr, local.repo_path(pr, settings))
            except UserError:
                pass  # the repository is gone: the stored description still stands
        attempts = store.attempts(pr.number)
        review_row = store.latest_review(pr.number)
    if as_json:
        data = _pr_dict(pr)
        data["runs"] = [a.run_id for a in attempts]
        data["review"] = review_row.data if review_row else None
        print(json.dumps(data, indent=1))
        return
    body = pr.body if pr.body.endswith("\n") else pr.body + "\n"
    if raw:
        sys.stdout.write(body)
        return
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"[bold]#{pr.number} {escape(pr.title)}[/]")
    runs = len(attempts)
    console.print(
        f"[{STATE_STYLES.get(pr.state, '')}]{pr.state}[/] · tests "
        f"[{CHECK_STYLES.get(pr.checks, '')}]{pr.checks}[/] · {escape(pr.head)} → "
        f"{escape(pr.base)} · {runs} run{'s' if runs != 1 else ''} · {escape(pr.repo)}"
    )
    if pr.state == "merged" and pr.merge_commit:
        console.print(f"merged ({pr.merge_method}) as {pr.merge_commit[:10]}")
    if pr.remote_url:
        console.print(f"on GitHub: {escape(pr.remote_url)}")
    if not console.is_terminal:
        # Piped: the Markdown itself, which greps and pastes better than a rendering.
        console.file.write("\n" + body)
        if review_row is not None:
            console.file.write("\n" + _review_section(review_row, pr))
        return
    console.rule(style="dim")
    console.print(Markdown(_for_terminal(pr.body)))
    if review_row is not None:
        console.rule("review", style="dim")
        console.print(Markdown(_review_section(review_row, pr)))


def _review_section(row: Any, pr: PullRequestRecord) -> str:
    """The latest review of `pr`, as Markdown, saying when it is of an older head."""
    from pullsmith.review.pull_request import stored_review
    from pullsmith.review.render import review_markdown

    text = "## Review\n\n" + review_markdown(stored_review(row))
    if row.head_commit != pr.head_commit:
        text += (
            f"\n(This review is of {row.head_commit[:10]}; the branch has moved on since: "
            f"`pullsmith pr review {pr.number}` reviews it again.)\n"
        )
    if row.remote_review_url:
        text += f"\nPosted on GitHub: {row.remote_review_url}\n"
    return text


@pr_group.command("diff")
@click.argument("ref")
@click.option("--stat", is_flag=True, help="Only the diffstat.")
def diff_command(ref: str, stat: bool) -> None:
    """Print the change pull request REF proposes (its base to its branch)."""
    settings = _settings()
    with _store(settings) as store:
        pr = store.find_pull_request(ref)
    sys.stdout.write(local.diff(pr, settings, stat=stat))


@pr_group.command("patch")
@click.argument("ref")
def patch_command(ref: str) -> None:
    """Print every commit of pull request REF as a patch series for `git am`."""
    settings = _settings()
    with _store(settings) as store:
        pr = store.find_pull_request(ref)
    text = local.patch(pr, settings)
    sys.stdout.buffer.write(text)
    sys.stdout.flush()


@pr_group.command("merge")
@click.argument("ref")
@click.option("--squash", is_flag=True, help="Land the change as one new commit on the base.")
@click.option("--into", default=None, help="Merge into this branch instead of the PR's base.")
@click.option("--delete-branch", is_flag=True, help="Delete the PR's branch once merged.")
def merge_command(ref: str, squash: bool, into: str | None, delete_branch: bool) -> None:
    """Merge pull request REF into its base branch in your repository."""
    from pullsmith.pr.merge import merge

    settings = _settings()
    with _store(settings) as store:
        pr = store.find_pull_request(ref)
        merged = merge(store, pr, settings, squash=squash, into=into, delete_branch=delete_branch)
    pr = merged.pull_request
    how = {
        "fast-forward": "fast-forward",
        "merge": "merge commit",
        "squash": "squashed into one commit",
        "already-merged": "its commits were already there",
    }[merged.method]
    print(f"merged pull request #{pr.number} into {pr.base} ({how}): {merged.commit[:10]}.")
    if merged.checkout is not None and merged.method != "already-merged":
        print(f"your checkout at {merged.checkout} was updated.")
    if merged.branch_deleted:
        print(f"deleted branch {pr.head}.")
    if pr.checks != "passing":
        print(f"note: its tests were {pr.checks} when last run.")


@pr_group.command("close")
@click.argument("ref")
def close_command(ref: str) -> None:
    """Close pull request REF without merging (its branch stays)."""
    settings = _settings()
    with _store(settings) as store:
        pr = local.close(store, store.find_pull_request(ref))
    print(f"closed pull request #{pr.number}; branch {pr.head} is kept.")
    if pr.remote_url:
        print(f"it is still open on GitHub until closed there: {pr.remote_url}")


@pr_group.command("reopen")
@click.argument("ref")
def reopen_command(ref: str) -> None:
    """Reopen closed pull request REF."""
    settings = _settings()
    with _store(settings) as store:
        pr = local.reopen(store, store.find_pull_request(ref), settings)
    print(f"reopened pull request #{pr.number} (tests {pr.checks}).")


@pr_group.command("review")
@click.argument("ref")
@click.option("--focus", default=None, help="What to look at most, in words.")
@click.option("--no-check", is_flag=True, help="Do not run demonstrations of P0/P1 findings.")
@click.option("--json", "as_json", is_flag=True, help="Print the review as JSON (docs/review.md).")
@click.option("--model", default=None, help="Model name (default: the bundled local model).")
@click.option("--base-url", default=None, help="OpenAI-compatible API base URL.")
def review_command(
    ref: str,
    focus: str | None,
    no_check: bool,
    as_json: bool,
    model: str | None,
    base_url: str | None,
) -> None:
    """Review pull request REF's change and keep the review with it (`pr show` shows it,
    `pr publish` posts it to GitHub)."""
    from pullsmith.review.commands import emit, open_review_model, progress_printer
    from pullsmith.review.pull_request import review_pull_request

    settings = load_settings({k: v for k, v in (("model", model), ("base_url", base_url)) if v})
    review, repo = review_pull_request(
        settings,
        ref,
        focus=focus,
        check=not no_check,
        progress=progress_printer(as_json),
        open_model=open_review_model,
    )
    emit(review, as_json, repo)


@pr_group.command("publish")
@click.argument("ref")
@click.option("--remote", default=None, help="The git remote to push to (default origin).")
@click.option("--github-repo", default=None, help="owner/name on GitHub (default: from the URL).")
@click.option("--api-url", default=None, help="GitHub's REST API URL (GitHub Enterprise).")
@click.option("--base", default=None, help="The base branch on GitHub (default: the PR's).")
@click.option("--force", is_flag=True, help="Replace the remote branch if it has other commits.")
def publish_command(
    ref: str,
    remote: str | None,
    github_repo: str | None,
    api_url: str | None,
    base: str | None,
    force: bool,
) -> None:
    """Push pull request REF's branch and open (or update) it on GitHub."""
    settings = _settings()
    with _store(settings) as store:
        pr = store.find_pull_request(ref)
        published = _publish(store, pr, settings, remote, github_repo, api_url, base, force)
        posted = _post_review(store, published)
    verb = "opened" if published.created else "updated"
    print(f"{verb} {published.url} (pull request #{published.pull_request.number}).")
    print(_draft_note(published))
    if isinstance(posted, str):
        print(posted)
    elif posted is not None:
        where = f"{posted.comments} line comment{'s' if posted.comments != 1 else ''}"
        if posted.in_body:
            where = f"its {posted.in_body} findings in the body (GitHub would not place them)"
        print(f"posted its review with {where}: {posted.url}")


def _post_review(store: Store, published: Any) -> Any:
    """Post the PR's latest review when it is of the branch as published and not posted yet:
    what was posted, None, or a sentence saying why a review was not posted."""
    from pullsmith.review.pull_request import post_review, reviewable_on

    pr = published.pull_request
    row = store.latest_review(pr.number)
    if row is not None and row.remote_review_id is None and row.head_commit != pr.published_commit:
        return (
            f"its latest review is of {row.head_commit[:10]}, not of the branch as published, so "
            f"it was not posted; `pullsmith pr review {pr.number}` reviews the branch again."
        )
    if not reviewable_on(row, pr.published_commit):
        return None
    try:
        return post_review(store, row, published)
    except UserError as exc:
        exc.message = (
            f"the pull request was published, but its review was not posted "
            f"({exc.message.rstrip('.')}); publish again to retry."
        )
        raise


def _draft_note(published: Any) -> str:
    checks = published.pull_request.checks
    if published.draft and checks == "passing":
        return "its tests pass now, but GitHub keeps it a draft: mark it ready for review there."
    if published.draft:
        return f"it is a draft on GitHub, since its tests are {checks}."
    return f"its tests are {checks}."


def _publish(
    store: Store,
    pr: PullRequestRecord,
    settings: Settings,
    remote: str | None = None,
    github_repo: str | None = None,
    api_url: str | None = None,
    base: str | None = None,
    force: bool = False,
) -> Any:
    from pullsmith.pr.github import publish

    try:
        return publish(store, pr, settings, remote, github_repo, api_url, base, force)
    except UserError as exc:
        exc.message = (
            f"{exc.message.rstrip('.')}; pull request #{pr.number} is kept locally "
            f"(`pullsmith pr show {pr.number}`)."
        )
        raise


# --- the steps of `pullsmith exec` -------------------------------------------------------


def follow_up_task(
    settings: Settings, ref: str, instruction: str, keep: bool, repo: str, base: str | None
) -> tuple[Task, int]:
    """`exec --continue REF`: the Task that continues pull request REF, and its number."""
    from pullsmith.pr.followup import prepare_follow_up

    if repo != ".":
        raise UserError(
            "--repo can not be used with --continue; the pull request knows its repository."
        )
    if base is not None:
        raise UserError(
            "--base can not be used with --continue; a follow-up builds on its branch's tip."
        )
    with _store(settings) as store:
        prepared = prepare_follow_up(store, settings, ref, instruction, keep_worktree=keep)
    return prepared.task, prepared.pull_request.number


def pr_line(number: int, checks: str, opened: bool) -> str:
    verb = "opened" if opened else "updated"
    return (
        f"pull request #{number} {verb} (tests {checks}): `pullsmith pr show {number}`, "
        f"`pullsmith pr merge {number}`"
    )
