"""Replace one Python function, method or class with a new definition read from stdin.

Usage::

    replace_function FILE NAME <<'EOF'
    def NAME(...):
        ...
    EOF

NAME is a function, ``Class.method`` (a bare method name is enough when only one class has
it) or a class. The definition is found with ``ast`` (decorators, ``async def`` and nesting
included), and the new text, indented or not, is re-indented to the original's column. The
result must parse and the new text must define NAME, else the file is left untouched.
``--add`` appends a new definition at the end of the module (before a trailing
``if __name__ == "__main__":``) or, for ``Class.method``, at the end of the class.

Errors are written for a model to read: each starts with ``replace_function: `` and says
what exists, what is closest and how to go on.
"""

from __future__ import annotations

import ast
import difflib
import io
import os
import re
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

from pullsmith.tools.search_replace import (
    TextFile,
    ToolParser,
    UsageError,
    python_error,
    read_file,
    write_atomic,
)

PREFIX = "replace_function: "
USAGE = "replace_function FILE NAME <<'EOF' ... EOF"
ADD_USAGE = "replace_function --add FILE NAME <<'EOF' ... EOF"
PYTHON_SUFFIXES = (".py", ".pyi", ".pyw")
_SHOWN_NAMES = 25  # cap on definitions listed when NAME is not found
_FENCE = re.compile(r"^\s*(?:```|~~~)[\w+.-]*\s*$")
_DEF_LINE = re.compile(r"^([ \t]*)(?:async[ \t]+def|def|class)[ \t]+(\w+)")
_MAIN_GUARD = re.compile(r"""^if\s+__name__\s*==\s*['"]__main__['"]\s*:""")


class ReplaceFunctionError(Exception):
    """The definition could not be replaced; the file is unchanged."""


@dataclass(frozen=True)
class Definition:
    """A def or class in a file; lines are 0-based, `end` exclusive, decorators included."""

    qualname: str
    kind: str  # "function" or "class"
    start: int
    end: int
    line: int  # 1-based line of the 'def' or 'class' keyword
    decorator: str = ""  # the first decorator line without spaces and comment, or ""
    body_indent: str | None = None  # classes: the indentation of their body

    @property
    def name(self) -> str:
        return self.qualname.rpartition(".")[2]

    def describe(self) -> str:
        kind = "class, " if self.kind == "class" else ""
        return f"{self.qualname} ({kind}line {self.line})"


@dataclass
class ReplaceResult:
    name: str
    file: str
    old_lines: tuple[int, int] | None  # 1-based, inclusive; None when added
    new_lines: tuple[int, int]
    added: bool = False
    unchanged: bool = False
    warnings: list[str] = field(default_factory=list)
    summary: str = ""


# --------------------------------------------------------------------------- outline


def outline(lines: list[str]) -> tuple[list[Definition], str | None]:
    """The defs and classes of a file's lines, and its syntax error ('line N: msg') if any.

    With a syntax error the definitions are found by indentation instead of ``ast``.
    """
    source = "".join(line + "\n" for line in lines)
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return _outline_by_indent(lines), python_error(source)
    found: list[Definition] = []
    _walk(tree.body, "", found, lines)
    return found, None


def _walk(body: list[ast.stmt], prefix: str, found: list[Definition], lines: list[str]) -> None:
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            qualname = prefix + node.name
            start = min([d.lineno for d in node.decorator_list] + [node.lineno]) - 1
            body_indent = None
            if isinstance(node, ast.ClassDef) and node.body[0].lineno > node.lineno:
                body_indent = _leading(lines[node.body[0].lineno - 1])
            found.append(
                Definition(
                    qualname,
                    "class" if isinstance(node, ast.ClassDef) else "function",
                    start,
                    node.end_lineno or node.lineno,
                    node.lineno,
                    _decorator(lines[start]) if node.decorator_list else "",
                    body_indent,
                )
            )
            _walk(node.body, qualname + ".", found, lines)
            continue
        # Definitions under if/try/with/for/while/match keep their enclosing name.
        for name in ("body", "orelse", "finalbody"):
            _walk(getattr(node, name, None) or [], prefix, found, lines)
        for handler in getattr(node, "handlers", None) or []:
            _walk(handler.body, prefix, found, lines)
        for case in getattr(node, "cases", None) or []:
            _walk(case.body, prefix, found, lines)


def _decorator(line: str) -> str:
    """A decorator line without spaces or comment, for comparing two of them."""
    return re.sub(r"\s+", "", line.split("#", 1)[0])


def _leading(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _width(indent: str) -> int:
    return len(indent.expandtabs(8))


def _outline_by_indent(lines: list[str]) -> list[Definition]:
    """Definitions of a file that does not parse, found by their indentation."""
    found: list[Definition] = []
    stack: list[Definition] = []
    for i, line in enumerate(lines):
        match = _DEF_LINE.match(line)
        if not match:
            continue
        indent, name = match.group(1), match.group(2)
        # The header ends where its brackets close.
        depth, j = 0, i
        while j < len(lines):
            code = lines[j].split("#", 1)[0]
            depth += sum(code.count(c) for c in "([{") - sum(code.count(c) for c in ")]}")
            if depth <= 0:
                break
            j += 1
        last, body_indent = min(j, len(lines) - 1), None
        for k in range(j + 1, len(lines)):
            text = lines[k]
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            if _width(_leading(text)) <= _width(indent):
                break
            if body_indent is None:
                body_indent = _leading(text)
            last = k
        start = i
        while start > 0 and lines[start - 1].startswith(indent + "@"):
            start -= 1
        while stack and (
            stack[-1].end <= i or _width(_leading(lines[stack[-1].line - 1])) >= _width(indent)
        ):
            stack.pop()
        qualname = (stack[-1].qualname + "." if stack else "") + name
        kind = "class" if line.lstrip().startswith("class") else "function"
        definition = Definition(
            qualname,
            kind,
            start,
            last + 1,
            i + 1,
            _decorator(lines[start]) if start < i else "",
            body_indent if kind == "class" else None,
        )
        found.append(definition)
        stack.append(definition)
    return found


# --------------------------------------------------------------------------- the new text


def normalize_name(name: str) -> str:
    """'def parse_row(line):', 'Parser::parse' and the like, as 'parse_row', 'Parser.parse'."""
    name = name.strip().replace("::", ".")
    name = re.sub(r"^(?:async\s+)?(?:def|class)\s+", "", name)
    return re.sub(r"\(.*$", "", name).rstrip(":").strip()


def _clean_input(text: str) -> list[str]:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while lines and (not lines[0].strip() or _FENCE.match(lines[0])):
        lines.pop(0)
    while lines and (not lines[-1].strip() or _FENCE.match(lines[-1])):
        lines.pop()
    return lines


def _string_lines(lines: list[str]) -> set[int]:
    """0-based indices of lines that continue a multi-line string (their text is data)."""
    inside: set[int] = set()
    source = "".join(line + "\n" for line in lines)
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT):
                inside.update(range(token.start[0], token.end[0]))  # rows are 1-based
    except (tokenize.TokenError, SyntaxError):
        pass
    return inside


@dataclass
class Snippet:
    """The new definition at column 0; `moves[i]` is False for lines inside a multi-line
    string that keep their indentation when the definition is indented (data at column 0,
    or indented less than the text as a whole)."""

    lines: list[str]
    moves: list[bool]

    def indented(self, indent: str) -> list[str]:
        return [
            indent + line if move and line.strip() else line
            for line, move in zip(self.lines, self.moves, strict=True)
        ]


def _margin(lines: list[str], strings: set[int], rows: range) -> str:
    code = [_leading(lines[i]) for i in rows if i not in strings and lines[i].strip()]
    if not code:
        return ""
    margin = code[0]
    for indent in code[1:]:
        while not indent.startswith(margin):
            margin = margin[:-1]
    return margin


def _dedent(lines: list[str], moves: list[bool], remove: int, rows: range) -> list[str]:
    out = list(lines)
    for i in rows:
        if not lines[i].strip():
            out[i] = "" if moves[i] else lines[i]
        elif moves[i]:
            out[i] = lines[i][min(remove, len(_leading(lines[i]))) :]
    return out


def dedent_definition(text: str) -> Snippet:
    """The new definition at column 0, or raise ReplaceFunctionError if it does not parse.

    Accepts text sent unindented, indented as a whole, or with only the body indented as it
    is in the file (the first line copied without its indentation).
    """
    lines = _clean_input(text)
    if not lines:
        raise ReplaceFunctionError(
            f"{PREFIX}no new definition on stdin; send it with a heredoc: {USAGE}"
        )
    strings = _string_lines(lines)
    everything = range(len(lines))
    margin = _margin(lines, strings, everything)
    moves = [
        i not in strings or (lines[i][:1] in (" ", "\t") and lines[i].startswith(margin))
        for i in everything
    ]
    first = _dedent(lines, moves, len(margin), everything)
    error = _parse_error(first)
    # A body indented deeper than 4 under a column-0 def line is usually copied from the
    # file with its old indentation; bring it back to 4 (a uniform shift changes nothing).
    header = next((i for i, line in enumerate(first) if _DEF_LINE.match(line)), None)
    if header is not None and not _leading(first[header]):
        body = range(header + 1, len(first))
        inner = _margin(first, strings, body)
        if len(inner) > 4 and not inner.strip(" "):
            second = _dedent(first, moves, len(inner) - 4, body)
            if _parse_error(second) is None:
                return Snippet(second, moves)
    if error is None:
        return Snippet(first, moves)
    line = error.lineno or 1
    quoted = f": {first[line - 1].strip()!r}" if 0 < line <= len(first) else ""
    raise ReplaceFunctionError(
        f"{PREFIX}the new text does not parse (line {line} of the new text: {error.msg}"
        f"{quoted}); the file was not changed."
    )


def _parse_error(lines: list[str]) -> SyntaxError | None:
    try:
        ast.parse("".join(line + "\n" for line in lines))
    except SyntaxError as exc:
        return exc
    except ValueError as exc:
        return SyntaxError(str(exc))
    return None


def _defined(lines: list[str]) -> list[ast.stmt]:
    tree = ast.parse("".join(line + "\n" for line in lines))
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return [node for node in tree.body if isinstance(node, kinds)]


def _describe_defined(nodes: list[ast.stmt], lines: list[str]) -> str:
    if not nodes:
        first = next((line.strip() for line in lines if line.strip()), "")
        return f"no function or class (it starts with {first!r})"
    names = [
        f"{'class' if isinstance(n, ast.ClassDef) else 'function'} {n.name}"  # type: ignore[attr-defined]
        for n in nodes
    ]
    return ", ".join(names)


# --------------------------------------------------------------------------- finding NAME


def _matches(definitions: list[Definition], name: str) -> list[Definition]:
    exact = [d for d in definitions if d.qualname == name]
    return exact or [d for d in definitions if d.qualname.endswith("." + name)]


def _pick(candidates: list[Definition], new_lines: list[str]) -> Definition | None:
    """Among same-named definitions (overloads, property setters), the one whose first
    decorator the new text repeats, or the only undecorated one when it has none."""
    first = next((line.strip() for line in new_lines if line.strip()), "")
    decorator = _decorator(first) if first.startswith("@") else ""
    same = [d for d in candidates if d.decorator == decorator]
    return same[0] if len(same) == 1 else None


def _closest(name: str, definitions: list[Definition]) -> list[str]:
    """Up to 3 qualified names most like `name`, compared in full and by their last part."""
    leaf = name.rpartition(".")[2]
    scored = []
    for qualname in dict.fromkeys(d.qualname for d in definitions):
        ratio = max(
            difflib.SequenceMatcher(None, name, qualname).ratio(),
            difflib.SequenceMatcher(None, leaf, qualname.rpartition(".")[2]).ratio(),
        )
        if ratio >= 0.7:
            scored.append((-ratio, qualname))
    return [qualname for _, qualname in sorted(scored)[:3]]


def _not_found(shown: str, name: str, definitions: list[Definition], can_add: bool) -> str:
    close = _closest(name, definitions)
    parts = [f"{PREFIX}{name} not found in {shown}; the file was not changed."]
    if close:
        parts[0] += f" Did you mean: {', '.join(close)}?"
    if definitions:
        listed = ", ".join(d.describe() for d in definitions[:_SHOWN_NAMES])
        more = len(definitions) - _SHOWN_NAMES
        listed += f", ... ({more} more)" if more > 0 else ""
        parts.append(f"Functions and classes in {shown}: {listed}.")
    else:
        parts.append(f"{shown} defines no functions or classes.")
    if can_add:
        where = (
            f"at the end of class {name.rpartition('.')[0]}"
            if "." in name
            else "at the end of the file"
        )
        parts.append(
            f"To add {name} as a new definition {where}, run the same command with --add: "
            f"replace_function --add {shown} {name} <<'EOF' ... EOF"
        )
    return "\n".join(parts)


def _ambiguous(shown: str, name: str, candidates: list[Definition]) -> str:
    if len({d.qualname for d in candidates}) == 1:
        lines = ", ".join(str(d.line) for d in candidates)
        return (
            f"{PREFIX}{name} is defined {len(candidates)} times in {shown} (lines {lines}) and "
            "the new text does not say which (start it with the decorator of the one to "
            f"replace), or use search_replace for it; the file was not changed."
        )
    listed = ", ".join(d.describe() for d in candidates)
    return (
        f"{PREFIX}{name} matches {len(candidates)} definitions in {shown}: {listed}; name "
        "one of them in full (e.g. Class.method); the file was not changed."
    )


# --------------------------------------------------------------------------- replacing


def is_python_file(path: Path) -> bool:
    """A .py/.pyi/.pyw file, or a file without suffix whose first line is a python shebang."""
    if path.suffix in PYTHON_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        with path.open("rb") as f:
            first = f.readline(200)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


def _similar_files(path: Path, shown: str) -> str:
    """' Similar files: ...' naming files next to `path` like it, as `shown` names it."""
    try:
        names = sorted(p.name for p in path.parent.iterdir())
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.6)
    folder = os.path.dirname(shown)
    return f" Similar files: {', '.join(os.path.join(folder, c) for c in close)}." if close else ""


def replace_function(
    path: Path | str, name: str, new_text: str, *, add: bool = False, shown: str | None = None
) -> ReplaceResult:
    """Replace (or with `add`, append) the definition NAME in the Python file `path`.

    Raises ReplaceFunctionError, leaving the file untouched, when anything is wrong.
    """
    path = Path(path)
    shown = shown or str(path)
    name = normalize_name(name)
    if not re.fullmatch(r"\w+(?:\.\w+)*", name):
        raise ReplaceFunctionError(
            f"{PREFIX}{name!r} is not a function name; give NAME as parse_row, Class.method "
            f"or Class: {USAGE}"
        )
    if not path.exists():
        raise ReplaceFunctionError(
            f"{PREFIX}{shown} does not exist.{_similar_files(path, shown)} To create a new file, "
            f"write it whole: cat > {shown} <<'EOF' ... EOF"
        )
    if path.is_dir():
        raise ReplaceFunctionError(f"{PREFIX}{shown} is a directory, not a file.")
    if not is_python_file(path):
        raise ReplaceFunctionError(
            f"{PREFIX}{shown} is not a Python file; replace_function only handles Python. "
            f"To edit it use search_replace {shown} <<'EOF' with SEARCH/REPLACE blocks, "
            "or apply_patch."
        )
    try:
        file = read_file(path, shown)
    except ValueError as exc:
        raise ReplaceFunctionError(f"{PREFIX}{exc}.") from None
    new = dedent_definition(new_text)
    leaf = name.rpartition(".")[2]
    defined = _defined(new.lines)
    if not any(node.name == leaf for node in defined):  # type: ignore[attr-defined]
        raise ReplaceFunctionError(
            f"{PREFIX}the new text defines {_describe_defined(defined, new.lines)}, not {name}; "
            "send the complete new definition of NAME (starting with its decorators or its "
            "def line). The file was not changed."
        )
    definitions, file_error = outline(file.lines)
    candidates = _matches(definitions, name)
    if add:
        if candidates:
            where = ", ".join(f"lines {d.start + 1}-{d.end}" for d in candidates)
            raise ReplaceFunctionError(
                f"{PREFIX}{name} already exists in {shown} ({where}); to replace it, run the "
                f"command without --add: {USAGE}"
            )
        return _add(file, path, shown, name, new, definitions, file_error)
    if not candidates:
        raise ReplaceFunctionError(_not_found(shown, name, definitions, can_add=True))
    target = candidates[0] if len(candidates) == 1 else _pick(candidates, new.lines)
    if target is None:
        raise ReplaceFunctionError(_ambiguous(shown, name, candidates))
    indent = _leading(file.lines[target.start])
    old = file.lines[target.start : target.end]
    placed = new.indented(indent)
    file.replace(target.start, target.end, placed)
    result = ReplaceResult(
        name,
        shown,
        (target.start + 1, target.end),
        (target.start + 1, target.start + len(placed)),
        unchanged=old == placed,
    )
    _check(file, shown, file_error, target.start, len(placed), result)
    if not result.unchanged:
        _write(path, file.encode(), shown)
    (a, b), (c, d) = result.old_lines or (0, 0), result.new_lines
    result.summary = f"Replaced {name} in {shown} (lines {a}-{b} -> {c}-{d})."
    if result.unchanged:
        result.summary += " The new text is the same as the old; nothing changed."
    return result


def _write(path: Path, data: bytes, shown: str) -> None:
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise ReplaceFunctionError(
            f"{PREFIX}cannot write {shown}: {exc.strerror or exc}; it was not changed."
        ) from None


def _check(
    file: TextFile, shown: str, before: str | None, start: int, count: int, result: ReplaceResult
) -> None:
    """Refuse a result that does not parse, unless the file did not parse before either and
    the error is outside the new lines (then warn)."""
    source = file.text
    try:
        ast.parse(source)
        return
    except SyntaxError as exc:
        line, msg = exc.lineno or 0, exc.msg
    except ValueError as exc:
        line, msg = 0, str(exc)
    inside = start < line <= start + count
    if before is not None and not inside:
        result.warnings.append(
            f"Warning: {shown} still does not parse (line {line}: {msg}); fix that next."
        )
        return
    where = f"line {line} of {shown}"
    if inside:
        where += f", line {line - start} of the new text"
    quoted = f": {file.lines[line - 1].strip()!r}" if 0 < line <= len(file.lines) else ""
    also = f" ({shown} did not parse before either: {before})" if before else ""
    raise ReplaceFunctionError(
        f"{PREFIX}the result would not parse ({where}: {msg}{quoted}){also}; "
        f"{shown} was not changed."
    )


def _main_guard(lines: list[str]) -> int | None:
    """The index of a trailing top-level `if __name__ == "__main__":` block, if any."""
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i]
        if _MAIN_GUARD.match(line):
            return i
        if line.strip() and not line[0].isspace() and not line.startswith("#"):
            return None
    return None


def _add(
    file: TextFile,
    path: Path,
    shown: str,
    name: str,
    new: Snippet,
    definitions: list[Definition],
    file_error: str | None,
) -> ReplaceResult:
    owner = name.rpartition(".")[0]
    if owner:
        classes = [d for d in _matches(definitions, owner) if d.kind == "class"]
        if len(classes) != 1:
            if classes:
                raise ReplaceFunctionError(_ambiguous(shown, owner, classes))
            others = [d for d in definitions if d.kind == "class"]
            message = _not_found(shown, owner, others, can_add=False)
            message = message.replace(
                f"{PREFIX}{owner} not found", f"{PREFIX}class {owner} not found", 1
            )
            raise ReplaceFunctionError(message.replace("Functions and classes in", "Classes in"))
        owner_def = classes[0]
        indent = owner_def.body_indent
        if indent is None:
            indent = _leading(file.lines[owner_def.start]) + "    "
        at = owner_def.end
        placed = [""] + new.indented(indent)
        after: list[str] = []
        where = f" at the end of class {owner_def.qualname}"
    else:
        guard = _main_guard(file.lines)
        at = len(file.lines) if guard is None else guard
        blank = 0
        while at - blank > 0 and not file.lines[at - blank - 1].strip():
            blank += 1
        before = [] if at - blank == 0 else [""] * max(0, 2 - blank)
        after = ["", ""] if guard is not None else []
        placed = before + list(new.lines) + after
        where = ""
    file.replace(at, at, placed)
    last = at + len(placed) - len(after)
    first = last - len(new.lines) + 1
    result = ReplaceResult(name, shown, None, (first, last), added=True)
    _check(file, shown, file_error, first - 1, len(new.lines), result)
    _write(path, file.encode(), shown)
    result.summary = f"Added {name} to {shown}{where} (lines {first}-{last})."
    return result


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """Console script: replace NAME in FILE with the definition on stdin."""
    parser = ToolParser(
        prog="replace_function",
        description="Replace a Python function, method or class with the definition on stdin.",
    )
    parser.add_argument("file", help="the Python file")
    parser.add_argument("name", help="function, Class.method or class to replace")
    parser.add_argument("--add", action="store_true", help="add NAME as a new definition")
    try:
        args = parser.parse_args(argv)
        path, name = Path(args.file), args.name
        if not path.exists() and Path(name).is_file():  # FILE and NAME swapped
            path, name = Path(name), args.file
        result = replace_function(path, name, sys.stdin.read(), add=args.add, shown=str(path))
    except UsageError as exc:
        print(f"{PREFIX}{exc}; usage: {USAGE}", file=sys.stderr)
        return 1
    except ReplaceFunctionError as exc:
        print(exc, file=sys.stderr)
        return 1
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{PREFIX}cannot read or write: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the reader is a model: one line beats a traceback
        print(f"{PREFIX}internal error: {exc!r}", file=sys.stderr)
        return 1
    print(f"Done. {result.summary}")
    for warning in result.warnings:
        print(warning)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
