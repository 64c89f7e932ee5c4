"""Merging a pull request into its base branch in the user's repository.

The merge is worked out without touching any checkout (`git merge-tree`, or a throwaway
worktree on older git), so a conflict leaves the repository exactly as it was. Then the base
moves to the result: by a fast-forward `git merge` in the checkout where the base branch is
checked out (so the user's working tree and index follow), or by updating the ref alone when
no checkout has it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pullsmith.config import Settings
from pullsmith.errors import UserError
from pullsmith.pr.local import branch_tip, commit_list, repo_path
from pullsmith.store import PullRequestRecord, Store, utcnow
from pullsmith.workspace import GitError, git

TRAILER = "Co-authored-by: pullsmith <pullsmith@users.noreply.local>"
_NO_HOOKS = ("-c", "core.hooksPath=/dev/null")


@dataclass(frozen=True)
class Merged:
    pull_request: PullRequestRecord
    method: str  # fast-forward, merge, squash, already-merged
    commit: str
    checkout: Path | None
    branch_deleted: bool = False


def _ok(*args: str, cwd: Path) -> bool:
    try:
        git(*args, cwd=cwd)
    except GitError:
        return False
    return True


def _is_ancestor(repo: Path, older: str, newer: str) -> bool:
    return _ok("merge-base", "--is-ancestor", older, newer, cwd=repo)


def checkout_of(repo: Path, branch: str) -> Path | None:
    """The working tree (the main one or a linked worktree) where `branch` is checked out."""
    out = git("worktree", "list", "--porcelain", cwd=repo)
    path: Path | None = None
    for line in out.splitlines():
        if line.startswith("worktree "):
            path = Path(line[len("worktree ") :])
        elif line == f"branch refs/heads/{branch}" and path is not None:
            return path
    return None


def _operation_in_progress(checkout: Path) -> str | None:
    for name, what in (
        ("MERGE_HEAD", "a merge"),
        ("rebase-merge", "a rebase"),
        ("rebase-apply", "a rebase or `git am`"),
        ("CHERRY_PICK_HEAD", "a cherry-pick"),
        ("REVERT_HEAD", "a revert"),
    ):
        path = git("rev-parse", "--git-path", name, cwd=checkout).strip()
        if (checkout / path).exists():
            return what
    return None


def _check_clean(checkout: Path, number: int) -> None:
    # --no-optional-locks: looking must not rewrite the user's index.
    status = git(
        "--no-optional-locks", "status", "--porcelain", "--untracked-files=no", cwd=checkout
    )
    if status.strip():
        raise UserError(
            f"your working tree at {checkout} has uncommitted changes; commit or stash them, "
            f"then run `pullsmith pr merge {number}` again."
        )
    busy = _operation_in_progress(checkout)
    if busy:
        raise UserError(
            f"{busy} is in progress in {checkout}; finish or abort it, then run "
            f"`pullsmith pr merge {number}` again."
        )


def _git_version(repo: Path) -> tuple[int, int]:
    match = re.search(r"(\d+)\.(\d+)", git("version", cwd=repo))
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def merge_tree(repo: Path, ours: str, theirs: str) -> tuple[str | None, list[str]]:
    """The tree of merging `theirs` into `ours`, or None and the conflicting paths."""
    if _git_version(repo) >= (2, 38):
        try:
            out = git(
                "merge-tree",
                "--write-tree",
                "--name-only",
                "--no-messages",
                ours,
                theirs,
                cwd=repo,
            )
            return out.splitlines()[0].strip(), []
        except GitError as exc:
            if exc.returncode != 1:
                raise
            out = git(
                "merge-tree",
                "--write-tree",
                "--name-only",
                "--no-messages",
                ours,
                theirs,
                cwd=repo,
                check=False,
            )
            names = []
            for line in out.splitlines()[1:]:
                if not line.strip():
                    break
                if line not in names:
                    names.append(line)
            return None, names
    return _merge_tree_in_worktree(repo, ours, theirs)


def _merge_tree_in_worktree(repo: Path, ours: str, theirs: str) -> tuple[str | None, list[str]]:
    """merge-tree for git older than 2.38: the merge, done in a throwaway detached worktree."""
    scratch = Path(tempfile.mkdtemp(prefix="pullsmith-merge-"))
    path = scratch / "tree"
    try:
        git(*_NO_HOOKS, "worktree", "add", "--quiet", "--detach", str(path), ours, cwd=repo)
        merged = _ok(
            *_NO_HOOKS,
            *identity_options(path),
            "merge",
            "--quiet",
            "--no-commit",
            "--no-ff",
            "--no-edit",
            theirs,
            cwd=path,
        )
        if not merged:
            names = git("diff", "--name-only", "--diff-filter=U", cwd=path).split()
            return None, names or ["(unknown files)"]
        return git("write-tree", cwd=path).strip(), []
    finally:
        git("worktree", "remove", "--force", "--force", str(path), cwd=repo, check=False)
        shutil.rmtree(scratch, ignore_errors=True)
        git("worktree", "prune", cwd=repo, check=False)


def identity_options(cwd: Path) -> tuple[str, ...]:
    """`-c` options naming a committer only where the user has configured none."""
    options: list[str] = []
    has_name = git("config", "--get", "user.name", cwd=cwd, check=False).strip()
    if not has_name and not os.environ.get("GIT_COMMITTER_NAME"):
        options += ["-c", "user.name=pullsmith"]
    has_email = git("config", "--get", "user.email", cwd=cwd, check=False).strip()
    if not has_email and not (os.environ.get("GIT_COMMITTER_EMAIL") or os.environ.get("EMAIL")):
        options += ["-c", "user.email=pullsmith@localhost"]
    return tuple(options)


def _commit_tree(repo: Path, tree: str, parents: list[str], message: str) -> str:
    args = ["commit-tree", tree]
    for parent in parents:
        args += ["-p", parent]
    return git(*identity_options(repo), *args, "-F", "-", cwd=repo, input=message + "\n").strip()


def _merge_message(pr: PullRequestRecord, base: str) -> str:
    return f"Merge pull request #{pr.number} from {pr.head} into {base}\n\n{pr.title}"


def _squash_message(pr: PullRequestRecord, repo: Path, base_tip: str, head_tip: str) -> str:
    merge_base = git("merge-base", base_tip, head_tip, cwd=repo).strip()
    subjects = [c.subject for c in commit_list(repo, merge_base, head_tip)]
    lines = [f"{pr.title} (#{pr.number})", ""]
    lines += [f"* {subject}" for subject in subjects]
    lines += ["", TRAILER]
    return "\n".join(lines)


def _advance_checkout(checkout: Path, target: str, number: int) -> None:
    """Fast-forward the checked-out base to `target`; git refuses before it changes anything."""
    try:
        git("merge", "--ff-only", "--quiet", "--no-edit", target, cwd=checkout)
    except GitError as exc:
        overwritten = re.findall(r"^\t(.+)$", exc.stderr, re.M)
        if "untracked working tree files would be overwritten" in exc.stderr:
            raise UserError(
                f"merging pull request #{number} would overwrite untracked files in {checkout} "
                f"({', '.join(overwritten) or 'see git status'}); move them away and run again."
            ) from None
        raise UserError(
            f"git could not update your checkout at {checkout} ({exc.last_line}); nothing was "
            "merged."
        ) from None


def merge(
    store: Store,
    pr: PullRequestRecord,
    settings: Settings,
    squash: bool = False,
    into: str | None = None,
    delete_branch: bool = False,
) -> Merged:
    """Merge `pr` into its base (or `into`): fast-forward when possible, else a merge commit.

    Refuses — leaving the repository exactly as it was — when the PR is not open, its branch
    is gone, the base is not a branch, the checkout of the base has uncommitted changes, or the
    merge conflicts.
    """
    number = pr.number
    if pr.state == "merged":
        raise UserError(
            f"pull request #{number} is already merged (commit {(pr.merge_commit or '')[:10]})."
        )
    if pr.state == "closed":
        raise UserError(
            f"pull request #{number} is closed; reopen it with `pullsmith pr reopen {number}` "
            "to merge it."
        )
    repo = repo_path(pr, settings)
    head_tip = branch_tip(repo, pr.head)
    if head_tip is None:
        raise UserError(
            f"branch '{pr.head}' of pull request #{number} no longer exists in {repo}; close the "
            f"pull request with `pullsmith pr close {number}`."
        )
    base = (into or pr.base).removeprefix("refs/heads/")
    base_tip = branch_tip(repo, base)
    if base_tip is None:
        raise UserError(
            f"the base '{base}' of pull request #{number} is not a branch in {repo}; pass "
            f"--into BRANCH to say where to merge it."
        )
    if base == pr.head:
        raise UserError(f"pull request #{number} can not be merged into its own branch.")
    checkout = checkout_of(repo, base)
    if checkout is not None:
        _check_clean(checkout, number)

    if _is_ancestor(repo, head_tip, base_tip):
        # Everything on the branch is already in the base (merged by hand, say).
        method, target = "already-merged", base_tip
    elif _is_ancestor(repo, base_tip, head_tip) and not squash:
        method, target = "fast-forward", head_tip
    else:
        tree, conflicts = merge_tree(repo, base_tip, head_tip)
        if tree is None:
            raise UserError(
                f"pull request #{number} conflicts with '{base}' in {', '.join(conflicts)}; "
                f"nothing was changed — bring the branch up to date with a follow-up "
                f'(`pullsmith exec --continue {number} "merge {base} and resolve the '
                f'conflicts"`) or merge it by hand.'
            )
        if squash:
            method = "squash"
            message = _squash_message(pr, repo, base_tip, head_tip)
            target = _commit_tree(repo, tree, [base_tip], message)
        else:
            method = "merge"
            target = _commit_tree(repo, tree, [base_tip, head_tip], _merge_message(pr, base))

    if target != base_tip:
        if checkout is not None:
            _advance_checkout(checkout, target, number)
        else:
            git(
                "update-ref",
                "-m",
                f"pullsmith: merge pull request #{number} ({method})",
                f"refs/heads/{base}",
                target,
                base_tip,
                cwd=repo,
            )
    updated = store.update_pull_request(
        number,
        state="merged",
        merged_at=utcnow(),
        merge_commit=target,
        merge_method=method,
        base=base,
        head_commit=head_tip,
    )
    deleted = False
    if delete_branch and checkout_of(repo, pr.head) is None:
        deleted = _ok("branch", "-D", "--quiet", pr.head, cwd=repo)
    return Merged(
        pull_request=updated,
        method=method,
        commit=target,
        checkout=checkout,
        branch_deleted=deleted,
    )
