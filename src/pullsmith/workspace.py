"""Git workspaces: one attempt's own worktree on a new branch, its diff and its commit.

The user's working tree and index are never written: a workspace is a `git worktree` of the
user's repository (sharing its objects and refs), so the branch it leaves behind can be
reviewed and merged from the user's repository while their checkout stays as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pullsmith.errors import UserError

DEFAULT_TRAILER = "Co-authored-by: pullsmith <pullsmith@users.noreply.local>"
FALLBACK_NAME = "pullsmith"
FALLBACK_EMAIL = "pullsmith@localhost"
BRANCH_PREFIX = "pullsmith/"

# Inherited variables that would point git at some other repository or index (set, for
# example, when pullsmith itself runs from a git hook); a git call here always names its own.
_REPO_LOCATING_VARS = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
)

# Hooks belong to the user's own workflow; running them on an attempt's checkout or commit
# could block, prompt, or have side effects outside the workspace.
_NO_HOOKS = ("-c", "core.hooksPath=/dev/null")

_URL_PREFIXES = ("https://", "http://", "ssh://", "git://", "file://", "git+ssh://", "ssh+git://")
_SCP_LIKE_URL = re.compile(r"^[A-Za-z0-9._~-]+@[A-Za-z0-9._-]+:")
_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class GitError(RuntimeError):
    """A git command failed in a way the user is not expected to fix by hand."""

    def __init__(self, args: tuple[str, ...], cwd: Path, returncode: int, stderr: str) -> None:
        self.git_args = args
        self.cwd = cwd
        self.returncode = returncode
        self.stderr = stderr
        detail = stderr.strip() or "(no output)"
        super().__init__(f"git {' '.join(args)} failed in {cwd} (exit {returncode}): {detail}")

    @property
    def last_line(self) -> str:
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else f"git exited with status {self.returncode}"


def changed_lines(diff: str) -> int:
    """Lines added plus lines removed in a unified diff (not the ---/+++ file lines)."""
    return sum(
        1
        for line in diff.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++ ", "--- "))
    )


def _git_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _REPO_LOCATING_VARS}
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GCM_INTERACTIVE"] = "never"
    env["LC_ALL"] = "C"
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    if extra:
        env.update(extra)
    return env


def _run_git(
    args: tuple[str, ...],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=_git_env(env),
            input=input.encode() if input is not None else None,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            check=False,
        )
    except FileNotFoundError as exc:
        if not Path(cwd).is_dir():
            raise UserError(f"{cwd} does not exist; pass a directory that does.") from exc
        raise UserError("git is not installed or not on PATH; install git and try again.") from exc
    except NotADirectoryError as exc:
        raise UserError(f"{cwd} is not a directory; pass a directory that is.") from exc


def _decode(data: bytes) -> str:
    # Decoding by hand (not text=True) keeps CRLF line endings in diffs intact.
    return data.decode("utf-8", errors="replace")


def git(
    *args: str,
    cwd: Path,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
) -> str:
    """Run git with `args` in `cwd` and return its stdout.

    `env` adds to (and overrides) the inherited environment. Nothing ever waits on a terminal:
    stdin is closed unless `input` is given and prompts are disabled. With `check`, a failure
    raises UserError where the user can fix it (git missing, repository not trusted) and
    GitError (a RuntimeError carrying git's stderr) otherwise.
    """
    return _decode(git_bytes(*args, cwd=cwd, check=check, env=env, input=input))


def git_bytes(
    *args: str,
    cwd: Path,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
) -> bytes:
    """Like `git`, but stdout comes back as raw bytes (patches that must apply exactly)."""
    result = _run_git(args, Path(cwd), env, input)
    if check and result.returncode != 0:
        stderr = _decode(result.stderr)
        if "detected dubious ownership" in stderr:
            raise UserError(
                f"git refuses to use {cwd} because another user owns it; run "
                f"`git config --global --add safe.directory {cwd}` if you trust it."
            )
        raise GitError(args, Path(cwd), result.returncode, stderr)
    return result.stdout


def _succeeds(*args: str, cwd: Path) -> bool:
    return _run_git(args, cwd).returncode == 0


# --- repositories ------------------------------------------------------------------------


def is_url(repo: str | Path) -> bool:
    """Whether `repo` names a remote repository rather than a local path."""
    if isinstance(repo, Path):
        return False
    return repo.startswith(_URL_PREFIXES) or bool(_SCP_LIKE_URL.match(repo))


def _repo_root(path: Path) -> Path | None:
    """The top level of the repository at `path` (the git dir for a bare one), or None."""
    result = _run_git(("rev-parse", "--is-bare-repository", "--show-toplevel"), path)
    lines = _decode(result.stdout).splitlines()
    if result.returncode == 0 and len(lines) >= 2:
        return Path(lines[1]).resolve()
    if lines and lines[0].strip() == "true":
        top = _run_git(("rev-parse", "--absolute-git-dir"), path)
        if top.returncode == 0:
            return Path(_decode(top.stdout).strip()).resolve()
    stderr = _decode(result.stderr)
    if "detected dubious ownership" in stderr:
        raise UserError(
            f"git refuses to use {path} because another user owns it; run "
            f"`git config --global --add safe.directory {path}` if you trust it."
        )
    return None


def _require_repo(path: Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(
            f"{path} does not exist; pass --repo with the path of a git repository or its URL."
        )
    root = _repo_root(path) if path.is_dir() else None
    if root is None:
        raise UserError(
            f"{path} is not a git repository; pass --repo with the path of one "
            "(or run `git init` there)."
        )
    return root


def _is_bare(repo: Path) -> bool:
    return git("rev-parse", "--is-bare-repository", cwd=repo).strip() == "true"


def _clone_name(url: str) -> str:
    tail = re.split(r"[/:]", url.rstrip("/"))[-1]
    tail = tail.removesuffix(".git")
    name = re.sub(r"[^A-Za-z0-9._-]", "-", tail).strip(".-")
    return name or "repo"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # Many attempts of one task (or many tasks on one repository) may resolve the same URL at
    # once; only one of them clones or fetches.
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def worktree_lock(repo: Path) -> Iterator[None]:
    """Hold while adding, removing or pruning worktrees of `repo`: git does not lock its
    worktree list, and two tasks doing so at once (parallel workers on one repository) can
    each break the other's (about 1 in 600 measured with 2 workers)."""
    common = git("rev-parse", "--git-common-dir", cwd=repo).strip()
    with _file_lock((Path(repo) / common).resolve() / "pullsmith-worktrees.lock"):
        yield


def _origin_url(path: Path) -> str | None:
    result = _run_git(("config", "--get", "remote.origin.url"), path)
    return _decode(result.stdout).strip() if result.returncode == 0 else None


def _clone_or_fetch(url: str, clone_root: Path) -> Path:
    clone_root = Path(clone_root).expanduser().resolve()
    clone_root.mkdir(parents=True, exist_ok=True)
    name = _clone_name(url)
    target = clone_root / name
    if target.exists() and _origin_url(target) != url:
        # Same repository name from another place: keep both, side by side.
        digest = hashlib.sha1(url.encode()).hexdigest()[:8]
        target = clone_root / f"{name}-{digest}"
    with _file_lock(clone_root / f".{target.name}.lock"):
        if target.exists():
            if _origin_url(target) != url:
                raise UserError(
                    f"{target} exists but is not a clone of {url}; remove it and run again."
                )
            _refresh_clone(url, target)
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=clone_root))
        try:
            result = _run_git(("clone", "--quiet", "--", url, str(staging)), clone_root)
            if result.returncode != 0:
                last = GitError((), clone_root, result.returncode, _decode(result.stderr))
                raise UserError(
                    f"could not clone {url} ({last.last_line}); check the URL and that you "
                    "can reach it."
                )
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target


def _refresh_clone(url: str, clone: Path) -> None:
    result = _run_git(("fetch", "--quiet", "--force", "--tags", "origin"), clone)
    if result.returncode != 0:
        last = GitError((), clone, result.returncode, _decode(result.stderr))
        raise UserError(
            f"could not fetch {url} into {clone} ({last.last_line}); check that you can reach "
            "it, or remove the clone to start over."
        )
    # This clone belongs to pullsmith, so its checked-out branch simply follows the remote's
    # default branch; otherwise HEAD, the default base, would stay where the first clone left it.
    if _succeeds("rev-parse", "--verify", "--quiet", "refs/remotes/origin/HEAD", cwd=clone):
        git("reset", "--quiet", "--hard", "refs/remotes/origin/HEAD", cwd=clone)


def resolve_repo(repo: str | Path, clone_root: Path) -> Path:
    """The top level of the repository `repo` names, cloning it under `clone_root` if a URL.

    A URL is cloned once into `clone_root/<name>` and fetched again on later calls.
    """
    if isinstance(repo, str) and not Path(repo).expanduser().exists() and is_url(repo):
        return _clone_or_fetch(repo, clone_root)
    return _require_repo(Path(repo))


# --- workspaces --------------------------------------------------------------------------


def _resolve_base(repo: Path, base: str) -> str:
    candidates: list[str] = []
    if base and not base.startswith("-"):
        candidates.append(base)
        if base != "HEAD" and not base.startswith("refs/"):
            # A clone has only its default branch locally; `git checkout dev` would find
            # origin/dev, and so does this.
            candidates.append(f"refs/remotes/origin/{base}")
    for candidate in candidates:
        result = _run_git(("rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}"), repo)
        if result.returncode == 0:
            return _decode(result.stdout).strip()
    if not _decode(_run_git(("rev-list", "-n", "1", "--all"), repo).stdout).strip():
        raise UserError(
            f"{repo} has no commits yet; commit something first, since pullsmith branches "
            "from a commit."
        )
    raise UserError(
        f"unknown base ref '{base}' in {repo}; pass --base with a branch, tag or commit that exists."
    )


def _current_branch(repo: Path) -> str:
    result = _run_git(("symbolic-ref", "--quiet", "--short", "HEAD"), repo)
    return _decode(result.stdout).strip() if result.returncode == 0 else "HEAD"


def _branch_exists(repo: Path, branch: str) -> bool:
    return _succeeds("show-ref", "--verify", "--quiet", f"refs/heads/{branch}", cwd=repo)


def _identity_config(cwd: Path) -> tuple[str, ...]:
    """`-c` options that supply an author only where the user has configured none."""
    options: list[str] = []
    if not git("config", "--get", "user.name", cwd=cwd, check=False).strip():
        options += ["-c", f"user.name={FALLBACK_NAME}"]
    if not git("config", "--get", "user.email", cwd=cwd, check=False).strip() and not (
        os.environ.get("EMAIL")
    ):
        options += ["-c", f"user.email={FALLBACK_EMAIL}"]
    return tuple(options)


def _is_within(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Workspace:
    """One attempt's own worktree of `repo`, on `branch`, started from `base_commit`."""

    repo: Path
    path: Path
    branch: str
    base_ref: str
    base_commit: str
    task_id: str
    # What the environment's setup command left in the worktree, kept out of the diff and the
    # commit: (path, its blob hash then) for a file, "" for a directory git shows as untracked
    # as a whole, "-" for a file setup deleted (see `after_setup`).
    left_out: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @classmethod
    def create(
        cls,
        repo: Path,
        task_id: str,
        root: Path,
        base: str | None = None,
        branch: str | None = None,
    ) -> Workspace:
        """Add a worktree `root/<task_id>` of `repo` on a new branch from `base` (default HEAD).

        `base_ref` records `base` as given, or the branch HEAD was on when `base` is None.
        """
        repo = _require_repo(Path(repo))
        if not _TASK_ID.match(task_id):
            raise UserError(
                f"task id '{task_id}' can not name a branch and a folder; use letters, digits, "
                "'.', '_' and '-' only."
            )
        base_ref = base if base is not None else _current_branch(repo)
        base_commit = _resolve_base(repo, base if base is not None else "HEAD")
        branch = branch or f"{BRANCH_PREFIX}{task_id}"
        if not _succeeds("check-ref-format", "--branch", branch, cwd=repo):
            raise UserError(f"'{branch}' is not a valid branch name; pass --branch with one.")
        if _branch_exists(repo, branch):
            raise UserError(
                f"branch '{branch}' already exists in {repo}; pass another --branch or task id, "
                f"or delete it with `git branch -D {branch}`."
            )
        root = Path(root).expanduser().resolve()
        path = root / task_id
        if path.exists():
            raise UserError(f"{path} already exists; remove it or use another task id.")
        root.mkdir(parents=True, exist_ok=True)
        with worktree_lock(repo):
            try:
                git(
                    *_NO_HOOKS,
                    "worktree",
                    "add",
                    "--quiet",
                    "-b",
                    branch,
                    str(path),
                    base_commit,
                    cwd=repo,
                )
            except GitError:
                # Leave nothing half-made behind: a branch without its worktree blocks a retry.
                if path.exists():
                    shutil.rmtree(path, ignore_errors=True)
                git("worktree", "prune", cwd=repo, check=False)
                if _branch_exists(repo, branch):
                    git("branch", "-D", branch, cwd=repo, check=False)
                raise
        return cls(
            repo=repo,
            path=path,
            branch=branch,
            base_ref=base_ref,
            base_commit=base_commit,
            task_id=task_id,
        )

    @classmethod
    def open(
        cls,
        repo: Path,
        path: Path,
        branch: str,
        base_commit: str,
        task_id: str,
        base_ref: str | None = None,
    ) -> Workspace:
        """Reopen an existing workspace (for a follow-up), checking that it is still there."""
        repo = _require_repo(Path(repo))
        path = Path(path).expanduser().resolve()
        common = git("rev-parse", "--git-common-dir", cwd=repo).strip()
        common_dir = (repo / common).resolve()
        root = _repo_root(path) if path.is_dir() else None
        belongs = root == path and (
            (path / git("rev-parse", "--git-common-dir", cwd=path).strip()).resolve() == common_dir
        )
        if not belongs:
            raise UserError(
                f"the workspace of task {task_id} at {path} no longer exists; start a new task "
                "instead of a follow-up."
            )
        if not _succeeds("cat-file", "-e", f"{base_commit}^{{commit}}", cwd=repo):
            raise UserError(
                f"base commit {base_commit} of task {task_id} is not in {repo}; start a new task."
            )
        return cls(
            repo=repo,
            path=path,
            branch=branch,
            base_ref=base_ref if base_ref is not None else base_commit,
            base_commit=base_commit,
            task_id=task_id,
        )

    def to_dict(self) -> dict[str, str]:
        """A JSON-ready record from which `from_dict` rebuilds this workspace."""
        return {k: str(v) for k, v in asdict(self).items() if k != "left_out"}

    def after_setup(self) -> Workspace:
        """This workspace, with what a setup command changed so far recorded as `left_out`.

        Each path git shows as changed now (an untracked directory as a whole) is left out of
        `diff`, `changed_files` and `commit` for as long as it stays as setup left it: a file
        the agent edits afterwards is part of the change again.
        """
        out = git(
            "--no-optional-locks",
            "status",
            "--porcelain=v1",
            "-z",
            "--untracked-files=normal",
            "--no-renames",
            cwd=self.path,
        )
        paths = [record[3:] for record in out.split("\0") if len(record) >= 4]
        blobs = self._blobs([path for path in paths if not path.endswith("/")])
        entries = [
            (path.rstrip("/"), "") if path.endswith("/") else (path, blobs[path]) for path in paths
        ]
        return replace(self, left_out=tuple(entries))

    def _blobs(self, paths: list[str]) -> dict[str, str]:
        """The blob hash of each of the worktree's files `paths` now ("-" for one not there),
        from one `git hash-object` for them all."""
        found = {p: "-" for p in paths}
        present = [p for p in paths if (self.path / p).is_file() or (self.path / p).is_symlink()]
        if present:
            out = git(
                "hash-object",
                "--no-filters",
                "--stdin-paths",
                cwd=self.path,
                input="".join(p + "\n" for p in present),
            )
            found.update(zip(present, out.split(), strict=True))
        return found

    def _pathspec(self) -> list[str]:
        """Everything in the worktree but the setup's leftovers that are still as it left them."""
        files = self._blobs([path for path, blob in self.left_out if blob])
        spec = ["--", "."]
        for path, blob in self.left_out:
            if blob and files[path] != blob:
                continue
            spec.append(f":(exclude,literal){path}")
        return spec

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Workspace:
        """Rebuild a workspace from `to_dict` output, without touching git (see `open`)."""
        return cls(
            repo=Path(data["repo"]),
            path=Path(data["path"]),
            branch=str(data["branch"]),
            base_ref=str(data.get("base_ref") or data["base_commit"]),
            base_commit=str(data["base_commit"]),
            task_id=str(data["task_id"]),
        )

    @property
    def dirty(self) -> bool:
        """Whether the user's own working tree has changes that are not committed.

        Those changes are not part of the base: the workspace starts from `base_commit`.
        """
        if _is_bare(self.repo):
            return False
        pathspec: list[str] = []
        root = self.path.parent
        if root != self.repo and _is_within(root, self.repo):
            # Our own worktrees, when kept inside the repository, are not the user's changes.
            pathspec = ["--", ".", f":(exclude){root.relative_to(self.repo).as_posix()}"]
        # --no-optional-locks: a status must not rewrite the user's index to refresh it.
        status = git("--no-optional-locks", "status", "--porcelain", *pathspec, cwd=self.repo)
        return bool(status.strip())

    def _snapshot(self) -> str:
        """The tree of everything in the worktree now (new files included), as git sees it.

        Built in a copy of the worktree's index, so the real one is left as it was.
        """
        index = Path(git("rev-parse", "--git-path", "index", cwd=self.path).strip())
        if not index.is_absolute():
            index = self.path / index
        with tempfile.TemporaryDirectory(prefix="pullsmith-index-") as tmp:
            scratch = Path(tmp) / "index"
            if index.exists():
                # Starting from the real index keeps git's stat cache: unchanged files are
                # not hashed again.
                # copy2 keeps the mtime: with a fresh mtime git would trust stat data of
                # files changed in the same second as the index and miss their edits.
                shutil.copy2(index, scratch)
            env = {"GIT_INDEX_FILE": str(scratch)}
            git("add", "--all", *self._pathspec(), cwd=self.path, env=env)
            return git("write-tree", cwd=self.path, env=env).strip()

    def _diff_tree(self, *options: str) -> str:
        tree = self._snapshot()
        return git(
            "diff-tree",
            "-r",
            "--no-color",
            "--no-ext-diff",
            *options,
            self.base_commit,
            tree,
            cwd=self.path,
        )

    def diff(self) -> str:
        """The whole change from `base_commit` to the worktree: edits, new files, deletions."""
        return self._diff_tree(
            "-p", "--binary", "--no-renames", "--src-prefix=a/", "--dst-prefix=b/"
        )

    def diff_stat(self) -> str:
        """A `git diff --stat` summary of `diff()`."""
        return self._diff_tree("--stat=120", "--no-renames")

    def changed_files(self) -> list[tuple[str, int, int]]:
        """(path, lines added, lines removed) per changed file; binary files count 0 and 0."""
        out = self._diff_tree("--numstat", "-z", "--no-renames")
        files: list[tuple[str, int, int]] = []
        for record in out.split("\0"):
            if not record.strip():
                continue
            added, removed, name = record.lstrip("\n").split("\t", 2)
            files.append(
                (name, int(added) if added != "-" else 0, int(removed) if removed != "-" else 0)
            )
        return files

    def commit(self, message: str, trailer: str = DEFAULT_TRAILER) -> str | None:
        """Commit everything in the worktree on the branch; the new sha, or None if unchanged.

        The author is the user's configured identity, or pullsmith's where none is configured.
        The user's hooks do not run and signing is off, so nothing can block or prompt.
        """
        git("add", "--all", *self._pathspec(), cwd=self.path)
        if _succeeds("diff-index", "--cached", "--quiet", "HEAD", "--", cwd=self.path):
            return None
        text = message.strip() or f"pullsmith: task {self.task_id}"
        if trailer.strip():
            text += "\n\n" + trailer.strip()
        git(
            *_NO_HOOKS,
            "-c",
            "commit.gpgsign=false",
            *_identity_config(self.path),
            "commit",
            "--quiet",
            "--no-verify",
            "--cleanup=whitespace",
            "--file=-",
            cwd=self.path,
            input=text + "\n",
        )
        return git("rev-parse", "HEAD", cwd=self.path).strip()

    def remove(self, delete_branch: bool = False) -> None:
        """Remove the worktree (and with `delete_branch`, its branch) from the repository."""
        _remove_worktree(self.repo, self.path)
        if delete_branch and _branch_exists(self.repo, self.branch):
            git("branch", "-D", "--quiet", self.branch, cwd=self.repo)


def _remove_worktree(repo: Path, path: Path) -> None:
    if path.resolve() == repo.resolve():
        raise RuntimeError(f"refusing to remove {path}: it is the repository itself")
    with worktree_lock(repo):
        result = _run_git(("worktree", "remove", "--force", "--force", str(path)), repo)
        if result.returncode != 0 and path.exists():
            # Not (or no longer) registered as a worktree: it is still only our own folder.
            shutil.rmtree(path)
        git("worktree", "prune", cwd=repo)


def _worktrees(repo: Path) -> list[Path]:
    out = git("worktree", "list", "--porcelain", cwd=repo)
    return [
        Path(line[len("worktree ") :]) for line in out.splitlines() if line.startswith("worktree ")
    ]


def cleanup_worktrees(repo: Path, root: Path) -> list[Path]:
    """Remove every worktree of `repo` that lies under `root`; the paths removed.

    Branches are kept: they hold the attempts' results.
    """
    repo = _require_repo(Path(repo))
    root = Path(root).expanduser().resolve()
    listed = _worktrees(repo)
    main = listed[0].resolve() if listed else repo
    removed: list[Path] = []
    for path in listed[1:]:
        resolved = path.resolve()
        if resolved == main or resolved == root or not _is_within(resolved, root):
            continue
        _remove_worktree(repo, resolved)
        removed.append(resolved)
    with worktree_lock(repo):
        git("worktree", "prune", cwd=repo)
    return removed
