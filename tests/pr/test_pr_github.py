"""Publishing to GitHub: a real push to a local bare repository, the REST API on 127.0.0.1."""

from __future__ import annotations

import time

import pytest
from conftest import git
from fake_github import FakeGitHub
from pr_helpers import (
    EMPTY_TEST,
    FINISH_EMPTY,
    RUN_TESTS,
    assert_refused,
    failing_replies,
    follow_up_and_record,
    good_replies,
    ledger_repo_fixture,  # noqa: F401 (the ledger_repo fixture)
    pullsmith,
    run_and_record,
    settings_for,
)

from pullsmith.errors import UserError
from pullsmith.pr.github import (
    api_url_for,
    github_token,
    parse_remote_url,
    publish,
)
from pullsmith.store import Store

TOKEN = "ghp_test"


@pytest.fixture
def remote(ledger_repo, tmp_path, monkeypatch):
    """A bare repository as `origin` (file://), with GitHub's API for it on 127.0.0.1."""
    bare = tmp_path / "remote.git"
    git("init", "-q", "--bare", str(bare), cwd=tmp_path)
    git("remote", "add", "origin", f"file://{bare}", cwd=ledger_repo)
    git("push", "-q", "origin", "main", cwd=ledger_repo)
    with FakeGitHub("octo", "inventory", bare, token=TOKEN) as fake:
        monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
        monkeypatch.setenv("PULLSMITH_GITHUB_REPO", "octo/inventory")
        monkeypatch.setenv("PULLSMITH_GITHUB_API_URL", fake.url)
        yield fake


def remote_tip(fake: FakeGitHub, branch: str) -> str | None:
    return fake._sha(branch)


def local_pr(tmp_path, number=1):
    with Store.open(settings_for(tmp_path)) as store:
        return store.pull_request(number)


def test_publish_pushes_and_opens_the_pull_request(ledger_repo, tmp_path, remote):
    result, pr = run_and_record(ledger_repo, tmp_path, good_replies(ledger_repo))
    proc = pullsmith("pr", "publish", "1", cwd=ledger_repo)
    assert proc.returncode == 0, proc.stderr
    assert "opened https://github.com/octo/inventory/pull/1 (pull request #1)" in proc.stdout
    # The branch is really on the remote, at the PR's head.
    assert remote_tip(remote, result.branch) == result.commit
    posts = [r for r in remote.requests if r["method"] == "POST"]
    assert len(posts) == 1 and posts[0]["path"] == "/repos/octo/inventory/pulls"
    sent = posts[0]["json"]
    assert sent["head"] == result.branch and sent["base"] == "main"
    assert sent["title"] == "The ledger total drops the last amount; fix it."
    assert sent["draft"] is False
    assert sent["body"] == local_pr(tmp_path).body and "**Tests pass.**" in sent["body"]
    headers = posts[0]["headers"]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Accept"] == "application/vnd.github+json"
    assert headers["X-GitHub-Api-Version"] == "2022-11-28"
    stored = local_pr(tmp_path)
    assert stored.remote_number == 1 and stored.published_commit == result.commit
    assert stored.remote_url == "https://github.com/octo/inventory/pull/1"
    assert (
        "on GitHub: https://github.com/octo/inventory/pull/1" in pullsmith("pr", "show", "1").stdout
    )


def test_a_follow_up_updates_the_same_pull_request(ledger_repo, tmp_path, remote):
    run_and_record(ledger_repo, tmp_path, good_replies(ledger_repo))
    assert pullsmith("pr", "publish", "1").returncode == 0
    second, _, _ = follow_up_and_record(
        tmp_path, "1", "also handle empty input", [EMPTY_TEST, RUN_TESTS, FINISH_EMPTY]
    )
    proc = pullsmith("pr", "publish", "1")
    assert proc.returncode == 0, proc.stderr
    assert "updated https://github.com/octo/inventory/pull/1" in proc.stdout
    assert remote_tip(remote, second.branch) == second.commit
    assert [r["method"] for r in remote.requests] == ["GET", "POST", "PATCH"]
    patch = remote.requests[-1]
    assert patch["path"] == "/repos/octo/inventory/pulls/1"
    assert "also handle empty input" in patch["json"]["body"]
    assert remote.pulls[1]["body"] == local_pr(tmp_path).body
    assert len(remote.pulls) == 1


def test_an_open_pull_request_for_the_branch_is_found_and_updated(ledger_repo, tmp_path, remote):
    result, pr = run_and_record(ledger_repo, tmp_path, good_replies(ledger_repo))
    git("push", "-q", "origin", result.branch, cwd=ledger_repo)
    remote.pulls[7] = remote.pull(7, "opened by hand", result.branch, "main", "", False)
    proc = pullsmith("pr", "publish", "1")
    assert proc.returncode == 0, proc.stderr
    assert "updated https://github.com/octo/inventory/pull/7" in proc.stdout
    listing = remote.requests[0]
    assert listing["method"] == "GET"
    assert listing["query"]["head"] == [f"octo:{result.branch}"]
    assert listing["query"]["state"] == ["open"]
    assert remote.pulls[7]["title"] == "The ledger total drops the last amount; fix it."
    assert local_pr(tmp_path).remote_number == 7


def test_already_exists_is_met_by_updating_that_one(ledger_repo, tmp_path, remote):
    result, pr = run_and_record(ledger_repo, tmp_path, good_replies(ledger_repo))
    git("push", "-q", "origin", result.branch, cwd=ledger_repo)
    remote.pulls[3] = remote.pull(3, "raced", result.branch, "main", "", False)
    remote.hide_from_list_once = True  # opened between our look and our create
    settings = settings_for(tmp_path)
    with Store.open(settings) as store:
        published = publish(store, store.pull_request(1), settings)
    assert not published.created and published.number == 3
    assert [r["method"] for r in remote.requests] == ["GET", "POST", "GET", "PATCH"]


def test_a_failing_pr_is_published_as_a_draft(ledger_repo, tmp_path, remote):
    run_and_record(ledger_repo, tmp_path, failing_replies())
    proc = pullsmith("pr", "publish", "1")
    assert proc.returncode == 0, proc.stderr
    assert "it is a draft on GitHub, since its tests are failing." in proc.stdout
    post = next(r for r in remote.requests if r["method"] == "POST")
    assert post["json"]["draft"] is True
    assert "**Tests fail.**" in post["json"]["body"]


ERRORS = [
    (
        401,
        {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"},
        {},
        "GitHub rejected the token (Bad credentials); set GITHUB_TOKEN",
    ),
    (
        404,
        {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"},
        {},
        "GitHub found no repository octo/inventory that this token can see (Not Found)",
    ),
    (
        403,
        {"message": "API rate limit exceeded for user ID 1."},
        {
            "x-ratelimit-limit": "5000",
            "x-ratelimit-remaining": "0",
            "x-ratelimit-used": "5000",
            "x-ratelimit-reset": str(int(time.time()) + 1800),
        },
        "GitHub's API rate limit is used up; try again after",
    ),
    (
        403,
        {"message": "You have exceeded a secondary rate limit. Please wait a few minutes."},
        {"retry-after": "60"},
        "try again in 60 seconds",
    ),
    (
        403,
        {"message": "Resource not accessible by personal access token"},
        {"x-ratelimit-remaining": "4999"},
        "check that the token may write pull requests to octo/inventory",
    ),
    (
        422,
        {
            "message": "Validation Failed",
            "errors": [{"resource": "PullRequest", "field": "base", "code": "invalid"}],
        },
        {},
        "GitHub did not accept the request to look for the pull request",
    ),
    (502, {"message": "Server Error"}, {}, "GitHub's API answered 502 (Server Error)"),
]


@pytest.mark.parametrize("status,body,headers,sentence", ERRORS)
def test_api_errors_end_in_one_sentence_and_keep_the_local_pr(
    ledger_repo, tmp_path, remote, status, body, headers, sentence
):
    run_and_record(ledger_repo, tmp_path, good_replies(ledger_repo))
    before = local_pr(tmp_path)
    remote.fail_with = (status, body, headers)
    proc = pullsmith("pr", "publish", "1")
    assert_refused(proc, sentence)
    assert "is kept locally (`pullsmith pr show 1`)" in proc.stderr
    after = local_pr(tmp_path)
    assert (after.state, after.body, after.remote_number, after.published_at) == (
        "open",
        before.body,
        None,
        None,
    )
    assert pullsmith("pr", "show", "1").returncode == 0


def test_the_real_bad_credentials_answer(ledger_repo, tmp_path, remote, monkeypatch):
    run_and_record(ledger_repo, tmp_path, good_replies(ledger_repo))
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_wrong")
    assert_refused(
        pullsmith("pr", "publish", "1", subprocess_=True),
        "GitHub rejected the token (Bad credentials)",
    )
    assert remote.requests[0]["headers"]["Authorization"] == "Bearer ghp_wrong"


def test_the_token_can_come_from_gh_hosts_yml(
    ledger_repo, tmp_path, remote, monkeypatch, isolated_home
):
    run_and_record(ledger_repo, tmp_path, good_replies(ledger_repo))
    monkeypatch.delenv("GITHUB_TOKEN")
    monkeypatch.delenv("GH_TOKEN", raising=False)
    assert_refused(pullsmith("pr", "publish", "1"), "no GitHub token for 127.0.0.1 was found")
    hosts = isolated_home / "config" / "gh" / "hosts.yml"
    hosts.parent.mkdir(parents=True)
    hosts.write_text(
        "127.0.0.1:\n    users:\n        octo:\n            oauth_token: ghp_test\n"
        "    git_protocol: https\n    user: octo\n"
    )
    proc = pullsmith("pr", "publish", "1")
    assert proc.returncode == 0, proc.stderr


def test_a_rejected_push_asks_for_force(ledger_repo, tmp_path, remote):
    result, pr = run_and_record(ledger_repo, tmp_path, good_replies(ledger_repo))
    # Someone else put other commits on the remote branch.
    other = tmp_path / "other"
    git("clone", "-q", str(remote.bare), str(other), cwd=tmp_path)
    (other / "x").write_text("x\n")
    git("add", "x", cwd=other)
    git("commit", "-q", "-m", "someone else", cwd=other)
    git("push", "-q", "origin", f"HEAD:refs/heads/{result.branch}", cwd=other)
    assert_refused(pullsmith("pr", "publish", "1"), "publish with --force to replace them")
    assert remote.requests == []
    proc = pullsmith("pr", "publish", "1", "--force")
    assert proc.returncode == 0, proc.stderr
    assert remote_tip(remote, result.branch) == result.commit


def test_publishing_needs_a_remote_a_repository_name_and_an_open_pr(
    ledger_repo, tmp_path, remote, monkeypatch
):
    run_and_record(ledger_repo, tmp_path, good_replies(ledger_repo))
    monkeypatch.delenv("PULLSMITH_GITHUB_REPO")
    assert_refused(pullsmith("pr", "publish", "1"), "can not tell the GitHub repository")
    assert pullsmith("pr", "publish", "1", "--github-repo", "octo/inventory").returncode == 0
    assert_refused(
        pullsmith("pr", "publish", "1", "--remote", "upstream"), "has no remote 'upstream'"
    )
    git("remote", "remove", "origin", cwd=ledger_repo)
    assert_refused(pullsmith("pr", "publish", "1"), "has no git remote to publish to")
    pullsmith("pr", "close", "1")
    assert_refused(pullsmith("pr", "publish", "1"), "pull request #1 is closed")


def test_an_unreachable_api_is_one_sentence(ledger_repo, tmp_path, remote, monkeypatch):
    run_and_record(ledger_repo, tmp_path, good_replies(ledger_repo))
    # Port 9 on loopback (discard) has no listener here: refused at once.
    proc = pullsmith("pr", "publish", "1", "--api-url", "http://127.0.0.1:9")
    assert_refused(proc, "could not reach GitHub's API at http://127.0.0.1:9")
    # The push before it went through; the local PR is as it was.
    assert local_pr(tmp_path).remote_number is None


# --- the parts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url,expected",
    [
        ("https://github.com/octo/inventory.git", ("github.com", "octo", "inventory")),
        ("https://github.com/octo/inventory", ("github.com", "octo", "inventory")),
        ("https://token@github.com/octo/inventory.git/", ("github.com", "octo", "inventory")),
        ("git@github.com:octo/inventory.git", ("github.com", "octo", "inventory")),
        ("ssh://git@github.com/octo/inventory.git", ("github.com", "octo", "inventory")),
        ("ssh://git@ghe.corp:2222/team/app.git", ("ghe.corp", "team", "app")),
        ("https://ghe.corp/team/app", ("ghe.corp", "team", "app")),
    ],
)
def test_owner_and_name_come_from_the_remote_url(url, expected):
    parsed = parse_remote_url(url)
    assert (parsed.host, parsed.owner, parsed.name) == expected


@pytest.mark.parametrize(
    "url", ["file:///srv/git/app.git", "/srv/git/app.git", "../app", "https://github.com/"]
)
def test_urls_without_a_github_repository(url):
    assert parse_remote_url(url) is None


def test_api_urls_and_tokens_for_github_enterprise(tmp_path):
    assert api_url_for("github.com") == "https://api.github.com"
    assert api_url_for("ghe.corp") == "https://ghe.corp/api/v3"
    assert api_url_for("ghe.corp", "https://ghe.corp/api/v3/") == "https://ghe.corp/api/v3"
    env = {"XDG_CONFIG_HOME": str(tmp_path), "GH_ENTERPRISE_TOKEN": "ent", "GITHUB_TOKEN": "pub"}
    assert github_token("https://ghe.corp/api/v3", env) == "ent"
    assert github_token("https://api.github.com", env) == "pub"
    (tmp_path / "gh").mkdir()
    (tmp_path / "gh" / "hosts.yml").write_text("github.com:\n    oauth_token: gho_file\n")
    assert github_token("https://api.github.com", {"XDG_CONFIG_HOME": str(tmp_path)}) == "gho_file"
    (tmp_path / "gh" / "hosts.yml").write_text("github.com: [\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        github_token("https://api.github.com", {"XDG_CONFIG_HOME": str(tmp_path)})
