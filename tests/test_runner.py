from __future__ import annotations

import json

import pytest
from conftest import ScriptedModel, bwrap_works, git

from pullsmith.attempt import run_dir_for
from pullsmith.config import load_settings
from pullsmith.engine import run_task
from pullsmith.errors import UserError
from pullsmith.events import read_events
from pullsmith.models.openai_compat import ModelError
from pullsmith.task import FollowUp, Task

FIXED_LOOP = "    for row in rows:\n        lines.append(format_row(row))\n"


def fixed_source(repo) -> str:
    text = (repo / "inventory" / "export.py").read_text()
    old = "    for i in range(len(rows) - 1):\n        lines.append(format_row(rows[i]))\n"
    assert old in text
    return text.replace(old, FIXED_LOOP)


def rewrite_reply(repo) -> str:
    return (
        "The loop skips the last row.\n```bash\ncat > inventory/export.py <<'EOF'\n"
        + fixed_source(repo)
        + "EOF\n```"
    )


PATCH_REPLY = "\n".join(
    [
        "Use a patch.",
        "```bash",
        "apply_patch <<'EOF'",
        "*** Begin Patch",
        "*** Update File: inventory/export.py",
        "@@ def to_csv(header, rows):",
        "-    for i in range(len(rows) - 1):",
        "-        lines.append(format_row(rows[i]))",
        "+    for row in rows:",
        "+        lines.append(format_row(row))",
        "*** End Patch",
        "EOF",
        "```",
    ]
)

SANDBOX = "bwrap" if bwrap_works() else "none"


def settings_for(tmp_path, **extra):
    return load_settings({"sandbox": SANDBOX, **extra}, cwd=tmp_path)


def run(repo, tmp_path, replies, **extra):
    settings = settings_for(tmp_path, **extra)
    task = Task(instruction="The CSV export drops the last row; fix it.", repo=str(repo))
    model = ScriptedModel(replies)
    result = run_task(task, settings, model=model)
    return result, model, settings


@pytest.mark.parametrize("edit", ["rewrite", "apply_patch"])
def test_fix_is_committed_on_a_new_branch_with_evidence(example_repo, tmp_path, edit):
    edit_reply = rewrite_reply(example_repo) if edit == "rewrite" else PATCH_REPLY
    before_status = git("status", "--porcelain", cwd=example_repo)
    result, model, settings = run(
        example_repo,
        tmp_path,
        [
            edit_reply,
            "```bash\npython -m pytest -q\n```",
            '```bash\nfinish "to_csv exports every row"\n```',
        ],
    )
    assert result.status == "passed" and result.succeeded, result.exit_reason
    assert result.tests_before.exit_code != 0 and result.tests_after.exit_code == 0
    assert result.summary == "to_csv exports every row"
    # The first message carries the failing test and the source it points to.
    first = model.seen[0][1]["content"]
    assert "test_csv_has_every_row" in first and "def to_csv" in first
    assert "Test command: `python -m pytest -q`" in first
    # The branch holds the fix; the user's tree is untouched.
    assert result.branch == f"pullsmith/{result.task_id}"
    log = git("log", "-1", "--format=%B", result.branch, cwd=example_repo)
    assert log.startswith("to_csv exports every row") and "Co-authored-by: pullsmith" in log
    assert "for row in rows:" in git(
        "show", f"{result.branch}:inventory/export.py", cwd=example_repo
    )
    assert git("status", "--porcelain", cwd=example_repo) == before_status
    assert "range(len(rows) - 1)" in (example_repo / "inventory" / "export.py").read_text()
    # Only the fixed file changed: no caches leak into the commit.
    changed = git("show", "--name-only", "--format=", result.branch, cwd=example_repo).split()
    assert changed == ["inventory/export.py"]
    run_dir = run_dir_for(settings, result.task_id)
    types = [e.type for e in read_events(run_dir / "events.jsonl")]
    assert types[0] == "task.started" and types[-2:] == ["attempt.finished", "task.finished"]
    assert "commit.created" in types and types.count("tests.ran") >= 3
    assert json.loads((run_dir / "result.json").read_text())["status"] == "passed"
    assert result.worktree == ""  # the branch holds the work; the checkout is gone


def test_tests_decide_not_the_model(example_repo, tmp_path):
    replies = [f'```bash\nfinish "fixed it, really ({n})"\n```' for n in range(3)]
    result, _, _ = run(example_repo, tmp_path, replies)
    assert result.status == "failed" and not result.succeeded
    assert result.tests_after.exit_code != 0
    assert result.commit is None


def test_model_error_mid_run_keeps_log_and_worktree(example_repo, tmp_path):
    class DyingModel(ScriptedModel):
        def complete(self, messages, temperature=None, **kw):
            if len(self.seen) == 1:
                raise ModelError("the model server stopped answering; retry.")
            return super().complete(messages)

    settings = settings_for(tmp_path)
    task = Task(instruction="fix the export", repo=str(example_repo))
    returned = run_task(task, settings, model=DyingModel([rewrite_reply(example_repo)]))
    assert returned.status == "error" and "stopped answering" in returned.error
    assert returned.error_kind == "model"
    run_dir = run_dir_for(settings, task.task_id)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "error" and result["worktree"]
    assert (run_dir / "history.json").exists()
    # The edit made before the failure is not lost: it is committed on the branch.
    fixed = git("show", f"{result['branch']}:inventory/export.py", cwd=example_repo)
    assert "for row in rows:" in fixed


def test_not_a_repository(tmp_path):
    settings = settings_for(tmp_path)
    task = Task(instruction="x", repo=str(tmp_path))
    result = run_task(task, settings, model=ScriptedModel([]))
    assert result.status == "error" and "is not a git repository" in result.error


def test_unknown_base(example_repo, tmp_path):
    settings = settings_for(tmp_path)
    task = Task(instruction="x", repo=str(example_repo), base="nope")
    result = run_task(task, settings, model=ScriptedModel([]))
    assert result.status == "error" and "unknown base ref 'nope'" in result.error


def test_each_edit_is_reported_with_the_tests_it_makes_pass(example_repo, tmp_path):
    unchanged = (example_repo / "inventory" / "export.py").read_text()
    noop = f"```bash\ncat > inventory/export.py <<'EOF'\n{unchanged}EOF\n```"
    result, model, _ = run(
        example_repo,
        tmp_path,
        [noop, rewrite_reply(example_repo), '```bash\nfinish "fixed"\n```'],
    )
    assert result.status == "passed"
    after_noop = model.seen[1][-1]["content"]
    assert "it changed nothing" in after_noop
    after_fix = model.seen[2][-1]["content"]
    assert "Files changed so far: inventory/export.py (+2 -2)" in after_fix
    assert "exits with code 0" in after_fix


def test_a_repeated_reply_is_not_run_again(example_repo, tmp_path):
    result, model, _ = run(
        example_repo,
        tmp_path,
        [
            "```bash\nls\n```",
            "```bash\nls\n```",
            rewrite_reply(example_repo),
            "```bash\nfinish ok\n```",
        ],
    )
    assert result.status == "passed"
    assert "You sent exactly this reply before" in model.seen[2][-1]["content"]


GIVE_UP = '```bash\nfinish "nothing to change"\n```'


def run_attempts(repo, tmp_path, replies, attempts, until_pass=False, **extra):
    settings = settings_for(tmp_path, **extra)
    task = Task(
        instruction="The CSV export drops the last row; fix it.",
        repo=str(repo),
        attempts=attempts,
        until_pass=until_pass,
    )
    model = ScriptedModel(replies)
    result = run_task(task, settings, model=model)
    return result, model, settings, task


def test_best_of_n_keeps_the_attempt_whose_tests_pass(example_repo, tmp_path):
    done = '```bash\nfinish "to_csv exports every row"\n```'
    replies = [GIVE_UP, GIVE_UP, GIVE_UP, rewrite_reply(example_repo), done]
    result, model, settings, task = run_attempts(example_repo, tmp_path, replies, attempts=2)
    assert not model.replies
    assert result.attempt == 2 and result.status == "passed" and result.tests_pass
    assert result.branch == f"pullsmith/{task.task_id}-2"
    assert [a["tests_pass"] for a in result.attempts] == [False, True]
    assert result.attempts[0]["failing_tests"] == 1
    # The attempt that lost is still there to inspect: its branch and its run log.
    branches = git("branch", "--list", "pullsmith/*", cwd=example_repo).split()
    assert f"pullsmith/{task.task_id}-2" in branches
    assert (run_dir_for(settings, f"{task.task_id}-1") / "events.jsonl").is_file()
    shown = git("show", f"{result.branch}:inventory/export.py", cwd=example_repo)
    assert "for row in rows:" in shown
    # The second attempt samples hotter than the first.
    assert model.temperatures[0] is None and model.temperatures[3] == 0.7
    parent = read_events(run_dir_for(settings, task.task_id) / "events.jsonl")
    types = [e.type for e in parent]
    assert types[0] == "attempts.started" and "attempts.selected" in types
    selected = next(e for e in parent if e.type == "attempts.selected")
    assert selected.data["attempt"] == 2 and selected.data["of"] == 2
    assert {e.data.get("attempt") for e in parent if e.type == "model.reply"} == {1, 2}


def test_with_a_seed_each_attempt_samples_with_its_own(example_repo, tmp_path):
    result, model, _, _ = run_attempts(example_repo, tmp_path, [GIVE_UP] * 6, attempts=2, seed=5)
    assert len(result.attempts) == 2
    assert model.seeds[0] == 5 and model.seeds[-1] == 6


def test_until_pass_stops_at_the_first_passing_attempt(example_repo, tmp_path):
    done = '```bash\nfinish "fixed"\n```'
    replies = [rewrite_reply(example_repo), done, "never sent"]
    result, model, _, _ = run_attempts(example_repo, tmp_path, replies, attempts=3, until_pass=True)
    assert result.attempt == 1 and result.tests_pass
    assert len(result.attempts) == 1 and model.replies == ["never sent"]


def test_an_attempt_stuck_repeating_itself_makes_way_for_the_next(example_repo, tmp_path):
    done = '```bash\nfinish "fixed"\n```'
    look = "```bash\ncat inventory/export.py\n```"
    replies = [look, look, rewrite_reply(example_repo), done]
    result, model, _, _ = run_attempts(example_repo, tmp_path, replies, attempts=2, until_pass=True)
    assert not model.replies
    assert [a["exit_reason"] for a in result.attempts][0].startswith("stuck")
    assert result.attempt == 2 and result.tests_pass


def test_the_last_attempt_is_not_cut_short_by_a_repeat(example_repo, tmp_path):
    done = '```bash\nfinish "fixed"\n```'
    look = "```bash\ncat inventory/export.py\n```"
    replies = [look, look, rewrite_reply(example_repo), done]
    result, model, _, _ = run_attempts(example_repo, tmp_path, replies, attempts=1)
    assert not model.replies and result.tests_pass and result.turns == 4


def test_among_passing_attempts_the_smallest_diff_wins(example_repo, tmp_path):
    noisy = fixed_source(example_repo) + "\n\n# a comment nobody asked for\n# and another\n"
    noisy_reply = "```bash\ncat > inventory/export.py <<'EOF'\n" + noisy + "EOF\n```"
    done = '```bash\nfinish "fixed"\n```'
    replies = [noisy_reply, done, PATCH_REPLY, done]
    # Without the diff shrink, which would drop the comments and leave the diffs equal.
    result, _, _, _ = run_attempts(example_repo, tmp_path, replies, attempts=2, shrink_diff=False)
    assert [a["tests_pass"] for a in result.attempts] == [True, True]
    assert result.attempt == 2
    assert result.attempts[1]["changed_lines"] < result.attempts[0]["changed_lines"]


def test_a_model_failure_keeps_the_attempts_already_made(example_repo, tmp_path):
    class Breaks(ScriptedModel):
        def complete(self, messages, temperature=None, **kw):
            if not self.replies:
                raise ModelError("the model server stopped answering; restart it.")
            return super().complete(messages, temperature)

    settings = settings_for(tmp_path)
    task = Task(instruction="fix the export", repo=str(example_repo), attempts=3)
    result = run_task(task, settings, model=Breaks([GIVE_UP] * 3))
    assert result.attempt == 1 and len(result.attempts) == 1
    assert any(
        e.type == "error" and "stopped answering" in e.data["message"]
        for e in read_events(run_dir_for(settings, task.task_id) / "events.jsonl")
    )


def test_attempts_are_refused_for_follow_ups_and_below_one(example_repo, tmp_path):
    settings = settings_for(tmp_path)
    with pytest.raises(UserError, match="at least 1"):
        run_task(Task(instruction="x", repo=str(example_repo), attempts=0), settings)
    follow = FollowUp(branch="b", start_commit="c", worktree="w", briefing="")
    with pytest.raises(UserError, match="one attempt"):
        run_task(
            Task(instruction="x", repo=str(example_repo), attempts=2, follow_up=follow),
            settings,
        )


def test_the_first_message_starts_from_the_failing_tests(example_repo, tmp_path):
    # A helper between the test and the bug puts a frame of the code in the traceback.
    (example_repo / "inventory" / "report.py").write_text(
        "from inventory.export import to_csv\n\n\ndef report(rows):\n"
        "    return to_csv(['sku', 'name', 'stock'], rows).splitlines()[3]\n"
    )
    (example_repo / "tests" / "test_report.py").write_text(
        "from inventory.report import report\n\n\ndef test_third_row():\n"
        "    assert report([['a', 'b', 1], ['c', 'd', 2], ['e', 'f', 3]]) == 'e,f,3'\n"
    )
    git("add", "-A", cwd=example_repo)
    git("commit", "-q", "-m", "report", cwd=example_repo)
    result, model, _ = run(example_repo, tmp_path, ['```bash\nfinish "no"\n```'] * 3)
    first = model.seen[0][1]["content"]
    assert "Failing tests (from `python -m pytest -q`):" in first
    assert "tests/test_export.py::test_csv_has_every_row" in first
    assert "tests/test_report.py::test_third_row" in first
    assert "IndexError: list index out of range" in first
    assert "at inventory/report.py:5 in report" in first
    # The code the failures point to comes whole (it is small), before the tests.
    assert first.index("inventory/export.py:\n```") < first.index("tests/test_export.py:\n```")
    assert "for i in range(len(rows) - 1):" in first
    # The edit forms of the model's profile are taught in the system prompt.
    system = model.seen[0][0]["content"]
    assert "replace_function path/to/file.py area" in system and "apply_patch" in system
    assert result.status == "failed"
