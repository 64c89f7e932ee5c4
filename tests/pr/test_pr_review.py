"""Reviews of local pull requests: stored with the PR, shown by `pr show`, posted to GitHub
as a pull request review with line comments (the REST API on 127.0.0.1)."""

from __future__ import annotations

import json

import pytest
from conftest import git
from fake_github import FakeGitHub
from pr_helpers import (
    SANDBOX,
    assert_refused,
    commit_file,
    ledger_repo_fixture,  # noqa: F401 (the ledger_repo fixture)
    make_pr,
    pullsmith,
    settings_for,
)

from pullsmith.store import Store

TOKEN = "ghp_test"
CALC = "def total(xs):\n    result = 0\n    for x in xs:\n        result += x\n    return result\n"
BUGGY = CALC.replace("for x in xs:", "for x in xs[:-1]:")
REVIEW = """FINDING: total drops the last number
PRIORITY: P1
CONFIDENCE: 0.9
FILE: calc.py
LINES: 3
WHY: xs[:-1] skips the last item.

FINDING: the loop could use sum()
PRIORITY: P3
CONFIDENCE: 0.4
FILE: calc.py
LINES: 2-4
WHY: sum(xs) says it in one line.

VERDICT: incorrect
REASON: Totals are short by the last number.
"""
DEMO = "```bash\npython -c 'from calc import total; assert total([1, 2]) == 3'\n```"


def model_file(tmp_path, *replies):
    path = tmp_path / f"history-{len(list(tmp_path.glob('history-*')))}.json"
    path.write_text(json.dumps([{"role": "assistant", "content": r} for r in replies]))
    return f"replay:{path}"


@pytest.fixture
def calc_pr(ledger_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("PULLSMITH_SANDBOX", SANDBOX)
    commit_file(ledger_repo, "calc.py", CALC, "add calc")
    pr = make_pr(ledger_repo, tmp_path, {"calc.py": BUGGY}, message="Trim the loop")
    return ledger_repo, pr


def test_pr_review_is_stored_and_shown(calc_pr, tmp_path):
    repo, pr = calc_pr
    model = model_file(tmp_path, REVIEW, DEMO)
    proc = pullsmith("pr", "review", str(pr.number), "--json", "--model", model, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    review = json.loads(proc.stdout)
    assert review["target"].startswith(f"pull request #{pr.number} (")
    assert review["head"] == pr.head_commit and review["base"] == pr.base_commit
    assert [f["check"] for f in review["findings"]] == ["demonstrated", "not checked"]
    with Store.open(settings_for(tmp_path)) as store:
        (row,) = store.reviews(pr.number)
    assert row.verdict == "incorrect" and row.findings == 2 and row.head_commit == pr.head_commit
    assert row.data == review
    shown = pullsmith("pr", "show", str(pr.number), cwd=repo)
    assert shown.returncode == 0, shown.stderr
    assert "## Review" in shown.stdout
    assert "**pullsmith review: the change is incorrect.**" in shown.stdout
    assert "[P1] total drops the last number" in shown.stdout and "*demonstrated*" in shown.stdout
    data = json.loads(pullsmith("pr", "show", str(pr.number), "--json", cwd=repo).stdout)
    assert data["review"]["verdict"] == "incorrect"


def test_review_dash_pr_is_stored_too(calc_pr, tmp_path):
    repo, pr = calc_pr
    model = model_file(tmp_path, REVIEW, DEMO)
    proc = pullsmith("review", "--pr", str(pr.number), "--model", model, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert "verdict: incorrect" in proc.stdout
    with Store.open(settings_for(tmp_path)) as store:
        assert len(store.reviews(pr.number)) == 1


def test_pr_review_of_an_unknown_pr(calc_pr, tmp_path):
    repo, _pr = calc_pr
    assert_refused(pullsmith("pr", "review", "9", cwd=repo), "there is no pull request #9")


@pytest.fixture
def remote(calc_pr, tmp_path, monkeypatch):
    repo, _pr = calc_pr
    bare = tmp_path / "remote.git"
    git("init", "-q", "--bare", str(bare), cwd=tmp_path)
    git("remote", "add", "origin", f"file://{bare}", cwd=repo)
    git("push", "-q", "origin", "main", cwd=repo)
    with FakeGitHub("octo", "calc", bare, token=TOKEN) as fake:
        monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
        monkeypatch.setenv("PULLSMITH_GITHUB_REPO", "octo/calc")
        monkeypatch.setenv("PULLSMITH_GITHUB_API_URL", fake.url)
        yield fake


def test_publish_posts_the_review_with_line_comments(calc_pr, remote, tmp_path):
    repo, pr = calc_pr
    model = model_file(tmp_path, REVIEW, DEMO)
    assert pullsmith("pr", "review", str(pr.number), "--model", model, cwd=repo).returncode == 0
    proc = pullsmith("pr", "publish", str(pr.number), cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert "posted its review with 2 line comments: https://github.com/octo/calc/pull/1#" in (
        proc.stdout
    )
    posts = [r for r in remote.requests if r["path"] == "/repos/octo/calc/pulls/1/reviews"]
    assert len(posts) == 1
    sent = posts[0]["json"]
    assert sent["event"] == "COMMENT" and sent["commit_id"] == pr.head_commit
    assert sent["body"].startswith("**pullsmith review: the change is incorrect.**")
    first, second = sent["comments"]
    assert first == {
        "path": "calc.py",
        "line": 3,
        "side": "RIGHT",
        "body": first["body"],
    }
    assert first["body"].startswith("**[P1] total drops the last number**")
    assert "*demonstrated*" in first["body"] and "$ python -c" in first["body"]
    assert second["start_line"] == 2 and second["line"] == 4 and second["start_side"] == "RIGHT"
    with Store.open(settings_for(tmp_path)) as store:
        (row,) = store.reviews(pr.number)
    assert row.remote_review_id == 80000000001  # past 2**31, as GitHub's are
    assert row.remote_review_url.endswith("#pullrequestreview-80000000001")
    # Published again with nothing new: the review is not posted twice.
    again = pullsmith("pr", "publish", str(pr.number), cwd=repo)
    assert again.returncode == 0, again.stderr
    assert "posted its review" not in again.stdout
    assert len([r for r in remote.requests if r["path"].endswith("/reviews")]) == 1


def test_lines_github_will_not_place_go_in_the_body(calc_pr, remote, tmp_path):
    repo, pr = calc_pr
    model = model_file(tmp_path, REVIEW, DEMO)
    assert pullsmith("pr", "review", str(pr.number), "--model", model, cwd=repo).returncode == 0
    # A location GitHub does not have in its diff (its base moved on, say).
    with Store.open(settings_for(tmp_path)) as store:
        row = store.latest_review(pr.number)
        data = dict(row.data)
        data["findings"] = [dict(f) for f in data["findings"]]
        data["findings"][0]["location"] = {"path": "README.md", "start_line": 1, "end_line": 1}
        store.update_review(row.id, data=data)
    proc = pullsmith("pr", "publish", str(pr.number), cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert "its 2 findings in the body" in proc.stdout
    posts = [r["json"] for r in remote.requests if r["path"].endswith("/reviews")]
    assert len(posts) == 2 and "comments" in posts[0] and "comments" not in posts[1]
    assert "**[P1] total drops the last number** — `README.md:1`" in posts[1]["body"]


def test_a_review_of_an_older_head_is_not_posted(calc_pr, remote, tmp_path):
    repo, pr = calc_pr
    model = model_file(tmp_path, REVIEW, DEMO)
    assert pullsmith("pr", "review", str(pr.number), "--model", model, cwd=repo).returncode == 0
    # The branch moves on after the review.
    git("checkout", "-q", pr.head, cwd=repo)
    commit_file(repo, "calc.py", CALC, "put the loop back")
    git("checkout", "-q", "main", cwd=repo)
    proc = pullsmith("pr", "publish", str(pr.number), cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert f"its latest review is of {pr.head_commit[:10]}, not of the branch" in proc.stdout
    assert not [r for r in remote.requests if r["path"].endswith("/reviews")]
