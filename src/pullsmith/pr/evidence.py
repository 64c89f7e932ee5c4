"""Evidence from a run: what pullsmith and the agent really ran, read back from the run log.

Each record cites the event it comes from (its id in the run's events.jsonl), so a reviewer can
check every claim a pull request makes against the log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pullsmith.events import Event, read_events

EXCERPT_LINES = 30
EXCERPT_CHARS = 3000
AGENT_EXCERPT_LINES = 8
COMMAND_CHARS = 160

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")
_FAILURE_LINE = re.compile(
    r"FAIL|ERROR|Error|error:|Traceback|assert|panic|not ok|✗|✕|expected|Exception", re.M
)
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")
_SEGMENT_SPLIT = re.compile(r"&&|\|\||;|\||\(|\)|\bthen\b|\bdo\b")
_PREFIX = (
    r"^\s*(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*"
    r"(?:(?:timeout|time|nice|env|xvfb-run)(?:\s+-\S+)*(?:\s+\d+\S*)?\s+)*"
    r"(?:(?:uv|poetry|pipenv|pdm|hatch|rye)\s+run\s+)?"
    r"(?:(?:python[0-9.]*|py)\s+(?:-[A-Za-z]+\s+)*(?:-m\s+)?)?"
)
_RUNNERS = (
    r"(?:pytest|py\.test|unittest|tox|nox|make\s+(?:[A-Za-z_-]*test\w*|check)|"
    r"(?:npm|pnpm|yarn|bun)\s+(?:run\s+)?test|go\s+test|cargo\s+(?:test|nextest)|"
    r"(?:npx\s+)?(?:jest|vitest|mocha|ava|tap)|(?:bundle\s+exec\s+)?(?:rspec|rake\s+test)|"
    r"phpunit|vendor/bin/phpunit|ctest|mvn\s+(?:-\S+\s+)*test|(?:\./)?gradlew?\s+test|"
    r"dotnet\s+test|mix\s+test|swift\s+test|bats|deno\s+test|zig\s+build\s+test|"
    r"\S*tests?[/_]\S*\.py|\S*_test\.py|\S*\.test\.\S+)"
)
_TEST_SEGMENT = re.compile(_PREFIX + _RUNNERS + r"(?:\s|$)")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text).replace("\r\n", "\n")


def _without_heredocs(command: str) -> list[str]:
    """The command's own lines, without the bodies of here-documents (file contents)."""
    lines: list[str] = []
    terminator: str | None = None
    for line in command.splitlines():
        if terminator is not None:
            if line.strip() == terminator:
                terminator = None
            continue
        lines.append(line)
        match = _HEREDOC.search(line)
        if match:
            terminator = match.group(2)
    return lines


def looks_like_test_run(command: str, test_command: str | None = None) -> bool:
    """Whether a command the agent ran is a run of tests (and not, say, a file that mentions one)."""
    lines = _without_heredocs(command)
    text = "\n".join(lines)
    if test_command and " ".join(test_command.split()) in " ".join(text.split()):
        return True
    for line in lines:
        for segment in _SEGMENT_SPLIT.split(line):
            if _TEST_SEGMENT.match(segment.strip() + " "):
                return True
    return False


def short_command(command: str, limit: int = COMMAND_CHARS) -> str:
    """One line that stands for the command: its first line, cut to `limit` characters."""
    lines = [line for line in command.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    first = lines[0].strip()
    if len(first) > limit:
        first = first[: limit - 1].rstrip() + "…"
    elif len(lines) > 1:
        first += " …"
    return first


def excerpt(output: str, passed: bool, max_lines: int = EXCERPT_LINES) -> str:
    """The part of test output that shows the verdict.

    Short output is kept whole. From long output: for a failure, the lines around the first
    failures and the end (where runners print their summary); for a pass, the end alone.
    Cuts are marked with the number of lines left out.
    """
    lines = strip_ansi(output).rstrip().splitlines()
    if len(lines) <= max_lines:
        text = "\n".join(lines)
    else:
        tail = max_lines // 2 if not passed else max_lines
        keep: set[int] = set(range(len(lines) - tail, len(lines)))
        if not passed:
            budget = max_lines - tail
            for index, line in enumerate(lines[: len(lines) - tail]):
                if len(keep) - tail >= budget:
                    break
                if _FAILURE_LINE.search(line):
                    keep.update(range(max(0, index - 2), min(len(lines), index + 4)))
        chosen = sorted(i for i in keep if 0 <= i < len(lines))
        parts: list[str] = []
        previous = -1
        for index in chosen:
            if index != previous + 1:
                gap = index - previous - 1
                parts.append(f"[… {gap} line{'s' if gap != 1 else ''} left out …]")
            parts.append(lines[index])
            previous = index
        if previous < len(lines) - 1:
            parts.append(f"[… {len(lines) - 1 - previous} lines left out …]")
        text = "\n".join(parts)
    if len(text) > EXCERPT_CHARS:
        half = EXCERPT_CHARS // 2
        text = f"{text[:half]}\n[… {len(text) - 2 * half} characters left out …]\n{text[-half:]}"
    return text


def _test_record(event: Event | None, fallback: Any = None) -> dict[str, Any] | None:
    """A test run as evidence, from its `tests.ran` event (or the runner's TestRun)."""
    if event is not None:
        d = event.data
        exit_code = int(d.get("exit_code", -1))
        return {
            "event": event.id,
            "phase": d.get("phase", ""),
            "command": d.get("command", ""),
            "exit_code": exit_code,
            "seconds": d.get("seconds"),
            "timed_out": bool(d.get("timed_out")),
            "excerpt": excerpt(str(d.get("output", "")), exit_code == 0),
        }
    if fallback is None:
        return None
    return {
        "event": getattr(fallback, "event_id", None),
        "phase": getattr(fallback, "phase", ""),
        "command": getattr(fallback, "command", ""),
        "exit_code": int(getattr(fallback, "exit_code", -1)),
        "seconds": getattr(fallback, "seconds", None),
        "timed_out": bool(getattr(fallback, "timed_out", False)),
        "excerpt": excerpt(str(getattr(fallback, "output", "")), fallback.exit_code == 0),
    }


def run_evidence(
    events: Iterable[Event],
    test_command: str | None,
    tests_before: Any = None,
    tests_after: Any = None,
) -> dict[str, Any]:
    """Everything a pull request cites from one run's log.

    `tests_before`/`tests_after` are the runner's TestRun objects; the events they name are
    looked up in the log, so the evidence is what the log says, not what was remembered.
    """
    by_id: dict[int, Event] = {}
    tests_ran: list[Event] = []
    agent_tests: list[dict[str, Any]] = []
    notes: dict[str, Any] = {
        "limits": [],
        "finish_rejected": [],
        "format_errors": 0,
        "errors": [],
    }
    for event in events:
        by_id[event.id] = event
        d = event.data
        if event.type == "tests.ran":
            tests_ran.append(event)
        elif event.type == "command.finished":
            command = str(d.get("command", ""))
            if looks_like_test_run(command, test_command):
                exit_code = int(d.get("exit_code", -1))
                agent_tests.append(
                    {
                        "event": event.id,
                        "turn": d.get("turn"),
                        "command": short_command(command),
                        "exit_code": exit_code,
                        "seconds": d.get("seconds"),
                        "timed_out": bool(d.get("timed_out")),
                        "excerpt": excerpt(
                            str(d.get("output", "")), exit_code == 0, AGENT_EXCERPT_LINES
                        ),
                    }
                )
        elif event.type == "limit.reached":
            notes["limits"].append({"event": event.id, "reason": d.get("reason", "")})
        elif event.type == "finish.rejected":
            notes["finish_rejected"].append({"event": event.id, "turn": d.get("turn")})
        elif event.type == "format.error":
            notes["format_errors"] += 1
        elif event.type == "error":
            notes["errors"].append({"event": event.id, "message": d.get("message", "")})
        elif event.type == "diff.shrunk":
            notes["shrink"] = {"event": event.id, **d}
        elif event.type == "repair.tried":
            notes.setdefault("repair", []).append(
                {
                    "event": event.id,
                    "path": d.get("path", ""),
                    "function": d.get("function", ""),
                    "outcome": d.get("outcome", ""),
                    "sample": d.get("sample", 1),
                    "test_event": d.get("test_event"),
                }
            )
        elif event.type == "summary.written":
            notes["summary"] = {
                "event": event.id,
                "source": d.get("source", ""),
                "error": d.get("error"),
                "reason": d.get("reason", ""),
                "finish_summary": d.get("finish_summary", ""),
            }

    def find(run: Any, phase: str) -> dict[str, Any] | None:
        if run is not None:
            event = by_id.get(getattr(run, "event_id", -1))
            if event is not None and event.type == "tests.ran":
                return _test_record(event)
            return _test_record(None, run)
        phased = [e for e in tests_ran if e.data.get("phase") == phase]
        return _test_record(phased[-1]) if phased else None

    ordered = sorted(by_id.values(), key=lambda e: e.id)
    checks = []
    for position, event in enumerate(ordered):
        if event.type != "tests.ran" or event.data.get("phase") != "check":
            continue
        record = _test_record(event)
        if record is not None:
            following = ordered[position + 1] if position + 1 < len(ordered) else None
            # The loop emits finish.rejected right after a check it sends back.
            record["sent_back"] = following is not None and following.type == "finish.rejected"
            checks.append(record)
    return {
        "tests_before": find(tests_before, "before"),
        "tests_after": find(tests_after, "after"),
        "checks": checks,
        "agent_tests": agent_tests,
        "notes": notes,
    }


def read_run_log(run_dir: str | Path) -> list[Event]:
    """The events of a run, or none when its log is missing."""
    path = Path(run_dir) / "events.jsonl"
    return read_events(path) if path.is_file() else []
