"""The words the model sees: the system prompt and the first message of a task."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pullsmith.mcp.tools import McpTool
from pullsmith.models.profiles import BUNDLED, TOOL_CALLER
from pullsmith.task import EarlierAttempt

TEXT_INTRO = """\
You are pullsmith, a careful software engineer. You work in a git repository by running shell \
commands. Every reply you write must contain exactly ONE fenced ```bash block. I run that block \
in a sandbox (the current directory is the repository root; there is no network) and show you \
its exit code and output. Then you write your next reply.
"""

# What stands for the file's content in the whole-file example (small models copy it).
WHOLE_FILE_PLACEHOLDER = "<the complete new content of the file>"

# How to change files, one paragraph per edit form; a model's profile picks which are taught.
EDIT_FORM_HELP = {
    "whole-file": f"""\
Rewrite the whole file with a heredoc (best for a short file):
```bash
cat > path/to/file.py <<'EOF'
{WHOLE_FILE_PLACEHOLDER}
EOF
```""",
    "replace-function": """\
Replace one Python function or method by its name (`Class.method` for a method), writing \
the complete new function:
```bash
replace_function path/to/file.py area <<'EOF'
def area(width, height):
    return width * height
EOF
```""",
    "search-replace": """\
Replace a few lines: copy the old lines exactly (enough of them to be unique in the file), \
then write their replacement:
```bash
search_replace path/to/file.py <<'EOF'
<<<<<<< SEARCH
    return width + height
=======
    return width * height
>>>>>>> REPLACE
EOF
```""",
    "apply-patch": """\
Patch a few lines of a big file with apply_patch (lines starting with a space are unchanged \
context and must match the file; `*** Add File: p` with every line starting with `+` creates \
a file, `*** Delete File: p` deletes one):
```bash
apply_patch <<'EOF'
*** Begin Patch
*** Update File: path/to/file.py
@@ def area(width, height):
-    return width + height
+    return width * height
*** End Patch
EOF
```""",
}

TEXT_RULES = """\
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

# The bundled model's forms: the profile table is the one place that says which forms suit a model.
DEFAULT_EDIT_FORMS = BUNDLED.edit_forms


def edit_help(edit_forms: tuple[str, ...] | list[str]) -> str:
    """How to change files: the ways `edit_forms` names, preferred first, as numbered
    alternatives (a small model shown them as a sequence tends to do them all in one reply)."""
    forms = [form for form in edit_forms if form in EDIT_FORM_HELP] or list(DEFAULT_EDIT_FORMS)
    if len(forms) == 1:
        return "Change files this way:\n\n" + EDIT_FORM_HELP[forms[0]]
    ways = "\n\n".join(f"{n}. {EDIT_FORM_HELP[form]}" for n, form in enumerate(forms, 1))
    return (
        f"Change files in ONE of these {len(forms)} ways per reply (never two ways at once, "
        f"never two edits of the same file in one reply):\n\n{ways}"
    )


def system_prompt(edit_forms: tuple[str, ...] | list[str] = DEFAULT_EDIT_FORMS) -> str:
    """The text protocol's system prompt, teaching `edit_forms`."""
    return f"{TEXT_INTRO}\n{edit_help(edit_forms)}\n\n{TEXT_RULES}"


SYSTEM_PROMPT = system_prompt()


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
    # What to say of a run that hung (agent.failures.hang_note), after its output.
    test_note: str = ""
    failures: str = ""
    sources: tuple[str, ...] = ()


TEXT_CLOSING = "Reply with one ```bash block."


def first_message(ctx: TaskContext, closing: str = TEXT_CLOSING) -> str:
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
        if ctx.test_note:
            parts.append(ctx.test_note)
    if ctx.sources:
        parts.append("Source the failing tests point to:\n\n" + "\n\n".join(ctx.sources))
    parts.append(closing)
    return "\n\n".join(parts)


def observation(exit_code: int, output: str, timed_out: bool = False) -> str:
    head = f"exit code {exit_code}"
    if timed_out:
        head += (
            " (the command timed out and was killed; if it ran the tests, they most likely loop"
            " forever on the current code)"
        )
    body = output.rstrip() or "(no output)"
    return f"{head}\n```\n{body}\n```"


def mcp_observation(ok: bool, output: str) -> str:
    """What the model is told of an MCP call: whether the tool answered, and its answer."""
    head = "the MCP tool answered" if ok else "the MCP call failed"
    return f"{head}\n```\n{output.rstrip() or '(no output)'}\n```"


def tests_still_fail(command: str, exit_code: int, output: str, note: str = "") -> str:
    """The answer to a finish while the tests fail; `note` says that they hung, if they did."""
    note = f"\n{note}" if note else ""
    return (
        f"You finished, but `{command}` still fails (exit code {exit_code}):\n```\n"
        f"{output.rstrip()}\n```{note}\nFix the code so the tests pass, then finish again."
    )


# The tools protocol (native `shell` and `finish` tool calls) --------------------------------

TOOLS_INTRO = """\
You are pullsmith, a careful software engineer. You work in a git repository through two tools. \
Call `shell` to run a bash command: I run it in a sandbox (the current directory is the \
repository root; there is no network) and answer with its exit code and output. Make one tool \
call per reply, then wait for its result. Do not write commands in ```bash blocks; call `shell`.
"""

TOOLS_RULES = """\
Rules:
- Think in one or two short sentences, then make the call.
- Do not edit the tests to make them pass; fix the code.
- Do not run git commands that change the repository (git is read-only here); pullsmith
  commits your changes when you finish.
- After changing code, run the tests to check your change.
- When the task is done and the tests pass, call `finish` with one sentence saying what you
  changed.
"""

TOOLS_EDIT_FORMS = TOOL_CALLER.edit_forms

# The closing line of the first message under the tools protocol.
TOOLS_CLOSING = "Call the `shell` tool with your first command."


def tools_system_prompt(edit_forms: tuple[str, ...] | list[str] = TOOLS_EDIT_FORMS) -> str:
    """The system prompt of the tools protocol: `shell` and `finish` calls, no ```bash blocks.

    The edit forms are taught as in the text protocol, as commands to pass to `shell`.
    """
    edits = edit_help(edit_forms).replace("```bash\n", "").replace("\n```", "")
    return f"{TOOLS_INTRO}\nTo change files, call `shell` with a command.\n{edits}\n\n{TOOLS_RULES}"


# MCP tools: a section at the end of the system prompt, only when a run has some (so the prompt
# of a run without them, and the prefix of one with them, stay as they were).

TEXT_MCP_HELP = """\
You can also call tools of MCP servers. To call one, reply with a ```bash block holding just \
one line: `mcp SERVER TOOL` and the tool's arguments as a JSON object in single quotes. \
pullsmith makes the call itself (that line is never passed to bash) and shows you the answer. \
For example:
```bash
{example}
```
The MCP tools:
"""

TOOLS_MCP_HELP = """\
Besides `shell` and `finish`, you can call these tools of MCP servers (one call per reply, as \
with the others); pullsmith makes the call and answers with the tool's output:
"""


def mcp_help(protocol: str, tools: Sequence[McpTool]) -> str:
    """The system prompt's section on the run's MCP tools ("" without any)."""
    if not tools:
        return ""
    if protocol == "tools":
        rows = [f"- `{tool.native_name}`: {_describe(tool)}" for tool in tools]
        return TOOLS_MCP_HELP + "\n".join(rows) + "\n"
    first = tools[0]
    example = f"mcp {first.server} {first.name} '{_example_arguments(first)}'"
    rows = [
        f"- `mcp {tool.server} {tool.name}`: {_describe(tool)} Arguments: {tool.arguments_hint()}."
        for tool in tools
    ]
    return TEXT_MCP_HELP.format(example=example) + "\n".join(rows) + "\n"


def _describe(tool: McpTool) -> str:
    text = " ".join(tool.description.split()) or f"the {tool.name} tool of {tool.server}."
    return text if text.endswith((".", "!", "?")) else text + "."


def _example_arguments(tool: McpTool) -> str:
    properties = tool.input_schema.get("properties") or {}
    names = list(properties)[:2] if isinstance(properties, dict) else []
    return "{" + ", ".join(f'"{name}": "..."' for name in names) + "}"


def prompts_for(
    protocol: str,
    ctx: TaskContext,
    edit_forms: tuple[str, ...] = DEFAULT_EDIT_FORMS,
    mcp_tools: Sequence[McpTool] = (),
) -> tuple[str, str]:
    """The system prompt and the first message of a task under `protocol` ("text" or "tools"),
    with a section on `mcp_tools` at the end of the system prompt when there are any."""
    extra = mcp_help(protocol, mcp_tools)
    extra = f"\n{extra}" if extra else ""
    if protocol != "tools":
        return system_prompt(edit_forms) + extra, first_message(ctx)
    return tools_system_prompt(edit_forms) + extra, first_message(ctx, TOOLS_CLOSING)


# Best-of-N with --until-pass: the account of the earlier attempts, after the first message ----

RETRY_INTRO = "Earlier attempts at this task did not make the tests pass."

RETRY_CHANGED = (
    "Those changes did not fix the task. Do not make the same change again: read the failing "
    "tests and the code again, find the real cause, and make a different change."
)

RETRY_NOTHING = (
    "They stopped without changing the code. Find the cause of the failure and change the code."
)


def closing_for(protocol: str) -> str:
    """The closing line of the first message under `protocol`."""
    return TOOLS_CLOSING if protocol == "tools" else TEXT_CLOSING


def earlier_attempt_account(attempt: EarlierAttempt) -> str:
    """What one earlier attempt changed, and what pullsmith's run of the tests said after it."""
    if not attempt.changes.strip():
        if attempt.exit_reason == "finished":
            return f"Attempt {attempt.number} finished without changing anything."
        why = f" (it stopped: {attempt.exit_reason})" if attempt.exit_reason else ""
        return f"Attempt {attempt.number} changed nothing{why}."
    text = f"Attempt {attempt.number} changed:\n```diff\n{attempt.changes.rstrip()}\n```"
    ran = f" (`{attempt.test_command}`)" if attempt.test_command else ""
    if attempt.failing:
        text += f"\nAfter it the tests still failed{ran}: {', '.join(attempt.failing)}."
    elif attempt.error_line or attempt.test_command:
        text += f"\nAfter it the tests still failed{ran}."
    if attempt.error_line:
        text += f"\nFirst error: {attempt.error_line}"
    return text


def retry_message(first: str, earlier: Sequence[EarlierAttempt], closing: str) -> str:
    """The first message of an attempt after earlier ones failed: `first` (attempt 1's first
    message, verbatim, so the model server serves it from its prompt cache), then an account of
    each earlier attempt, oldest first (attempt N+1's message begins with attempt N's but for
    the closing lines), and the request not to repeat them."""
    if not earlier:
        return first
    accounts = [earlier_attempt_account(attempt) for attempt in earlier]
    changed = any(attempt.changes.strip() for attempt in earlier)
    parts = [first.rstrip(), RETRY_INTRO, *accounts, RETRY_CHANGED if changed else RETRY_NOTHING]
    return "\n\n".join([*parts, closing])
