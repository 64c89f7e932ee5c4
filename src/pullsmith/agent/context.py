"""What the model should know before its first turn: instructions, files, how to test."""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

from pullsmith.agent.failures import called_names, function_source, parse_test_output

AGENTS_MD_CAP = 32 * 1024
LISTING_CAP = 200
SOURCE_FILE_CAP = 12 * 1024

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


def file_listing(root: Path, cap: int = LISTING_CAP) -> str:
    """Tracked files, one per line, cut to `cap` entries."""
    result = subprocess.run(
        ["git", "ls-files"], cwd=root, capture_output=True, text=True, check=False
    )
    files = result.stdout.splitlines()
    shown = files[:cap]
    if len(files) > cap:
        shown.append(f"[... and {len(files) - cap} more files ...]")
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


def evidence_sources(root: Path, output: str, limit: int = 4) -> list[str]:
    """The code a failing test run points to, ready to show: small files whole (a small model
    edits best when it sees the whole file), big ones cut to the functions that the traceback
    frames and the failing tests' calls name."""
    root = root.resolve()
    report = parse_test_output(root, output)
    paths = relevant_sources(root, output, limit=limit)
    wanted: dict[Path, set[str]] = {}
    called: set[str] = set()
    for failure in report.failures:
        for frame in failure.frames:
            path = (root / frame.path).resolve()
            if frame.function:
                wanted.setdefault(path, set()).add(frame.function)
            if _is_test_file(path) and frame.function:
                called |= called_names(path, frame.function)
        if "::" in failure.test:
            test_path = (root / failure.test.split("::")[0]).resolve()
            test_name = failure.test.split("::")[-1].split("[")[0]
            wanted.setdefault(test_path, set()).add(test_name)
            called |= called_names(test_path, test_name)
            if test_path.is_file() and test_path not in paths:
                paths.append(test_path)
    # Code first, then the tests: the fix belongs in the code.
    paths = sorted(dict.fromkeys(paths), key=_is_test_file)
    shown: list[str] = []
    for path in paths[:limit]:
        if path.stat().st_size <= SOURCE_FILE_CAP:
            shown.append(source_excerpt(root, path))
            continue
        names = sorted(wanted.get(path, set()) | {n for n in called if function_source(path, n)})
        pieces = []
        for name in names:
            found = function_source(path, name)
            if found:
                start, end, text = found
                pieces.append(f"# lines {start}-{end}\n{text}")
        if pieces:
            rel = path.relative_to(root)
            body = "\n\n".join(pieces)
            shown.append(f"{rel} (only the functions the failure points to):\n```\n{body}\n```")
        else:
            shown.append(source_excerpt(root, path))
    return shown
