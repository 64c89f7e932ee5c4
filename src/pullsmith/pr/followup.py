"""Follow-ups: more work on a pull request's branch, with the earlier work compacted.

`pullsmith exec --continue <task-id|PR> "..."` checks the PR's branch out again (the runner
removes worktrees after committing), tells the model what was done so far — the task, the
model's earlier summaries, the diff, the last test result — and records the new run as one
more attempt of the same PR.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pullsmith.agent.loop import clip
from pullsmith.config import Settings
from pullsmith.errors import UserError
from pullsmith.pr.local import branch_tip, repo_path
from pullsmith.store import AttemptRecord, PullRequestRecord, Store
from pullsmith.task import FollowUp, Task, new_task_id
from pullsmith.workspace import GitError, git, worktree_lock

DIFF_CHARS = 4000
SUMMARY_CHARS = 400
TEST_LINES = 20
_NO_HOOKS = ("-c", "core.hooksPath=/dev/null")


@dataclass(frozen=True)
class PreparedFollowUp:
    task: Task
    pull_request: PullRequestRecord
    recreated_worktree: bool


def _worktrees(repo: Path) -> list[tuple[Path, str | None]]:
    """(path, checked-out branch) for every worktree of `repo`."""
    entries: list[tuple[Path, str | None]] = []
    for block in git("worktree", "list", "--porcelain", cwd=repo).split("\n\n"):
        path, branch = None, None
        for line in block.splitlines():
            if line.startswith("worktree "):
                path = Path(line[len("worktree ") :])
            elif line.startswith("branch refs/heads/"):
                branch = line[len("branch refs/heads/") :]
        if path is not None:
            entries.append((path, branch))
    return entries


def _is_within(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True


def _checkout_branch(
    repo: Path, pr: PullRequestRecord, settings: Settings, run_id: str
) -> tuple[Path, bool]:
    """A worktree with the PR's branch checked out: the one left by --keep, or a new one."""
    for path, branch in _worktrees(repo):
        if branch != pr.head:
            continue
        if not path.exists():
            with worktree_lock(repo):
                git("worktree", "prune", cwd=repo)
            break
        if not _is_within(path, settings.worktrees_dir):
            raise UserError(
                f"branch '{pr.head}' of pull request #{pr.number} is checked out in {path}; "
                "switch that checkout to another branch (`git switch -`) and run the follow-up "
                "again."
            )
        status = git("--no-optional-locks", "status", "--porcelain", cwd=path)
        if status.strip():
            raise UserError(
                f"the worktree of pull request #{pr.number} at {path} has uncommitted changes; "
                "commit or discard them there, then run the follow-up again."
            )
        return path, False
    path = Path(settings.worktrees_dir).expanduser().resolve() / run_id
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with worktree_lock(repo):
            git(*_NO_HOOKS, "worktree", "add", "--quiet", str(path), pr.head, cwd=repo)
    except GitError as exc:
        raise UserError(
            f"could not check out branch '{pr.head}' for the follow-up ({exc.last_line})."
        ) from None
    return path, True


def _last_tested(attempts: list[AttemptRecord]) -> tuple[AttemptRecord, dict] | None:
    for attempt in reversed(attempts):
        if attempt.tests_after:
            return attempt, attempt.tests_after
    return None


def briefing(store: Store, pr: PullRequestRecord, repo: Path, tip: str) -> str:
    """The earlier work on `pr`, compacted into what the model reads before it starts again."""
    task = store.task(pr.task_id)
    attempts = store.attempts(pr.number)
    lines = [
        f"This continues earlier work on branch {pr.head} (pull request #{pr.number}); its "
        "commits are already in the repository you see. Build on them; do not start over.",
        "",
        f"The original task: {task.instruction.strip() if task else pr.title}",
    ]
    if attempts:
        lines += ["", "Earlier runs:"]
        for index, attempt in enumerate(attempts, start=1):
            asked = " ".join(attempt.instruction.split())
            said = " ".join(attempt.summary.split()) or "(no summary: it did not finish)"
            verdict = attempt.status
            lines.append(
                f"{index}. asked: {clip(asked, SUMMARY_CHARS)} — the model's summary: "
                f"{clip(said, SUMMARY_CHARS)} — outcome: {verdict}"
            )
    tested = _last_tested(attempts)
    if tested is not None:
        _, run = tested
        output = "\n".join(str(run.get("excerpt", "")).splitlines()[-TEST_LINES:])
        lines += [
            "",
            f"The last test run, `{run.get('command')}`, exited with code {run.get('exit_code')}:",
            f"```\n{output.rstrip() or '(no output)'}\n```",
        ]
    diff = git(
        "diff", "--no-color", "--no-ext-diff", "--stat=100", "-p", pr.base_commit, tip, cwd=repo
    )
    if diff.strip():
        lines += [
            "",
            f"The change so far ({pr.base_commit[:10]}..{tip[:10]}):",
            f"```diff\n{clip(diff.rstrip(), DIFF_CHARS)}\n```",
        ]
    return "\n".join(lines)


def prepare_follow_up(
    store: Store,
    settings: Settings,
    ref: str,
    instruction: str,
    keep_worktree: bool = False,
    task_id: str | None = None,
) -> PreparedFollowUp:
    """A Task that continues the PR `ref` (a PR number or a task/run id) on its branch."""
    pr = store.find_pull_request(ref)
    if pr.state == "merged":
        raise UserError(
            f"pull request #{pr.number} is already merged; start a new task for more work."
        )
    if pr.state == "closed":
        raise UserError(
            f"pull request #{pr.number} is closed; reopen it with `pullsmith pr reopen "
            f"{pr.number}` to continue it."
        )
    repo = repo_path(pr, settings)
    tip = branch_tip(repo, pr.head)
    if tip is None:
        raise UserError(
            f"branch '{pr.head}' of pull request #{pr.number} no longer exists in {repo}, so "
            "there is nothing to continue; start a new task."
        )
    run_id = task_id or new_task_id()
    worktree, recreated = _checkout_branch(repo, pr, settings, run_id)
    follow_up = FollowUp(
        branch=pr.head,
        start_commit=tip,
        worktree=str(worktree),
        briefing=briefing(store, pr, repo, tip),
        base_ref=pr.base,
        pr_number=pr.number,
    )
    task = Task(
        instruction=instruction,
        repo=str(repo),
        base=pr.head,
        task_id=run_id,
        # A worktree someone kept with --keep stays; one made for this run goes when it is done.
        keep_worktree=keep_worktree or not recreated,
        follow_up=follow_up,
    )
    return PreparedFollowUp(task=task, pull_request=pr, recreated_worktree=recreated)
