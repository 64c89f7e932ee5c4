"""Trees on disk: a task's snapshot, a fresh repository of it, a checkout, a change applied."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

from pullsmith.errors import UserError
from pullsmith.eval.tasks import Change, EvalTask, patch_paths
from pullsmith.workspace import GitError, git, is_url, resolve_repo

SNAPSHOT_AUTHOR = ("-c", "user.name=pullsmith eval", "-c", "user.email=eval@pullsmith.invalid")
_NO_HOOKS = ("-c", "core.hooksPath=/dev/null")

_clone_lock = threading.Lock()
_clones: dict[str, Path] = {}


def _source_repo(task: EvalTask, clone_root: Path) -> Path:
    """The local repository the task's commit comes from (a URL is cloned once per process)."""
    assert task.repo is not None
    if not is_url(task.repo):
        return Path(task.repo)
    with _clone_lock:
        if task.repo not in _clones:
            _clones[task.repo] = resolve_repo(task.repo, clone_root)
        return _clones[task.repo]


def export_commit(repo: Path, rev: str, dest: Path) -> None:
    """Write the tree of `rev` in `repo` into `dest`, as a checkout would, without touching repo."""
    try:
        git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", cwd=repo)
    except GitError:
        raise UserError(
            f"commit {rev} is not in {repo}; fetch it there (git fetch origin {rev}) and retry."
        ) from None
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pullsmith-eval-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git("read-tree", rev, cwd=repo, env=env)
        git("checkout-index", "--all", "--force", f"--prefix={dest.resolve()}/", cwd=repo, env=env)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def write_files(tree: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        target = tree / rel
        if target.is_symlink() or target.is_dir():
            _remove(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def materialize(task: EvalTask, dest: Path, clone_root: Path) -> None:
    """Write the task's snapshot into the empty directory `dest`; hidden test files left out."""
    dest.mkdir(parents=True, exist_ok=True)
    if task.repo is not None:
        source = _source_repo(task, clone_root)
        if task.commit:
            export_commit(source, task.commit, dest)
        else:
            shutil.copytree(
                source,
                dest,
                symlinks=True,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns(".git"),
            )
    write_files(dest, task.files)
    # A patch of hidden tests applies to the base versions of the files it touches, which stay;
    # files the hidden tests bring whole are not in the agent's repository at all.
    for rel in task.tests.change.files:
        _remove(dest / rel)


def init_repo(tree: Path, message: str = "snapshot") -> str:
    """Make `tree` a fresh git repository with everything in it as one commit; its hash."""
    git("init", "--quiet", "--initial-branch=main", cwd=tree)
    git("add", "--all", "--force", "--", ".", cwd=tree)
    git(*SNAPSHOT_AUTHOR, *_NO_HOOKS, "commit", "--quiet", "--allow-empty", "-m", message, cwd=tree)
    return git("rev-parse", "HEAD", cwd=tree).strip()


def copy_tree(source: Path, dest: Path) -> None:
    shutil.copytree(
        source, dest, symlinks=True, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git")
    )


def apply_change(tree: Path, change: Change, base: Path | None = None) -> None:
    """Apply `change` to `tree`: files are written; the patch applies to the base versions.

    Every file the patch touches is first put back as it is in `base` (or removed where base
    has none), so whatever was done to those files in `tree` can not stop or bend the patch.
    Raises UserError when the patch does not apply.
    """
    write_files(tree, change.files)
    if not change.patch.strip():
        return
    if base is not None:
        for rel in sorted(patch_paths(change.patch)):
            original, target = base / rel, tree / rel
            _remove(target)
            if original.is_file() or original.is_symlink():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(original, target, follow_symlinks=False)
    patch = change.patch if change.patch.endswith("\n") else change.patch + "\n"
    # Outside any repository, `git apply` patches paths relative to the current directory; the
    # ceiling keeps it from finding a repository somewhere above the tree.
    env = {"GIT_CEILING_DIRECTORIES": str(tree.resolve().parent)}
    try:
        git("apply", "--whitespace=nowarn", "-", cwd=tree, env=env, input=patch)
    except GitError as exc:
        raise UserError(f"the patch does not apply ({exc.last_line})") from None


def remove_tree(path: Path) -> None:
    if path.exists() or path.is_symlink():
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else os.unlink(path)
