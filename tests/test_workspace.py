"""Workspaces: worktrees on new branches, their diff and commit, and the user's tree untouched."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from pullsmith.errors import UserError
from pullsmith.workspace import (
    GitError,
    Workspace,
    cleanup_worktrees,
    git,
    is_url,
    resolve_repo,
)

ID = ("-c", "user.name=t", "-c", "user.email=t@t")


@pytest.fixture(autouse=True)
def isolated_git(tmp_path, monkeypatch):
    """No global or system git config, no identity from the environment."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    for name in (
        "GIT_CONFIG_GLOBAL",
        "GIT_CONFIG_SYSTEM",
        "XDG_CONFIG_HOME",
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
        "EMAIL",
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
    ):
        monkeypatch.delenv(name, raising=False)


def sh(cwd: Path, *args: str, input: bytes | None = None) -> str:
    result = subprocess.run(
        ["git", *ID, *args], cwd=cwd, capture_output=True, input=input, check=True
    )
    return result.stdout.decode()


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    sh(path, "init", "-q", "-b", "main")
    (path / "a.txt").write_text("one\ntwo\n")
    (path / "b.txt").write_text("bee\n")
    sh(path, "add", "-A")
    sh(path, "commit", "-q", "-m", "first")
    return path


def head(cwd: Path, rev: str = "HEAD") -> str:
    return sh(cwd, "rev-parse", rev).strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "worktrees"


def test_create_on_head(repo, root):
    ws = Workspace.create(repo, "t1", root)
    assert ws.repo == repo.resolve()
    assert ws.path == root.resolve() / "t1"
    assert ws.branch == "pullsmith/t1"
    assert ws.base_ref == "main"
    assert ws.base_commit == head(repo)
    assert ws.task_id == "t1"
    assert (ws.path / "a.txt").read_text() == "one\ntwo\n"
    assert sh(ws.path, "symbolic-ref", "--short", "HEAD").strip() == "pullsmith/t1"
    assert ws.dirty is False


def test_create_on_named_base(repo, root):
    first = head(repo)
    sh(repo, "tag", "v1")
    (repo / "a.txt").write_text("changed\n")
    sh(repo, "commit", "-q", "-am", "second")
    ws = Workspace.create(repo, "t2", root, base="v1", branch="fix/csv")
    assert ws.base_ref == "v1"
    assert ws.base_commit == first
    assert ws.branch == "fix/csv"
    assert (ws.path / "a.txt").read_text() == "one\ntwo\n"


def test_unknown_base(repo, root):
    with pytest.raises(UserError, match=r"unknown base ref 'nope' in .*pass --base"):
        Workspace.create(repo, "t", root, base="nope")
    assert not (root / "t").exists()


def test_not_a_repo_and_missing_path(tmp_path, root):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(UserError, match=r"is not a git repository; pass --repo .*git init"):
        resolve_repo(plain, tmp_path / "clones")
    with pytest.raises(UserError, match="is not a git repository"):
        Workspace.create(plain, "t", root)
    with pytest.raises(UserError, match="does not exist"):
        resolve_repo(tmp_path / "missing", tmp_path / "clones")


def test_resolve_repo_from_subdirectory(repo, tmp_path):
    (repo / "sub").mkdir()
    assert resolve_repo(str(repo / "sub"), tmp_path / "clones") == repo.resolve()


def test_empty_repo(tmp_path, root):
    empty = tmp_path / "empty"
    empty.mkdir()
    sh(empty, "init", "-q")
    with pytest.raises(UserError, match="no commits yet; commit something first"):
        Workspace.create(empty, "t", root)
    with pytest.raises(UserError, match="no commits yet"):
        Workspace.create(empty, "t", root, base="main")


def test_branch_exists(repo, root, tmp_path):
    Workspace.create(repo, "t", root)
    with pytest.raises(UserError, match=r"branch 'pullsmith/t' already exists"):
        Workspace.create(repo, "t", tmp_path / "other-root")
    with pytest.raises(UserError, match=r"branch 'main' already exists"):
        Workspace.create(repo, "u", root, branch="main")


def test_invalid_task_id(repo, root):
    with pytest.raises(UserError, match="task id"):
        Workspace.create(repo, "../escape", root)


def test_users_tree_and_index_untouched(repo, root):
    (repo / "a.txt").write_text("user edit\n")
    (repo / "c.txt").write_text("staged by user\n")
    sh(repo, "add", "c.txt")
    index = repo / ".git" / "index"

    def snapshot() -> tuple[str, str, str, str]:
        index_digest = hashlib.sha256(index.read_bytes()).hexdigest()
        status = sh(repo, "--no-optional-locks", "status", "--porcelain")
        files = "|".join(
            (repo / n).read_text() if (repo / n).exists() else "-"
            for n in ("a.txt", "b.txt", "c.txt")
        )
        return index_digest, status, files, sh(repo, "ls-files", "--stage")

    before = snapshot()
    ws = Workspace.create(repo, "t", root)
    assert ws.dirty is True
    assert not (ws.path / "c.txt").exists()
    assert (ws.path / "a.txt").read_text() == "one\ntwo\n"
    (ws.path / "a.txt").write_text("agent edit\n")
    (ws.path / "new.txt").write_text("new\n")
    ws.diff()
    assert ws.commit("agent change")
    ws.remove()
    assert snapshot() == before


def test_diff_has_new_files_deletions_and_binary(repo, root):
    ws = Workspace.create(repo, "t", root)
    (ws.path / "a.txt").write_text("one\nTWO\n")
    (ws.path / "b.txt").unlink()
    (ws.path / "dir").mkdir()
    (ws.path / "dir" / "new.txt").write_text("hello\nworld\n")
    (ws.path / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (ws.path / "crlf.txt").write_bytes(b"x\r\ny\r\n")
    worktree_status = sh(ws.path, "status", "--porcelain")

    diff = ws.diff()
    assert "diff --git a/dir/new.txt b/dir/new.txt\nnew file mode 100644" in diff
    assert "+hello\n+world\n" in diff
    assert "diff --git a/b.txt b/b.txt\ndeleted file mode 100644" in diff
    assert "-two\n+TWO\n" in diff
    assert "GIT binary patch" in diff
    assert "+x\r\n+y\r\n" in diff
    # The worktree's own index did not take in the new files.
    assert sh(ws.path, "status", "--porcelain") == worktree_status

    changed = dict((p, (a, r)) for p, a, r in ws.changed_files())
    assert changed == {
        "a.txt": (1, 1),
        "b.txt": (0, 1),
        "blob.bin": (0, 0),
        "crlf.txt": (2, 0),
        "dir/new.txt": (2, 0),
    }
    stat = ws.diff_stat()
    assert "dir/new.txt" in stat and "b.txt" in stat
    assert "5 files changed" in stat

    # The diff is complete: it applies to the base and reproduces the worktree.
    sh(repo, "apply", "--check", input=diff.encode())
    sh(repo, "apply", input=diff.encode())
    assert (repo / "blob.bin").read_bytes() == (ws.path / "blob.bin").read_bytes()


def test_diff_includes_commits_made_in_the_worktree(repo, root):
    ws = Workspace.create(repo, "t", root)
    (ws.path / "a.txt").write_text("committed\n")
    sh(ws.path, "commit", "-q", "-am", "by the agent")
    assert "+committed" in ws.diff()
    assert ws.diff_stat().strip().endswith("1 insertion(+), 2 deletions(-)")


def test_empty_diff(repo, root):
    ws = Workspace.create(repo, "t", root)
    assert ws.diff() == ""
    assert ws.changed_files() == []


def test_commit_message_trailer_and_configured_author(repo, root):
    sh(repo, "config", "user.name", "Alice")
    sh(repo, "config", "user.email", "alice@example.com")
    ws = Workspace.create(repo, "t", root)
    (ws.path / "new.txt").write_text("new\n")
    sha = ws.commit("Fix the CSV export\n\nIt dropped the last row.")
    assert sha == head(ws.path)
    log = sh(ws.path, "log", "-1", "--format=%an <%ae>|%cn|%B", sha)
    author, committer, body = log.split("|", 2)
    assert author == "Alice <alice@example.com>"
    assert committer == "Alice"
    assert body.strip() == (
        "Fix the CSV export\n\nIt dropped the last row.\n\n"
        "Co-authored-by: pullsmith <pullsmith@users.noreply.local>"
    )
    assert sh(ws.path, "rev-parse", f"{sha}^").strip() == ws.base_commit


def test_commit_falls_back_to_pullsmith_identity(repo, root):
    assert subprocess.run(["git", "config", "user.name"], cwd=repo).returncode == 1
    ws = Workspace.create(repo, "t", root)
    (ws.path / "a.txt").write_text("x\n")
    sha = ws.commit("change", trailer="")
    assert sha
    log = sh(ws.path, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%B", sha)
    assert log.strip() == "pullsmith <pullsmith@localhost>|pullsmith <pullsmith@localhost>|change"


def test_commit_skips_hooks_and_signing(repo, root):
    hooks = repo / ".git" / "hooks"
    marker = repo.parent / "hook-ran"
    for name in ("pre-commit", "commit-msg", "post-commit", "post-checkout"):
        hook = hooks / name
        hook.write_text(f"#!/bin/sh\necho {name} >> {marker}\nexit 1\n")
        hook.chmod(0o755)
    sh(repo, "config", "commit.gpgsign", "true")
    sh(repo, "config", "gpg.program", "/bin/false")
    ws = Workspace.create(repo, "t", root)
    (ws.path / "a.txt").write_text("x\n")
    assert ws.commit("change")
    assert not marker.exists()


def test_commit_returns_none_without_changes(repo, root):
    ws = Workspace.create(repo, "t", root)
    assert ws.commit("nothing") is None
    (ws.path / "a.txt").write_text("x\n")
    assert ws.commit("something") is not None
    assert ws.commit("nothing more") is None


def test_branch_keeps_commit_after_remove(repo, root):
    ws = Workspace.create(repo, "t", root)
    (ws.path / "n.txt").write_text("n\n")
    sha = ws.commit("add n")
    assert sh(repo, "log", "-1", "--format=%H", "pullsmith/t").strip() == sha
    ws.remove()
    assert not ws.path.exists()
    assert str(ws.path) not in sh(repo, "worktree", "list")
    assert sh(repo, "log", "-1", "--format=%H", "pullsmith/t").strip() == sha
    assert sh(repo, "show", "pullsmith/t:n.txt") == "n\n"


def test_remove_with_branch_and_when_already_gone(repo, root):
    ws = Workspace.create(repo, "t", root)
    (ws.path / "junk").write_text("untracked\n")
    ws.remove(delete_branch=True)
    assert not ws.path.exists()
    assert sh(repo, "branch", "--list", "pullsmith/t") == ""

    gone = Workspace.create(repo, "u", root)
    subprocess.run(["rm", "-rf", str(gone.path)], check=True)
    gone.remove(delete_branch=True)
    assert "pullsmith/u" not in sh(repo, "branch", "--list")
    assert len(sh(repo, "worktree", "list").splitlines()) == 1


def test_reopen_for_follow_up(repo, root):
    ws = Workspace.create(repo, "t", root)
    data = ws.to_dict()
    assert data["base_commit"] == ws.base_commit and data["path"] == str(ws.path)
    assert Workspace.from_dict(data) == ws
    again = Workspace.open(ws.repo, ws.path, ws.branch, ws.base_commit, ws.task_id, ws.base_ref)
    assert again == ws
    (again.path / "a.txt").write_text("follow-up\n")
    assert again.commit("follow-up")
    ws.remove()
    with pytest.raises(UserError, match="no longer exists"):
        Workspace.open(ws.repo, ws.path, ws.branch, ws.base_commit, ws.task_id)


def test_dirty_ignores_worktrees_kept_inside_the_repo(repo):
    ws = Workspace.create(repo, "t", repo / ".pullsmith" / "worktrees")
    assert ws.dirty is False
    (repo / "b.txt").write_text("user change\n")
    assert ws.dirty is True


def test_cleanup_worktrees(repo, root, tmp_path):
    a = Workspace.create(repo, "a", root)
    b = Workspace.create(repo, "b", root)
    elsewhere = Workspace.create(repo, "c", tmp_path / "elsewhere")
    removed = cleanup_worktrees(repo, root)
    assert sorted(removed) == sorted([a.path, b.path])
    assert not a.path.exists() and not b.path.exists()
    assert elsewhere.path.exists()
    assert "pullsmith/a" in sh(repo, "branch", "--list")
    assert cleanup_worktrees(repo, root) == []


def test_clone_from_file_url(repo, tmp_path, root):
    sh(repo, "branch", "feature")
    bare = tmp_path / "remote.git"
    sh(tmp_path, "clone", "-q", "--bare", str(repo), str(bare))
    url = bare.as_uri()
    clones = tmp_path / "clones"

    clone = resolve_repo(url, clones)
    assert clone == clones.resolve() / "remote"
    assert head(clone) == head(repo)

    (repo / "a.txt").write_text("newer\n")
    sh(repo, "commit", "-q", "-am", "newer")
    sh(repo, "push", "-q", str(bare), "main")
    assert resolve_repo(url, clones) == clone
    assert head(clone) == head(repo)

    ws = Workspace.create(clone, "t", root, base="feature")
    assert ws.base_commit == head(repo, "feature")


def test_clone_failure(tmp_path):
    with pytest.raises(UserError, match=r"could not clone file://.*check the URL"):
        resolve_repo((tmp_path / "nowhere.git").as_uri(), tmp_path / "clones")
    leftovers = [p.name for p in (tmp_path / "clones").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_is_url():
    for url in ("https://github.com/a/b.git", "ssh://h/x", "git@github.com:a/b.git", "file:///r"):
        assert is_url(url)
    for path in ("repo", "./repo", "/srv/repo", Path("https://x")):
        assert not is_url(path)


def test_git_helper_errors(repo, tmp_path):
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=repo) == "main\n"
    with pytest.raises(GitError) as info:
        git("rev-parse", "--verify", "nope", cwd=repo)
    assert isinstance(info.value, RuntimeError)
    assert info.value.returncode != 0 and "fatal" in info.value.stderr
    assert "rev-parse --verify nope" in str(info.value)
    assert git("rev-parse", "--verify", "-q", "nope", cwd=repo, check=False) == ""
    with pytest.raises(UserError, match="does not exist"):
        git("status", cwd=tmp_path / "missing")


def test_a_long_summary_line_keeps_its_words_in_the_body():
    from pullsmith.attempt import commit_message
    from pullsmith.task import AttemptResult
    from pullsmith.text import subject_line

    sentence = "Fixed the off-by-one in the CSV export loop. It now writes every row."
    assert subject_line(sentence) == (sentence, "")
    long = (
        "Fixed the off-by-one in the CSV export loop so that the last row is written. "
        "The header is unchanged."
    )
    subject, rest = subject_line(long)
    assert subject == "Fixed the off-by-one in the CSV export loop so that the last row is…"
    assert len(subject) <= 72 and rest == long
    two = "Fixed the bound of the loop in to_csv. " + "It now writes the last row too, " * 3
    subject, rest = subject_line(two)
    assert subject == "Fixed the bound of the loop in to_csv." and rest.startswith("It now")
    result = AttemptResult("t", "passed", "finished", "fix the export", "/r", summary=long)
    message = commit_message(result).splitlines()
    assert message[0].endswith("…") and len(message[0]) <= 72
    assert message[1] == "" and message[2] == long
