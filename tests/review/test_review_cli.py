"""`pullsmith review` as a user runs it, the model scripted by a recorded conversation."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
from conftest import bwrap_works, git
from review_helpers import CLEAN_REPLY, DEMO_REPLY, REVIEW_REPLY, calc_repo, scripted

from pullsmith.review.schema import Review, review_schema

SANDBOX = "bwrap" if bwrap_works() else "none"


def pullsmith(*args, cwd):
    return subprocess.run(
        [sys.executable, "-c", "from pullsmith.cli import main; main()", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def tree_state(repo):
    """What a review must leave as it was: the files, the index, the refs, the worktrees."""
    return {
        "status": git("status", "--porcelain=v2", "--untracked-files=all", cwd=repo),
        "index": (repo / ".git" / "index").read_bytes(),
        "refs": git("for-each-ref", cwd=repo),
        "worktrees": git("worktree", "list", "--porcelain", cwd=repo),
        "calc": (repo / "calc.py").read_text(),
    }


def refused(proc, fragment):
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.stderr.startswith("pullsmith: ") and fragment in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_review_json_demonstrates_the_bug_and_leaves_the_tree(tmp_path):
    repo = calc_repo(tmp_path)
    before = tree_state(repo)
    model = scripted(tmp_path, REVIEW_REPLY, DEMO_REPLY)
    proc = pullsmith("review", "--json", "--model", model, "--sandbox", SANDBOX, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    # What --json prints is what the documented schema says.
    jsonschema.validate(json.loads(proc.stdout), review_schema())
    review = Review.model_validate_json(proc.stdout)
    assert review.verdict == "incorrect" and review.target == "uncommitted changes"
    assert review.rules == "Treat off-by-one errors as P1."
    (finding,) = review.findings
    assert finding.priority == "P1" and str(finding.location) == "calc.py:4"
    assert finding.check == "demonstrated"
    demo = finding.demonstration
    assert demo.command.startswith("python -c 'from calc import total")
    head, base = demo.runs
    assert head.tree == "head" and head.exit_code != 0 and "AssertionError: 1" in head.output
    assert base.tree == "base" and base.exit_code == 0
    assert [d.title for d in review.dropped] == ["a nit far away"]
    # The review changed nothing of the user's repository.
    assert tree_state(repo) == before


def test_review_terminal_rendering_shows_the_code(tmp_path):
    repo = calc_repo(tmp_path)
    git("add", "calc.py", cwd=repo)
    git("commit", "-q", "-m", "trim the loop", cwd=repo)
    model = scripted(tmp_path, REVIEW_REPLY, DEMO_REPLY)
    proc = pullsmith("review", "--commit", "HEAD", "--model", model, "--sandbox", SANDBOX, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "verdict: incorrect" in out and "[P1] total drops the last number" in out
    assert "for x in xs[:-1]:" in out  # the code around the location
    assert "demonstrated" in out and "passes on the base" in out


def test_a_clean_change_is_correct_and_nothing_runs(tmp_path):
    repo = calc_repo(tmp_path)
    (repo / "calc.py").write_text((repo / "calc.py").read_text().replace("result", "acc"))
    git("add", "calc.py", cwd=repo)
    git("commit", "-q", "-m", "rename", cwd=repo)
    git("checkout", "-q", "-b", "feature", cwd=repo)
    model = scripted(tmp_path, "I could not decide.", CLEAN_REPLY)  # one malformed reply first
    proc = pullsmith("review", "--base", "main~1", "--json", "--model", model, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    review = json.loads(proc.stdout)
    assert review["verdict"] == "correct" and review["findings"] == []
    assert review["usage"]["model_calls"] == 2
    assert review["target"] == "changes since the merge base with main~1"


def test_schema_is_printed():
    proc = pullsmith("review", "--schema", cwd=None)
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == json.loads(json.dumps(review_schema()))
    assert "findings" in review_schema()["properties"]


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--commit", "nope"], "commit 'nope' is not a commit"),
        (["--base", "main", "--commit", "HEAD"], "--base and --commit can not be used together"),
        (["--commit", "HEAD", "--uncommitted"], "can not be used together"),
        (["--pr", "1", "--uncommitted"], "--pr can not be used with --uncommitted"),
        (["--pr", "7"], "there is no pull request #7"),
    ],
)
def test_user_errors_are_one_sentence(tmp_path, args, fragment):
    repo = calc_repo(tmp_path)
    refused(pullsmith("review", *args, "--model", "replay:/nonexistent", cwd=repo), fragment)


def test_not_a_repository_and_empty_diff(tmp_path):
    outside = tmp_path / "plain"
    outside.mkdir()
    refused(pullsmith("review", cwd=outside), "is not in a git repository")
    repo = calc_repo(tmp_path)
    git("checkout", "--", "calc.py", cwd=repo)
    refused(pullsmith("review", cwd=repo), "there is nothing to review in the uncommitted changes")
