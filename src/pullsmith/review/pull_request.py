"""Reviews of local pull requests: run one on a PR's change and keep it with the PR."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from pullsmith.config import Settings
from pullsmith.errors import UserError
from pullsmith.models.base import Model
from pullsmith.review.diff import resolve_change
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
