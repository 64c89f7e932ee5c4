"""Find the code a failing test run points to in a repository of many files.

A report names a failing test, rarely the file at fault, and a wrong value returned three calls
down leaves no frame of the function that computed it. The repository's Python definitions
(functions and methods, with the identifiers each one uses) make a graph: an edge from every
definition to the definitions named by what it uses (split between same-named ones, favouring
the caller's own file, the modules it imports and, for `self.x`, its own class). A personalized
PageRank over that graph, restarting at the evidence — the failing tests, the functions of
their traceback frames, the definitions the failure messages name — ranks every function by
how much of the walk from the failure reaches it (aider's repository map, with Python's `ast`
in place of tree-sitter). The functions the failing tests and their frames call directly come
first; what those call, next.

`rank_functions` ranks; context.py shows the top ones whole, within its character budget.
"""

from __future__ import annotations

import ast
import math
import re
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pullsmith.agent.failures import TestReport

# A repository bigger than this is indexed partly: the failing tests' files and what they
# import first, then the rest in listing order.
MAX_FILES = 3000
MAX_FILE_BYTES = 400_000
DAMPING = 0.85
ITERATIONS = 40

# How much each kind of evidence weighs in the restart vector of the walk.
SEED_TEST = 1.0
SEED_FRAME = 1.5
SEED_MESSAGE = 0.5
SEED_IMPORTED = 0.1
# The words of the failures and of the task, spread over the functions that match them best.
SEED_WORDS = 3.0
WORD_MATCHES = 10

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "site-packages", "__pycache__", "build"}


@dataclass(frozen=True)
class Definition:
    """A function or method (`Class.method`) of the repository, or a class (`kind`)."""

    path: str
    name: str
    start: int
    end: int
    kind: str = "function"
    is_test: bool = False

    @property
    def short(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def owner(self) -> str:
        """The class a method belongs to ("" for a function)."""
        return self.name.rsplit(".", 1)[0] if "." in self.name else ""


@dataclass(frozen=True)
class Candidate:
    """A ranked function: its definition, its share of the walk, its place (1 = first)."""

    definition: Definition
    score: float
    rank: int


@dataclass
class RepoIndex:
    """The repository's Python definitions and what each one refers to."""

    root: Path
    definitions: list[Definition] = field(default_factory=list)
    # For each definition: identifier -> how often it uses it; `self.x` counts as "self.x" too.
    uses: list[dict[str, int]] = field(default_factory=list)
    # For each definition: the word stems of its name (thrice), identifiers, strings, docstring.
    words: list[dict[str, int]] = field(default_factory=list)
    by_name: dict[str, list[int]] = field(default_factory=dict)
    # Repository-relative module path -> the repository files it imports.
    imports: dict[str, set[str]] = field(default_factory=dict)
    unparsable: list[str] = field(default_factory=list)
    skipped_files: int = 0

    def find(self, path: str, name: str) -> int | None:
        """The definition `name` (`Class.method` or a bare name) of file `path`."""
        for index in self.by_name.get(name.rsplit(".", 1)[-1], []):
            definition = self.definitions[index]
            if definition.path == path and (
                definition.name == name or definition.name.endswith("." + name)
            ):
                return index
        return None


_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
_SUFFIXES = ("ing", "ed", "ly", "es", "s")
STOP_WORDS = frozenset(
    "the and for not but are was were this that with from into than then else none true false "
    "self cls def return returns pass fix fixes test tests assert error raise raises value "
    "should does has have its when what which where who why how there their them they you your "
    "can will just only also all any one two out off get set".split()
)


def stems(text: str) -> list[str]:
    """The words of `text` (identifiers split at `_` and case changes), crudely stemmed:
    lower case, a common suffix off, at most 6 letters ("balances", "balanced" -> "balanc")."""
    found = []
    for word in _WORD.findall(text):
        word = word.lower()
        if len(word) < 3 or word in STOP_WORDS:
            continue
        for suffix in _SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                word = word[: -len(suffix)]
                break
        found.append(word[:6])
    return found


def is_test_path(path: str) -> bool:
    parts = Path(path).parts
    name = parts[-1] if parts else ""
    return (
        name.startswith("test_")
        or name.endswith("_test.py")
        or name == "conftest.py"
        or "tests" in parts[:-1]
        or "test" in parts[:-1]
    )


def python_files(root: Path) -> list[str]:
    """The repository's Python files, repository-relative: git's tracked ones, else a walk."""
    result = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.py"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode == 0 and result.stdout:
        files = [f for f in result.stdout.split("\0") if f.endswith(".py")]
    else:
        files = []
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root)
            if not _SKIP_DIRS.intersection(rel.parts[:-1]):
                files.append(rel.as_posix())
    return [f for f in files if not _SKIP_DIRS.intersection(Path(f).parts[:-1])]


class _Collector(ast.NodeVisitor):
    """The definitions of one module, each with the identifiers its body uses."""

    def __init__(self, path: str, is_test: bool) -> None:
        self.path = path
        self.is_test = is_test
        self.found: list[tuple[Definition, dict[str, int], dict[str, int]]] = []

    def collect(self, tree: ast.Module) -> None:
        self._body(tree.body, "")

    def _body(self, body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                self._add(node, prefix, "function")
            elif isinstance(node, ast.ClassDef):
                self._add(node, prefix, "class")
                self._body(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, ast.If | ast.Try):
                # Definitions under `if TYPE_CHECKING:` / `try: ... except ImportError:`.
                for block in (node.body, getattr(node, "orelse", [])):
                    self._body(block, prefix)

    def _add(
        self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, prefix: str, kind: str
    ) -> None:
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        definition = Definition(
            self.path, f"{prefix}{node.name}", start, node.end_lineno or node.lineno, kind,
            self.is_test,
        )  # fmt: skip
        uses: dict[str, int] = defaultdict(int)
        words: dict[str, int] = defaultdict(int)
        for stem in stems(definition.name):
            words[stem] += 3
        # A class uses what its bases, decorators and attributes name; its methods are their
        # own definitions (the class links to each of them).
        if isinstance(node, ast.ClassDef):
            roots: list[ast.AST] = [*node.bases, *node.decorator_list]
            roots += [
                n for n in node.body if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            ]
            for child in node.body:
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    uses[f"{node.name}.{child.name}"] += 1
        else:
            roots = [node]
        for root in roots:
            for sub in _walk_code(root):
                if isinstance(sub, ast.Name):
                    uses[sub.id] += 1
                elif isinstance(sub, ast.Attribute):
                    uses[sub.attr] += 1
                    if isinstance(sub.value, ast.Name) and sub.value.id in ("self", "cls"):
                        uses[f"self.{sub.attr}"] += 1
                elif isinstance(sub, ast.arg):
                    uses[sub.arg] += 1
                elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    for stem in stems(sub.value[:500]):
                        words[stem] += 1
        for ident in uses:
            if not ident.startswith("self."):
                for stem in stems(ident):
                    words[stem] += 1
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            uses.pop(node.name, None)  # recursion is no evidence
        self.found.append((definition, dict(uses), dict(words)))


def _walk_code(node: ast.AST) -> list[ast.AST]:
    """The nodes under `node`, type annotations left out (a type named is not a call)."""
    found: list[ast.AST] = []
    todo = [node]
    while todo:
        current = todo.pop()
        found.append(current)
        skip: set[int] = set()
        if isinstance(current, ast.arg) and current.annotation is not None:
            skip.add(id(current.annotation))
        elif isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef) and current.returns:
            skip.add(id(current.returns))
        elif isinstance(current, ast.AnnAssign):
            skip.add(id(current.annotation))
        todo.extend(child for child in ast.iter_child_nodes(current) if id(child) not in skip)
    return found


def _module_imports(tree: ast.Module, path: str, known: set[str]) -> set[str]:
    """The repository files module `path` imports (absolute and relative imports)."""
    package = Path(path).parent
    names: list[Path] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(Path(*alias.name.split(".")) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.parent
            else:
                base = Path()
            module = base / Path(*node.module.split(".")) if node.module else base
            names.append(module)
            names.extend(module / alias.name for alias in node.names)
    found: set[str] = set()
    for name in names:
        for base in (Path(), Path("src"), package):
            stem = (base / name).as_posix()
            for candidate in (f"{stem}.py", f"{stem}/__init__.py"):
                if candidate in known:
                    found.add(candidate)
    found.discard(path)
    return found


def build_index(
    root: Path, first: list[str] | None = None, max_files: int = MAX_FILES
) -> RepoIndex:
    """Index the Python files of `root` (those in `first` before the others, at most
    `max_files`); files that do not parse are listed in `unparsable` and skipped."""
    root = root.resolve()
    files = python_files(root)
    if first:
        wanted = [f for f in first if f in set(files)]
        files = list(dict.fromkeys([*wanted, *files]))
    index = RepoIndex(root)
    index.skipped_files = max(0, len(files) - max_files)
    files = files[:max_files]
    known = set(files)
    by_name: dict[str, list[int]] = defaultdict(list)
    for rel in files:
        path = root / rel
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                index.skipped_files += 1
                continue
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (OSError, SyntaxError, ValueError, RecursionError):
            index.unparsable.append(rel)
            continue
        collector = _Collector(rel, is_test_path(rel))
        collector.collect(tree)
        for definition, uses, words in collector.found:
            by_name[definition.short].append(len(index.definitions))
            index.definitions.append(definition)
            index.uses.append(uses)
            index.words.append(words)
        index.imports[rel] = _module_imports(tree, rel, known)
    index.by_name = dict(by_name)
    return index


def _edges(index: RepoIndex) -> list[list[tuple[int, float]]]:
    """For each definition, the definitions it uses with their weights (summing to 1)."""
    edges: list[list[tuple[int, float]]] = []
    for source, uses in enumerate(index.uses):
        mine = index.definitions[source]
        near = index.imports.get(mine.path, set())
        weights: dict[int, float] = defaultdict(float)
        for ident, count in uses.items():
            if ident.startswith("self.") or "." in ident:
                continue
            targets = [t for t in index.by_name.get(ident, []) if t != source]
            if not targets:
                continue
            preference = []
            for target in targets:
                theirs = index.definitions[target]
                factor = 1.0
                if theirs.path == mine.path:
                    factor = 4.0
                    if mine.owner and theirs.owner == mine.owner and uses.get(f"self.{ident}"):
                        factor = 8.0
                elif theirs.path in near:
                    factor = 4.0
                if theirs.is_test and not mine.is_test:
                    factor *= 0.1
                preference.append((target, factor))
            total = sum(f for _, f in preference)
            strength = count**0.5
            for target, factor in preference:
                weights[target] += strength * factor / total
        # A class links to its methods.
        if mine.kind == "class":
            for ident in uses:
                if ident.startswith(mine.short + "."):
                    target = index.find(mine.path, f"{mine.name}.{ident.split('.', 1)[1]}")
                    if target is not None:
                        weights[target] += 0.5
        total = sum(weights.values())
        edges.append([(t, w / total) for t, w in weights.items()] if total else [])
    return edges


def _pagerank(
    edges: list[list[tuple[int, float]]], restart: dict[int, float], damping: float = DAMPING
) -> list[float]:
    n = len(edges)
    total = sum(restart.values())
    personal = {node: weight / total for node, weight in restart.items()}
    rank = [0.0] * n
    for node, weight in personal.items():
        rank[node] = weight
    for _ in range(ITERATIONS):
        new = [0.0] * n
        dangling = 0.0
        for node, value in enumerate(rank):
            if not value:
                continue
            out = edges[node]
            if not out:
                dangling += value
                continue
            share = damping * value
            for target, weight in out:
                new[target] += share * weight
        back = (1.0 - damping) * sum(rank) + damping * dangling
        for node, weight in personal.items():
            new[node] += back * weight
        rank = new
    return rank


def _test_definition(index: RepoIndex, test_id: str) -> int | None:
    """The definition of a pytest id `path::Class::name[param]`."""
    if "::" not in test_id:
        return None
    path, *names = test_id.split("::")
    name = ".".join(names).split("[")[0]
    return index.find(path, name)


def word_scores(index: RepoIndex, query: str) -> dict[int, float]:
    """BM25 of each function (tests left out) against the words of `query`."""
    terms = set(stems(query))
    if not terms:
        return {}
    candidates = [
        i for i, d in enumerate(index.definitions) if d.kind == "function" and not d.is_test
    ]
    if not candidates:
        return {}
    frequency: dict[str, int] = defaultdict(int)
    lengths = {}
    for i in candidates:
        lengths[i] = sum(index.words[i].values())
        for term in terms.intersection(index.words[i]):
            frequency[term] += 1
    average = sum(lengths.values()) / len(candidates) or 1.0
    n = len(candidates)
    idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in frequency.items()}
    scores: dict[int, float] = {}
    for i in candidates:
        words = index.words[i]
        score = 0.0
        for term in terms.intersection(words):
            tf = words[term]
            score += idf[term] * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * lengths[i] / average))
        if score > 0:
            scores[i] = score
    return scores


def evidence(index: RepoIndex, report: TestReport, instruction: str = "") -> dict[int, float]:
    """The restart vector of the walk: which definitions the failing run points to, how hard."""
    seeds: dict[int, float] = defaultdict(float)
    query = [instruction]
    for failure in report.failures:
        test = _test_definition(index, failure.test)
        if test is not None:
            seeds[test] += SEED_TEST
        for frame in failure.frames:
            if not frame.function:
                continue
            # A nested function is part of the definition around it.
            parts = frame.function.split(".")
            found = None
            while parts and found is None:
                found = index.find(frame.path, ".".join(parts))
                parts.pop()
            if found is not None:
                weight = SEED_TEST if index.definitions[found].is_test else SEED_FRAME
                seeds[found] += weight
        named = {
            t
            for ident in set(_IDENT.findall(failure.message))
            for t in index.by_name.get(ident, [])
            if not index.definitions[t].is_test
        }
        for target in named:
            seeds[target] += SEED_MESSAGE / len(named)
        query += [failure.test.split("::")[-1], failure.message]
    matches = sorted(word_scores(index, "\n".join(query)).items(), key=lambda kv: -kv[1])
    matches = matches[:WORD_MATCHES]
    total = sum(score for _, score in matches)
    for target, score in matches:
        seeds[target] += SEED_WORDS * score / total
    # What the failing test modules import: every definition of those modules, a little.
    test_files = {index.definitions[s].path for s in seeds if index.definitions[s].is_test}
    imported = {module for path in test_files for module in index.imports.get(path, set())}
    members = [
        i
        for i, d in enumerate(index.definitions)
        if d.path in imported and not d.is_test and d.kind == "function"
    ]
    for member in members:
        seeds[member] += SEED_IMPORTED / len(members)
    return dict(seeds)


def rank_functions(
    root: Path,
    report: TestReport,
    instruction: str = "",
    index: RepoIndex | None = None,
    limit: int | None = None,
) -> list[Candidate]:
    """The repository's functions and methods (tests left out) most likely at fault for the
    failures of `report`, best first; empty without any evidence to start from."""
    if index is None:
        first = [frame.path for failure in report.failures for frame in failure.frames]
        first += [f.test.split("::")[0] for f in report.failures if "::" in f.test]
        index = build_index(root, first=first)
    if not index.definitions:
        return []
    seeds = evidence(index, report, instruction)
    if not seeds or not report.failures:
        return []
    scores = _pagerank(_edges(index), seeds, DAMPING)
    order = sorted(
        (
            i
            for i, d in enumerate(index.definitions)
            if d.kind == "function" and not d.is_test and scores[i] > 0
        ),
        key=lambda i: (-scores[i], index.definitions[i].path, index.definitions[i].start),
    )
    if limit is not None:
        order = order[:limit]
    return [Candidate(index.definitions[i], scores[i], rank) for rank, i in enumerate(order, 1)]
