"""Local pull requests: each run recorded in the store, a PR opened when it made a commit.

A PR's description is rendered again from the store and the repository whenever it changes
(a follow-up, a publish), so it always describes the branch as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pullsmith.config import Settings
from pullsmith.errors import UserError
from pullsmith.events import EventLog
from pullsmith.pr.describe import (
    MODULE_LEVEL,
    CommitInfo,
    Description,
    FileChange,
    PullRequestFacts,
    describe,
    title_for,
)
from pullsmith.pr.evidence import read_run_log, run_evidence
from pullsmith.store import AttemptRecord, PullRequestRecord, Store, TaskRecord, utcnow
from pullsmith.task import AttemptResult, Task
from pullsmith.tools.replace_function import outline
from pullsmith.workspace import GitError, git, git_bytes, resolve_repo


@dataclass(frozen=True)
class Recorded:
    """What recording a run did: its attempt, and the PR it opened or updated (if any)."""

    attempt: AttemptRecord
    pull_request: PullRequestRecord | None
    opened: bool


# --- git facts ---------------------------------------------------------------------------


def branch_tip(repo: Path, branch: str) -> str | None:
    """The commit `branch` points at in `repo`, or None when it does not exist."""
    out = git(
        "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}", cwd=repo, check=False
    )
    return out.strip() or None


def file_changes(repo: Path, base: str, head: str) -> list[FileChange]:
    out = git("diff", "--numstat", "-z", "--no-renames", "--no-ext-diff", base, head, cwd=repo)
    changes = []
    for record in out.split("\0"):
        if not record.strip():
            continue
        added, removed, name = record.lstrip("\n").split("\t", 2)
        binary = added == "-" and removed == "-"
        changes.append(
            FileChange(
                path=name,
                added=0 if binary else int(added),
                removed=0 if binary else int(removed),
                binary=binary,
                where=()
                if binary or len(changes) >= WHERE_FILES
                else changed_definitions(repo, base, head, name),
            )
        )
    return changes


# The first this many files of a change are read for the definitions they change (three git
# calls each, every time a description is rendered).
WHERE_FILES = 40
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@", re.M)


def changed_definitions(repo: Path, base: str, head: str, path: str) -> tuple[str, ...]:
    """The Python definitions `path`'s change from `base` to `head` touches, in file order: the
    innermost function or class of each added line (in `head`) and of each removed one (in
    `base`: a deleted function is named too), MODULE_LEVEL outside any. Empty for a file
    that is not Python, or not parseable on the side a line is read from."""
    if not path.endswith(".py"):
        return ()
    diff = git("diff", "-U0", "--no-renames", "--no-ext-diff", base, head, "--", path, cwd=repo)
    old_lines: set[int] = set()
    new_lines: set[int] = set()
    for match in _HUNK.finditer(diff):
        old_start, old_count, new_start, new_count = match.groups()
        old_n = 1 if old_count is None else int(old_count)
        new_n = 1 if new_count is None else int(new_count)
        old_lines.update(range(int(old_start), int(old_start) + old_n))
        new_lines.update(range(int(new_start), int(new_start) + new_n))
    found: list[tuple[int, str]] = []
    for commit, lines in ((head, new_lines), (base, old_lines)):
        if lines:
            found += _definitions_at(_file_at(repo, commit, path), lines)
    names: list[str] = []
    for _, name in sorted(found):
        if name not in names:
            names.append(name)
    return tuple(names)


def _file_at(repo: Path, commit: str, path: str) -> str | None:
    try:
        return git_bytes("show", f"{commit}:{path}", cwd=repo).decode("utf-8", "replace")
    except GitError:  # not in that commit: added or deleted
        return None


def _definitions_at(source: str | None, lines: set[int]) -> list[tuple[int, str]]:
    """(line, innermost definition) for each of `lines` (1-based) in `source`."""
    if source is None:
        return []
    definitions, error = outline(source.splitlines())
    if error is not None:
        return []
    found = []
    for line in sorted(lines):
        holding = [d for d in definitions if d.start < line <= d.end]
        inner = max(holding, key=lambda d: d.start, default=None)
        found.append((line, inner.qualname if inner is not None else MODULE_LEVEL))
    return found


def commit_list(repo: Path, base: str, head: str) -> list[CommitInfo]:
    out = git("log", "--reverse", "--format=%H%x00%s", f"{base}..{head}", cwd=repo)
    commits = []
    for line in out.splitlines():
        if "\0" in line:
            sha, subject = line.split("\0", 1)
            commits.append(CommitInfo(sha=sha, subject=subject))
    return commits


def repo_path(pr: PullRequestRecord, settings: Settings) -> Path:
    """The repository of `pr`, checked to still be one."""
    path = Path(pr.repo)
    if not path.exists():
        raise UserError(
            f"the repository of pull request #{pr.number}, {pr.repo}, no longer exists; close "
            f"the pull request with `pullsmith pr close {pr.number}`."
        )
    return resolve_repo(path, settings.data_dir / "clones")


def _head_of(pr: PullRequestRecord, repo: Path | None) -> str:
    """The branch's tip now, or the last one recorded when the branch or repository is gone."""
    if pr.state == "open" and repo is not None:
        tip = branch_tip(repo, pr.head)
        if tip:
            return tip
    return pr.head_commit


def facts_for(store: Store, pr: PullRequestRecord, repo: Path | None) -> PullRequestFacts:
    """What `pr`'s description is made from: its task, its runs, and its branch in git."""
    task = store.task(pr.task_id)
    head = _head_of(pr, repo)
    changes: list[FileChange] = []
    commits: list[CommitInfo] = []
    if repo is not None:
        try:
            changes = file_changes(repo, pr.base_commit, head)
            commits = commit_list(repo, pr.base_commit, head)
        except GitError:
            # Commits pruned away after a merge or branch deletion: the rest still holds.
            changes, commits = [], []
    return PullRequestFacts(
        instruction=task.instruction if task else pr.title,
        head=pr.head,
        base=pr.base,
        base_commit=pr.base_commit,
        head_commit=head,
        attempts=store.attempts(pr.number),
        changes=changes,
        commits=commits,
        number=pr.number,
        task_id=pr.task_id,
    )


def render(store: Store, pr: PullRequestRecord, repo: Path | None) -> Description:
    return describe(facts_for(store, pr, repo))


def refresh(store: Store, pr: PullRequestRecord, repo: Path | None) -> PullRequestRecord:
    """Render `pr`'s description again from the store and the branch, and save it."""
    facts = facts_for(store, pr, repo)
    description = describe(facts)
    changed = (
        description.body != pr.body
        or description.checks != pr.checks
        or facts.head_commit != pr.head_commit
    )
    if not changed:
        return pr
    return store.update_pull_request(
        pr.number,
        title=pr.title or description.title,
        body=description.body,
        checks=description.checks,
        head_commit=facts.head_commit,
    )


# --- recording runs ----------------------------------------------------------------------


def _current_branch(repo: Path) -> str | None:
    out = git("symbolic-ref", "--quiet", "--short", "HEAD", cwd=repo, check=False).strip()
    return out or None


def _base_name(task: Task, result: AttemptResult, repo: Path) -> str:
    base = getattr(result, "base_ref", "") or task.base or _current_branch(repo) or "HEAD"
    return re.sub(r"^refs/heads/", "", base)


def attempt_record(task_id: str, task: Task, result: AttemptResult) -> AttemptRecord:
    """The store's record of one run, with the evidence read back from its log."""
    events = read_run_log(result.run_dir)
    evidence = run_evidence(events, result.test_command, result.tests_before, result.tests_after)
    return AttemptRecord(
        run_id=result.task_id,
        task_id=task_id,
        kind="follow-up" if task.follow_up is not None else "task",
        instruction=result.instruction,
        status=result.status,
        exit_reason=result.exit_reason,
        summary=result.summary,
        error=result.error,
        branch=result.branch,
        start_commit=result.base_commit,
        commit=result.commit,
        test_command=result.test_command,
        tests_before=evidence["tests_before"],
        tests_after=evidence["tests_after"],
        checks=evidence["checks"],
        agent_tests=evidence["agent_tests"],
        # The run's cost in US dollars, every attempt counted (None: the price is unknown).
        notes={**evidence["notes"], "cost_usd": result.totals()["cost_usd"]},
        diff_stat=result.diff_stat,
        turns=result.turns,
        prompt_tokens=result.usage.prompt_tokens,
        completion_tokens=result.usage.completion_tokens,
        cached_tokens=result.usage.cached_tokens,
        model=result.model,
        wall_seconds=result.wall_seconds,
        run_dir=result.run_dir,
        created_at=utcnow(),
    )


def record_run(
    store: Store,
    task: Task,
    result: AttemptResult,
    pr_number: int | None = None,
    events: EventLog | None = None,
) -> Recorded:
    """Record a finished run; open a PR when it made a commit, or update the PR it continued.

    `pr_number` is the PR a follow-up continues (by default the task's own). With `events`, a
    `pr.opened` or `pr.updated` event goes into the run's log.
    """
    repo = Path(result.repo)
    if pr_number is None and task.follow_up is not None:
        pr_number = task.follow_up.pr_number
    if pr_number is not None:
        pr = store.pull_request(pr_number)
        task_id = pr.task_id
    else:
        pr = None
        task_id = result.task_id
        if store.task(task_id) is None:
            store.add(
                TaskRecord(
                    id=task_id,
                    instruction=task.instruction,
                    repo=result.repo,
                    base_ref=_base_name(task, result, repo),
                    created_at=utcnow(),
                )
            )
    attempt = attempt_record(task_id, task, result)
    earlier = store.attempt(result.task_id)
    if earlier is not None:
        # Recorded before (a retried recording): update that record, and its PR.
        attempt.id = earlier.id
        if pr is None and earlier.pr_number is not None:
            pr = store.pull_request(earlier.pr_number)
    opened = False
    if pr is None and result.commit:
        now = utcnow()
        pr = PullRequestRecord(
            task_id=task_id,
            repo=result.repo,
            head=result.branch,
            base=_base_name(task, result, repo),
            base_commit=result.base_commit,
            head_commit=result.commit,
            title=title_for(task.instruction),
            body="",
            state="open",
            checks="untested",
            created_at=now,
            updated_at=now,
        )
        store.add(pr)
        opened = True
    if pr is not None:
        attempt.pr_number = pr.number
    store.add(attempt)
    if pr is None:
        return Recorded(attempt=attempt, pull_request=None, opened=False)
    pr = refresh(store, store.pull_request(pr.number), repo if repo.exists() else None)
    if not opened:
        pr = store.update_pull_request(pr.number)
    if events is not None:
        events.emit(
            "pr.opened" if opened else "pr.updated",
            number=pr.number,
            title=pr.title,
            head=pr.head,
            base=pr.base,
            checks=pr.checks,
            state=pr.state,
        )
    return Recorded(attempt=attempt, pull_request=pr, opened=opened)


# --- states ------------------------------------------------------------------------------


def close(store: Store, pr: PullRequestRecord) -> PullRequestRecord:
    if pr.state == "merged":
        raise UserError(f"pull request #{pr.number} is merged; a merged pull request stays merged.")
    if pr.state == "closed":
        raise UserError(
            f"pull request #{pr.number} is already closed; `pullsmith pr reopen {pr.number}` "
            "opens it again."
        )
    return store.update_pull_request(pr.number, state="closed", closed_at=utcnow())


def reopen(store: Store, pr: PullRequestRecord, settings: Settings) -> PullRequestRecord:
    if pr.state == "merged":
        raise UserError(
            f"pull request #{pr.number} is merged and can not be reopened; start a new task "
            "for more work."
        )
    if pr.state == "open":
        raise UserError(f"pull request #{pr.number} is already open.")
    repo = repo_path(pr, settings)
    if branch_tip(repo, pr.head) is None:
        raise UserError(
            f"branch '{pr.head}' of pull request #{pr.number} no longer exists in {repo}, so "
            "it can not be reopened."
        )
    store.update_pull_request(pr.number, state="open", closed_at=None)
    return refresh(store, store.pull_request(pr.number), repo)


# --- diff and patch ----------------------------------------------------------------------


def _range_head(pr: PullRequestRecord, repo: Path) -> str:
    head = _head_of(pr, repo)
    if not git("cat-file", "-t", head, cwd=repo, check=False).strip():
        raise UserError(
            f"the commits of pull request #{pr.number} are no longer in {repo} (the branch "
            f"'{pr.head}' was deleted and its commits pruned)."
        )
    return head


def diff(pr: PullRequestRecord, settings: Settings, stat: bool = False) -> str:
    """The change the PR proposes: its base commit to the branch's tip."""
    repo = repo_path(pr, settings)
    head = _range_head(pr, repo)
    options = ["--stat=120"] if stat else ["-p", "--binary"]
    return git("diff", "--no-color", "--no-ext-diff", *options, pr.base_commit, head, cwd=repo)


def patch(pr: PullRequestRecord, settings: Settings) -> bytes:
    """Every commit of the PR as one mbox, for `git am` in any clone of the base.

    Bytes, not text: a patch must pass through exactly, whatever its files' encoding.
    """
    repo = repo_path(pr, settings)
    head = _range_head(pr, repo)
    if not git("rev-list", f"{pr.base_commit}..{head}", cwd=repo).strip():
        raise UserError(f"pull request #{pr.number} has no commits to export.")
    args = (
        "format-patch",
        "--stdout",
        "--binary",
        "--no-color",
        "--no-signature",
        "--no-ext-diff",
        f"{pr.base_commit}..{head}",
    )
    return git_bytes(*args, cwd=repo)
