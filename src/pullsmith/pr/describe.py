"""A pull request's title and description, made from what the runs did — not from the model alone.

The body states the verdict of pullsmith's own test run first, then the task, the model's
summary (marked as the model's words), the changes, the evidence (every test run cited by run
and event id, newest run first) and, plainly, the limits hit and what is left undone.
GitHub-flavoured Markdown; it reads as well in a terminal.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pullsmith import __version__
from pullsmith.store import AttemptRecord
from pullsmith.text import subject_line

TITLE_CHARS = 72
# GitHub rejects bodies over 65,536 characters; leave room for what a forge may add.
BODY_LIMIT = 60_000
# A file's "Changed in" cell names this many definitions, then how many more.
WHERE_SHOWN = 6
MODULE_LEVEL = "module level"


@dataclass(frozen=True)
class FileChange:
    path: str
    added: int
    removed: int
    binary: bool = False
    # The Python definitions the change touches, read from the code (pr.local), not the
    # model's words: the innermost function (`Class.method`) or class of each changed line,
    # "module level" outside any.
    where: tuple[str, ...] = ()


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    subject: str


@dataclass(frozen=True)
class PullRequestFacts:
    """Everything a description is made from; `attempts` oldest first."""

    instruction: str
    head: str
    base: str
    base_commit: str
    head_commit: str
    attempts: Sequence[AttemptRecord]
    changes: Sequence[FileChange] = ()
    commits: Sequence[CommitInfo] = ()
    number: int | None = None
    task_id: str = ""


@dataclass(frozen=True)
class Verdict:
    """What the evidence says about the head of the branch."""

    checks: str  # passing, failing, untested, error
    attempt: AttemptRecord | None = None
    stale: bool = False


@dataclass(frozen=True)
class Description:
    title: str
    body: str
    checks: str
    notes: list[str] = field(default_factory=list)


# --- Markdown helpers --------------------------------------------------------------------


def code(text: str) -> str:
    """`text` as an inline code span that survives backticks and table pipes."""
    text = " ".join(str(text).split())
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text else ""
    return f"{ticks}{pad}{text}{pad}{ticks}".replace("|", "\\|")


def fenced(text: str, lang: str = "text") -> str:
    """`text` in a fenced block whose fence no line of `text` can close."""
    longest = max((len(m) for m in re.findall(r"^\s*(`{3,}|~{3,})", text, re.M)), default=0)
    fence = "`" * max(3, longest + 1)
    body = text.rstrip("\n") or "(no output)"
    return f"{fence}{lang}\n{body}\n{fence}"


def quote(text: str) -> str:
    lines = text.strip().splitlines() or [""]
    return "\n".join(("> " + line).rstrip() for line in lines)


def cell(text: str) -> str:
    """Plain text made safe for one table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def title_for(instruction: str) -> str:
    """The first line of what was asked, cut to a title's length (its first sentence, or at a
    word)."""
    first = next((line.strip() for line in instruction.splitlines() if line.strip()), "")
    return subject_line(first or "pullsmith change", TITLE_CHARS)[0]


def _short(sha: str | None) -> str:
    return (sha or "")[:10]


def _home_relative(path: str) -> str:
    try:
        return "~/" + str(Path(path).relative_to(Path.home()))
    except ValueError:
        return path


def run_log(attempt: AttemptRecord) -> str:
    return _home_relative(str(Path(attempt.run_dir) / "events.jsonl")) if attempt.run_dir else ""


def cite(attempt: AttemptRecord, event: Any) -> str:
    """`run <id>, event #N`: where in the logs a claim can be checked."""
    if event is None:
        return f"run {code(attempt.run_id)}"
    return f"run {code(attempt.run_id)}, event #{event}"


def _verdict_word(run: dict[str, Any]) -> str:
    if run.get("timed_out"):
        return "timed out"
    return "pass" if run.get("exit_code") == 0 else "fail"


def _seconds(run: dict[str, Any]) -> str:
    seconds = run.get("seconds")
    return f" · {float(seconds):.1f} s" if isinstance(seconds, int | float) else ""


# --- the verdict -------------------------------------------------------------------------


def verdict(attempts: Sequence[AttemptRecord], head_commit: str | None = None) -> Verdict:
    """What pullsmith's own test runs say about the branch as it is now.

    The newest run that tested the branch decides. A run that changed the branch without
    testing it (an error mid-run) leaves the head untested, and so do commits made after
    pullsmith's last run; a run that changed nothing leaves the earlier verdict standing.
    """
    if not attempts:
        return Verdict("untested")
    stale = bool(head_commit) and head_commit != attempts[-1].head_commit
    for attempt in reversed(attempts):
        after = attempt.tests_after
        if after is not None:
            if stale:
                return Verdict("untested", attempt, stale=True)
            passed = after.get("exit_code") == 0 and not after.get("timed_out")
            return Verdict("passing" if passed else "failing", attempt)
        if attempt.commit:
            checks = "error" if attempt.status == "error" else "untested"
            return Verdict(checks, attempt, stale=stale)
    return Verdict("untested", None, stale=stale)


# --- the body ----------------------------------------------------------------------------


def _banner(v: Verdict) -> str:
    attempt = v.attempt
    if v.stale:
        return (
            "> [!WARNING]\n> **Not tested as it is now.** The branch has commits pullsmith did "
            "not make after its last test run, so the evidence below is about an earlier "
            "commit. Run a follow-up (`pullsmith exec --continue`) to test it again."
        )
    if v.checks in ("passing", "failing") and attempt is not None:
        after = attempt.tests_after or {}
        where = cite(attempt, after.get("event"))
        how = f"{code(after.get('command', ''))} exited with code {after.get('exit_code')}"
        if after.get("timed_out"):
            how += " (it timed out)"
        if v.checks == "passing":
            return (
                f"> [!NOTE]\n> **Tests pass.** After the agent finished, pullsmith ran the tests "
                f"itself: {how} ({where})."
            )
        return (
            f"> [!CAUTION]\n> **Tests fail.** After the agent finished, pullsmith ran the tests "
            f"itself: {how} ({where}). Whatever the summary below says, this change does not "
            "pass the repository's tests."
        )
    if v.checks == "error" and attempt is not None:
        return (
            "> [!WARNING]\n> **The run ended in an error before pullsmith could test the "
            f"result:** {cell(attempt.error or attempt.exit_reason or 'unknown error')}. The "
            "commits hold what was done up to then; nothing here is tested."
        )
    return (
        "> [!WARNING]\n> **Not tested.** pullsmith found no test command for this repository, "
        "so nothing below shows that the change works. Name one with a `Test command: "
        "`...`` line in AGENTS.md or `test_command` in pullsmith.toml."
    )


def _task_section(facts: PullRequestFacts) -> list[str]:
    lines = ["## Task", "", facts.instruction.strip()]
    follow_ups = [a for a in facts.attempts if a.kind == "follow-up"]
    if follow_ups:
        lines += ["", "Follow-ups:", ""]
        for number, attempt in enumerate(follow_ups, start=1):
            asked = " ".join(attempt.instruction.split())
            lines.append(f"{number}. {asked} ({cite(attempt, None)})")
    return lines


def _summary_origin(attempt: AttemptRecord) -> str:
    """When the model wrote its summary: from the final diff, or at its finish."""
    note = (attempt.notes or {}).get("summary") or {}
    where = cite(attempt, note.get("event"))
    if note.get("source") == "diff":
        return f"written after it saw the final diff and pullsmith's test results ({where})"
    if note.get("error"):
        return (
            "written when it finished, before pullsmith's last checks: asking it again with "
            f"the final diff failed ({cell(note['error'])}; {where})"
        )
    if note.get("reason"):
        return f"written when it finished; not asked again, since {note['reason']} ({where})"
    return "written when it finished, before pullsmith's last checks"


def _summary_section(attempts: Sequence[AttemptRecord]) -> list[str]:
    said = [a for a in attempts if a.summary.strip()]
    head = "*In the model's own words"
    if len(said) == 1:
        head += f", {_summary_origin(said[0])}"
    lines = [
        "## Summary",
        "",
        f"{head}; pullsmith does not check them — the evidence below does.*",
        "",
    ]
    if not said:
        return [*lines, "The model gave no summary: it did not say it was done."]
    if len(said) == 1:
        return [*lines, quote(said[0].summary)]
    for attempt in reversed(said):
        lines += [
            f"{cite(attempt, None)}: *{_summary_origin(attempt)}*",
            "",
            quote(attempt.summary),
            "",
        ]
    return lines[:-1]


def _shrink_lines(attempts: Sequence[AttemptRecord]) -> list[str]:
    """What pullsmith left out of the diff before committing (pullsmith.shrink), per run."""
    lines: list[str] = []
    for attempt in attempts:
        shrink = (attempt.notes or {}).get("shrink")
        if not shrink:
            continue
        where = cite(attempt, shrink.get("event"))
        runs = shrink.get("test_runs", 0)
        cost = f"{runs} test run{'s' if runs != 1 else ''}, {float(shrink.get('seconds', 0)):.1f} s"
        dropped = shrink.get("dropped") or []
        if shrink.get("status") == "shrunk" and dropped:
            count = len(dropped)
            lines += [
                "",
                f"**Left out by pullsmith:** {count} hunk{'s' if count != 1 else ''} of the "
                "model's change that the tests did not need (they pass without "
                f"{'them' if count != 1 else 'it'}) {'were' if count != 1 else 'was'} reverted "
                f"before the commit ({where}; {cost}):",
                "",
            ]
            for hunk in dropped:
                at = hunk.get("old_start") or hunk.get("new_start")
                lines += [
                    f"- {code(hunk.get('path', ''))} line {at}: {cell(hunk.get('kind', ''))}",
                    "",
                    "  <details><summary>the change left out</summary>",
                    "",
                    "  " + fenced(str(hunk.get("diff", "")), "diff").replace("\n", "\n  "),
                    "",
                    "  </details>",
                ]
            if shrink.get("untried"):
                lines += [
                    "",
                    f"{shrink['untried']} other hunks were not tried (the limit of runs).",
                ]
        elif shrink.get("status") == "unchanged":
            lines += [
                "",
                "pullsmith tried leaving out parts of the diff: every part it tried is needed, "
                f"the tests fail without it ({where}; {cost}).",
            ]
        else:
            reason = str(shrink.get("reason") or "")
            lines += ["", f"pullsmith left the diff as it is: {cell(reason)} ({where})."]
    return lines


def _changes_section(facts: PullRequestFacts) -> list[str]:
    lines = ["## Changes", ""]
    if not facts.changes:
        lines.append("No file differs from the base.")
    else:
        where = any(change.where for change in facts.changes)
        lines += (
            ["| File | Changed in | + | − |", "|---|---|--:|--:|"]
            if where
            else ["| File | + | − |", "|---|--:|--:|"]
        )
        for change in facts.changes:
            names = f" {_where(change.where)} |" if where else ""
            if change.binary:
                lines.append(f"| {code(change.path)} |{names} binary | |")
            else:
                lines.append(f"| {code(change.path)} |{names} {change.added} | {change.removed} |")
        added = sum(c.added for c in facts.changes)
        removed = sum(c.removed for c in facts.changes)
        count = len(facts.changes)
        lines.append(
            f"| **{count} file{'s' if count != 1 else ''}** |{' |' if where else ''} "
            f"**+{added}** | **−{removed}** |"
        )
    lines += [
        "",
        f"Branch {code(facts.head)} from {code(facts.base)} at {code(_short(facts.base_commit))}"
        f", head {code(_short(facts.head_commit))}.",
    ]
    if facts.commits:
        lines += [""] + [f"- {code(_short(c.sha))} {cell(c.subject)}" for c in facts.commits]
    return lines + _repair_lines(facts.attempts) + _shrink_lines(facts.attempts)


def _where(names: Sequence[str], shown: int = WHERE_SHOWN) -> str:
    """The definitions a file's change touches, as a table cell: code names, then how many
    more."""
    cells = [name if name == MODULE_LEVEL else code(name) for name in names[:shown]]
    if len(names) > shown:
        cells.append(f"{len(names) - shown} more")
    return ", ".join(cells)


def _repair_lines(attempts: Sequence[AttemptRecord]) -> list[str]:
    """What direct repair (agent/repair.py) asked of the model before the agent, per run: the
    function whose rewrite the tests passed, or that none did."""
    lines: list[str] = []
    for attempt in attempts:
        tries = (attempt.notes or {}).get("repair") or []
        if not tries:
            continue
        count = len(tries)
        # Each function's outcomes in the order asked (a later round asks a function again).
        by_function: dict[tuple[str, str], list[str]] = {}
        for t in tries:
            key = (t.get("path", ""), t.get("function", ""))
            by_function.setdefault(key, []).append(str(t.get("outcome", "")))
        functions = len(by_function)
        asked = f"{functions} function{'s' if functions != 1 else ''}"
        if count > functions:
            asked += f" ({count} asks)"
        first, last = tries[0].get("event"), tries[-1].get("event")
        events = f"events #{first}–#{last}" if count > 1 else f"event #{first}"
        where = f"run {code(attempt.run_id)}, {events}"
        passed = next((t for t in tries if t.get("outcome") == "passed"), None)
        if passed is not None:
            lines += [
                "",
                f"**Direct repair:** before any agent turn, pullsmith asked the model for "
                f"{asked} the failing tests most likely reach, each rewritten whole ({where}). "
                f"The tests passed with its rewrite of {code(passed.get('function', ''))} in "
                f"{code(passed.get('path', ''))} (tests event #{passed.get('test_event')}), so "
                "that is the change; the agent did not run.",
            ]
        else:
            outcomes = "; ".join(
                f"{code(name)}: {cell(', '.join(results))}"
                for (_, name), results in by_function.items()
            )
            lines += [
                "",
                f"**Direct repair:** before the agent, pullsmith asked the model for {asked} "
                f"the failing tests most likely reach ({where}); no rewrite made the tests pass, "
                f"so each was put back ({outcomes}).",
            ]
    return lines


def _test_run_lines(
    label: str, attempt: AttemptRecord, run: dict[str, Any], with_excerpt: bool, excerpt_lines: int
) -> list[str]:
    head = (
        f"**{label}** ({cite(attempt, run.get('event'))}): {code(run.get('command', ''))} → "
        f"exit {run.get('exit_code')} ({_verdict_word(run)}){_seconds(run)}"
    )
    lines = [head]
    text = str(run.get("excerpt") or "")
    if with_excerpt:
        rows = text.splitlines()
        if len(rows) > excerpt_lines:
            cut = len(rows) - excerpt_lines
            rows = [f"[… {cut} more lines in the run log …]", *rows[-excerpt_lines:]]
        lines += ["", fenced("\n".join(rows))]
    return lines


OUTCOMES = {
    "finished": "the model said it was done",
    "repaired": "a function rewritten by direct repair passed the tests",
    "error": "stopped by an error",
}


def _other_runs_table(attempt: AttemptRecord) -> list[str]:
    """pullsmith's runs besides the last one: before the agent, and at each finish."""
    rows = []
    before = attempt.tests_before
    if before is not None:
        rows.append((before, "before the agent started"))
    for check in attempt.checks or []:
        if check.get("sent_back") or (check.get("sent_back") is None and check.get("exit_code")):
            rows.append((check, "the model said it was done: sent back to it"))
        else:
            rows.append((check, "the model said it was done: accepted"))
    if not rows:
        return []
    lines = ["", "**pullsmith's other test runs:**", ""]
    lines += ["| Event | When | Command | Exit |", "|--:|---|---|--:|"]
    for run, when in rows:
        exit_text = f"{run.get('exit_code')}" + (" (timed out)" if run.get("timed_out") else "")
        lines.append(
            f"| #{run.get('event')} | {when} | {code(run.get('command', ''))} | {exit_text} |"
        )
    return lines


def _run_section(
    attempt: AttemptRecord, index: int, total: int, detail: str, excerpt_lines: int
) -> list[str]:
    kind = "follow-up" if attempt.kind == "follow-up" else "first run"
    lines = [f"### Run {index} of {total} — {kind}, {code(attempt.run_id)}", ""]
    asked = " ".join(attempt.instruction.split())
    reason = OUTCOMES.get(attempt.exit_reason, attempt.exit_reason or "—")
    facts = [f"asked: {cell(asked)}", f"outcome: {cell(attempt.status)} — {cell(reason)}"]
    facts.append(f"commit {code(_short(attempt.commit))}" if attempt.commit else "no commit")
    lines.append(" · ".join(facts))
    if attempt.run_dir:
        lines += ["", f"Run log: {code(run_log(attempt))}"]
    if detail == "omitted":
        return [*lines, "", "*Details left out to keep this description short; see the run log.*"]
    full = detail == "full"
    after = attempt.tests_after
    if after is not None:
        label = "pullsmith's test run after the agent finished"
        lines += ["", *_test_run_lines(label, attempt, after, True, excerpt_lines)]
    elif attempt.test_command:
        lines += [
            "",
            f"pullsmith did not run {code(attempt.test_command)} after this run: it stopped first.",
        ]
    else:
        lines += ["", "No test command was found, so pullsmith ran no tests."]
    before = attempt.tests_before
    if full and before is not None and before.get("exit_code") != 0 and before.get("excerpt"):
        rows = str(before["excerpt"]).splitlines()[-min(excerpt_lines, 15) :]
        lines += [
            "",
            f"The tests before the agent started ({cite(attempt, before.get('event'))}):",
            "",
            "<details><summary>output</summary>",
            "",
            fenced("\n".join(rows)),
            "",
            "</details>",
        ]
    lines += _other_runs_table(attempt)
    agent = attempt.agent_tests or []
    lines += ["", "**The agent's own test runs** (commands it ran in the sandbox):", ""]
    if not agent:
        lines.append("None: the agent ran no tests itself.")
    else:
        lines += ["| Event | Turn | Command | Exit |", "|--:|--:|---|--:|"]
        for run in agent:
            exit_text = f"{run.get('exit_code')}" + (" (timed out)" if run.get("timed_out") else "")
            lines.append(
                f"| #{run.get('event')} | {run.get('turn', '')} | {code(run.get('command', ''))} "
                f"| {exit_text} |"
            )
    return lines


def _limits_section(facts: PullRequestFacts, v: Verdict) -> list[str]:
    items: list[str] = []
    total = len(facts.attempts)
    for index, attempt in enumerate(facts.attempts, start=1):
        which = f"Run {index}" if total > 1 else "The run"
        notes = attempt.notes or {}
        for limit in notes.get("limits", []):
            items.append(
                f"{which} stopped at a limit: {cell(limit.get('reason', ''))} "
                f"({cite(attempt, limit.get('event'))}); the model did not say it was done."
            )
        if (
            attempt.exit_reason
            and attempt.exit_reason not in ("finished", "repaired", "error")
            and not notes.get("limits")
        ):
            items.append(f"{which} stopped: {cell(attempt.exit_reason)}.")
        for error in notes.get("errors", []):
            items.append(
                f"{which} ended in an error: {cell(error.get('message', ''))} "
                f"({cite(attempt, error.get('event'))})."
            )
        if attempt.status == "error" and not notes.get("errors") and attempt.error:
            items.append(f"{which} ended in an error: {cell(attempt.error)}.")
        rejected = notes.get("finish_rejected", [])
        if rejected:
            events = ", ".join(f"#{r.get('event')}" for r in rejected)
            times = "once" if len(rejected) == 1 else f"{len(rejected)} times"
            items.append(
                f"{which}: the model said it was done while the tests failed, {times} "
                f"(run {code(attempt.run_id)}, events {events}), and was sent back."
            )
        if notes.get("format_errors"):
            count = notes["format_errors"]
            items.append(
                f"{which}: {count} malformed model repl{'ies' if count != 1 else 'y'} were sent back."
            )
        after, before = attempt.tests_after, attempt.tests_before
        if (
            after is not None
            and before is not None
            and attempt.kind != "follow-up"
            and before.get("exit_code") == 0
            and after.get("exit_code") == 0
        ):
            items.append(
                f"{which}: the tests passed before the change too ({cite(attempt, before.get('event'))}), "
                "so they do not show that the change does what was asked; no test covers it yet."
            )
    if v.checks == "failing" and v.attempt is not None:
        after = v.attempt.tests_after or {}
        items.append(
            f"**Left undone:** the tests still fail ({cite(v.attempt, after.get('event'))}); "
            "the task is not done."
        )
    elif v.checks == "untested" and not v.stale:
        items.append("**Left undone:** nothing shows that the change works: no tests ran on it.")
    elif v.checks == "error":
        items.append("**Left undone:** the run did not finish; the result is not tested.")
    if v.stale:
        items.append(
            f"The branch head {code(_short(facts.head_commit))} is not the commit pullsmith "
            "tested; the evidence is about an earlier one."
        )
    newest = facts.attempts[-1] if facts.attempts else None
    if newest is not None and not newest.commit and newest.kind == "follow-up":
        items.append(f"The latest follow-up ({cite(newest, None)}) made no change to the branch.")
    lines = ["## Limits and what is left undone", ""]
    if not items:
        return [*lines, "Nothing: the model finished within its limits and the tests pass."]
    return lines + [f"- {item}" for item in items]


def _footer(facts: PullRequestFacts) -> list[str]:
    attempts = facts.attempts
    turns = sum(a.turns for a in attempts)
    tokens = sum(a.prompt_tokens + a.completion_tokens for a in attempts)
    models = sorted({a.model for a in attempts if a.model})
    runs = len(attempts)
    parts = [
        f"Made by pullsmith {__version__}",
        f"task {code(facts.task_id)}" if facts.task_id else "",
        f"model {', '.join(code(m) for m in models)}" if models else "",
        f"{runs} run{'s' if runs != 1 else ''}",
        f"{turns} turn{'s' if turns != 1 else ''}",
        f"{tokens:,} tokens",
        _cost_part(attempts),
    ]
    return ["---", "<sub>" + " · ".join(p for p in parts if p) + "</sub>"]


def _cost_part(attempts: Sequence[AttemptRecord]) -> str:
    """What the runs cost, or "cost unknown" when a run's cost is (no price for its model, or
    recorded before pullsmith kept costs)."""
    if not attempts:
        return ""
    costs = [(a.notes or {}).get("cost_usd") for a in attempts]
    if any(not isinstance(c, int | float) for c in costs):
        return "cost unknown"
    total = sum(float(c) for c in costs)  # type: ignore[arg-type]
    return f"cost ${total:.4f}" if total < 1 else f"cost ${total:,.2f}"


def _render(facts: PullRequestFacts, v: Verdict, excerpt_lines: int, keep_full: int) -> str:
    attempts = list(facts.attempts)
    total = len(attempts)
    evidence = [
        "## Evidence",
        "",
        "Every item cites the run log it comes from (run id and event id in that run's "
        "`events.jsonl`), so each claim can be checked there. Newest run first.",
    ]
    for position, attempt in enumerate(reversed(attempts)):
        index = total - position
        detail = (
            "full" if position < keep_full else ("brief" if position < keep_full + 5 else "omitted")
        )
        evidence += ["", *_run_section(attempt, index, total, detail, excerpt_lines)]
    if not attempts:
        evidence += ["", "No run is recorded for this pull request."]
    sections = [
        [_banner(v)],
        _task_section(facts),
        _summary_section(attempts),
        _changes_section(facts),
        evidence,
        _limits_section(facts, v),
        _footer(facts),
    ]
    return "\n\n".join("\n".join(section) for section in sections) + "\n"


def describe(facts: PullRequestFacts) -> Description:
    """The title and Markdown body of a pull request, and its checks status."""
    v = verdict(facts.attempts, facts.head_commit)
    body = ""
    for excerpt_lines, keep_full in ((30, 3), (12, 2), (6, 1), (3, 0)):
        body = _render(facts, v, excerpt_lines, keep_full)
        if len(body) <= BODY_LIMIT:
            break
    if len(body) > BODY_LIMIT:
        body = (
            body[: BODY_LIMIT - 80].rstrip() + "\n\n*[Description cut to fit; see the run logs.]*\n"
        )
    return Description(title=title_for(facts.instruction), body=body, checks=v.checks)
