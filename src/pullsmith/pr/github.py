"""Publishing to GitHub: push the branch, then open or update the pull request by REST.

Endpoints (https://docs.github.com/en/rest/pulls/pulls): GET /repos/{owner}/{repo}/pulls
?head=owner:branch&state=open to find one, POST /repos/{owner}/{repo}/pulls to open one,
PATCH /repos/{owner}/{repo}/pulls/{number} to update it, and
POST /repos/{owner}/{repo}/pulls/{number}/reviews (https://docs.github.com/en/rest/pulls/reviews)
to post a review with line comments. The token comes from $GITHUB_TOKEN
(or $GH_TOKEN) or GitHub CLI's hosts.yml; GitHub Enterprise is reached through the
`github_api_url` setting (or $PULLSMITH_GITHUB_API_URL). Every failure is one sentence, and a
failed publish leaves the local pull request as it was.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from pullsmith import __version__
from pullsmith.config import Settings
from pullsmith.errors import UserError
from pullsmith.pr.local import branch_tip, refresh, repo_path
from pullsmith.store import PullRequestRecord, Store, utcnow
from pullsmith.workspace import GitError, git

DEFAULT_API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
REPO_ENV = "PULLSMITH_GITHUB_REPO"
TOKEN_ENVS = ("GITHUB_TOKEN", "GH_TOKEN")
ENTERPRISE_TOKEN_ENVS = ("GH_ENTERPRISE_TOKEN", "GITHUB_ENTERPRISE_TOKEN")

_SCP_URL = re.compile(r"^(?:[^@/]+@)?(?P<host>[^:/]+):(?P<path>[^/].*)$")


@dataclass(frozen=True)
class RemoteRepo:
    host: str
    owner: str
    name: str

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass(frozen=True)
class Published:
    pull_request: PullRequestRecord
    url: str
    number: int
    created: bool
    remote: str
    draft: bool = False
    # The REST API it was published through (where its review is posted).
    api_url: str = ""


def parse_remote_url(url: str) -> RemoteRepo | None:
    """owner/name (and host) from a remote URL: https, ssh:// or scp-like `git@host:o/r.git`."""
    url = url.strip()
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http", "ssh", "git", "git+ssh", "ssh+git"):
            return None
        host, path = parts.hostname or "", parts.path
    else:
        match = _SCP_URL.match(url)
        if not match or url.startswith(("/", ".")):
            return None
        host, path = match.group("host"), match.group("path")
    segments = [s for s in path.strip("/").split("/") if s]
    if not host or len(segments) < 2:
        return None
    owner, name = segments[-2], segments[-1].removesuffix(".git")
    if not owner or not name:
        return None
    return RemoteRepo(host=host.lower(), owner=owner, name=name)


def parse_full_name(text: str) -> tuple[str, str]:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(?:\.git)?\s*", text)
    if not match:
        raise UserError(f"'{text}' is not a GitHub repository name; write it as owner/name.")
    return match.group(1), match.group(2)


def api_url_for(host: str | None, configured: str | None = None) -> str:
    """The REST API's base URL: the configured one, or the one a host's GitHub serves."""
    if configured:
        return configured.rstrip("/")
    if host in (None, "", "github.com", "www.github.com"):
        return DEFAULT_API_URL
    return f"https://{host}/api/v3"


def _gh_hosts_path(env: Mapping[str, str]) -> Path:
    if env.get("GH_CONFIG_DIR"):
        return Path(env["GH_CONFIG_DIR"]) / "hosts.yml"
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "gh" / "hosts.yml"


def _token_host(api_url: str) -> str:
    host = (urlsplit(api_url).hostname or "").lower()
    return "github.com" if host in ("api.github.com", "github.com") else host


def github_token(api_url: str, env: Mapping[str, str] | None = None) -> str:
    """A token for `api_url`: $GITHUB_TOKEN or $GH_TOKEN, else GitHub CLI's hosts.yml."""
    env = os.environ if env is None else env
    host = _token_host(api_url)
    names = TOKEN_ENVS if host == "github.com" else (*ENTERPRISE_TOKEN_ENVS, *TOKEN_ENVS)
    for name in names:
        if env.get(name, "").strip():
            return env[name].strip()
    path = _gh_hosts_path(env)
    if path.is_file():
        try:
            hosts = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError):
            raise UserError(
                f"{path} is not valid YAML; fix it, or set GITHUB_TOKEN instead."
            ) from None
        entry = hosts.get(host) if isinstance(hosts, dict) else None
        if isinstance(entry, dict):
            token = entry.get("oauth_token")
            users = entry.get("users")
            if not token and isinstance(users, dict):
                user = users.get(entry.get("user")) or next(iter(users.values()), None)
                token = user.get("oauth_token") if isinstance(user, dict) else None
            if token:
                return str(token).strip()
    raise UserError(
        f"no GitHub token for {host} was found; set GITHUB_TOKEN (for example "
        "`export GITHUB_TOKEN=$(gh auth token)`) and publish again."
    )


# --- the REST client ---------------------------------------------------------------------


def _message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        text = " ".join(response.text.split())
        return text[:200] or response.reason_phrase
    if not isinstance(data, dict):
        return response.reason_phrase
    message = str(data.get("message") or response.reason_phrase)
    details = []
    for error in data.get("errors") or []:
        if isinstance(error, dict):
            detail = error.get("message") or " ".join(
                str(error.get(k)) for k in ("resource", "field", "code") if error.get(k)
            )
            if detail:
                details.append(str(detail))
        elif error:
            details.append(str(error))
    return f"{message}: {'; '.join(details)}" if details else message


def _when(reset: str | None) -> str:
    try:
        at = float(reset or "")
    except ValueError:
        return "in an hour at most"
    minutes = max(1, round((at - time.time()) / 60))
    return f"after {time.strftime('%H:%M', time.localtime(at))} (in about {minutes} min)"


class GitHubClient:
    """The few pull request endpoints pullsmith needs, with errors as sentences."""

    def __init__(
        self,
        api_url: str,
        token: str,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.api_url,
            timeout=timeout_s,
            transport=transport,
            headers={
                "Accept": "application/vnd.github+json",
                "Authorization": f"Bearer {token}",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": f"pullsmith/{__version__}",
            },
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> GitHubClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, what: str, repo: str, **kwargs: Any) -> Any:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise UserError(
                f"GitHub's API at {self.api_url} did not answer in time while trying to {what}; "
                "try again."
            ) from None
        except httpx.HTTPError as exc:
            raise UserError(
                f"could not reach GitHub's API at {self.api_url} ({exc}); check the network "
                "and the github_api_url setting."
            ) from None
        if response.status_code >= 400:
            raise self._error(response, what, repo)
        try:
            return response.json()
        except ValueError:
            raise UserError(
                f"GitHub's API at {self.api_url} answered with something that is not JSON; "
                "check the github_api_url setting."
            ) from None

    def _error(self, response: httpx.Response, what: str, repo: str) -> UserError:
        status = response.status_code
        message = _message(response)
        headers = response.headers
        if status == 401:
            return UserError(
                f"GitHub rejected the token ({message}); set GITHUB_TOKEN to a valid token, or "
                "log in again with `gh auth login`."
            )
        if status in (403, 429) and headers.get("x-ratelimit-remaining") == "0":
            return UserError(
                f"GitHub's API rate limit is used up; try again {_when(headers.get('x-ratelimit-reset'))}."
            )
        if status in (403, 429) and headers.get("retry-after"):
            return UserError(
                f"GitHub asked pullsmith to slow down ({message}); try again in "
                f"{headers['retry-after']} seconds."
            )
        if status == 403:
            return UserError(
                f"GitHub refused to {what} ({message}); check that the token may write pull "
                f"requests to {repo}."
            )
        if status == 404:
            return UserError(
                f"GitHub found no repository {repo} that this token can see ({message}); check "
                "the repository name (the github_repo setting) and the token's access."
            )
        if status == 422:
            return UserError(f"GitHub did not accept the request to {what} ({message}).")
        if status >= 500:
            return UserError(
                f"GitHub's API answered {status} ({message}) while trying to {what}; try again "
                "in a moment."
            )
        return UserError(f"GitHub's API answered {status} ({message}) while trying to {what}.")

    def find_open(self, owner: str, repo: str, head_owner: str, branch: str) -> dict | None:
        """The open pull request from `head_owner:branch`, if there is one."""
        found = self._request(
            "GET",
            f"/repos/{owner}/{repo}/pulls",
            f"look for the pull request of {branch}",
            f"{owner}/{repo}",
            params={"head": f"{head_owner}:{branch}", "state": "open", "per_page": 10},
        )
        if isinstance(found, list):
            for pull in found:
                if isinstance(pull, dict) and (pull.get("head") or {}).get("ref") == branch:
                    return pull
            return found[0] if found and isinstance(found[0], dict) else None
        return None

    def create(
        self, owner: str, repo: str, title: str, head: str, base: str, body: str, draft: bool
    ) -> dict:
        payload = {"title": title, "head": head, "base": base, "body": body, "draft": draft}
        what = f"open a pull request from {head} into {base}"
        try:
            return self._request(
                "POST", f"/repos/{owner}/{repo}/pulls", what, f"{owner}/{repo}", json=payload
            )
        except UserError as exc:
            if draft and "draft" in exc.message.lower():
                # Drafts are not available on every plan; an open PR still carries the verdict.
                payload["draft"] = False
                return self._request(
                    "POST", f"/repos/{owner}/{repo}/pulls", what, f"{owner}/{repo}", json=payload
                )
            raise

    def create_review(
        self,
        owner: str,
        repo: str,
        number: int,
        commit_id: str,
        body: str,
        comments: list[dict[str, Any]],
    ) -> dict:
        """POST /repos/{owner}/{repo}/pulls/{number}/reviews: a COMMENT review with line
        comments (each {path, line, side, body}, and start_line/start_side for a range)."""
        payload: dict[str, Any] = {"commit_id": commit_id, "body": body, "event": "COMMENT"}
        if comments:
            payload["comments"] = comments
        return self._request(
            "POST",
            f"/repos/{owner}/{repo}/pulls/{number}/reviews",
            f"post a review on pull request #{number}",
            f"{owner}/{repo}",
            json=payload,
        )

    def update(self, owner: str, repo: str, number: int, **fields: Any) -> dict:
        return self._request(
            "PATCH",
            f"/repos/{owner}/{repo}/pulls/{number}",
            f"update pull request #{number}",
            f"{owner}/{repo}",
            json=fields,
        )


# --- pushing -----------------------------------------------------------------------------


def pick_remote(repo: Path, wanted: str | None) -> str:
    remotes = git("remote", cwd=repo).split()
    if wanted:
        if wanted not in remotes:
            raise UserError(
                f"{repo} has no remote '{wanted}'; its remotes are: {', '.join(remotes) or 'none'}."
            )
        return wanted
    if not remotes:
        raise UserError(
            f"{repo} has no git remote to publish to; add one with `git remote add origin URL`."
        )
    if "origin" in remotes:
        return "origin"
    if len(remotes) == 1:
        return remotes[0]
    raise UserError(
        f"{repo} has several remotes ({', '.join(remotes)}); pass --remote with the one to "
        "publish to."
    )


def push_branch(repo: Path, remote: str, branch: str, force: bool = False) -> None:
    """Push `branch` to the same name on `remote`; with `force`, over whatever is there."""
    args = ["push", "--quiet", *(["--force"] if force else [])]
    args += [remote, f"refs/heads/{branch}:refs/heads/{branch}"]
    try:
        git(*args, cwd=repo)
    except GitError as exc:
        text = exc.stderr
        if "[rejected]" in text or "non-fast-forward" in text or "fetch first" in text:
            raise UserError(
                f"the branch '{branch}' on {remote} has commits that are not in the local one; "
                "look at them, then publish with --force to replace them."
            ) from None
        raise UserError(
            f"could not push branch '{branch}' to {remote} ({exc.last_line}); check the "
            "remote's URL and that you may push there."
        ) from None


# --- publishing --------------------------------------------------------------------------


def publish(
    store: Store,
    pr: PullRequestRecord,
    settings: Settings,
    remote: str | None = None,
    github_repo: str | None = None,
    api_url: str | None = None,
    base: str | None = None,
    force: bool = False,
    transport: httpx.BaseTransport | None = None,
) -> Published:
    """Push `pr`'s branch and open or update its pull request on GitHub."""
    if pr.state != "open":
        raise UserError(
            f"pull request #{pr.number} is {pr.state}; only an open pull request is published."
        )
    repo = repo_path(pr, settings)
    tip = branch_tip(repo, pr.head)
    if tip is None:
        raise UserError(
            f"branch '{pr.head}' of pull request #{pr.number} no longer exists in {repo}; "
            "there is nothing to publish."
        )
    remote = pick_remote(repo, remote)
    remote_url = git("remote", "get-url", remote, cwd=repo).strip()
    parsed = parse_remote_url(remote_url)
    name = github_repo or settings.github_repo or (parsed.full_name if parsed else None)
    if not name:
        raise UserError(
            f"can not tell the GitHub repository from {remote}'s URL ({remote_url}); set it "
            f"with --github-repo owner/name (or {REPO_ENV})."
        )
    owner, repo_name = parse_full_name(name)
    configured = api_url or settings.github_api_url
    api = api_url_for(parsed.host if parsed else None, configured)
    base_branch = (base or pr.base).removeprefix("refs/heads/")
    if base_branch == "HEAD" or re.fullmatch(r"[0-9a-f]{7,40}", base_branch):
        raise UserError(
            f"pull request #{pr.number} was made from '{base_branch}', not a branch; pass "
            "--base BRANCH to say which branch it goes into on GitHub."
        )
    token = github_token(api)
    # The description is rendered again so what GitHub shows is the branch as it is now.
    pr = refresh(store, pr, repo)
    same_repo = pr.remote_repo == f"{owner}/{repo_name}"
    push_branch(repo, remote, pr.head, force=force)
    with GitHubClient(api, token, transport=transport) as client:
        existing: dict | None = None
        if same_repo and pr.remote_number:
            existing = {"number": pr.remote_number}
        else:
            existing = client.find_open(owner, repo_name, owner, pr.head)
        created = False
        if existing is not None:
            data = client.update(
                owner,
                repo_name,
                int(existing["number"]),
                title=pr.title,
                body=pr.body,
                base=base_branch,
            )
        else:
            try:
                data = client.create(
                    owner,
                    repo_name,
                    title=pr.title,
                    head=pr.head,
                    base=base_branch,
                    body=pr.body,
                    draft=pr.checks != "passing",
                )
                created = True
            except UserError as exc:
                if "already exists" not in exc.message:
                    raise
                # Opened meanwhile (or closed and the search missed it): update that one.
                found = client.find_open(owner, repo_name, owner, pr.head)
                if found is None:
                    raise UserError(
                        f"GitHub says a pull request for {owner}:{pr.head} already exists but "
                        "does not list it as open; reopen it on GitHub and publish again."
                    ) from None
                data = client.update(
                    owner,
                    repo_name,
                    int(found["number"]),
                    title=pr.title,
                    body=pr.body,
                    base=base_branch,
                )
    number = int(data.get("number") or 0)
    url = str(data.get("html_url") or f"{api}/repos/{owner}/{repo_name}/pulls/{number}")
    updated = store.update_pull_request(
        pr.number,
        remote=remote,
        remote_repo=f"{owner}/{repo_name}",
        remote_number=number,
        remote_url=url,
        published_commit=tip,
        published_at=utcnow(),
    )
    return Published(
        pull_request=updated,
        url=url,
        number=number,
        created=created,
        remote=remote,
        draft=bool(data.get("draft")),
        api_url=api,
    )
