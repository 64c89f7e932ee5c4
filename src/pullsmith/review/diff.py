"""What a review reads: a change between two commits of a repository, as parsed hunks.

Every target becomes a pair of commits (base, head) without touching the user's working tree,
index or refs: `--uncommitted` is written as a tree and a commit object through a temporary
index file (objects only, no ref points at it), so the rest of the review — the diff, the
code around a location, the trees the demonstrations run on — works the same for every kind of
target.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pullsmith.errors import UserError
from pullsmith.workspace import GitError, git

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_AUTHOR = ("-c", "user.name=pullsmith review", "-c", "user.email=review@pullsmith.invalid")


@dataclass
class Hunk:
    """One hunk: its old and new ranges, and the new-side numbers of the lines it adds."""

    old_start: int
    old_count: int
    new_start: int
    new_count: int
    lines: list[str] = field(default_factory=list)
    added: list[int] = field(default_factory=list)
    # New-side line numbers next to which lines were removed (a pure deletion has no added).
    removed_at: list[int] = field(default_factory=list)

    @property
    def new_end(self) -> int:
        return self.new_start + max(self.new_count, 1) - 1

    @property
    def changed(self) -> list[int]:
        """New-side lines a finding about this hunk can point at: added, or next to a removal."""
        return sorted(set(self.added) | set(self.removed_at))


@dataclass
class FileDiff:
    path: str
    old_path: str | None
    hunks: list[Hunk] = field(default_factory=list)
    binary: bool = False
    deleted: bool = False

    @property
    def changed_lines(self) -> list[int]:
        return sorted({n for h in self.hunks for n in h.changed})


@dataclass
class Change:
    """A change to review: the repository, both commits, the diff and its files."""

    repo: Path
    base: str
    head: str
    label: str
    diff: str
    files: list[FileDiff]

    def file(self, path: str) -> FileDiff | None:
        for item in self.files:
            if item.path == path:
                return item
        return None

    @property
    def empty(self) -> bool:
        return not any(f.hunks for f in self.files)


def parse_diff(text: str) -> list[FileDiff]:
    """The files and hunks of a unified git diff (new-side line numbers)."""
    files: list[FileDiff] = []
    current: FileDiff | None = None
    hunk: Hunk | None = None
    new_line = 0
    for line in text.splitlines():
        if line.startswith("diff --git "):
            current = FileDiff(path="", old_path=None)
            files.append(current)
            hunk = None
            parts = line[len("diff --git ") :].split(" b/", 1)
            if len(parts) == 2:
                current.path = parts[1]
                current.old_path = parts[0].removeprefix("a/")
            continue
        if current is None:
            continue
        if hunk is None or not line or line[0] not in " +-\\":
            if line.startswith("+++ "):
                name = line[4:].strip()
                if name != "/dev/null":
                    current.path = name.removeprefix("b/")
                else:
                    current.deleted = True
                continue
            if line.startswith("--- "):
                name = line[4:].strip()
                current.old_path = None if name == "/dev/null" else name.removeprefix("a/")
                continue
            if line.startswith("Binary files"):
                current.binary = True
                continue
            match = _HUNK.match(line)
            if match:
                old_start, old_count, new_start, new_count = match.groups()
                hunk = Hunk(
                    old_start=int(old_start),
                    old_count=int(old_count) if old_count is not None else 1,
                    new_start=int(new_start),
                    new_count=int(new_count) if new_count is not None else 1,
                )
                current.hunks.append(hunk)
                new_line = hunk.new_start
            continue
        hunk.lines.append(line)
        if line.startswith("+"):
            hunk.added.append(new_line)
            new_line += 1
        elif line.startswith("-"):
            hunk.removed_at.append(max(new_line, 1))
        elif line.startswith(" "):
            new_line += 1
    return files


def _verify(repo: Path, rev: str, what: str) -> str:
    out = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", cwd=repo, check=False)
    sha = out.strip()
    if not sha:
        raise UserError(f"{what} '{rev}' is not a commit in {repo}; check the name and retry.")
    return sha


def repo_root(path: Path) -> Path:
    """The top of the working tree `path` is in, or a UserError saying it is not in one."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"{path} is not a directory; run pullsmith review in a git repository.")
    top = git("rev-parse", "--show-toplevel", cwd=path, check=False).strip()
    if not top:
        raise UserError(f"{path} is not in a git repository; run pullsmith review in one.")
    return Path(top).resolve()


def snapshot_working_tree(repo: Path) -> str:
    """A commit object of the working tree as it is (tracked changes and untracked files that
    are not ignored), on top of HEAD, made through a temporary index: nothing the user has —
    the index, the files, the refs — changes."""
    head = git("rev-parse", "--verify", "--quiet", "HEAD^{commit}", cwd=repo, check=False).strip()
    with tempfile.TemporaryDirectory(prefix="pullsmith-review-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git("read-tree", head or "--empty", cwd=repo, env=env)
        git("add", "--all", "--", ".", cwd=repo, env=env)
        tree = git("write-tree", cwd=repo, env=env).strip()
    parents = ("-p", head) if head else ()
    return git(
        *_AUTHOR, "commit-tree", tree, *parents, "-m", "pullsmith review: uncommitted", cwd=repo
    ).strip()


def resolve_change(
    repo: Path,
    *,
    base: str | None = None,
    commit: str | None = None,
    uncommitted: bool = False,
    head: str | None = None,
    context: int = 3,
    label: str | None = None,
) -> Change:
    """The change one of `--base REF`, `--commit SHA`, `--uncommitted` (the default when none
    is given) names; with `head`, `base..head` as given (a pull request's range)."""
    chosen = [name for name, on in (("--base", base), ("--commit", commit)) if on]
    if uncommitted:
        chosen.append("--uncommitted")
    if len(chosen) > 1:
        raise UserError(f"{' and '.join(chosen)} can not be used together; pass one of them.")
    if head is not None and base is not None:
        base_sha, head_sha = _verify(repo, base, "base"), _verify(repo, head, "head")
        label_ = f"{base_sha[:10]}..{head_sha[:10]}"
    elif base is not None:
        head_sha = _verify(repo, "HEAD", "HEAD")
        ref = _verify(repo, base, "base")
        merge_base = git("merge-base", ref, head_sha, cwd=repo, check=False).strip()
        if not merge_base:
            raise UserError(f"'{base}' and HEAD have no common ancestor; pick another --base.")
        base_sha, label_ = merge_base, f"changes since the merge base with {base}"
    elif commit is not None:
        head_sha = _verify(repo, commit, "commit")
        parent = git(
            "rev-parse", "--verify", "--quiet", f"{head_sha}^1", cwd=repo, check=False
        ).strip()
        base_sha = parent or EMPTY_TREE
        label_ = f"commit {head_sha[:10]}"
    else:
        head_sha = snapshot_working_tree(repo)
        parent = git("rev-parse", "--verify", "--quiet", "HEAD", cwd=repo, check=False).strip()
        base_sha = parent or EMPTY_TREE
        label_ = "uncommitted changes"
    try:
        text = git(
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--no-renames",
            f"-U{context}",
            base_sha,
            head_sha,
            cwd=repo,
        )
    except GitError as exc:
        raise UserError(f"git could not diff {label_} ({exc.last_line}).") from None
    files = parse_diff(text)
    label = label or label_
    change = Change(repo=repo, base=base_sha, head=head_sha, label=label, diff=text, files=files)
    if change.empty:
        hint = (
            "; commit something, or pass --base REF or --commit SHA"
            if label == "uncommitted changes"
            else ""
        )
        raise UserError(f"there is nothing to review in the {label}: the diff is empty{hint}.")
    return change


def export_tree(repo: Path, rev: str, dest: Path) -> None:
    """Write the tree of `rev` into `dest` as a checkout would, touching nothing of `repo`
    (a temporary index file, `checkout-index` with a prefix)."""
    dest.mkdir(parents=True, exist_ok=True)
    if rev == EMPTY_TREE:
        return
    with tempfile.TemporaryDirectory(prefix="pullsmith-review-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git("read-tree", rev, cwd=repo, env=env)
        git("checkout-index", "--all", "--force", f"--prefix={dest.resolve()}/", cwd=repo, env=env)


def file_lines(repo: Path, rev: str, path: str) -> list[str]:
    """The lines of `path` at `rev` (empty when it is not there)."""
    if rev == EMPTY_TREE:
        return []
    out = git("show", f"{rev}:{path}", cwd=repo, check=False)
    return out.splitlines()
