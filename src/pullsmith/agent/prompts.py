"""The words the model sees: the system prompt and the first message of a task."""

from __future__ import annotations

from dataclasses import dataclass

SYSTEM_PROMPT = """\
You are pullsmith, a careful software engineer. You work in a git repository by running shell \
commands. Every reply you write must contain exactly ONE fenced ```bash block. I run that block \
in a sandbox (the current directory is the repository root; there is no network) and show you \
its exit code and output. Then you write your next reply.

To change a file, rewrite the whole file with a heredoc:
```bash
cat > path/to/file.py <<'EOF'
<the complete new content of the file>
EOF
```
or, for a small change in a big file, use apply_patch:
```bash
apply_patch <<'EOF'
*** Begin Patch
*** Update File: path/to/file.py
@@ def area(width, height):
-    return width + height
+    return width * height
*** End Patch
EOF
```
(apply_patch also takes `*** Add File: p` with every line starting with `+`, and \
`*** Delete File: p`. Lines starting with a space are unchanged context and must match the file.)

Rules:
- Think in one or two short sentences, then give the ```bash block.
- Do not edit the tests to make them pass; fix the code.
- Do not run git commands that change the repository (git is read-only here); pullsmith
  commits your changes when you finish.
- After changing code, run the tests to check your change.
- When the task is done and the tests pass, reply with a block whose last line is:
```bash
finish "one sentence saying what you changed"
```
"""


@dataclass(frozen=True)
class TaskContext:
    """Everything the first message tells the model."""

    instruction: str
    files: str
    agents_md: str = ""
    test_command: str | None = None
    test_exit_code: int | None = None
    test_output: str = ""
    test_timed_out: bool = False
    failures: str = ""
    sources: tuple[str, ...] = ()


def first_message(ctx: TaskContext) -> str:
    parts = [f"Task: {ctx.instruction.strip()}", f"Files in the repository:\n{ctx.files}"]
    if ctx.agents_md:
        parts.append(ctx.agents_md)
    if ctx.test_command:
        if ctx.failures:
            parts.append(f"Failing tests (from `{ctx.test_command}`):\n{ctx.failures}")
        verdict = f"exit with code {ctx.test_exit_code}"
        if ctx.test_timed_out:
            verdict = "time out (the code may loop forever or wait for input)"
        parts.append(
            f"The tests run with `{ctx.test_command}`. Before any change they {verdict}:"
            f"\n```\n{ctx.test_output.rstrip()}\n```"
        )
    if ctx.sources:
        parts.append("Source the failing tests point to:\n\n" + "\n\n".join(ctx.sources))
    parts.append("Reply with one ```bash block.")
    return "\n\n".join(parts)


def observation(exit_code: int, output: str, timed_out: bool = False) -> str:
    head = f"exit code {exit_code}"
    if timed_out:
        head += " (the command timed out and was killed)"
    body = output.rstrip() or "(no output)"
    return f"{head}\n```\n{body}\n```"


def tests_still_fail(command: str, exit_code: int, output: str) -> str:
    return (
        f"You finished, but `{command}` still fails (exit code {exit_code}):\n```\n"
        f"{output.rstrip()}\n```\nFix the code so the tests pass, then finish again."
    )
