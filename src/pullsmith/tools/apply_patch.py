"""Apply a patch in the Codex ``apply_patch`` format to a directory tree.

The format::

    *** Begin Patch
    *** Add File: path/new.py
    +line one
    *** Delete File: path/old.py
    *** Update File: path/mod.py
    *** Move to: path/renamed.py
    @@ def foo():
     context line
    -removed line
    +added line
    *** End of File
    *** End Patch

The parser is lenient where small models are sloppy (fences or shell noise around the
patch, a missing ``*** End Patch``, blank lines standing for empty context lines) and the
errors are written for a model to read and fix its patch: they name the file, the hunk and
the nearest lines of the file.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

BEGIN = "*** Begin Patch"
END = "*** End Patch"
ADD = "*** Add File:"
DELETE = "*** Delete File:"
UPDATE = "*** Update File:"
MOVE = "*** Move to:"
END_OF_FILE = "*** End of File"

_SHOWN_LINES = 12  # cap on patch or file lines quoted in one error message
_UNIFIED_RANGE = re.compile(r"^-\d+(?:,\d+)? \+\d+(?:,\d+)? @@(.*)$")


class PatchError(Exception):
    """The patch could not be parsed or applied; the message says where and why."""


@dataclass
class Hunk:
    """One ``@@`` section: diff lines that each start with ' ', '-' or '+'."""

    anchor: str | None
    lines: list[str] = field(default_factory=list)
    end_of_file: bool = False
    patch_line: int = 0

    @property
    def old(self) -> list[str]:
        return [line[1:] for line in self.lines if line[0] in " -"]

    @property
    def new(self) -> list[str]:
        return [line[1:] for line in self.lines if line[0] in " +"]


@dataclass
class AddFile:
    path: str
    content: str


@dataclass
class DeleteFile:
    path: str


@dataclass
class UpdateFile:
    path: str
    hunks: list[Hunk] = field(default_factory=list)
    move_to: str | None = None


FileOp = AddFile | DeleteFile | UpdateFile


@dataclass
class Patch:
    ops: list[FileOp]


@dataclass
class ApplyResult:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    moved: list[tuple[str, str]] = field(default_factory=list)
    summary: str = ""


# --------------------------------------------------------------------------- parsing


def parse_patch(text: str) -> Patch:
    """Parse patch text into file operations, or raise PatchError naming the bad line."""
    return _Parser(text).parse()


def _is_op_header(line: str) -> bool:
    return line.startswith((ADD, DELETE, UPDATE))


def _is_trailing_noise(line: str) -> bool:
    # What a model leaves after the patch when it forgets '*** End Patch'.
    stripped = line.strip()
    return not stripped or stripped.startswith("```") or stripped.strip("'\"") == "EOF"


class _Parser:
    def __init__(self, text: str) -> None:
        self.lines = text.replace("\r\n", "\n").split("\n")
        begin = next((i for i, ln in enumerate(self.lines) if ln.strip() == BEGIN), None)
        if begin is None:
            raise PatchError(f"Patch line 1: expected '{BEGIN}' to start the patch; none found.")
        end = next(
            (i for i in range(begin + 1, len(self.lines)) if self.lines[i].rstrip() == END), None
        )
        if end is None:
            end = len(self.lines)
            while end > begin + 1 and _is_trailing_noise(self.lines[end - 1]):
                end -= 1
        self.pos = begin + 1
        self.end = end

    def error(self, expected: str) -> PatchError:
        got = repr(self.lines[self.pos]) if self.pos < self.end else "the end of the patch"
        return PatchError(f"Patch line {self.pos + 1}: expected {expected}, got {got}.")

    def header_path(self, prefix: str) -> str:
        path = self.lines[self.pos][len(prefix) :].strip()
        if not path:
            raise self.error(f"a file path after '{prefix}'")
        return path

    def parse(self) -> Patch:
        ops: list[FileOp] = []
        while self.pos < self.end:
            line = self.lines[self.pos]
            if not line.strip():
                self.pos += 1
            elif line.startswith(ADD):
                ops.append(self.parse_add())
            elif line.startswith(DELETE):
                ops.append(DeleteFile(self.header_path(DELETE)))
                self.pos += 1
            elif line.startswith(UPDATE):
                ops.append(self.parse_update())
            else:
                raise self.error(f"'{ADD}', '{UPDATE}', '{DELETE}' or '{END}'")
        if not ops:
            raise PatchError("The patch contains no file operations.")
        return Patch(ops)

    def parse_add(self) -> AddFile:
        path = self.header_path(ADD)
        self.pos += 1
        content: list[str] = []
        blanks = 0  # held back so that blank lines before the next header are not content
        while self.pos < self.end and not _is_op_header(line := self.lines[self.pos]):
            if line.startswith("+"):
                content += [""] * blanks + [line[1:]]
                blanks = 0
            elif not line.strip():
                blanks += 1
            else:
                raise self.error(f"a line starting with '+' (content of the new file {path})")
            self.pos += 1
        return AddFile(path, "".join(line + "\n" for line in content))

    def parse_update(self) -> UpdateFile:
        header_pos = self.pos
        op = UpdateFile(self.header_path(UPDATE))
        self.pos += 1
        if self.pos < self.end and self.lines[self.pos].startswith(MOVE):
            op.move_to = self.header_path(MOVE)
            self.pos += 1
        hunk: Hunk | None = None
        # Blank lines become empty context only when more hunk lines follow; trailing
        # ones are usually just spacing before the next header.
        blanks = 0
        while self.pos < self.end and not _is_op_header(line := self.lines[self.pos]):
            if line.startswith("@@"):
                hunk = Hunk(_parse_anchor(line), patch_line=self.pos + 1)
                op.hunks.append(hunk)
                blanks = 0
            elif line.rstrip() == END_OF_FILE:
                if hunk is None or not hunk.lines:
                    raise self.error("hunk lines before '*** End of File'")
                hunk.end_of_file = True
                hunk, blanks = None, 0
            elif not line.strip() and not line.startswith(" "):
                if hunk is not None:
                    blanks += 1
            elif line[0] in " +-":
                if hunk is None:  # the first hunk may omit its '@@'
                    hunk = Hunk(None, patch_line=self.pos + 1)
                    op.hunks.append(hunk)
                hunk.lines += [" "] * blanks + [line]
                blanks = 0
            elif not line.startswith("\\"):  # '\ No newline at end of file' is ignorable
                raise self.error(
                    "a hunk line starting with ' ', '+' or '-', an '@@' line, "
                    f"'{END_OF_FILE}' or a new file header"
                )
            self.pos += 1
        for h in op.hunks:
            if not h.lines:
                raise PatchError(f"Patch line {h.patch_line}: this '@@' hunk has no lines.")
        if not op.hunks and op.move_to is None:
            raise PatchError(
                f"Patch line {header_pos + 1}: expected at least one hunk for {op.path}."
            )
        return op


def _parse_anchor(line: str) -> str | None:
    text = line[2:].strip()
    # Models trained on unified diffs write '@@ -3,4 +3,5 @@ def foo():'; keep the context.
    if match := _UNIFIED_RANGE.match(text):
        text = match.group(1).strip()
    text = text.removesuffix("@@").strip()
    return text or None


# --------------------------------------------------------------------------- matching


@dataclass
class _FileText:
    lines: list[str]
    newline: str
    final_newline: bool

    @classmethod
    def decode(cls, data: bytes, path: str) -> _FileText:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise PatchError(f"Cannot update {path}: it is not UTF-8 text.") from None
        newline = "\r\n" if 2 * text.count("\r\n") > text.count("\n") else "\n"
        text = text.replace("\r\n", "\n")
        body = text.removesuffix("\n")
        # An empty file gets a final newline once something is added to it.
        return cls(body.split("\n") if text else [], newline, text.endswith("\n") or not text)

    def encode(self) -> bytes:
        text = "\n".join(self.lines) + ("\n" if self.lines and self.final_newline else "")
        return text.replace("\n", self.newline).encode("utf-8")


# Tried in order: exact, then ignoring trailing whitespace, then ignoring both ends.
_NORMALIZERS = (lambda s: s, str.rstrip, str.strip)


def _find(lines: list[str], pattern: list[str], start: int, at_end: bool) -> int | None:
    n = len(pattern)
    last = len(lines) - n
    candidates = ([last] if last >= start else []) if at_end else range(start, last + 1)
    for norm in _NORMALIZERS:
        wanted = [norm(p) for p in pattern]
        for i in candidates:
            if all(norm(lines[i + k]) == wanted[k] for k in range(n)):
                return i
    return None


def _find_anchor(lines: list[str], anchor: str, start: int) -> int | None:
    target = anchor.strip()
    for i in range(start, len(lines)):
        if lines[i].strip() == target:
            return i
    return next((i for i in range(start, len(lines)) if target in lines[i]), None)


def _apply_hunks(path: str, lines: list[str], hunks: list[Hunk]) -> None:
    # Every hunk is located in the unmodified lines, so line numbers in errors are the
    # file's own, and the edits are made last to first so earlier positions stay valid.
    edits: list[tuple[int, int, list[str]]] = []
    cursor = 0
    for number, hunk in enumerate(hunks, 1):
        start = cursor
        if hunk.anchor is not None:
            found = _find_anchor(lines, hunk.anchor, cursor)
            if found is None:
                raise PatchError(_anchor_message(path, number, len(hunks), hunk, lines, cursor))
            start = found  # not found + 1: the anchor may be the hunk's first context line
        old = hunk.old
        if not old:
            at = start + 1 if hunk.anchor is not None and not hunk.end_of_file else len(lines)
        else:
            found = _find(lines, old, start, hunk.end_of_file)
            if found is None:
                raise PatchError(_mismatch_message(path, number, len(hunks), hunk, lines, start))
            at = found
        edits.append((at, len(old), _replacement(hunk, lines[at : at + len(old)])))
        cursor = at + len(old)
    for at, length, new in reversed(edits):
        lines[at : at + length] = new


def _replacement(hunk: Hunk, matched: list[str]) -> list[str]:
    """The hunk's new lines, keeping context lines as the file has them.

    A tolerant match may have ignored whitespace in context lines; the patch must not
    change lines it only quotes. When the patch's old lines are all indented by the same
    amount more or less than the file's (a small model quoting a nested block at the wrong
    depth), its added lines are shifted by that amount too, so they land where they belong.
    """
    remove, add = _indent_shift(hunk.old, matched)
    new, k = [], 0
    for line in hunk.lines:
        if line[0] == "+":
            text = line[1:]
            if text.strip():
                text = add + (text[len(remove) :] if text.startswith(remove) else text)
            new.append(text)
        else:
            if line[0] == " ":
                new.append(matched[k])
            k += 1
    return new


def _leading(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _indent_shift(old: list[str], matched: list[str]) -> tuple[str, str]:
    """(prefix to remove, prefix to add) turning the patch's indentation into the file's,
    when every non-blank old line differs from the file by the same prefix; else no shift."""
    shifts = set()
    for quoted, actual in zip(old, matched, strict=False):
        if not quoted.strip():
            continue
        q, a = _leading(quoted), _leading(actual)
        if a.endswith(q):
            shifts.add(("", a[: len(a) - len(q)]))
        elif q.endswith(a):
            shifts.add((q[: len(q) - len(a)], ""))
        else:
            return "", ""
    return shifts.pop() if len(shifts) == 1 else ("", "")


def _hunk_label(path: str, number: int, total: int, hunk: Hunk) -> str:
    return f"{path}: hunk {number} of {total} (patch line {hunk.patch_line})"


def _quote_hunk(hunk: Hunk) -> str:
    shown = [line for line in hunk.lines if line[0] in " -"][:_SHOWN_LINES]
    more = len(hunk.old) - len(shown)
    tail = f"\n    ... ({more} more)" if more > 0 else ""
    return "The hunk expects these lines:\n" + "\n".join(f"    {s}" for s in shown) + tail


def _after(start: int) -> str:
    return f" after line {start}" if start else ""


def _anchor_message(
    path: str, number: int, total: int, hunk: Hunk, lines: list[str], start: int
) -> str:
    anchor = (hunk.anchor or "").strip()
    scored = sorted(
        (
            (difflib.SequenceMatcher(None, anchor, line.strip()).ratio(), i)
            for i, line in enumerate(lines)
        ),
        reverse=True,
    )[:3]
    closest = [f"    {i + 1} | {lines[i]}" for _, i in sorted(scored, key=lambda s: s[1])]
    return "\n".join(
        [
            f"{_hunk_label(path, number, total, hunk)} did not match: "
            f"its anchor '@@ {anchor}' was not found{_after(start)}.",
            _quote_hunk(hunk),
            "Closest lines to the anchor:" if closest else "The file is empty.",
            *closest,
        ]
    )


def _mismatch_message(
    path: str, number: int, total: int, hunk: Hunk, lines: list[str], start: int
) -> str:
    old = hunk.old
    anywhere = _find(lines, old, 0, at_end=False)
    if anywhere is not None and hunk.end_of_file:
        why = (
            f"its lines are at line {anywhere + 1}, but it is marked '{END_OF_FILE}' "
            "and must match the last lines of the file."
        )
    elif anywhere is not None:
        why = (
            f"its lines are at line {anywhere + 1}, before line {start + 1} where this hunk "
            "may start; hunks must follow file order and their '@@' anchor."
        )
    else:
        why = f"nothing{_after(start)} matches its {len(old)} line(s), even ignoring whitespace."
    return "\n".join(
        [f"{_hunk_label(path, number, total, hunk)} did not match: {why}", _quote_hunk(hunk)]
        + _nearest_lines(lines, old, start)
    )


def _nearest_lines(lines: list[str], old: list[str], start: int) -> list[str]:
    """Quote the file window most similar to the hunk, marking lines that differ with '!'."""
    if not lines:
        return ["The file is empty."]
    n = len(old)
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2("\n".join(s.strip() for s in old))  # seq2 is the one difflib caches
    best_ratio, best = -1.0, 0
    windows = range(max(1, len(lines) - n + 1))
    # On a tie, a window where the hunk was allowed to match is the more useful one to show.
    for i in [*windows[start:], *windows[:start]]:
        matcher.set_seq1("\n".join(s.strip() for s in lines[i : i + n]))
        if matcher.real_quick_ratio() <= best_ratio or matcher.quick_ratio() <= best_ratio:
            continue
        if (ratio := matcher.ratio()) > best_ratio:
            best_ratio, best = ratio, i
    first, last = max(0, best - 1), min(len(lines), best + n + 1, best + _SHOWN_LINES)
    width = len(str(last))
    quoted = [f"Nearest lines in the file ({round(best_ratio * 100)}% similar):"]
    for i in range(first, last):
        k = i - best
        differs = 0 <= k < n and lines[i].strip() != old[k].strip()
        quoted.append(f"  {'!' if differs else ' '} {i + 1:>{width}} | {lines[i]}")
    return quoted


# --------------------------------------------------------------------------- applying


class _Workspace:
    """Planned changes over the real tree, so nothing is written until everything applies."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.pending: dict[Path, bytes | None] = {}  # None means delete
        self.modes: dict[Path, int] = {}  # moved files keep their permissions

    def resolve(self, rel: str) -> Path:
        if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).drive:
            raise PatchError(f"Path {rel!r} is absolute; use a path relative to the root.")
        name = PurePosixPath(rel).name
        if name in ("", ".", ".."):
            raise PatchError(f"Path {rel!r} does not name a file.")
        # The last component stays unresolved so that deleting a symlink removes the link,
        # but a link may not lead a write outside the root either.
        full = (self.root / rel).parent.resolve() / name
        if not (full.is_relative_to(self.root) and full.resolve().is_relative_to(self.root)):
            raise PatchError(f"Path {rel!r} points outside the root directory {self.root}.")
        return full

    def exists(self, path: Path) -> bool:
        return self.pending[path] is not None if path in self.pending else path.exists()

    def is_file(self, path: Path) -> bool:
        return self.pending[path] is not None if path in self.pending else path.is_file()

    def read(self, path: Path, rel: str) -> bytes:
        if (content := self.pending.get(path)) is not None:
            return content
        try:
            return path.read_bytes()
        except OSError as exc:
            raise PatchError(f"Cannot read {rel}: {exc.strerror or exc}.") from None

    def commit(self) -> None:
        touched: list[tuple[Path, bytes | None]] = []  # each path with its original content
        created_dirs: list[Path] = []
        for path, content in self.pending.items():
            try:
                original = path.read_bytes() if path.is_file() else None
                if content is None and original is None:
                    continue  # added and deleted within the same patch
                touched.append((path, original))
                if content is None:
                    path.unlink()
                else:
                    _make_parents(path, created_dirs)
                    path.write_bytes(content)
                    if path in self.modes:
                        os.chmod(path, self.modes[path])
            except OSError as exc:
                failed = self._rollback(touched, created_dirs)
                undone = f"could not roll back {', '.join(failed)}" if failed else "rolled back"
                rel = path.relative_to(self.root)
                raise PatchError(
                    f"Writing {rel} failed ({exc.strerror or exc}); earlier changes {undone}."
                ) from None

    def _rollback(self, touched: list[tuple[Path, bytes | None]], dirs: list[Path]) -> list[str]:
        failed = []
        for path, original in reversed(touched):
            try:
                if original is None:
                    if path.exists():
                        path.unlink()
                else:
                    path.write_bytes(original)
            except OSError:
                failed.append(str(path.relative_to(self.root)))
        for directory in reversed(dirs):
            try:
                directory.rmdir()
            except OSError:
                pass  # not empty or already gone: leaving it is harmless
        return failed


def _make_parents(path: Path, created: list[Path]) -> None:
    missing = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        directory.mkdir()
        created.append(directory)


def apply_patch(text: str, root: Path) -> ApplyResult:
    """Apply every operation of the patch under root, or change nothing and raise PatchError."""
    patch = parse_patch(text)
    ws = _Workspace(Path(root))
    result = ApplyResult()
    changes: list[str] = []
    for op in patch.ops:
        path = ws.resolve(op.path)
        if isinstance(op, AddFile):
            if ws.exists(path):
                raise PatchError(f"Cannot add {op.path}: it already exists; update it instead.")
            ws.pending[path] = op.content.encode("utf-8")
            result.added.append(op.path)
            changes.append(f"A {op.path}")
            continue
        if not ws.is_file(path):
            verb = "delete" if isinstance(op, DeleteFile) else "update"
            raise PatchError(f"Cannot {verb} {op.path}: no such file.")
        if isinstance(op, DeleteFile):
            ws.pending[path] = None
            result.deleted.append(op.path)
            changes.append(f"D {op.path}")
            continue
        text_file = _FileText.decode(ws.read(path, op.path), op.path)
        _apply_hunks(op.path, text_file.lines, op.hunks)
        content = text_file.encode()
        if op.move_to is None or ws.resolve(op.move_to) == path:
            ws.pending[path] = content
            result.updated.append(op.path)
            changes.append(f"M {op.path}")
            continue
        dest = ws.resolve(op.move_to)
        if ws.exists(dest):
            raise PatchError(f"Cannot move {op.path} to {op.move_to}: it already exists.")
        if path.exists() and path not in ws.pending:
            ws.modes[dest] = path.stat().st_mode & 0o7777
        ws.pending[path] = None
        ws.pending[dest] = content
        result.moved.append((op.path, op.move_to))
        changes.append(f"R {op.path} -> {op.move_to}")
    ws.commit()
    result.summary = ", ".join(changes)
    return result


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """Console script: apply a patch from an argument, a file or stdin to the current directory."""
    parser = argparse.ArgumentParser(
        prog="apply_patch",
        description="Apply a '*** Begin Patch' patch to the current directory.",
    )
    parser.add_argument("patch", nargs="?", help="the patch text (default: read stdin)")
    parser.add_argument("-f", "--file", type=Path, help="read the patch from FILE")
    args = parser.parse_args(argv)
    if args.patch is not None and args.file is not None:
        parser.error("give the patch as an argument or with -f, not both")
    try:
        if args.patch is not None:
            text = args.patch
        elif args.file is not None:
            text = args.file.read_text(encoding="utf-8")
        else:
            text = sys.stdin.read()
        result = apply_patch(text, Path.cwd())
    except PatchError as exc:
        print(exc, file=sys.stderr)
        return 1
    except (OSError, UnicodeDecodeError) as exc:
        print(f"apply_patch: cannot read the patch: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the reader is a model: one line beats a traceback
        print(f"apply_patch: internal error: {exc!r}", file=sys.stderr)
        return 1
    print(f"Done. {result.summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
