"""Edit files with aider-style SEARCH/REPLACE blocks read from stdin.

The format::

    path/to/file.py            (only when FILE is not given on the command line)
    <<<<<<< SEARCH
    lines copied exactly from the file
    =======
    the lines that replace them
    >>>>>>> REPLACE

Several blocks may follow one another; they apply in order, each to the result of the ones
before it, and all or nothing: when one block fails, no file is changed. A SEARCH part
matches exactly, else ignoring trailing whitespace, else ignoring a uniform difference of
indentation (the REPLACE part is then re-indented by the same amount). An empty SEARCH part
creates a missing (or fills an empty) file.

Errors are written for a model to read and fix its blocks: each starts with
``search_replace: `` and names the block, the file and the nearest lines of the file.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "search_replace: "
USAGE = "search_replace FILE <<'EOF' ... EOF"
_SHOWN_LINES = 12  # cap on file lines quoted in one error message
_SHOWN_PLACES = 10  # cap on line numbers listed for an ambiguous match

_SEARCH = re.compile(r"^\s*<{5,9}\s*(?:SEARCH|ORIGINAL)\s*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9}\s*(?:REPLACE|UPDATED)\s*$")
_FENCE = re.compile(r"^\s*(?:```|~~~)[\w+.-]*\s*$")
_NEWLINE = re.compile(r"(\r\n|\n|\r)")

SHAPE = (
    "Expected shape:\n"
    "<<<<<<< SEARCH\n"
    "lines copied exactly from the file\n"
    "=======\n"
    "the new lines\n"
    ">>>>>>> REPLACE"
)


class SearchReplaceError(Exception):
    """The blocks could not be parsed or applied; nothing was written."""


# --------------------------------------------------------------------------- file text


@dataclass
class TextFile:
    """A text file as lines, keeping each line's own ending, the BOM and the final newline.

    Lines split at ``\\r\\n``, ``\\n`` and ``\\r`` (as Python's tokenizer does), so line
    numbers agree with ``ast``. New lines get the file's dominant ending.
    """

    lines: list[str]
    endings: list[str]
    newline: str = "\n"
    final_newline: bool = True
    bom: bool = False

    @classmethod
    def decode(cls, data: bytes, shown: str) -> TextFile:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{shown} is not UTF-8 text") from None
        return cls.from_text(text)

    @classmethod
    def from_text(cls, text: str) -> TextFile:
        bom = text.startswith("\ufeff")
        text = text.removeprefix("\ufeff")
        newline = "\r\n" if 2 * text.count("\r\n") > text.count("\n") else "\n"
        if not text:
            return cls([], [], newline, True, bom)
        parts = _NEWLINE.split(text)
        lines, endings = parts[0::2], parts[1::2]
        final_newline = lines[-1] == ""
        if final_newline:
            lines.pop()
        else:
            endings.append(newline)
        return cls(lines, endings, newline, final_newline, bom)

    @property
    def text(self) -> str:
        """The content with ``\\n`` line endings and no BOM (what ``ast`` is given)."""
        return "".join(line + "\n" for line in self.lines)

    def replace(self, start: int, end: int, new: list[str]) -> None:
        """Put `new` in place of lines[start:end]; new lines get the dominant ending."""
        self.lines[start:end] = new
        self.endings[start:end] = [self.newline] * len(new)

    def encode(self) -> bytes:
        if not self.lines:
            body = ""
        else:
            body = "".join(a + b for a, b in zip(self.lines, self.endings, strict=True))
            if not self.final_newline:
                body = body[: len(body) - len(self.endings[-1])]
        return (("\ufeff" if self.bom else "") + body).encode("utf-8")


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder, keeping the file's mode.

    A symlink is followed, so the file it points to is written and the link stays.
    """
    target = Path(os.path.realpath(path))
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except PermissionError:
        if not target.exists():
            raise
        target.write_bytes(data)  # the folder is not writable but the file is
        return
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_file(path: Path, shown: str) -> TextFile:
    """Read `path` as a TextFile; an error message naming `shown` when that is impossible."""
    try:
        return TextFile.decode(path.read_bytes(), shown)
    except IsADirectoryError:
        raise ValueError(f"{shown} is a directory, not a file") from None
    except OSError as exc:
        raise ValueError(f"cannot read {shown}: {exc.strerror or exc}") from None


def python_error(text: str) -> str | None:
    """None when `text` parses as Python, else 'line N: message'."""
    try:
        ast.parse(text)
    except SyntaxError as exc:
        return f"line {exc.lineno}: {exc.msg}"
    except ValueError as exc:  # e.g. source code string cannot contain null bytes
        return str(exc)
    return None


# --------------------------------------------------------------------------- parsing


@dataclass
class Block:
    """One SEARCH/REPLACE block; `line` is its '<<<<<<< SEARCH' line in the input (1-based)."""

    file: str
    search: list[str]
    replace: list[str]
    line: int


def _file_name(line: str) -> str | None:
    """The path a line before a block names (aider puts it there), or None for prose."""
    name = line.strip().strip("`*").strip()
    name = re.sub(r"^(?:#+\s*|(?:file|path|filename)\s*:\s*)", "", name, flags=re.I)
    name = name.strip("`*\"'").rstrip(":").strip()
    if not name or name.upper() == "EOF":
        return None
    if Path(name).exists() or (not re.search(r"\s", name) and re.search(r"[./]", name)):
        return name
    return None


def parse_blocks(text: str, file: str | None = None) -> list[Block]:
    """Parse the blocks of `text`; every block edits `file`, or the path named before it."""
    lines = text.replace("\r\n", "\n").split("\n")
    blocks: list[Block] = []
    current = file
    named: str | None = None  # a file name line seen since the last block
    i = 0
    while i < len(lines):
        line = lines[i]
        if _SEARCH.match(line):
            start = i
            target = named or current
            if file is None and target is None:
                raise SearchReplaceError(
                    f"{PREFIX}input line {i + 1}: no file for this block; give FILE "
                    f"({USAGE}) or put the file's path on the line before '<<<<<<< SEARCH'."
                )
            search: list[str] = []
            i += 1
            while i < len(lines) and not _DIVIDER.match(lines[i]):
                if _SEARCH.match(lines[i]) or _REPLACE.match(lines[i]):
                    what = lines[i].strip()
                    raise SearchReplaceError(
                        f"{PREFIX}block {len(blocks) + 1} (input line {start + 1}) is missing "
                        f"'=======' between its SEARCH and REPLACE parts (found '{what}' at "
                        f"input line {i + 1} first).\n{SHAPE}"
                    )
                search.append(lines[i])
                i += 1
            if i == len(lines):
                raise SearchReplaceError(
                    f"{PREFIX}block {len(blocks) + 1} (input line {start + 1}) is missing "
                    f"'=======' and '>>>>>>> REPLACE'; the input ended first.\n{SHAPE}"
                )
            i += 1
            replace: list[str] = []
            while i < len(lines) and not _REPLACE.match(lines[i]):
                if _SEARCH.match(lines[i]):
                    raise SearchReplaceError(
                        f"{PREFIX}block {len(blocks) + 1} (input line {start + 1}) is missing "
                        f"'>>>>>>> REPLACE' at its end (a new '<<<<<<< SEARCH' starts at input "
                        f"line {i + 1}).\n{SHAPE}"
                    )
                replace.append(lines[i])
                i += 1
            if i == len(lines):
                raise SearchReplaceError(
                    f"{PREFIX}block {len(blocks) + 1} (input line {start + 1}) is missing "
                    f"'>>>>>>> REPLACE' at its end; the input ended first.\n{SHAPE}"
                )
            assert target is not None
            blocks.append(Block(target, search, replace, start + 1))
            current, named = target, None
        elif _DIVIDER.match(line) or _REPLACE.match(line):
            raise SearchReplaceError(
                f"{PREFIX}input line {i + 1}: found '{line.strip()}' outside a block; every "
                f"block starts with '<<<<<<< SEARCH'.\n{SHAPE}"
            )
        elif file is None and line.strip() and not _FENCE.match(line):
            named = _file_name(line) or named
        i += 1
    if not blocks:
        raise SearchReplaceError(f"{PREFIX}no '<<<<<<< SEARCH' block found in the input.\n{SHAPE}")
    return blocks


# --------------------------------------------------------------------------- matching


def _leading(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _exact(chunk: list[str], search: list[str]) -> bool:
    return chunk == search


def _rstripped(chunk: list[str], search: list[str]) -> bool:
    return all(a.rstrip() == b.rstrip() for a, b in zip(chunk, search, strict=True))


def _indent_offset(chunk: list[str], search: list[str]) -> tuple[str, str] | None:
    """(added, removed): the indentation the file has more, or less, than the SEARCH lines.

    None unless every line matches once stripped and the difference is the same for all
    non-blank lines.
    """
    offset: tuple[str, str] | None = None
    for have, want in zip(chunk, search, strict=True):
        if have.strip() != want.strip():
            return None
        if not have.strip():
            continue
        h, w = _leading(have), _leading(want)
        if h.endswith(w):
            pair = (h[: len(h) - len(w)], "")
        elif w.endswith(h):
            pair = ("", w[: len(w) - len(h)])
        else:
            return None
        if offset is None:
            offset = pair
        elif pair != offset:
            return None
    return offset


def _reindent(lines: list[str], offset: tuple[str, str]) -> list[str]:
    added, removed = offset
    out = []
    for line in lines:
        if not line.strip():
            out.append(line)
        elif removed:
            cut = min(len(removed), len(_leading(line)))
            out.append(line[cut:])
        else:
            out.append(added + line)
    return out


_Match = Callable[[list[str], list[str]], bool]
_MODES: tuple[tuple[str, _Match], ...] = (
    ("exact", _exact),
    ("ignoring trailing whitespace", _rstripped),
    ("ignoring indentation", lambda c, s: _indent_offset(c, s) is not None),
)


def _find(lines: list[str], search: list[str]) -> tuple[list[int], str]:
    """Start lines of the SEARCH lines in `lines`, by the first mode that finds any."""
    n = len(search)
    first = search[0].strip()
    starts = [i for i in range(len(lines) - n + 1) if lines[i].strip() == first]
    for mode, match in _MODES:
        hits = [i for i in starts if match(lines[i : i + n], search)]
        if hits:
            return hits, mode
    return [], ""


def _trim_blank_edges(block: Block) -> tuple[list[str], list[str]] | None:
    """SEARCH without its leading and trailing blank lines, and REPLACE without as many.

    Models often pad both parts with a blank line that the file does not have there.
    """
    search, replace = list(block.search), list(block.replace)
    changed = False
    while search and not search[0].strip():
        search.pop(0)
        changed = True
        if replace and not replace[0].strip():
            replace.pop(0)
    while search and not search[-1].strip():
        search.pop()
        changed = True
        if replace and not replace[-1].strip():
            replace.pop()
    return (search, replace) if changed and search else None


def _apply_block(file: TextFile, block: Block, label: str, shown: str, edited: bool) -> None:
    search, replace = block.search, block.replace
    lines = file.lines
    hits, mode = _find(lines, search)
    if not hits and (trimmed := _trim_blank_edges(block)):
        search, replace = trimmed
        hits, mode = _find(lines, search)
    if not hits:
        raise SearchReplaceError(_not_found(file, block, label, shown, edited))
    if len(hits) > 1:
        places = ", ".join(str(h + 1) for h in hits[:_SHOWN_PLACES])
        more = f" and {len(hits) - _SHOWN_PLACES} more" if len(hits) > _SHOWN_PLACES else ""
        raise SearchReplaceError(
            f"{PREFIX}{label}: the SEARCH text matches {len(hits)} times in {shown} "
            f"(at lines {places}{more}); add more unchanged lines around the change to the "
            "SEARCH and REPLACE parts so that it matches only one place. Nothing was changed."
        )
    at = hits[0]
    chunk = lines[at : at + len(search)]
    if mode == "ignoring indentation":
        offset = _indent_offset(chunk, search)
        assert offset is not None
        replace = _reindent(replace, offset)
    file.replace(at, at + len(search), list(replace))


def _not_found(file: TextFile, block: Block, label: str, shown: str, edited: bool) -> str:
    lines = file.lines
    head = f"{PREFIX}{label}: the SEARCH text was not found in {shown}, even ignoring whitespace."
    if block.replace and _find(lines, block.replace)[0]:
        return (
            f"{head} Its REPLACE text is already there: this block seems to be applied "
            "already. Nothing was changed."
        )
    return "\n".join(
        [
            f"{head} Nothing was changed.",
            "The SEARCH part must copy lines of the file exactly (look at them first, "
            f"e.g. with: grep -n 'word' {shown}).",
            *_nearest_lines(lines, block.search, shown),
            *(["(Line numbers are as after the blocks before this one.)"] if edited else []),
        ]
    )


def _nearest_lines(lines: list[str], search: list[str], shown: str) -> list[str]:
    """Quote the part of the file most like the SEARCH lines, '!' marking lines that differ."""
    if not lines:
        return [f"{shown} is empty."]
    pattern = [s.strip() for s in search[:200]]
    n = len(pattern)
    windows = max(1, len(lines) - n + 1)
    stripped = [line.strip() for line in lines]
    # Cheap pass: how many of the SEARCH lines each window holds; the best few are then
    # compared character by character.
    wanted = {p for p in pattern if p}
    present = [int(bool(s) and s in wanted) for s in stripped]
    counts, running = [], sum(present[:n])
    for i in range(windows):
        counts.append(running)
        if i + n < len(lines):
            running += present[i + n] - present[i]
    if max(counts) > 0:
        candidates = sorted(range(windows), key=lambda i: (-counts[i], i))[:8]
    else:  # no line in common: windows starting like the SEARCH text
        first = next((p for p in pattern if p), "")
        matcher = difflib.SequenceMatcher(None, "", first, autojunk=False)
        scored = []
        for i in range(windows):
            matcher.set_seq1(stripped[i])
            quick = matcher.quick_ratio()
            scored.append((quick if len(lines) > 5000 or quick < 0.3 else matcher.ratio(), i))
        candidates = [i for _, i in sorted(scored, key=lambda s: (-s[0], s[1]))[:8]]
    joined = "\n".join(pattern)
    best_ratio, best = -1.0, candidates[0]
    for i in sorted(candidates):
        window = stripped[i : i + n]
        if len(joined) <= 5000:
            ratio = difflib.SequenceMatcher(None, "\n".join(window), joined, False).ratio()
        else:
            ratio = difflib.SequenceMatcher(None, window, pattern, False).ratio()
        if ratio > best_ratio:
            best_ratio, best = ratio, i
    differs = {
        best + k for k in range(min(n, len(lines) - best)) if stripped[best + k] != pattern[k]
    }
    if n + 2 <= _SHOWN_LINES:
        first_shown, last_shown = max(0, best - 1), min(len(lines), best + n + 1)
    else:  # show where the differences start
        first_shown = max(0, min(differs, default=best) - 2)
        last_shown = min(len(lines), first_shown + _SHOWN_LINES)
    width = len(str(last_shown))
    quoted = [f"Most similar lines of {shown} ({round(best_ratio * 100)}% similar):"]
    for i in range(first_shown, last_shown):
        quoted.append(f"  {'!' if i in differs else ' '} {i + 1:>{width}} | {lines[i]}")
    return quoted


# --------------------------------------------------------------------------- applying


@dataclass
class SearchReplaceResult:
    blocks: int = 0
    files: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: str = ""


def apply_to_text(text: str, blocks: list[Block], shown: str = "the file") -> str:
    """Apply blocks to `text` (all for one file) and return the new text."""
    file = TextFile.from_text(text)
    for n, block in enumerate(blocks, 1):
        label = f"block {n} of {len(blocks)} (input line {block.line})"
        _apply_block(file, block, label, shown, edited=n > 1)
    return file.encode().decode("utf-8")


def _similar_files(path: Path, shown: str) -> str:
    """' Similar files: ...' naming files next to `path` like it, as `shown` names it."""
    try:
        names = sorted(p.name for p in path.parent.iterdir())
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.6)
    folder = os.path.dirname(shown)
    return f" Similar files: {', '.join(os.path.join(folder, c) for c in close)}." if close else ""


def search_replace(
    text: str, file: str | None = None, root: Path | None = None
) -> SearchReplaceResult:
    """Apply the blocks of `text` to `file` (or the files they name) under `root` (default cwd).

    All or nothing: raises SearchReplaceError, with no file changed, when any block fails.
    """
    base = Path.cwd() if root is None else Path(root)
    blocks = parse_blocks(text, file)
    states: dict[str, tuple[Path, TextFile, bytes | None]] = {}  # shown -> (path, text, old)
    result = SearchReplaceResult(blocks=len(blocks))
    edited: set[str] = set()  # files that earlier blocks changed
    for n, block in enumerate(blocks, 1):
        label = f"block {n} of {len(blocks)} (input line {block.line})"
        shown = os.path.normpath(block.file)
        if shown not in states:
            path = base / shown
            if path.exists():
                try:
                    loaded = read_file(path, shown)
                except ValueError as exc:
                    raise SearchReplaceError(f"{PREFIX}{label}: {exc}.") from None
                states[shown] = (path, loaded, loaded.encode())  # encoding is lossless
            elif any(s.strip() for s in block.search):
                raise SearchReplaceError(
                    f"{PREFIX}{label}: {shown} does not exist (to create it, leave the "
                    f"SEARCH part empty).{_similar_files(path, shown)} Nothing was changed."
                )
            else:
                states[shown] = (path, TextFile([], []), None)
                result.created.append(shown)
        path, state, _ = states[shown]
        if not any(s.strip() for s in block.search):
            if any(s.strip() for s in state.lines):
                raise SearchReplaceError(
                    f"{PREFIX}{label}: the SEARCH part is empty but {shown} is not; copy the "
                    "lines to change into the SEARCH part (to add lines at the end, search "
                    "the file's last lines and repeat them in REPLACE). Nothing was changed."
                )
            state.replace(0, len(state.lines), list(block.replace))
            state.final_newline = True
            edited.add(shown)
            continue
        _apply_block(state, block, label, shown, edited=shown in edited)
        edited.add(shown)
    for shown, (path, state, old) in states.items():
        if path.suffix in (".py", ".pyi"):
            before = "" if old is None else TextFile.decode(old, shown).text
            if python_error(before) is None and (err := python_error(state.text)):
                result.warnings.append(
                    f"Warning: {shown} no longer parses as Python ({err}); fix it next."
                )
    _commit(states)
    result.files = list(states)
    created = [s for s in result.files if s in result.created]
    names = ", ".join(f"{s} (new file)" if s in created else s for s in result.files)
    result.summary = f"Applied {len(blocks)} block(s) to {names}."
    return result


def _commit(states: dict[str, tuple[Path, TextFile, bytes | None]]) -> None:
    done: list[tuple[Path, bytes | None]] = []
    for shown, (path, state, old) in states.items():
        data = state.encode()
        if data == old:
            continue
        try:
            if old is None:
                path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
            done.append((path, old))
        except OSError as exc:
            failed = []
            for done_path, done_old in reversed(done):
                try:
                    if done_old is None:
                        done_path.unlink()
                    else:
                        write_atomic(done_path, done_old)
                except OSError:
                    failed.append(str(done_path))
            undone = f"could not undo {', '.join(failed)}" if failed else "undone"
            raise SearchReplaceError(
                f"{PREFIX}writing {shown} failed ({exc.strerror or exc}); earlier files {undone}."
            ) from None


# --------------------------------------------------------------------------- command line


class UsageError(Exception):
    """A wrong command line; the edit tools report it in one line instead of exiting."""


class ToolParser(argparse.ArgumentParser):
    """argparse that raises UsageError (shared by the edit tools' command lines)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def main(argv: list[str] | None = None) -> int:
    """Console script: apply SEARCH/REPLACE blocks from stdin; 'Done. ...' or one error."""
    parser = ToolParser(
        prog="search_replace",
        description="Apply <<<<<<< SEARCH / ======= / >>>>>>> REPLACE blocks read from stdin.",
    )
    parser.add_argument("file", nargs="?", help="the file to edit (else named before each block)")
    try:
        args = parser.parse_args(argv)
        text = sys.stdin.read()
        if not text.strip():
            raise SearchReplaceError(
                f"{PREFIX}no blocks on stdin; send them with a heredoc: {USAGE}\n{SHAPE}"
            )
        result = search_replace(text, args.file)
    except UsageError as exc:
        print(f"{PREFIX}{exc}; usage: {USAGE}", file=sys.stderr)
        return 1
    except SearchReplaceError as exc:
        print(exc, file=sys.stderr)
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
