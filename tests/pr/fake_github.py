"""A stand-in for GitHub's REST API on 127.0.0.1, answering as its documentation shows.

Only the pull request endpoints pullsmith uses: list (GET /repos/{o}/{r}/pulls), create (POST),
update (PATCH /repos/{o}/{r}/pulls/{n}) and create a review (POST
/repos/{o}/{r}/pulls/{n}/reviews, https://docs.github.com/rest/pulls/reviews); errors have
GitHub's documented bodies and headers. A `head` must exist in the bare repository behind it,
as on GitHub, and a review's line comments must be on lines of the pull request's diff there.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

DOCS = "https://docs.github.com/rest/pulls/pulls"


class FakeGitHub:
    def __init__(self, owner: str, name: str, bare: Path, token: str = "ghp_test") -> None:
        self.owner, self.name, self.bare, self.token = owner, name, bare, token
        self.pulls: dict[int, dict] = {}
        self.requests: list[dict] = []
        self.next_number = 1
        self.fail_with: tuple[int, dict, dict] | None = None  # status, body, headers
        self.hide_from_list_once = False
        self.reviews: dict[int, list[dict]] = {}
        self.next_review_id = 80000000001  # GitHub's review ids are past 2**31
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeGitHub:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- GitHub's objects --------------------------------------------------------------

    def _sha(self, ref: str) -> str | None:
        proc = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"refs/heads/{ref}"],
            cwd=self.bare,
            capture_output=True,
            text=True,
        )
        return proc.stdout.strip() or None

    def pull(self, number: int, title: str, head: str, base: str, body: str, draft: bool) -> dict:
        full = f"{self.owner}/{self.name}"
        return {
            "url": f"{self.url}/repos/{full}/pulls/{number}",
            "id": 1000 + number,
            "node_id": f"PR_kwDO{number}",
            "html_url": f"https://github.com/{full}/pull/{number}",
            "diff_url": f"https://github.com/{full}/pull/{number}.diff",
            "number": number,
            "state": "open",
            "locked": False,
            "title": title,
            "user": {"login": self.owner, "id": 1, "type": "User"},
            "body": body,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "closed_at": None,
            "merged_at": None,
            "draft": draft,
            "head": {
                "label": f"{self.owner}:{head}",
                "ref": head,
                "sha": self._sha(head),
                "repo": {"full_name": full},
            },
            "base": {
                "label": f"{self.owner}:{base}",
                "ref": base,
                "sha": self._sha(base),
                "repo": {"full_name": full},
            },
        }

    def diff_lines(self, pull: dict) -> dict[str, set[int]]:
        """The new-side lines of each file in the pull request's diff (its hunks), as GitHub
        lets a review comment on them."""
        base, head = pull["base"]["ref"], pull["head"]["ref"]
        proc = subprocess.run(
            ["git", "diff", "--no-color", "--no-renames", f"{base}...{head}"],
            cwd=self.bare,
            capture_output=True,
            text=True,
        )
        lines: dict[str, set[int]] = {}
        path = None
        for line in proc.stdout.splitlines():
            if line.startswith("+++ "):
                path = line[4:].removeprefix("b/")
                lines.setdefault(path, set())
            elif line.startswith("@@") and path is not None:
                new = line.split("+", 1)[1].split(" ", 1)[0]
                start, _, count = new.partition(",")
                count_n = int(count) if count else 1
                lines[path].update(range(int(start), int(start) + count_n))
        return lines

    def review(self, pull: dict, payload: dict) -> tuple[int, dict]:
        """POST .../pulls/{n}/reviews as GitHub answers it: 200 and the review, or 422."""
        comments = payload.get("comments") or []
        event = payload.get("event")
        if event not in (None, "COMMENT", "APPROVE", "REQUEST_CHANGES"):
            return 422, {"message": "Unprocessable Entity", "errors": ["Invalid event"]}
        if event == "REQUEST_CHANGES" and not payload.get("body"):
            return 422, {"message": "Unprocessable Entity", "errors": ["Body is required"]}
        diff = self.diff_lines(pull)
        for comment in comments:
            for key in ("path", "body", "line"):
                if key not in comment:
                    return 422, {
                        "message": "Unprocessable Entity",
                        "errors": [f"comments: {key} is missing"],
                    }
            lines = diff.get(comment["path"], set())
            wanted = range(comment.get("start_line", comment["line"]), comment["line"] + 1)
            if comment.get("side", "RIGHT") != "RIGHT" or not all(n in lines for n in wanted):
                return 422, {
                    "message": "Unprocessable Entity",
                    "errors": ["Pull request review thread line must be part of the diff"],
                }
        review_id = self.next_review_id
        self.next_review_id += 1
        full = f"{self.owner}/{self.name}"
        number = pull["number"]
        review = {
            "id": review_id,
            "node_id": f"PRR_kwDO{review_id}",
            "user": {"login": self.owner, "id": 1, "type": "User"},
            "body": payload.get("body") or "",
            "state": "COMMENTED" if event in (None, "COMMENT") else event,
            "html_url": f"https://github.com/{full}/pull/{number}#pullrequestreview-{review_id}",
            "pull_request_url": f"{self.url}/repos/{full}/pulls/{number}",
            "commit_id": payload.get("commit_id") or pull["head"]["sha"],
            "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "comments": comments,
        }
        self.reviews.setdefault(number, []).append(review)
        return 200, {k: v for k, v in review.items() if k != "comments"}

    # --- the HTTP side -----------------------------------------------------------------

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args) -> None:
                pass

            def _send(self, status: int, body, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-github-api-version-selected", "2022-11-28")
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str, errors: list | None = None) -> None:
                body = {"message": message, "documentation_url": DOCS, "status": str(status)}
                if errors is not None:
                    body["errors"] = errors
                self._send(status, body)

            def _handle(self, method: str) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(length) or b"null") if length else None
                fake.requests.append(
                    {
                        "method": method,
                        "path": parts.path,
                        "query": parse_qs(parts.query),
                        "json": payload,
                        "headers": dict(self.headers),
                    }
                )
                if fake.fail_with is not None:
                    status, body, headers = fake.fail_with
                    return self._send(status, body, headers)
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    return self._error(401, "Bad credentials")
                prefix = f"/repos/{fake.owner}/{fake.name}/pulls"
                if not parts.path.startswith(prefix):
                    return self._error(404, "Not Found")
                rest = parts.path[len(prefix) :].strip("/")
                if method == "GET" and not rest:
                    query = parse_qs(parts.query)
                    head = (query.get("head") or [""])[0]
                    state = (query.get("state") or ["open"])[0]
                    found = [
                        p
                        for p in fake.pulls.values()
                        if (not head or p["head"]["label"] == head)
                        and (state == "all" or p["state"] == state)
                    ]
                    if fake.hide_from_list_once:
                        fake.hide_from_list_once = False
                        found = []
                    return self._send(200, found)
                if method == "POST" and not rest:
                    for key in ("title", "head", "base"):
                        if not (payload or {}).get(key):
                            return self._error(
                                422,
                                "Validation Failed",
                                [
                                    {
                                        "resource": "PullRequest",
                                        "field": key,
                                        "code": "missing_field",
                                    }
                                ],
                            )
                    head, base = payload["head"], payload["base"]
                    if fake._sha(head) is None:
                        return self._error(
                            422,
                            "Validation Failed",
                            [{"resource": "PullRequest", "field": "head", "code": "invalid"}],
                        )
                    for existing in fake.pulls.values():
                        if existing["head"]["ref"] == head and existing["state"] == "open":
                            label = f"{fake.owner}:{head}"
                            return self._error(
                                422,
                                "Validation Failed",
                                [
                                    {
                                        "resource": "PullRequest",
                                        "code": "custom",
                                        "message": f"A pull request already exists for {label}.",
                                    }
                                ],
                            )
                    number = fake.next_number
                    fake.next_number += 1
                    fake.pulls[number] = fake.pull(
                        number,
                        payload["title"],
                        head,
                        base,
                        payload.get("body") or "",
                        bool(payload.get("draft")),
                    )
                    return self._send(201, fake.pulls[number])
                if method == "POST" and rest.endswith("/reviews") and rest.split("/")[0].isdigit():
                    pull = fake.pulls.get(int(rest.split("/")[0]))
                    if pull is None:
                        return self._error(404, "Not Found")
                    status, body = fake.review(pull, payload or {})
                    if status != 200:
                        body |= {"documentation_url": DOCS.replace("pulls/pulls", "pulls/reviews")}
                    return self._send(status, body)
                if method == "PATCH" and rest.isdigit():
                    pull = fake.pulls.get(int(rest))
                    if pull is None:
                        return self._error(404, "Not Found")
                    for key in ("title", "body", "state"):
                        if key in (payload or {}):
                            pull[key] = payload[key]
                    if "base" in (payload or {}):
                        pull["base"]["ref"] = payload["base"]
                    pull["head"]["sha"] = fake._sha(pull["head"]["ref"])
                    return self._send(200, pull)
                return self._error(404, "Not Found")

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PATCH(self) -> None:
                self._handle("PATCH")

        return Handler
