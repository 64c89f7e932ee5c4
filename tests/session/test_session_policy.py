"""The approval policy and the slash commands' parsing, without a terminal."""

from __future__ import annotations

import pytest

from pullsmith.agent.loop import Decision
from pullsmith.errors import UserError
from pullsmith.sandbox.base import CommandResult
from pullsmith.session import slash
from pullsmith.session.approval import ApprovalPolicy, Ask, is_read_only, needs_outside


def failed(code: int = 1, timed_out: bool = False) -> CommandResult:
    return CommandResult("x", exit_code=code, output="boom", duration_s=0.1, timed_out=timed_out)


@pytest.mark.parametrize(
    "command",
    [
        "ls -la",
        "cat inventory/export.py",
        "grep -rn to_csv . | head -20",
        "git status && git diff",
        "sed -n 1,20p x.py",
        "find . -name '*.py'",
        "cat x 2>/dev/null",
        "nl -ba a.py | sed -n 5,9p",
    ],
)
def test_read_only_commands_are_known(command):
    assert is_read_only(command)


@pytest.mark.parametrize(
    "command",
    [
        "echo hi > notes.txt",
        "cat a >> b",
        "sed -i s/a/b/ x.py",
        "find . -name '*.pyc' -delete",
        "python -m pytest -q",
        "ls; rm -rf src",
        "cat $(rm -rf x)",
        "cat > f <<'EOF'\nx\nEOF",
        "git commit -m x",
        "git checkout -- .",
        "",
        "echo 'unbalanced",
    ],
)
def test_commands_that_write_or_run_code_are_not_read_only(command):
    assert not is_read_only(command)


def test_untrusted_asks_for_all_but_read_only_commands_and_remembers_always():
    policy = ApprovalPolicy("untrusted")
    assert policy.check("ls") == Decision()
    ask = policy.check("python -m pytest -q")
    assert isinstance(ask, Ask) and not ask.outside
    assert policy.answer(ask, "once") == Decision()
    assert isinstance(policy.check("python -m pytest -q"), Ask)  # once is once
    assert policy.answer(ask, "always") == Decision()
    assert policy.check("python -m pytest -q") == Decision()
    assert isinstance(policy.check("python -m pytest -x"), Ask)  # only that exact command
    # A failure is not a reason to ask under untrusted: the result stands.
    assert policy.check("python -m pytest -q", failed()) == Decision(run=False)


def test_a_refusal_carries_its_reason():
    policy = ApprovalPolicy("untrusted")
    ask = policy.check("rm -rf build")
    assert policy.answer(ask, "refuse", " keep the build ") == Decision(
        run=False, reason="keep the build"
    )
    assert policy.answer(ask, "refuse").reason == "refused without a reason"
    with pytest.raises(ValueError):
        policy.answer(ask, "perhaps")


def test_on_failure_asks_only_to_rerun_a_failed_sandboxed_command_outside():
    policy = ApprovalPolicy("on-failure")
    assert policy.check("curl https://example.invalid") == Decision()
    ask = policy.check("pip install x", failed())
    assert isinstance(ask, Ask) and ask.outside and ask.failed is not None
    assert "failed in the sandbox" in ask.question
    assert policy.check("sleep 100", failed(timed_out=True)) == Decision(run=False)
    assert policy.answer(ask, "always") == Decision(outside_sandbox=True)
    # From now on that command runs outside the sandbox without a question.
    assert policy.check("pip install x") == Decision(outside_sandbox=True)


def test_on_request_asks_before_commands_that_need_more_than_the_sandbox():
    policy = ApprovalPolicy("on-request")
    assert needs_outside("python -m pip install requests")
    assert needs_outside("cd x && git push origin main")
    assert not needs_outside("git status")
    assert policy.check("python -m pytest -q") == Decision()
    ask = policy.check("pip install requests")
    assert isinstance(ask, Ask) and ask.outside
    assert policy.answer(ask, "once") == Decision(outside_sandbox=True)
    assert policy.check("pip install requests", failed()) == Decision(run=False)


def test_never_asks_nothing():
    policy = ApprovalPolicy("never")
    assert policy.check("rm -rf /") == Decision()
    assert policy.check("pip install x", failed()) == Decision(run=False)
    with pytest.raises(ValueError):
        ApprovalPolicy("sometimes")


def test_slash_commands_parse():
    assert slash.parse("fix the bug") is None
    assert slash.parse("//etc/hosts is wrong") is None
    assert slash.request_text("//etc/hosts is wrong") == "/etc/hosts is wrong"
    assert slash.parse("/diff") == slash.Slash("diff")
    assert slash.parse("  /UNDO  ") == slash.Slash("undo")
    assert slash.parse("/model gpt-4.1-mini") == slash.Slash("model", "gpt-4.1-mini")
    help_text = "\n".join(slash.help_lines())
    for name in slash.COMMANDS:
        assert f"/{name}" in help_text


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("/frobnicate", "there is no command /frobnicate"),
        ("/", "there is no command /"),
        ("/model", "/model needs NAME"),
        ("/diff please", "/diff takes no argument"),
    ],
)
def test_bad_slash_commands_are_one_sentence(line, words):
    with pytest.raises(UserError) as caught:
        slash.parse(line)
    assert caught.value.message.startswith(words)
