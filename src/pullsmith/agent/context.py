"""What the model should know before its first turn: instructions, files, how to test."""

from __future__ import annotations

import ast
import json
import re
import subprocess
from collections import Counter
from pathlib import Path

from pullsmith.agent.failures import TestReport, function_source, parse_test_output
from pullsmith.agent.localize import Candidate, rank_functions

AGENTS_MD_CAP = 32 * 1024
LISTING_CAP = 200
# More data files than this in one directory are listed as one line (see file_listing).
DATA_FILES_SHOWN = 8
SOURCE_SUFFIXES = frozenset(
    ".py .pyi .pyx .js .jsx .mjs .ts .tsx .go .rs .java .kt .scala .c .h .cc .cpp .hpp .cs "
    ".rb .php .swift .m .sh .bash .lua .pl .r .jl .ex .exs .erl .hs .ml .clj .dart .zig .vue "
    ".toml .cfg .ini .mk .cmake .gradle".split()
)
SOURCE_FILE_CAP = 12 * 1024
# What the first message shows of the code: at most this many characters (about 2,700 tokens
# of the bundled model's 8,192, a third of them for the failing tests), made of the functions
# ranked first — each one's whole file when it is at most WHOLE_FILE_CHARS.
SOURCES_CHARS = 8000
WHOLE_FILE_CHARS = 4000
MAX_FUNCTIONS = 24
# A function whose share of the walk is below this fraction of the first one's is not shown
# (every function of a module the failing tests import gets a little of it).
MIN_SCORE_SHARE = 0.05

_TEST_LINE = re.compile(
    r"^\s*(?:[-*]\s*)?(?:\*\*)?test(?:s|ing)?(?:\s+command)?(?:\*\*)?\s*:\s*`([^`]+)`", re.I | re.M
)


def agents_md_files(root: Path, subdir: Path | None = None) -> list[Path]:
    """AGENTS.md files from the repository root down to `subdir`, farthest first."""
    found = []
    current = root
    parts = subdir.parts if subdir else ()
    for part in ("", *parts):
        current = current / part if part else current
        candidate = current / "AGENTS.md"
        if candidate.is_file():
            found.append(candidate)
    return found


def collect_agents_md(root: Path, subdir: Path | None = None) -> str:
    """Concatenate AGENTS.md files; nearer files come last (they win) and survive the cap."""
    sections: list[str] = []
    total = 0
    for path in reversed(agents_md_files(root, subdir)):
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        rel = path.relative_to(root)
        section = f"# Instructions from {rel}\n{text}"
        if total + len(section) > AGENTS_MD_CAP:
            room = AGENTS_MD_CAP - total
            if room > 200:
                sections.append(section[:room] + "\n[... cut at 32 KiB ...]")
            break
        sections.append(section)
        total += len(section)
    return "\n\n".join(reversed(sections))


def test_command_from_agents_md(text: str) -> str | None:
    match = _TEST_LINE.search(text)
    return match.group(1).strip() if match else None


def detect_test_command(root: Path, agents_md: str = "") -> str | None:
    """The repository's test command: AGENTS.md first, then what the project's files imply."""
    from_agents = test_command_from_agents_md(agents_md)
    if from_agents:
        return from_agents
    makefile = root / "Makefile"
    if makefile.is_file() and re.search(r"^test\s*:", makefile.read_text(errors="replace"), re.M):
        return "make test"
    package_json = root / "package.json"
    if package_json.is_file():
        try:
            scripts = json.loads(package_json.read_text()).get("scripts", {})
        except (json.JSONDecodeError, AttributeError):
            scripts = {}
        if "test" in scripts:
            return "npm test"
    if (root / "go.mod").is_file():
        return "go test ./..."
    if (root / "Cargo.toml").is_file():
        return "cargo test"
    python_markers = ("pytest.ini", "conftest.py", "setup.cfg", "tox.ini", "pyproject.toml")
    has_tests = (
        any(root.glob("test_*.py")) or any(root.glob("*_test.py")) or (root / "tests").is_dir()
    )
    if has_tests or any((root / marker).is_file() for marker in python_markers):
        return "python -m pytest -q"
    return None


_PROGRESS = re.compile(r"^[.FEsxX]+ *(?:\[ *\d+%\])?$")


def without_progress(output: str) -> str:
    """A test run's output without pytest's progress lines (`....F... [ 45%]`): a suite of a
    thousand tests prints a dozen of them, and they say nothing the failures do not."""
    lines = output.splitlines()
    kept = [line for line in lines if not _PROGRESS.match(line.strip()) or not line.strip()]
    dropped = len(lines) - len(kept)
    if not dropped:
        return output
    return f"[{dropped} progress lines left out]\n" + "\n".join(kept)


def file_listing(root: Path, cap: int = LISTING_CAP) -> str:
    """Tracked files, one per line, cut to `cap` entries; a directory's data files (anything
    but source code), when there are more than `DATA_FILES_SHOWN` of them, as one line that
    counts them by extension: a test fixtures directory of 40 text files costs a line, not a
    thousand characters of the first message."""
    result = subprocess.run(
        ["git", "ls-files"], cwd=root, capture_output=True, text=True, check=False
    )
    files = result.stdout.splitlines()
    data: dict[str, list[str]] = {}
    for name in files:
        if Path(name).suffix.lower() not in SOURCE_SUFFIXES:
            data.setdefault(str(Path(name).parent), []).append(name)
    # The top directory (README, LICENSE, package.json, ...) is always listed file by file.
    folded = {d for d, names in data.items() if len(names) > DATA_FILES_SHOWN and d != "."}
    lines: list[str] = []
    for name in files:
        parent = str(Path(name).parent)
        if parent not in folded or Path(name).suffix.lower() in SOURCE_SUFFIXES:
            lines.append(name)
        elif name == data[parent][0]:
            kinds = Counter(Path(n).suffix.lower() or "no extension" for n in data[parent])
            counts = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
            lines.append(f"{parent}/: {len(data[parent])} data files ({counts})")
    shown = lines[:cap]
    if len(lines) > cap:
        shown.append(f"[... and {len(lines) - cap} more files ...]")
    return "\n".join(shown)


_FRAME = re.compile(r'(?:File "([^"]+)", line \d+|^([\w./-]+\.\w+):\d+)', re.M)


def files_in_output(root: Path, output: str, limit: int = 4) -> list[Path]:
    """Repository files that a test run's tracebacks point to, in order of first mention."""
    seen: list[Path] = []
    resolved_root = root.resolve()
    for match in _FRAME.finditer(output):
        name = match.group(1) or match.group(2)
        path = Path(name)
        path = path if path.is_absolute() else resolved_root / path
        try:
            path = path.resolve()
            path.relative_to(resolved_root)
        except (OSError, ValueError):
            continue
        if path.is_file() and path not in seen and "site-packages" not in path.parts:
            seen.append(path)
        if len(seen) >= limit:
            break
    return seen


def local_imports(root: Path, path: Path) -> list[Path]:
    """Repository modules a Python file imports (the code a failing test exercises)."""
    if path.suffix != ".py":
        return []
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except SyntaxError:
        return []
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    found: list[Path] = []
    for name in names:
        rel = Path(*name.split("."))
        for base in (root, root / "src", path.parent):
            for candidate in (base / rel.with_suffix(".py"), base / rel / "__init__.py"):
                if candidate.is_file() and candidate.resolve() not in found:
                    found.append(candidate.resolve())
    # A package's __init__ is only worth showing when nothing more specific was found.
    specific = [p for p in found if p.name != "__init__.py" or p.stat().st_size > 200]
    return specific


def relevant_sources(root: Path, output: str, limit: int = 4) -> list[Path]:
    """Files worth showing up front: code the failing tests import first, then the tests."""
    frames = files_in_output(root, output, limit=limit)
    code: list[Path] = []
    for frame in frames:
        for module in local_imports(root.resolve(), frame):
            if module not in code and module not in frames:
                code.append(module)
    return (code + frames)[:limit]


def source_excerpt(root: Path, path: Path, cap: int = SOURCE_FILE_CAP) -> str:
    text = path.read_text(encoding="utf-8", errors="replace")
    if len(text) > cap:
        text = text[:cap] + "\n[... file continues ...]"
    return f"{path.relative_to(root.resolve())}:\n```\n{text.rstrip()}\n```"


def _is_test_file(path: Path) -> bool:
    name = path.name
    return name.startswith("test_") or name.endswith("_test.py") or "tests" in path.parts


def evidence_sources(
    root: Path,
    output: str,
    limit: int = 4,
    budget: int = SOURCES_CHARS,
    rank: bool = True,
    report: TestReport | None = None,
    ranked: list[Candidate] | None = None,
) -> list[str]:
    """The code a failing test run points to, ready to show, within `budget` characters: the
    functions `localize.rank_functions` ranks first — a small file whole (a small model edits
    best when it sees the whole file), a big one cut to those functions — then the failing
    tests. Without a ranking (no failing test understood, or `rank` off: the `localize`
    setting), the files of the tracebacks and what they import. `report` and `ranked`, when
    given, are `output` already parsed and ranked (the attempt's direct repair uses them too)."""
    root = root.resolve()
    if report is None:
        report = parse_test_output(root, output)
    if not rank or not report.failures:
        ranked = []
    elif ranked is None:
        ranked = rank_functions(root, report)
    if not ranked:
        return _frame_sources(root, output, report, limit, budget)
    tests = _test_pieces(root, report, budget // 3)
    room = budget - sum(len(piece) for piece in tests)
    shown: list[str] = []
    whole: set[Path] = set()
    # Functions per file, in the order of each file's best function.
    cut: dict[Path, list[tuple[int, int, str]]] = {}
    used = 0
    # A Python file the output names that does not parse has no functions to rank: whole.
    for path in files_in_output(root, output):
        if path.suffix == ".py" and not _is_test_file(path) and not _parses(path):
            shown.append(source_excerpt(root, path, cap=min(SOURCE_FILE_CAP, room // 2)))
            whole.add(path)
            used += len(shown[-1])
    floor = ranked[0].score * MIN_SCORE_SHARE
    for candidate in ranked[:MAX_FUNCTIONS]:
        if candidate.score < floor:
            break
        definition = candidate.definition
        path = root / definition.path
        if path in whole or any(s <= definition.start <= e for s, e, _ in cut.get(path, [])):
            continue
        size = path.stat().st_size
        if path not in cut and size <= WHOLE_FILE_CHARS and used + size + 50 <= room:
            whole.add(path)
            shown.append(source_excerpt(root, path))
            used += len(shown[-1])
            continue
        found = function_source(path, definition.name)
        if found is None:
            continue
        piece = f"# lines {found[0]}-{found[1]}\n{found[2]}"
        if used + len(piece) + len(definition.path) + 60 > room:
            continue
        if path not in cut:
            cut[path] = []
            shown.append(str(path))  # a placeholder, filled in below
            used += len(definition.path) + 60
        cut[path].append(found)
        used += len(piece) + 2
    for number, item in enumerate(shown):
        path = Path(item)
        if path in cut:
            body = "\n\n".join(f"# lines {a}-{b}\n{text}" for a, b, text in sorted(cut[path]))
            shown[number] = (
                f"{path.relative_to(root)} (only the functions the failures most likely "
                f"reach):\n```\n{body}\n```"
            )
    return shown + tests


def _parses(path: Path) -> bool:
    try:
        ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return False
    return True


def _test_pieces(root: Path, report: TestReport, budget: int) -> list[str]:
    """The failing tests: their files whole when small, else the failing test functions."""
    wanted: dict[Path, set[str]] = {}
    for failure in report.failures:
        if "::" in failure.test:
            path = (root / failure.test.split("::")[0]).resolve()
            name = ".".join(failure.test.split("::")[1:]).split("[")[0]
            wanted.setdefault(path, set()).add(name)
        for frame in failure.frames:
            path = (root / frame.path).resolve()
            if _is_test_file(path) and frame.function:
                wanted.setdefault(path, set()).add(frame.function)
    pieces: list[str] = []
    used = 0
    for path, names in wanted.items():
        if not path.is_file():
            continue
        if path.stat().st_size <= WHOLE_FILE_CHARS:
            piece = source_excerpt(root, path)
        else:
            found = [function_source(path, name) for name in sorted(names)]
            parts = [f"# lines {f[0]}-{f[1]}\n{f[2]}" for f in found if f]
            if not parts:
                continue
            body = "\n\n".join(parts)
            piece = f"{path.relative_to(root)} (only the failing tests):\n```\n{body}\n```"
        if used + len(piece) > budget:
            piece = piece[: max(0, budget - used - 40)].rstrip() + "\n[... cut ...]\n```"
            if budget - used < 400:
                break
        pieces.append(piece)
        used += len(piece)
    return pieces


def _frame_sources(
    root: Path, output: str, report: TestReport, limit: int, budget: int
) -> list[str]:
    """The files the tracebacks name (a file that does not parse, a crash outside any test):
    small ones whole, big ones cut to the functions the frames name, within `budget`."""
    paths = relevant_sources(root, output, limit=limit)
    wanted: dict[Path, set[str]] = {}
    for failure in report.failures:
        for frame in failure.frames:
            if frame.function:
                wanted.setdefault((root / frame.path).resolve(), set()).add(frame.function)
    paths = sorted(dict.fromkeys(paths), key=_is_test_file)
    shown: list[str] = []
    used = 0
    for path in paths[:limit]:
        piece = ""
        if path.stat().st_size > SOURCE_FILE_CAP:
            found = [function_source(path, name) for name in sorted(wanted.get(path, set()))]
            parts = [f"# lines {f[0]}-{f[1]}\n{f[2]}" for f in found if f]
            if parts:
                body = "\n\n".join(parts)
                rel = path.relative_to(root)
                piece = f"{rel} (only the functions the failure points to):\n```\n{body}\n```"
        piece = piece or source_excerpt(root, path, cap=max(0, min(SOURCE_FILE_CAP, budget - used)))
        if used + len(piece) > budget + 200 and shown:
            break
        shown.append(piece)
        used += len(piece)
    return shown
