"""The web UI of `pullsmith serve` in a real Chromium (Playwright's sync API).

A real server process on 127.0.0.1 runs the replayed example run (service_helpers). The
browser signs in through the printed URL, queues the example bug through the form, watches
the task's live log until it passed, reads the diff and the evidence, records and merges the
PR and sees it merged in the PR list. Screenshots go to the test's tmp dir (their paths are
printed); the task page's becomes docs/screenshot-service.png with
PULLSMITH_UPDATE_SCREENSHOT=1 (or when that file is missing).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
from conftest import git
from service_helpers import (
    INSTRUCTION,
    Server,
    make_repo,
)

CHROMIUM = Path("/usr/bin/chromium")
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshot-service.png"

try:
    from playwright.sync_api import Page, Route, expect, sync_playwright

    expect.set_options(timeout=15_000)
except ImportError:  # pragma: no cover - `make test` installs it
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(
        sync_playwright is None,
        reason="playwright is not installed: pip install -e '.[dev]' (or `make test`)",
    ),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="/usr/bin/chromium is missing: apt-get install -y chromium (or `make browser-deps`)",
    ),
    pytest.mark.timeout(120),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, recordings):
    # The "slow" recording sleeps 4 s first, so the page sees the task running.
    data = tmp_path_factory.mktemp("web") / "data"
    server = Server(data, "--workers", "1", "--model", recordings["slow"]).start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.requests = []
    page.crashes = []
    page.on("request", lambda request: page.requests.append(request.url))
    page.on("pageerror", lambda exc: page.crashes.append(str(exc)))
    yield page
    context.close()
    outside = [url for url in page.requests if not url.startswith(server.base + "/")]
    assert not outside, f"the pages loaded from elsewhere: {outside}"
    assert not page.crashes, f"the page's script failed: {page.crashes}"


def shoot(page: Page, path: Path, capsys, full_page: bool = False) -> None:
    page.screenshot(path=str(path), full_page=full_page)
    with capsys.disabled():
        print(f"\n  screenshot: {path}")


def sign_in(page: Page, server: Server) -> None:
    page.goto(f"{server.base}/?token={server.token}")
    page.wait_for_url(f"{server.base}/")
    expect(page.get_by_role("heading", name="Queue a task")).to_be_visible()


def test_a_task_from_the_form_to_a_merged_pr(page, server, tmp_path, capsys):
    repo = make_repo(tmp_path / "inventory")
    sign_in(page, server)
    expect(page.locator("#health")).to_contain_text("ok")

    # Queue the example bug through the form.
    page.get_by_label("Repository path").fill(str(repo))
    page.get_by_label("Instruction").fill(INSTRUCTION)
    page.get_by_label("Attempts").fill("1")
    page.get_by_role("button", name="Queue task").click()
    queued = page.locator("#task-form .say.ok")
    expect(queued).to_contain_text("Queued")
    task_id = queued.locator("a").inner_text()
    row = page.locator(f'#task-table tr[data-id="{task_id}"]')
    expect(row).to_contain_text("inventory")
    expect(row).to_contain_text(INSTRUCTION)
    expect(row.locator(".badge")).to_have_text(re.compile("queued|running"))
    shoot(page, tmp_path / "1-task-list.png", capsys)

    # Its page: the log as it happens (the first command sleeps 4 s while we watch).
    row.get_by_role("link").click()
    page.wait_for_url(f"**/tasks/{task_id}")
    state = page.locator("#task-head .title .badge")
    sleeping = page.locator('#log li[data-type="command.started"]', has_text="sleep 4")
    expect(sleeping).to_contain_text("running…")
    expect(state).to_have_text("running")
    expect(page.locator("#stream-state")).to_have_text("live")
    shoot(page, tmp_path / "2-task-running.png", capsys)

    expect(state).to_have_text("passed", timeout=60_000)
    expect(page.locator("#stream-state")).to_have_text("ended")
    log = page.locator("#log")
    expect(log.locator('li[data-type="task.finished"]')).to_contain_text("passed")
    assert log.locator('li[data-type="model.reply"]').count() == 4
    tests = log.locator('li[data-type="tests.ran"]')
    expect(tests.first).to_contain_text("before")
    expect(tests.first).to_contain_text("exit 1")
    expect(tests.last).to_contain_text("after")
    expect(tests.last).to_contain_text("exit 0")
    # The running command's entry became its result; long output is folded away.
    expect(sleeping).to_have_count(0)
    expect(log.locator('li[data-type="command.finished"]', has_text="sleep 4")).to_contain_text(
        "exit 0"
    )
    assert log.locator('li[data-type="command.started"]').count() == 0

    # The attempt with its verdict, the evidence before/after, and the diff per file.
    attempt = page.locator("#attempts .attempt")
    expect(attempt).to_have_count(1)
    expect(attempt).to_contain_text("chosen")
    expect(attempt).to_contain_text("tests pass (exit 0)")
    expect(page.locator("#evidence .test.fail")).to_contain_text("exit 1")
    expect(page.locator("#evidence .test.pass")).to_contain_text("exit 0")
    diff_file = page.locator("#diff details.file")
    expect(diff_file).to_have_count(1)
    expect(diff_file.locator(".fname")).to_have_text("inventory/export.py")
    diff_file.locator("summary").click()  # folds the file away
    expect(diff_file.locator(".dl.add").first).to_be_hidden()
    diff_file.locator("summary").click()  # and opens it again
    added = diff_file.locator(".dl.add", has_text="for row in rows:")
    expect(added).to_be_visible()
    expect(diff_file.locator(".dl.del", has_text="for i in range(len(rows) - 1):")).to_be_visible()

    # The run recorded its PR itself, so the page offers to merge it; the Create PR button
    # shows for a run without one: the browser is shown this task without its PR until the
    # button was pressed, and the real POST /api/tasks/{id}/pr answers with the run's PR.
    task = server.task(task_id)
    assert task["pr"] is not None
    expect(page.locator("#task-pr")).to_contain_text(f"PR #{task['pr']}")
    recorded = []

    def without_pr(route: Route) -> None:
        if recorded:
            route.continue_()
            return
        response = route.fetch()
        route.fulfill(response=response, json={**response.json(), "pr": None})

    page.route(f"**/api/tasks/{task_id}", without_pr)
    page.reload()
    create = page.get_by_role("button", name="Create PR")
    expect(create).to_be_visible()
    page.on(
        "request",
        lambda request: recorded.append(request.url) if request.url.endswith("/pr") else None,
    )
    create.click()
    message = page.locator("#action-message")
    expect(message).to_have_text(f"Pull request #{task['pr']} was recorded already.")
    expect(create).to_be_hidden()
    page.unroute(f"**/api/tasks/{task_id}")

    # A follow-up through the box opens the new task's page, which links back to this one.
    # It would replay the whole recording (~25 s); cancelled, it ends sooner, and it is let
    # end before the merge so the PR's branch is not busy.
    blank = server.post(f"/api/tasks/{task_id}/follow-up", json={"instruction": " "})
    assert blank.status_code == 422
    follow = page.get_by_role("button", name="Follow up")
    follow.click()
    expect(message).to_have_text(blank.json()["error"])
    page.get_by_label("Follow-up instruction").fill("Add a test for the last row.")
    follow.click()
    page.wait_for_url(re.compile(r"/tasks/(?!" + re.escape(task_id) + r"$)[^/]+$"))
    follows = page.locator("#task-follows")
    expect(follows).to_have_text(f"follow-up of {task_id}")
    expect(page.locator("#task-head h1")).to_have_text("Add a test for the last row.")
    follow_up = server.task(page.url.rsplit("/", 1)[1])
    assert (follow_up["follows"], follow_up["pr"]) == (task_id, task["pr"])
    # While it is queued or running the PR can not be merged: the first task's page shows no
    # Merge button but what the merge waits for, and the API refuses it (409).
    follows.get_by_role("link", name=task_id).click()
    page.wait_for_url(f"**/tasks/{task_id}")
    waits = page.locator("#merge-wait")
    expect(waits).to_contain_text(f"Merge waits for follow-up {follow_up['id']}")
    expect(page.get_by_role("button", name=re.compile(r"^Merge PR"))).to_have_count(0)
    refused = server.post(f"/api/prs/{task['pr']}/merge", json={})
    assert refused.status_code == 409, refused.text
    assert f"follow-up task {follow_up['id']}" in refused.json()["error"]
    waits.get_by_role("link", name=follow_up["id"]).click()
    page.wait_for_url(f"**/tasks/{follow_up['id']}")
    page.get_by_role("button", name="Cancel task").click()
    finished = "passed|failed|passed-unfinished|untested|error|cancelled|interrupted"
    expect(state).to_have_text(re.compile(f"^({finished})$"), timeout=40_000)
    follows.get_by_role("link", name=task_id).click()
    page.wait_for_url(f"**/tasks/{task_id}")

    # Merge it from the task page; the base branch of the repository gets the fix.
    pr = page.locator("#task-pr")
    expect(pr).to_contain_text("open")
    expect(pr).to_contain_text("checks passing")
    merge = page.get_by_role("button", name=re.compile(r"Merge PR #\d+ into main"))
    expect(page.locator("#merge-wait")).to_have_count(0)
    merge.click()
    expect(message).to_contain_text(f"Merged pull request #{task['pr']} into main")
    expect(pr).to_contain_text("merged")
    expect(merge).to_be_hidden()
    expect(page.locator("#follow-up")).to_have_count(0)
    assert "for row in rows:" in git("show", "main:inventory/export.py", cwd=repo)
    page.locator("#task-head").scroll_into_view_if_needed()
    shoot(page, tmp_path / "3-task-page.png", capsys, full_page=True)
    if os.environ.get("PULLSMITH_UPDATE_SCREENSHOT") or not DOCS_SCREENSHOT.exists():
        shutil.copyfile(tmp_path / "3-task-page.png", DOCS_SCREENSHOT)
        with capsys.disabled():
            print(f"  screenshot: {DOCS_SCREENSHOT}")

    # The PR list shows it merged with its checks, linking to its task.
    page.get_by_role("link", name="Pull requests").click()
    page.wait_for_url("**/prs")
    pr_row = page.locator(f"#pr-{task['pr']}")
    expect(pr_row.locator(".badge").first).to_have_text("merged")
    expect(pr_row).to_contain_text("passing")
    expect(pr_row.get_by_role("button", name="Merge")).to_have_count(0)
    shoot(page, tmp_path / "4-pr-list.png", capsys)
    pr_row.get_by_role("link", name=INSTRUCTION).click()
    page.wait_for_url(f"**/tasks/{task_id}")
    expect(page.locator("#task-head h1")).to_have_text(INSTRUCTION)


def test_the_form_shows_the_apis_error_sentence(page, server, tmp_path, capsys):
    sign_in(page, server)
    missing = tmp_path / "no-such-repo"
    said = server.post("/api/tasks", json={"repo": str(missing), "instruction": "x"})
    assert said.status_code == 422
    sentence = said.json()["error"]
    assert "does not exist" in sentence

    page.get_by_label("Repository path").fill(str(missing))
    page.get_by_label("Instruction").fill("x")
    page.get_by_role("button", name="Queue task").click()
    expect(page.locator("#task-form .say.error")).to_have_text(sentence)
    shoot(page, tmp_path / "5-form-error.png", capsys)

    # A page of a task that is not there says so in the API's words, too.
    page.goto(f"{server.base}/tasks/nope")
    gone = server.get("/api/tasks/nope").json()["error"]
    expect(page.locator("#task-head .say.error")).to_have_text(gone)


def test_without_the_cookie_the_page_says_how_to_sign_in(browser, server):
    # A browser gets the page (with a policy that keeps it on this origin); a script, JSON.
    html = httpx.get(server.base + "/", headers={"Accept": "text/html"})
    assert html.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in html.headers["content-security-policy"]
    assert 'content="task.started,' in html.text
    assert httpx.get(server.base + "/").json()["signed_in"] is False
    script = httpx.get(server.base + "/static/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert httpx.get(server.base + "/static/index.html").status_code == 404

    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(server.base + "/")
        refusal = server.get("/api/health", headers={"Authorization": ""}).json()["error"]
        expect(page.locator("#notice")).to_have_text(refusal)
    finally:
        context.close()


def test_an_environment_from_its_page_to_a_tasks_setup_step(
    page, server, recordings, tmp_path, capsys
):
    repo = make_repo(tmp_path / "inventory")
    secret = "ui-secret-31337"
    sign_in(page, server)
    page.get_by_role("link", name="Environments").click()
    page.wait_for_url(f"{server.base}/environments")
    page.get_by_label("Repository path").fill(str(repo))
    page.get_by_label("Setup command").fill(
        'echo "using $INDEX_TOKEN" && mkdir -p .venv && touch .venv/ok'
    )
    page.get_by_label("Secrets (NAME=value, one a line)").fill(f"INDEX_TOKEN={secret}")
    page.get_by_role("button", name="Save environment").click()
    expect(page.locator("#env-message")).to_contain_text("Saved the environment of")
    row = page.locator(f'#env-table tr[data-repo="{repo}"]')
    expect(row).to_contain_text("INDEX_TOKEN")
    expect(page.get_by_label("Secrets (NAME=value, one a line)")).to_have_value("")
    assert secret not in page.content()

    # A line that is not NAME=value is refused on the page, before anything is sent.
    page.get_by_label("Secrets (NAME=value, one a line)").fill("just-a-value")
    page.get_by_role("button", name="Save environment").click()
    expect(page.locator("#env-message")).to_contain_text("is not NAME=value")
    shoot(page, tmp_path / "6-environments.png", capsys)

    # A task on that repository shows its setup step, the secret by name only.
    created = server.create(repo, recordings["good"])
    page.goto(f"{server.base}/tasks/{created['id']}")
    step = page.locator('#log li[data-type="setup.ran"]')
    expect(step).to_contain_text("kept out of the diff: .venv", timeout=60_000)
    expect(page.locator("#task-head .title .badge")).to_have_text("passed", timeout=60_000)
    step.locator("details").first.click()
    expect(step).to_contain_text("using [secret INDEX_TOKEN]")
    assert secret not in page.content()
    shoot(page, tmp_path / "7-setup-step.png", capsys)


def test_a_prs_review_shows_on_its_task_page(page, server, recordings, tmp_path, capsys):
    from conftest import ScriptedModel

    from pullsmith.config import load_settings
    from pullsmith.review.diff import resolve_change
    from pullsmith.review.pull_request import store_review
    from pullsmith.review.runner import review_change
    from pullsmith.store import Store

    repo = make_repo(tmp_path / "inventory")
    sign_in(page, server)
    created = server.create(repo, recordings["good"])
    task = server.wait(created["id"], ("passed",))
    settings = load_settings(
        {"data_dir": str(server.data_home / "pullsmith"), "sandbox": "none"}, tmp_path
    )
    with Store.open(settings) as store:
        record = store.pull_request(task["pr"])
        change = resolve_change(repo, base=record.base_commit, head=record.head_commit)
        path, line = change.files[0].path, change.files[0].changed_lines[0]
        reply = (
            f"FINDING: the export may drop a row\nPRIORITY: P1\nCONFIDENCE: 0.6\nFILE: {path}\n"
            f"LINES: {line}\nWHY: a guess.\nVERDICT: incorrect\nREASON: Rows could go missing."
        )
        demo = "```bash\ntest -f no-such-file\n```"
        review = review_change(change, ScriptedModel([reply, demo]), settings)
        store_review(store, record, review)
    page.goto(f"{server.base}/tasks/{created['id']}")
    card = page.locator("#review-card")
    expect(card).to_be_visible()
    # the diff shrink and the summary's source read as sentences in the log, not raw JSON
    expect(page.locator('#log li[data-type="diff.shrunk"]')).to_contain_text("nothing left out")
    expect(page.locator('#log li[data-type="summary.written"]')).to_contain_text("finish summary")
    expect(card).to_contain_text("incorrect")
    expect(card).to_contain_text("[P1] the export may drop a row")
    expect(card).to_contain_text(f"{path}:{line}")
    expect(card.locator(".finding .attempt-head .badge")).to_have_text("not demonstrated")
    card.locator("details summary").click()
    expect(card).to_contain_text("the same way on the base")
    shoot(page, tmp_path / "8-review.png", capsys)


def test_direct_repair_tries_read_as_lines_in_the_log(page, server, recordings, tmp_path, capsys):
    """The recorded runs have direct repair off (their replies are the agent's turns), so the
    task's event stream is given two repair.tried events after its test run before the change,
    as a run with repair on sends them; the page reads each as a line of its own."""
    import json

    repo = make_repo(tmp_path / "inventory")
    sign_in(page, server)
    created = server.create(repo, recordings["good"])
    server.wait(created["id"], ("passed",))
    tried = {"path": "inventory/export.py", "function": "to_csv", "rank": 1, "seconds": 12.5}

    def with_repair(route: Route) -> None:
        response = route.fetch()
        frames = [f for f in response.text().split("\n\n") if f.strip()]
        out: list[str] = []
        for frame in frames:
            out.append(frame)
            data = [line[5:].strip() for line in frame.split("\n") if line.startswith("data:")]
            event = json.loads(data[0]) if data else {}
            if event.get("type") == "tests.ran" and event["data"].get("phase") == "before":
                # Ids between this event's and the next one's, so the page keeps the order.
                for step, extra in (
                    (0.25, {"outcome": "unchanged", "sample": 1, "completion_tokens": 60}),
                    (
                        0.5,
                        {
                            "outcome": "passed",
                            "sample": 2,
                            "form": "lines",
                            "completion_tokens": 70,
                        },
                    ),
                ):
                    added = {**event, "id": event["id"] + step, "type": "repair.tried"}
                    added["data"] = {"attempt": event["data"].get("attempt"), **tried, **extra}
                    out.append(f"event: repair.tried\ndata: {json.dumps(added)}")
        route.fulfill(response=response, body="\n\n".join(out) + "\n\n")

    page.route(f"**/api/tasks/{created['id']}/events*", with_repair)
    page.goto(f"{server.base}/tasks/{created['id']}")
    rows = page.locator('#log li[data-type="repair.tried"]')
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("to_csv in inventory/export.py (rank 1): unchanged")
    expect(rows.nth(1)).to_contain_text(
        "to_csv in inventory/export.py (rank 1, ask 2, lines): passed"
    )
    expect(rows.nth(1)).to_contain_text("70 tokens")
    rows.nth(1).scroll_into_view_if_needed()
    shoot(page, tmp_path / "9-repair.png", capsys)
