"""Read a test run's output the way an engineer does: which tests fail, why, and where.

The agent's first message starts from this evidence (the failing tests, their assertion
messages, the traceback frames inside the repository and the source of the functions those
frames and tests point to), and best-of-N attempts are ranked by the failure counts.
Understands pytest's long and short tracebacks, its summary lines, and plain Python
tracebacks (unittest, scripts); anything else still yields a count from the exit code.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

MESSAGE_LINES = 4
MAX_FAILURES = 5

_SECTION = re.compile(r"^_{3,} (.+?) _{3,}$")
_PYTEST_FRAME = re.compile(r"^([^\s:][^:\n]*\.py):(\d+):(?: in (\w+)| ([\w.]+))?\s*$")
_PY_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)')
_SUMMARY_ITEM = re.compile(r"^(FAILED|ERROR) (\S+?)(?: - (.*))?$")
_COUNT = re.compile(r"(\d+) (failed|passed|errors?|error)\b")
_EXC_LINE = re.compile(
    r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Failure)|AssertionError)(?::|$)"
)


@dataclass(frozen=True)
class Frame:
    """One traceback entry inside the repository."""

    path: str
    line: int
    function: str = ""


@dataclass
class Failure:
    """One failing test (or a crashed script) and what the output says about it."""

    test: str
    message: str = ""
    frames: list[Frame] = field(default_factory=list)


@dataclass
class TestReport:
    failures: list[Failure]
    failed: int | None = None
    passed: int | None = None
    errors: int | None = None

    @property
    def failing(self) -> int | None:
        """How many tests fail or error, when the output says so."""
        if self.failed is None and self.errors is None:
            return None
        return (self.failed or 0) + (self.errors or 0)


def _in_repo(root: Path, name: str) -> str | None:
    path = Path(name)
    resolved_root = root.resolve()
    try:
        full = (path if path.is_absolute() else resolved_root / path).resolve()
        rel = full.relative_to(resolved_root)
    except (OSError, ValueError):
        return None
    if not full.is_file() or "site-packages" in full.parts:
        return None
    return rel.as_posix()


def _frames(root: Path, lines: list[str]) -> list[Frame]:
    frames: list[Frame] = []
    for line in lines:
        match = _PYTEST_FRAME.match(line) or _PY_FRAME.match(line)
        if not match:
            continue
        rel = _in_repo(root, match.group(1))
        if rel is None:
            continue
        number = int(match.group(2))
        function = enclosing_function(root / rel, number) or ""
        frame = Frame(rel, number, function)
        if frame not in frames:
            frames.append(frame)
    return frames


def _message(lines: list[str]) -> str:
    # pytest marks the explanation with "E   "; a plain traceback ends with "Type: message".
    marked = [
        line[1:].strip()
        for line in lines
        if line.startswith("E ") and not line[1:].strip().startswith("Use -v")
    ]
    if marked:
        kept = [m for m in marked if m][:MESSAGE_LINES]
        return "\n".join(kept)
    for index in range(len(lines) - 1, -1, -1):
        if _EXC_LINE.match(lines[index].strip()):
            return "\n".join(s.strip() for s in lines[index : index + MESSAGE_LINES] if s.strip())
    return ""


def parse_test_output(root: Path, output: str) -> TestReport:
    """The failures a test run reports, with their frames inside `root`."""
    lines = output.splitlines()
    failures: list[Failure] = []
    sections: list[tuple[str, list[str]]] = []
    current: tuple[str, list[str]] | None = None
    for line in lines:
        header = _SECTION.match(line)
        if header and not line.startswith("_ _"):
            current = (header.group(1), [])
            sections.append(current)
        elif line.startswith("=") and current is not None:
            current = None
        elif current is not None:
            current[1].append(line)
    summary: dict[str, str] = {}
    for line in lines:
        item = _SUMMARY_ITEM.match(line)
        if item:
            summary[item.group(2)] = item.group(3) or ""
    for name, body in sections:
        test_id = next((t for t in summary if t.endswith("::" + name.split(" ")[-1])), name)
        failures.append(Failure(test_id, _message(body), _frames(root, body)))
    known = {f.test for f in failures}
    for test_id, message in summary.items():
        if test_id not in known:
            failures.append(Failure(test_id, message))
    if not failures and "Traceback (most recent call last)" in output:
        tail = output[output.rindex("Traceback (most recent call last)") :].splitlines()
        failures.append(Failure("(traceback)", _message(tail), _frames(root, tail)))
    counts: dict[str, int] = {}
    for line in reversed(lines):
        found = _COUNT.findall(line)
        if found and (" in " in line or line.startswith("=")):
            for number, kind in found:
                counts["errors" if kind.startswith("error") else kind] = int(number)
            break
    return TestReport(
        failures=failures,
        failed=counts.get("failed", 0 if counts else None),
        passed=counts.get("passed"),
        errors=counts.get("errors", 0 if counts else None),
    )


def failure_count(root: Path, output: str, exit_code: int) -> int:
    """A rank for a test run: 0 when it passes, else the failing tests (at least 1)."""
    if exit_code == 0:
        return 0
    report = parse_test_output(root, output)
    failing = report.failing
    if failing:
        return failing
    return max(1, len(report.failures))


def _definitions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    ]


def _parse(path: Path) -> ast.Module | None:
    if path.suffix != ".py" or not path.is_file():
        return None
    try:
        return ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return None


def enclosing_function(path: Path, line: int) -> str | None:
    """The innermost function (as `Class.method` for methods) holding `line`, if any."""
    tree = _parse(path)
    if tree is None:
        return None
    best: tuple[int, str] | None = None

    def visit(node: ast.AST, prefix: str) -> None:
        nonlocal best
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                end = child.end_lineno or child.lineno
                start = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                if start <= line <= end:
                    if not isinstance(child, ast.ClassDef) and (best is None or start >= best[0]):
                        best = (start, name)
                    visit(child, name + ".")

    visit(tree, "")
    return best[1] if best else None


def function_source(path: Path, name: str) -> tuple[int, int, str] | None:
    """(first line, last line, text) of the function or method `name` (`Class.method`)."""
    tree = _parse(path)
    if tree is None:
        return None
    parts = name.split(".")
    nodes: list[ast.AST] = [tree]
    found: ast.AST | None = None
    for part in parts:
        found = None
        for parent in nodes:
            for child in ast.iter_child_nodes(parent):
                if (
                    isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                    and child.name == part
                ):
                    found = child
                    break
            if found:
                break
        if found is None:
            return None
        nodes = [found]
    assert isinstance(found, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    start = min([found.lineno, *(d.lineno for d in found.decorator_list)])
    end = found.end_lineno or found.lineno
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return start, end, "\n".join(lines[start - 1 : end])


def called_names(path: Path, function: str) -> set[str]:
    """Names the function `function` of a test file calls, following helpers in that file."""
    tree = _parse(path)
    if tree is None:
        return set()
    local = {node.name: node for node in _definitions(tree)}
    names: set[str] = set()
    todo = [function.split(".")[-1]]
    seen: set[str] = set()
    while todo:
        current = todo.pop()
        if current in seen or current not in local:
            continue
        seen.add(current)
        for node in ast.walk(local[current]):
            if isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.Attribute):
                names.add(node.attr)
        todo.extend(n for n in names if n in local)
    return names - seen


def summarize(report: TestReport, limit: int = MAX_FAILURES) -> str:
    """The failing tests as a short list: test id, message, frames in the repository."""
    lines: list[str] = []
    for number, failure in enumerate(report.failures[:limit], 1):
        lines.append(f"{number}. {failure.test}")
        for message_line in failure.message.splitlines():
            lines.append(f"   {message_line}")
        for frame in failure.frames:
            where = f" in {frame.function}" if frame.function else ""
            lines.append(f"   at {frame.path}:{frame.line}{where}")
    hidden = len(report.failures) - limit
    if hidden > 0:
        lines.append(f"[... and {hidden} more failing tests ...]")
    return "\n".join(lines)


# pytest-timeout's failure line ("Failed: Timeout (>8.0s) from pytest-timeout.", older
# versions "Timeout >8.0s"), and faulthandler's dump of a test still running ("Timeout (0:00:12)!").
_PER_TEST_TIMEOUT = re.compile(
    r"Timeout \(>([\d.]+)s\) from pytest-timeout|^E?\s*Failed: Timeout >([\d.]+)s|"
    r"^Timeout \((\d+:\d\d:\d\d(?:\.\d+)?)\)!$",
    re.M,
)


# A process of a test run stopped by RLIMIT_CPU: SIGXCPU (bash reports 128 + 24).
_SIGXCPU_EXITS = (152, -24)
_CPU_EXCEEDED = "CPU time limit exceeded"


# The line after which a capped run's shell prints `times` (see cpu_capped, cpu_used).
CPU_MARK = "[pullsmith: CPU time of the test run]"
_CPU_TIMES = re.compile(
    r"\n?" + re.escape(CPU_MARK) + r"\n[^\n]*\n(\d+)m([\d.]+)s (\d+)m([\d.]+)s(?:\n|\Z)"
)


def cpu_capped(command: str, cpu_s: float) -> str:
    """`command` with each of its processes limited to `cpu_s` seconds of CPU time (a soft
    RLIMIT_CPU set by the shell it runs in; 0: as it is). The command runs in a subshell, and
    then the shell prints the CPU time its children used (bash's `times`, after `CPU_MARK`),
    which `cpu_used` reads and takes out of the output; the exit code is the command's."""
    if cpu_s <= 0:
        return command
    return (
        f"ulimit -S -t {max(1, round(cpu_s))} 2>/dev/null; ( {command}\n); __pullsmith_rc=$?; "
        f"printf '\\n%s\\n' '{CPU_MARK}'; times; exit $__pullsmith_rc"
    )


def cpu_used(output: str) -> tuple[str, float | None]:
    """The output of a `cpu_capped` run without the CPU report, and the CPU seconds (user and
    system) its processes used; None when the report is missing (the run was killed)."""
    matches = list(_CPU_TIMES.finditer(output))
    if not matches:
        return output, None
    match = matches[-1]  # stderr written after it (bash's own note of a kill) stays
    minutes_u, seconds_u, minutes_s, seconds_s = match.groups()
    used = 60 * int(minutes_u) + float(seconds_u) + 60 * int(minutes_s) + float(seconds_s)
    rest = output[match.end() :]
    return output[: match.start()] + ("\n" + rest if rest else ""), round(used, 3)


def cpu_exceeded(exit_code: int, output: str) -> bool:
    """Whether a test run (or a process of it) was stopped by its CPU time limit."""
    return exit_code in _SIGXCPU_EXITS or _CPU_EXCEEDED in output


def hang_note(output: str, timed_out: bool, limit: str = "") -> str:
    """What to tell the model when a test run hung: the whole run was stopped at its timeout
    or its CPU time limit, or a test was stopped by its per-test timeout. "" when nothing
    timed out."""
    if timed_out:
        within = f" within {limit}" if limit else ""
        return (
            f"The tests did not finish{within} and were stopped: on the current code they most "
            "likely loop forever (or wait for input). Find the loop or recursion that never "
            "ends; a traceback above, if there is one, shows where a test was stuck."
        )
    match = _PER_TEST_TIMEOUT.search(output)
    if match is None:
        return ""
    seconds = match.group(1) or match.group(2)
    after = f" after {float(seconds):g} s" if seconds else ""
    return (
        f"A test was still running{after} and was stopped by its per-test timeout: on the "
        "current code it most likely loops forever (or waits for input). The stack above shows "
        "where it was stuck."
    )
