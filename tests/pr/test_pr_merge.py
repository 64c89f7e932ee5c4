"""`pullsmith pr merge`: lands a PR in the user's repository, or refuses and changes nothing."""

from __future__ import annotations

import pytest
from conftest import git
from pr_helpers import (
    REPORT_DOC,
    assert_refused,
    commit_file,
    good_replies,
    ledger_repo_fixture,  # noqa: F401 (the ledger_repo fixture)
    make_pr,
    pullsmith,
    repo_state,
    run_and_record,
)

from pullsmith.pr import merge as merge_module


def export_with(repo, new_doc: str) -> str:
    text = (repo / "ledger" / "report.py").read_text()
    assert REPORT_DOC in text
    return text.replace(REPORT_DOC, f'    """{new_doc}"""\n')


def head(repo, ref="HEAD") -> str:
    return git("rev-parse", ref, cwd=repo).strip()


def parents(repo, ref) -> list[str]:
    return git("rev-list", "--parents", "-n", "1", ref, cwd=repo).split()[1:]


def test_a_real_run_fast_forwards_into_the_checked_out_base(ledger_repo, tmp_path):
    result, pr = run_and_record(ledger_repo, tmp_path, good_replies(ledger_repo))
    merged = pullsmith("pr", "merge", "1", cwd=ledger_repo)
    assert merged.returncode == 0, merged.stderr
    assert "merged pull request #1 into main (fast-forward)" in merged.stdout
    assert f"your checkout at {ledger_repo} was updated" in merged.stdout
    assert head(ledger_repo) == result.commit
    # The user's working tree and index follow: the fix is there, nothing is left dirty.
    assert "for amount in amounts:" in (ledger_repo / "ledger" / "report.py").read_text()
    assert git("status", "--porcelain", cwd=ledger_repo) == ""
    listed = pullsmith("pr", "list", "--state", "all", cwd=ledger_repo).stdout
    assert "merged" in listed
    assert_refused(pullsmith("pr", "merge", "1"), "pull request #1 is already merged")
    assert_refused(pullsmith("pr", "close", "1"), "is merged")
    assert_refused(pullsmith("pr", "reopen", "1"), "can not be reopened")
    assert "merged (fast-forward)" in pullsmith("pr", "show", "1").stdout


def test_a_moved_base_gets_a_merge_commit_and_the_tree_follows(ledger_repo, tmp_path):
    pr = make_pr(ledger_repo, tmp_path, {"ledger/report.py": export_with(ledger_repo, "A.")})
    old_main = commit_file(ledger_repo, "CHANGELOG", "user's own work\n")
    merged = pullsmith("pr", "merge", str(pr.number))
    assert merged.returncode == 0, merged.stderr
    assert "(merge commit)" in merged.stdout
    new_main = head(ledger_repo)
    assert parents(ledger_repo, new_main) == [old_main, pr.head_commit]
    message = git("log", "-1", "--format=%B", cwd=ledger_repo)
    assert message.startswith(f"Merge pull request #{pr.number} from {pr.head} into main")
    assert '"""A."""' in (ledger_repo / "ledger" / "report.py").read_text()
    assert (ledger_repo / "CHANGELOG").read_text() == "user's own work\n"
    assert git("status", "--porcelain", cwd=ledger_repo) == ""


def test_squash_makes_one_commit_on_the_base(ledger_repo, tmp_path):
    pr = make_pr(
        ledger_repo,
        tmp_path,
        {"ledger/report.py": export_with(ledger_repo, "S."), "NOTES": "n\n"},
        message="Squash me",
    )
    old_main = head(ledger_repo)
    merged = pullsmith("pr", "merge", str(pr.number), "--squash")
    assert merged.returncode == 0, merged.stderr
    assert "squashed into one commit" in merged.stdout
    new_main = head(ledger_repo)
    assert parents(ledger_repo, new_main) == [old_main]
    assert head(ledger_repo, "HEAD^{tree}") == head(ledger_repo, f"{pr.head}^{{tree}}")
    message = git("log", "-1", "--format=%B", cwd=ledger_repo)
    assert message.startswith(f"Make a change. (#{pr.number})") and "* Squash me" in message
    assert git("status", "--porcelain", cwd=ledger_repo) == ""


def test_a_base_that_is_not_checked_out_moves_by_ref_alone(ledger_repo, tmp_path):
    pr = make_pr(ledger_repo, tmp_path, {"ledger/report.py": export_with(ledger_repo, "R.")})
    git("switch", "-q", "-c", "dev", cwd=ledger_repo)
    # The user's own uncommitted work on another branch is not in the way, and stays.
    (ledger_repo / "README.md").write_text("work in progress\n")
    before = repo_state(ledger_repo)
    merged = pullsmith("pr", "merge", str(pr.number))
    assert merged.returncode == 0, merged.stderr
    assert "your checkout" not in merged.stdout
    assert head(ledger_repo, "refs/heads/main") == pr.head_commit
    after = repo_state(ledger_repo)
    assert after["files"] == before["files"] and after["index"] == before["index"]
    assert after["HEAD"] == before["HEAD"] == b"ref: refs/heads/dev\n"
    reflog = git("reflog", "-1", "--format=%gs", "refs/heads/main", cwd=ledger_repo)
    assert f"pullsmith: merge pull request #{pr.number} (fast-forward)" in reflog


def test_a_merge_commit_into_a_base_that_is_not_checked_out(ledger_repo, tmp_path):
    pr = make_pr(ledger_repo, tmp_path, {"ledger/report.py": export_with(ledger_repo, "M.")})
    old_main = commit_file(ledger_repo, "CHANGELOG", "x\n")
    git("switch", "-q", "-c", "dev", cwd=ledger_repo)
    before = repo_state(ledger_repo)
    merged = pullsmith("pr", "merge", str(pr.number))
    assert merged.returncode == 0, merged.stderr
    new_main = head(ledger_repo, "refs/heads/main")
    assert parents(ledger_repo, new_main) == [old_main, pr.head_commit]
    shown = git("show", f"{new_main}:ledger/report.py", cwd=ledger_repo)
    assert '"""M."""' in shown
    after = repo_state(ledger_repo)
    assert (after["files"], after["index"], after["HEAD"]) == (
        before["files"],
        before["index"],
        before["HEAD"],
    )
    # No throwaway worktree is left behind.
    assert len(git("worktree", "list", cwd=ledger_repo).splitlines()) == 1


def test_a_base_checked_out_in_a_linked_worktree_is_updated_there(ledger_repo, tmp_path):
    pr = make_pr(ledger_repo, tmp_path, {"ledger/report.py": export_with(ledger_repo, "W.")})
    git("switch", "-q", "-c", "dev", cwd=ledger_repo)
    linked = tmp_path / "linked-main"
    git("worktree", "add", "-q", str(linked), "main", cwd=ledger_repo)
    merged = pullsmith("pr", "merge", str(pr.number))
    assert merged.returncode == 0, merged.stderr
    assert f"your checkout at {linked} was updated" in merged.stdout
    assert '"""W."""' in (linked / "ledger" / "report.py").read_text()
    assert git("status", "--porcelain", cwd=linked) == ""


def test_a_dirty_working_tree_is_refused_and_left_exactly_as_it_was(ledger_repo, tmp_path):
    pr = make_pr(ledger_repo, tmp_path, {"ledger/report.py": export_with(ledger_repo, "D.")})
    (ledger_repo / "README.md").write_text("unsaved edit\n")
    (ledger_repo / "ledger" / "__init__.py").write_text("# staged\n")
    git("add", "ledger/__init__.py", cwd=ledger_repo)
    (ledger_repo / "scratch.txt").write_text("untracked\n")
    before = repo_state(ledger_repo)
    refused = pullsmith("pr", "merge", str(pr.number), subprocess_=True)
    assert_refused(refused, f"your working tree at {ledger_repo} has uncommitted changes")
    assert repo_state(ledger_repo) == before
    for squash in ([], ["--squash"]):
        assert pullsmith("pr", "merge", str(pr.number), *squash).returncode != 0
        assert repo_state(ledger_repo) == before
    assert "open" in pullsmith("pr", "list", cwd=ledger_repo).stdout


def test_a_conflict_is_refused_and_left_exactly_as_it_was(ledger_repo, tmp_path):
    pr = make_pr(ledger_repo, tmp_path, {"ledger/report.py": export_with(ledger_repo, "Ours.")})
    commit_file(ledger_repo, "ledger/report.py", export_with(ledger_repo, "Theirs."))
    before = repo_state(ledger_repo)
    refused = pullsmith("pr", "merge", str(pr.number))
    assert_refused(refused, f"pull request #{pr.number} conflicts with 'main' in ledger/report.py")
    assert "nothing was changed" in refused.stderr
    assert repo_state(ledger_repo) == before
    assert_refused(pullsmith("pr", "merge", str(pr.number), "--squash"), "conflicts")
    assert repo_state(ledger_repo) == before
    # Not checked out: still nothing moves.
    git("switch", "-q", "-c", "dev", cwd=ledger_repo)
    before = repo_state(ledger_repo)
    assert_refused(pullsmith("pr", "merge", str(pr.number)), "conflicts")
    assert repo_state(ledger_repo) == before
    assert "open" in pullsmith("pr", "list", cwd=ledger_repo).stdout


def test_untracked_files_in_the_way_are_refused_and_kept(ledger_repo, tmp_path):
    pr = make_pr(ledger_repo, tmp_path, {"notes.txt": "from the PR\n"})
    (ledger_repo / "notes.txt").write_text("mine\n")
    before = repo_state(ledger_repo)
    refused = pullsmith("pr", "merge", str(pr.number))
    assert_refused(refused, "would overwrite untracked files")
    assert "notes.txt" in refused.stderr
    assert repo_state(ledger_repo) == before
    assert (ledger_repo / "notes.txt").read_text() == "mine\n"


def test_a_base_that_is_not_a_branch_needs_into(ledger_repo, tmp_path):
    sha = head(ledger_repo)
    pr = make_pr(ledger_repo, tmp_path, {"NEW": "x\n"}, base=sha)
    assert pr.base == sha
    assert_refused(pullsmith("pr", "merge", str(pr.number)), "pass --into BRANCH")
    merged = pullsmith("pr", "merge", str(pr.number), "--into", "main")
    assert merged.returncode == 0, merged.stderr
    assert (ledger_repo / "NEW").read_text() == "x\n"


def test_a_deleted_branch_is_refused_and_delete_branch_cleans_up(ledger_repo, tmp_path):
    gone = make_pr(ledger_repo, tmp_path, {"A": "a\n"})
    git("branch", "-D", gone.head, cwd=ledger_repo)
    assert_refused(pullsmith("pr", "merge", str(gone.number)), "no longer exists")
    kept = make_pr(ledger_repo, tmp_path, {"B": "b\n"})
    merged = pullsmith("pr", "merge", str(kept.number), "--delete-branch")
    assert merged.returncode == 0, merged.stderr
    assert f"deleted branch {kept.head}" in merged.stdout
    assert git("branch", "--list", kept.head, cwd=ledger_repo) == ""
    assert "note: its tests were untested" in merged.stdout


def test_a_branch_already_merged_by_hand_is_marked_merged(ledger_repo, tmp_path):
    pr = make_pr(ledger_repo, tmp_path, {"C": "c\n"})
    git("merge", "-q", "--ff-only", pr.head, cwd=ledger_repo)
    before = head(ledger_repo)
    merged = pullsmith("pr", "merge", str(pr.number))
    assert merged.returncode == 0 and "already there" in merged.stdout
    assert head(ledger_repo) == before


@pytest.mark.parametrize("old_git", [False, True], ids=["merge-tree", "throwaway-worktree"])
def test_the_merge_is_worked_out_without_touching_a_checkout(
    ledger_repo, tmp_path, monkeypatch, old_git
):
    if old_git:  # git before 2.38 has no `merge-tree --write-tree`
        monkeypatch.setattr(merge_module, "_git_version", lambda repo: (2, 30))
    clean = make_pr(ledger_repo, tmp_path, {"ledger/report.py": export_with(ledger_repo, "A.")})
    clashing = make_pr(ledger_repo, tmp_path, {"ledger/report.py": export_with(ledger_repo, "B.")})
    main = commit_file(ledger_repo, "ledger/report.py", export_with(ledger_repo, "C."))
    git("reset", "-q", "--hard", "HEAD~1", cwd=ledger_repo)
    other = commit_file(ledger_repo, "CHANGELOG", "x\n")
    before = repo_state(ledger_repo)
    tree, conflicts = merge_module.merge_tree(ledger_repo, other, clean.head_commit)
    assert tree and conflicts == []
    listing = git("ls-tree", "-r", "--name-only", tree, cwd=ledger_repo).split()
    assert "CHANGELOG" in listing and "ledger/report.py" in listing
    tree, conflicts = merge_module.merge_tree(ledger_repo, main, clashing.head_commit)
    assert tree is None and conflicts == ["ledger/report.py"]
    assert repo_state(ledger_repo) == before
    assert len(git("worktree", "list", cwd=ledger_repo).splitlines()) == 1
