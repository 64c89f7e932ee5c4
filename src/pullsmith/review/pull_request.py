"""Reviews of local pull requests: run one on a PR's change, keep it with the PR, and post it
to GitHub as a pull request review with line comments when the PR is published."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from pullsmith.config import Settings
from pullsmith.errors import UserError
from pullsmith.models.base import Model
from pullsmith.pr.github import GitHubClient, Published, github_token
from pullsmith.review.diff import resolve_change
from pullsmith.review.render import finding_markdown, review_markdown
from pullsmith.review.runner import Progress, review_change
from pullsmith.review.schema import Review
from pullsmith.store import PullRequestRecord, ReviewRecord, Store
from pullsmith.workspace import git


def _tip(repo: Path, pr: PullRequestRecord) -> str:
    out = git(
        "rev-parse",
        "--verify",
        "--quiet",
        f"refs/heads/{pr.head}^{{commit}}",
        cwd=repo,
        check=False,
    ).strip()
    if out:
        return out
    if pr.head_commit:
        return pr.head_commit
    raise UserError(f"branch '{pr.head}' of pull request #{pr.number} no longer exists.")


def _repo(pr: PullRequestRecord) -> Path:
    path = Path(pr.repo)
    if not path.is_dir():
        raise UserError(
            f"the repository of pull request #{pr.number}, {pr.repo}, no longer exists; there "
            "is nothing to review."
        )
    return path


def store_review(store: Store, pr: PullRequestRecord, review: Review) -> ReviewRecord:
    row = ReviewRecord(
        pr_number=pr.number,
        base_commit=review.base,
        head_commit=review.head,
        model=review.model,
        verdict=review.verdict,
        findings=len(review.findings),
        data=review.model_dump(mode="json"),
    )
    store.add(row)
    return row


def stored_review(row: ReviewRecord) -> Review:
    return Review.model_validate(row.data)


def review_pull_request(
    settings: Settings,
    ref: str,
    *,
    focus: str | None = None,
    check: bool = True,
    progress: Progress | None = None,
    open_model: Callable[[Settings], Model],
    cancel: threading.Event | None = None,
) -> tuple[Review, Path]:
    """Review pull request `ref` (its base commit to its branch's tip) and store the review."""
    with Store.open(settings) as store:
        pr = store.find_pull_request(ref)
    repo = _repo(pr)
    label = f"pull request #{pr.number} ({pr.head} → {pr.base})"
    change = resolve_change(repo, base=pr.base_commit, head=_tip(repo, pr), label=label)
    model = open_model(settings)
    try:
        review = review_change(
            change, model, settings, focus=focus, check=check, progress=progress, cancel=cancel
        )
    finally:
        model.close()
    with Store.open(settings) as store:
        store_review(store, pr, review)
    return review, repo


# --- posting to GitHub -------------------------------------------------------------------


@dataclass(frozen=True)
class PostedReview:
    id: int
    url: str
    comments: int
    # Line comments GitHub would not place (the PR's diff there differs): kept in the body.
    in_body: int = 0


def review_comments(review: Review) -> list[dict[str, Any]]:
    """One line comment per finding, on the new side of its lines."""
    comments = []
    for finding in review.findings:
        comment: dict[str, Any] = {
            "path": finding.location.path,
            "line": finding.location.end_line,
            "side": "RIGHT",
            "body": finding_markdown(finding),
        }
        if finding.location.start_line < finding.location.end_line:
            comment["start_line"] = finding.location.start_line
            comment["start_side"] = "RIGHT"
        comments.append(comment)
    return comments


def post_review(
    store: Store,
    row: ReviewRecord,
    published: Published,
    transport: httpx.BaseTransport | None = None,
) -> PostedReview:
    """Post stored review `row` on the GitHub pull request `published` opened or updated, as a
    pull request review with a line comment per finding, and remember where it went. When
    GitHub will not place the line comments (its diff differs), the findings go in the body."""
    review = stored_review(row)
    owner, name = published.pull_request.remote_repo.split("/", 1)  # type: ignore[union-attr]
    token = github_token(published.api_url)
    body = review_markdown(review)
    comments = review_comments(review)
    in_body = 0
    with GitHubClient(published.api_url, token, transport=transport) as client:
        try:
            data = client.create_review(
                owner, name, published.number, review.head, _summary(review), comments
            )
        except UserError as exc:
            if not comments or "did not accept" not in exc.message:
                raise
            data = client.create_review(owner, name, published.number, review.head, body, [])
            in_body = len(comments)
            comments = []
    posted = PostedReview(
        id=int(data.get("id") or 0),
        url=str(data.get("html_url") or published.url),
        comments=len(comments),
        in_body=in_body,
    )
    store.update_review(row.id, remote_review_id=posted.id, remote_review_url=posted.url)
    return posted


def _summary(review: Review) -> str:
    """The review's body when each finding is a line comment: the verdict and the reasoning."""
    checked = [f for f in review.findings if f.check == "demonstrated"]
    shown = f" ({len(checked)} demonstrated)" if checked else ""
    count = len(review.findings)
    return (
        f"**pullsmith review: the change is {review.verdict}.** {review.reasoning}\n\n"
        f"{count} finding{'s' if count != 1 else ''}{shown}, reviewed at {review.head[:10]} "
        f"with {review.model}."
    )


def reviewable_on(row: ReviewRecord | None, tip: str | None) -> bool:
    """Whether stored review `row` is of the branch as it is (`tip`) and not yet posted."""
    return row is not None and row.remote_review_id is None and row.head_commit == tip
