"""pypi-bugs: small realistic bugs injected into real pure-Python libraries, with their own tests.

Each library's package and its pytest suite (from its pinned sdist) are committed under
`libs/<name>/`; `bugs.jsonl` holds the injected bugs, one a line (the line changed, what it was
and what it became, the tests it makes fail and their error lines). Two roles:

  maintainer, run once with the venv's python (network: PyPI only; runs the libraries' tests):

    python suites/pypi-bugs/build.py fetch [--cache SDIST_DIR] [NAME...]  # pip download, trim
    python suites/pypi-bugs/build.py inject [NAME...]  # find bug sites with ast, keep 1-6-failure ones

  suite builder: `tasks(suite_dir)` (suite.toml names this file) turns libs/ + bugs.jsonl into
  task dicts, with no network and no test run.

    python suites/pypi-bugs/build.py show jmespath-01   # print one task's statement and metadata

Only the standard library is used.
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

SUITE_DIR = Path(__file__).resolve().parent
LIBS = "libs"
BUGS = "bugs.jsonl"
SEED = 20261201
PER_LIBRARY = 10
MAX_TRIES = 60
MIN_FAILURES, MAX_FAILURES = 1, 6
# No plugins of whatever environment runs the tests: these suites need none, and loading them
# takes most of a run.
PYTEST = "PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python -m pytest -q -p no:cacheprovider"
TEST_TIMEOUT_S = 180
RESTORED = "# pullsmith: test files are restored before scoring\n"


# NamedTuples, not dataclasses: pullsmith loads this file by path without registering it in
# sys.modules, where a dataclass looks its module up.
class Library(NamedTuple):
    name: str  # as on PyPI
    version: str
    package: str  # the package's directory inside the sdist
    licenses: tuple[str, ...]
    drop_tests: tuple[str, ...] = ()  # test files left out, and why (README)
    ini: tuple[str, ...] = ()  # extra lines for the [pytest] section
    # (test file, text, replacement): edits to the library's tests, each matching once
    edits: tuple[tuple[str, str, str], ...] = ()
    skip_sources: tuple[str, ...] = ()  # package files no bug is injected into
    # other sdist files kept as they are, e.g. the egg-info whose entry points an installed
    # copy would have
    keep: tuple[str, ...] = ()
    notes: str = ""

    @property
    def package_name(self) -> str:
        return Path(self.package).name


LIBRARIES = (
    Library(
        "jmespath",
        "1.0.1",
        "jmespath",
        ("LICENSE.txt",),
        skip_sources=("jmespath/compat.py",),
        notes="the sdist has no compliance JSON files, so test_compliance.py collects nothing",
    ),
    Library(
        "semver",
        "3.0.2",
        "src/semver",
        ("LICENSE.txt",),
        drop_tests=("tests/test_pysemver-cli.py",),
        ini=(
            "pythonpath = . tests",
            "filterwarnings =\n    ignore:Function 'semver.*:DeprecationWarning",
        ),
        skip_sources=("semver/cli.py", "semver/__main__.py", "semver/__about__.py"),
    ),
    Library(
        "packaging",
        "24.1",
        "src/packaging",
        ("LICENSE", "LICENSE.APACHE", "LICENSE.BSD"),
        drop_tests=(
            "tests/test_tags.py",
            "tests/test_manylinux.py",
            "tests/test_musllinux.py",
        ),
        # test_specifiers imports test_version, whose one use of `pretend` (not installed
        # where the tests run) is a stub with one comparison method: a class of our own.
        edits=(
            ("tests/test_version.py", "import pretend\n", ""),
            (
                "tests/test_version.py",
                'pretend.stub(**{f"__{op}__": lambda other: NotImplemented})',
                'type("Stub", (), {f"__{op}__": lambda self, other: NotImplemented})()',
            ),
        ),
        notes="test_tags, test_manylinux and test_musllinux need `pretend`",
    ),
    Library("webcolors", "24.8.0", "src/webcolors", ("LICENSE",)),
    Library("mistune", "3.0.2", "src/mistune", ("LICENSE",)),
    Library(
        "Markdown",
        "3.7",
        "markdown",
        ("LICENSE.md",),
        # Its suite is unittest's: only TestCase classes are tests (test_legacy.py turns
        # warnings into errors at import, so the warning about collecting `TestSuite` is one).
        ini=("pythonpath = .", "python_classes = *TestCase"),
        skip_sources=("markdown/__main__.py", "markdown/__meta__.py", "markdown/test_tools.py"),
        # Markdown finds its extensions by name through its distribution's entry points: the
        # sdist's egg-info, on sys.path with the source tree, gives them as an install would.
        keep=tuple(
            f"Markdown.egg-info/{name}"
            for name in ("PKG-INFO", "entry_points.txt", "top_level.txt")
        ),
    ),
)
DROPPED = {
    "python-dateutil": "2.9.0.post0: the package itself imports `six`, and its tests need "
    "`six` and `freezegun`; neither is installed where the tests run"
}


def lib_dir(suite_dir: Path, lib: Library) -> Path:
    return suite_dir / LIBS / lib.name


def _chosen(names: list[str] | None) -> list[Library]:
    """The libraries named (all when none are), in LIBRARIES order."""
    known = {lib.name for lib in LIBRARIES}
    unknown = sorted(set(names or ()) - known)
    if unknown:
        raise SystemExit(
            f"no library {', '.join(unknown)}: choose from {', '.join(sorted(known))}."
        )
    return [lib for lib in LIBRARIES if not names or lib.name in names]


# --- fetch -----------------------------------------------------------------------------------


def _pytest_ini(lib: Library) -> str:
    lines = ["[pytest]", "testpaths = tests", *(lib.ini or ("pythonpath = .",))]
    return "\n".join(lines) + "\n"


def _sdist(lib: Library, tmp: str, cache: Path | None) -> Path:
    stem = f"{lib.name.lower()}-{lib.version}.tar.gz"
    if cache is not None and (cache / stem).is_file():
        return cache / stem
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        + ["--no-binary", ":all:", f"{lib.name}=={lib.version}", "-d", tmp],
        check=True,
    )
    (archive,) = Path(tmp).glob("*.tar.gz")
    return archive


def fetch(suite_dir: Path, names: list[str] | None = None, cache: Path | None = None) -> None:
    """Download each library's pinned sdist (or of those named; or take it from `cache`, a
    directory of sdists pip downloaded before) and keep its package, tests and licenses."""
    for lib in _chosen(names):
        with tempfile.TemporaryDirectory(prefix="pypi-bugs-fetch-") as tmp:
            archive = _sdist(lib, tmp, cache)
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            (root,) = [p for p in Path(tmp).iterdir() if p.is_dir()]  # the sdist's one folder
            dest = lib_dir(suite_dir, lib)
            if dest.exists():
                shutil.rmtree(dest)
            dest.mkdir(parents=True)
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
            shutil.copytree(root / lib.package, dest / lib.package_name, ignore=ignore)
            shutil.copytree(root / "tests", dest / "tests", ignore=ignore)
            for rel in lib.drop_tests:
                (dest / rel).unlink()
            for rel, text, replacement in lib.edits:
                path = dest / rel
                source = path.read_text(encoding="utf-8")
                if source.count(text) != 1:
                    raise SystemExit(f"{lib.name}: {rel} does not hold {text!r} exactly once.")
                path.write_text(source.replace(text, replacement), encoding="utf-8")
            for name in lib.licenses + lib.keep:
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / name, dest / name)
            (dest / "pytest.ini").write_text(_pytest_ini(lib), encoding="utf-8")
        result = run_tests(dest)
        print(
            f"{lib.name} {lib.version}: {result['passed']} passed, "
            f"{len(result['failed'])} failed, {result['seconds']:.1f} s"
        )
        for failure in result["failed"]:
            print(f"  FAILED {failure['nodeid']}: {failure['message'][:120]}")


# --- running a library's tests ----------------------------------------------------------------

_PLUGIN = """
import json, os

_OUT = {"passed": 0, "failed": [], "collect_errors": []}


def _lines(report):
    text = str(report.longrepr)
    lines = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
    return [line for line in lines if line][:4]


def pytest_collectreport(report):
    if report.failed:
        _OUT["collect_errors"].append(report.nodeid)


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed:
        _OUT["passed"] += 1
    elif report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash is not None else str(report.longrepr)
        _OUT["failed"].append(
            {"nodeid": report.nodeid, "when": report.when, "message": message[:600],
             "lines": _lines(report)}
        )


def pytest_sessionfinish(session, exitstatus):
    _OUT["exitstatus"] = int(exitstatus)
    with open(os.environ["PYPI_BUGS_REPORT"], "w") as handle:
        json.dump(_OUT, handle)
"""


def run_tests(tree: Path, timeout_s: float = TEST_TIMEOUT_S) -> dict[str, Any]:
    """Run the library's pytest suite in `tree` (unsandboxed: the maintainer's command)."""
    with tempfile.TemporaryDirectory(prefix="pypi-bugs-run-") as tmp:
        (Path(tmp) / "pypi_bugs_plugin.py").write_text(_PLUGIN, encoding="utf-8")
        report = Path(tmp) / "report.json"
        env = dict(os.environ)
        env.update(
            PYTHONPATH=tmp,
            PYPI_BUGS_REPORT=str(report),
            PYTHONDONTWRITEBYTECODE="1",
            PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        )
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
                + ["-p", "pypi_bugs_plugin", "--tb=short"],
                cwd=tree,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            return {"timed_out": True, "passed": 0, "failed": [], "collect_errors": ["timeout"]}
        seconds = time.monotonic() - started
        if not report.is_file():
            tail = (proc.stdout + proc.stderr)[-300:]
            return {"passed": 0, "failed": [], "collect_errors": [f"no report: {tail}"]}
        result = json.loads(report.read_text(encoding="utf-8"))
    result["seconds"] = seconds
    return result


# --- finding bug sites --------------------------------------------------------------------------

_FLIP = {
    ast.Lt: "<=",
    ast.LtE: "<",
    ast.Gt: ">=",
    ast.GtE: ">",
    ast.Eq: "!=",
    ast.NotEq: "==",
    ast.In: "not in",
    ast.NotIn: "in",
    ast.Is: "is not",
    ast.IsNot: "is",
}
_OP_TEXT = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
}
KINDS = ("flipped comparison", "off-by-one", "swapped arguments", "dropped not", "wrong variable")


class Site(NamedTuple):
    file: str  # relative to the library's directory
    line: int  # 1-based
    function: str  # qualified: Class.method
    kind: str
    original: str  # the whole line
    buggy: str


def _byte_slice(line: str, start: int, end: int) -> str:
    return line.encode("utf-8")[start:end].decode("utf-8")


def _byte_replace(line: str, start: int, end: int, new: str) -> str:
    raw = line.encode("utf-8")
    return (raw[:start] + new.encode("utf-8") + raw[end:]).decode("utf-8")


def _one_line(node: ast.AST) -> bool:
    return getattr(node, "lineno", None) is not None and node.lineno == node.end_lineno


class _Finder(ast.NodeVisitor):
    def __init__(self, rel: str, lines: list[str]) -> None:
        self.rel = rel
        self.lines = lines
        self.stack: list[str] = []
        self.locals: list[list[str]] = []
        self.sites: list[Site] = []

    # scopes
    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.stack.append(node.name)
        args = node.args
        names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
        names += [
            n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
        ]
        self.locals.append(sorted(set(names) - {"self", "cls"}))
        for stmt in node.body:
            self.visit(stmt)
        self.locals.pop()
        self.stack.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def _add(self, node: ast.AST, kind: str, start: int, end: int, new: str) -> None:
        if not self.locals:  # only inside functions
            return
        original = self.lines[node.lineno - 1]
        buggy = _byte_replace(original, start, end, new)
        if buggy != original:
            self.sites.append(
                Site(self.rel, node.lineno, ".".join(self.stack), kind, original, buggy)
            )

    # bug kinds
    def visit_Compare(self, node: ast.Compare) -> None:
        if _one_line(node) and len(node.ops) == 1:
            op, right = node.ops[0], node.comparators[0]
            left = node.left
            if _one_line(left) and _one_line(right) and left.lineno == right.lineno:
                line = self.lines[node.lineno - 1]
                gap = _byte_slice(line, left.end_col_offset, right.col_offset)
                old = _OP_TEXT[type(op)]
                pattern = r"\s*" + r"\s+".join(map(re.escape, old.split())) + r"\s*"
                match = re.fullmatch(r"(\)*)(" + pattern + r")(\(*)", gap)
                if match and "#" not in gap:
                    new_gap = f"{match.group(1)} {_FLIP[type(op)]} {match.group(3)}"
                    self._add(node, KINDS[0], left.end_col_offset, right.col_offset, new_gap)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if type(value) is int and 0 <= value <= 16 and _one_line(node):
            line = self.lines[node.lineno - 1]
            if _byte_slice(line, node.col_offset, node.end_col_offset) == str(value):
                new = str(value + 1) if value in (0, 1) else str(value - 1)
                self._add(node, KINDS[1], node.col_offset, node.end_col_offset, new)

    def visit_Call(self, node: ast.Call) -> None:
        args = node.args
        if (
            len(args) >= 2
            and not any(isinstance(a, ast.Starred) for a in args[:2])
            and all(_one_line(a) for a in args[:2])
            and args[0].lineno == args[1].lineno == node.lineno
        ):
            line = self.lines[node.lineno - 1]
            first = _byte_slice(line, args[0].col_offset, args[0].end_col_offset)
            second = _byte_slice(line, args[1].col_offset, args[1].end_col_offset)
            between = _byte_slice(line, args[0].end_col_offset, args[1].col_offset)
            if first != second and between.strip() == ",":
                self._add(
                    node,
                    KINDS[2],
                    args[0].col_offset,
                    args[1].end_col_offset,
                    second + between + first,
                )
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.Not) and _one_line(node) and _one_line(node.operand):
            line = self.lines[node.lineno - 1]
            operand = _byte_slice(line, node.operand.col_offset, node.operand.end_col_offset)
            self._add(node, KINDS[3], node.col_offset, node.end_col_offset, operand)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load) and self.locals and node.id in self.locals[-1]:
            others = [n for n in self.locals[-1] if n != node.id]
            if others:
                # the same choice every time: the site's own seeded generator
                rng = random.Random(f"{SEED}:{self.rel}:{node.lineno}:{node.col_offset}")
                self._add(node, KINDS[4], node.col_offset, node.end_col_offset, rng.choice(others))


def _docstring_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            if isinstance(node.value.value, str):
                lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def find_sites(root: Path, lib: Library) -> list[Site]:
    """Every candidate bug site in the library's package (never its tests)."""
    sites: list[Site] = []
    for path in sorted((root / lib.package_name).rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in lib.skip_sources:
            continue
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        tree = ast.parse(text)
        skip = _docstring_lines(tree)
        finder = _Finder(rel, lines)
        finder.visit(tree)
        for site in finder.sites:
            if site.line in skip or site.original.lstrip().startswith(("assert ", "raise ")):
                continue
            sites.append(site)
    return sites


def apply_site(text: str, site: Site) -> str:
    lines = text.splitlines(keepends=True)
    if lines[site.line - 1] != site.original:
        raise ValueError(f"{site.file}:{site.line} is not the recorded original line")
    lines[site.line - 1] = site.buggy
    return "".join(lines)


def _interleave(sites: list[Site], rng: random.Random) -> Iterator[Site]:
    """Shuffled within each kind, then one of each kind in turn: the bugs spread over kinds."""
    by_kind = {kind: [s for s in sites if s.kind == kind] for kind in KINDS}
    for group in by_kind.values():
        rng.shuffle(group)
    while any(by_kind.values()):
        for kind in KINDS:
            if by_kind[kind]:
                yield by_kind[kind].pop()


def _mentions(text: str, site: Site) -> bool:
    """Whether `text` names the bug's file or function (the statement must not)."""
    words = {site.function.rsplit(".", 1)[-1], site.file, Path(site.file).name}
    words |= {site.function} if "." in site.function else set()
    return any(re.search(rf"(?<![\w.]){re.escape(w)}(?![\w])", text) for w in words)


def inject(suite_dir: Path, names: list[str] | None = None) -> None:
    """Try candidate bugs in a copy of each library (or of those named); keep those that fail
    1-6 tests. The bugs of libraries not named stay as they are in bugs.jsonl.

    Each library is tried in one worker process (`build.py _worker`) that imports pytest once
    and runs the suite in-process for every candidate: starting pytest is most of a run."""
    for lib in _chosen(names):
        with tempfile.TemporaryDirectory(prefix=f"pypi-bugs-{lib.name}-") as tmp:
            work = Path(tmp) / lib.name
            shutil.copytree(lib_dir(suite_dir, lib), work)
            out = Path(tmp) / "kept.jsonl"
            env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
            subprocess.run(
                [sys.executable, __file__, "_worker", lib.name, str(work), str(out)],
                cwd=work,
                env=env,
                stdout=subprocess.DEVNULL,
                check=False,
            )
            _write_bugs(suite_dir, lib, read_bugs_file(out))


def _write_bugs(suite_dir: Path, lib: Library, kept: list[dict[str, Any]]) -> None:
    """Replace the library's bugs in bugs.jsonl (libraries in LIBRARIES order)."""
    path = suite_dir / BUGS
    order = [item.name for item in LIBRARIES]
    rows = sorted(
        [row for row in read_bugs(suite_dir) if row["library"] != lib.name] + kept,
        key=lambda row: order.index(row["library"]),
    )
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{lib.name}: {len(kept)} bugs; {len(rows)} in {path}", flush=True)


class _Collector:
    """A pytest plugin object: what one in-process run passed and failed."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[dict[str, Any]] = []
        self.collect_errors: list[str] = []

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.collect_errors.append(report.nodeid)

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call" and report.passed:
            self.passed += 1
        elif report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            message = crash.message if crash is not None else str(report.longrepr)
            lines = [
                line[1:].strip() for line in str(report.longrepr).splitlines() if line[:2] == "E "
            ]
            self.failed.append(
                {
                    "nodeid": report.nodeid,
                    "when": report.when,
                    "message": message[:600],
                    "lines": [line for line in lines if line][:4],
                }
            )


def _worker(name: str, work: Path, out: Path) -> None:
    """Run in `work` (a copy of the library): baseline, then candidates until the cap."""
    import signal

    sys.dont_write_bytecode = True
    sys.path.insert(0, str(work))
    import pytest

    lib = next(lib for lib in LIBRARIES if lib.name == name)
    package = lib.package_name
    before = set(sys.modules)

    def run(timeout: float) -> dict[str, Any]:
        for mod in list(sys.modules):
            own = mod == package or mod.startswith(package + ".")
            ours = mod not in before and not mod.startswith(("_pytest", "pytest", "pluggy"))
            if own or ours:
                del sys.modules[mod]
        collector = _Collector()

        def stop(*_: Any) -> None:
            pytest.exit("timeout")

        # CPU time, not wall time: a machine that pauses the worker must not time it out.
        signal.signal(signal.SIGVTALRM, stop)
        signal.setitimer(signal.ITIMER_VIRTUAL, timeout)
        started = time.process_time()
        try:
            code = pytest.main(
                [
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    "--tb=short",
                    "-o",
                    "console_output_style=classic",
                ],
                plugins=[collector],
            )
        finally:
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        return {
            "passed": collector.passed,
            "failed": collector.failed,
            "collect_errors": collector.collect_errors,
            "timed_out": int(code) == int(pytest.ExitCode.INTERRUPTED),
            "seconds": time.process_time() - started,
        }

    baseline = run(TEST_TIMEOUT_S)
    if baseline["failed"] or baseline["collect_errors"] or baseline["timed_out"]:
        what = [f["nodeid"] + ": " + f["message"][:200] for f in baseline["failed"][:3]]
        what += baseline["collect_errors"][:3] + (["timed out"] if baseline["timed_out"] else [])
        raise SystemExit(f"{name}: the unchanged tests do not all pass ({'; '.join(what)})")
    timeout = max(10.0, 5 * baseline["seconds"])
    rng = random.Random(f"{SEED}:{lib.name}")
    sites = find_sites(work, lib)
    kept: list[dict[str, Any]] = []
    functions: set[tuple[str, str]] = set()
    tries = 0
    for site in _interleave(sites, rng):
        if len(kept) >= PER_LIBRARY or tries >= MAX_TRIES:
            break
        if (site.file, site.function) in functions:
            continue
        original = (work / site.file).read_text(encoding="utf-8")
        buggy = apply_site(original, site)
        try:
            ast.parse(buggy)
        except SyntaxError:
            continue
        tries += 1
        (work / site.file).write_text(buggy, encoding="utf-8")
        try:
            result = run(timeout)
        finally:
            (work / site.file).write_text(original, encoding="utf-8")
        failed = result["failed"]
        ok = (
            not result["collect_errors"]
            and not result["timed_out"]
            and MIN_FAILURES <= len(failed) <= MAX_FAILURES
            and all(f["when"] == "call" for f in failed)
        )
        shown = " ".join(f["nodeid"] + " " + " ".join(f["lines"]) for f in failed)
        verdict = "keep" if ok and not _mentions(shown, site) else "skip"
        print(
            f"## {lib.name} {site.file}:{site.line} {site.kind}: {len(failed)} failed"
            f"{' (collection error)' if result['collect_errors'] else ''}"
            f"{' (timeout)' if result['timed_out'] else ''} -> {verdict}",
            file=sys.stderr,
            flush=True,
        )
        if verdict == "skip":
            continue
        functions.add((site.file, site.function))
        kept.append(
            {
                "id": f"{lib.name.lower()}-{len(kept) + 1:02d}",
                "library": lib.name,
                "version": lib.version,
                "file": site.file,
                "line": site.line,
                "function": site.function,
                "kind": site.kind,
                "original": site.original,
                "buggy": site.buggy,
                "failing": [
                    {"id": f["nodeid"], "message": f["message"], "lines": f["lines"]}
                    for f in failed
                ],
                "suite_passed": baseline["passed"],
            }
        )
        with out.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(kept[-1], ensure_ascii=False) + "\n")
    print(
        f"## {lib.name}: kept {len(kept)} of {tries} tried ({len(sites)} sites), baseline "
        f"{baseline['passed']} passed in {baseline['seconds']:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    out.touch()


# --- the suite builder --------------------------------------------------------------------------


def read_bugs_file(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_bugs(suite_dir: Path) -> list[dict[str, Any]]:
    return read_bugs_file(Path(suite_dir) / BUGS)


def _append_hunk(rel: str, text: str) -> str:
    """A patch appending one comment line to `rel`: touching a file makes the scorer put it
    back as it was in the snapshot before the patch applies, whatever the agent did to it."""
    lines = text.splitlines(keepends=True)
    header = f"diff --git a/{rel} b/{rel}\n--- a/{rel}\n+++ b/{rel}\n"
    if not lines:
        return header + "@@ -0,0 +1 @@\n+" + RESTORED
    context = lines[-3:]
    start = len(lines) - len(context) + 1
    body = "".join(" " + line for line in context[:-1])
    last = context[-1]
    if last.endswith("\n"):
        body += " " + last + "+" + RESTORED
    else:
        body += "-" + last + "\n\\ No newline at end of file\n+" + last + "\n+" + RESTORED
    return header + f"@@ -{start},{len(context)} +{start},{len(context) + 1} @@\n" + body


def restore_patch(root: Path) -> str:
    """Touch every test file (Python) and pytest.ini of the library."""
    paths = [root / "pytest.ini", *sorted((root / "tests").rglob("*.py"))]
    return "".join(
        _append_hunk(p.relative_to(root).as_posix(), p.read_text(encoding="utf-8")) for p in paths
    )


def _error_lines(failure: dict[str, Any]) -> list[str]:
    lines = failure["lines"] or [failure["message"].splitlines()[0]]
    return [line if len(line) <= 240 else line[:240] + " …" for line in lines[:3]]


def statement(bug: dict[str, Any]) -> str:
    count = len(bug["failing"])
    tests = "test fails" if count == 1 else "tests fail"
    parts = [
        f"After a recent change to {bug['library']}, {count} {tests} when I run "
        f"`{PYTEST}` in the repository:",
        "",
    ]
    for failure in bug["failing"]:
        parts.append(f"- `{failure['id']}`")
        parts.extend(f"    {line}" for line in _error_lines(failure))
    parts += [
        "",
        "The tests are right; the library's code has a bug. Find it and fix it, so that these "
        "tests pass and the rest of the suite keeps passing. Do not change the tests.",
    ]
    return "\n".join(parts)


def changed_lines(bug: dict[str, Any]) -> list[int]:
    return [bug["line"]]


def task(suite_dir: Path, bug: dict[str, Any]) -> dict[str, Any]:
    root = Path(suite_dir) / LIBS / bug["library"]
    original = (root / bug["file"]).read_text(encoding="utf-8")
    lines = original.splitlines(keepends=True)
    if lines[bug["line"] - 1] != bug["original"]:
        raise ValueError(f"{bug['id']}: {bug['file']}:{bug['line']} is not the recorded line")
    lines[bug["line"] - 1] = bug["buggy"]
    return {
        "id": bug["id"],
        "statement": statement(bug),
        "repo": f"{LIBS}/{bug['library']}",
        "files": {bug["file"]: "".join(lines)},
        "test_command": PYTEST,
        "tests": {
            "patch": restore_patch(root),
            "fail_to_pass": [f"{PYTEST} {shlex.quote(f['id'])}" for f in bug["failing"]],
            "pass_to_pass": [PYTEST],
            "timeout_s": TEST_TIMEOUT_S,
        },
        "reference": {"files": {bug["file"]: original}},
        "metadata": {
            "library": bug["library"],
            "version": bug["version"],
            "bug_file": bug["file"],
            "bug_function": bug["function"],
            "bug_line": bug["line"],
            "kind": bug["kind"],
            "reference_changed_lines": changed_lines(bug),
            "original_line": bug["original"].rstrip("\n"),
            "buggy_line": bug["buggy"].rstrip("\n"),
            "failing_tests": [f["id"] for f in bug["failing"]],
        },
    }


def tasks(suite_dir: Path) -> list[dict[str, Any]]:
    """Every task of the suite, in the order of bugs.jsonl."""
    return [task(Path(suite_dir), bug) for bug in read_bugs(suite_dir)]


def main(argv: list[str]) -> int:
    if argv[:1] == ["fetch"]:
        cache = None
        if argv[1:2] == ["--cache"] and len(argv) >= 3:
            cache, argv = Path(argv[2]), argv[:1] + argv[3:]
        fetch(SUITE_DIR, argv[1:] or None, cache)
        return 0
    if argv[:1] == ["inject"]:
        inject(SUITE_DIR, argv[1:] or None)
        return 0
    if len(argv) == 4 and argv[0] == "_worker":
        _worker(argv[1], Path(argv[2]), Path(argv[3]))
        return 0
    if len(argv) == 2 and argv[0] == "show":
        for item in tasks(SUITE_DIR):
            if item["id"] == argv[1]:
                print(item["statement"])
                print(json.dumps(item["metadata"], indent=1))
                return 0
        print(f"no task {argv[1]}", file=sys.stderr)
        return 1
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
