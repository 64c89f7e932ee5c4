"""Which edit forms a shell command used, and whether each worked.

The runner records per-form format-error rates with this, so it is deterministic and needs
nothing but the command, its exit code and its output (stdout and stderr together).

Forms (``FORMS``):

- ``whole-file``: a file written from a redirect: ``cat > f <<'EOF'``, ``cat <<EOF > f``,
  ``tee f``, ``printf ... > f``, ``echo ... > f`` (also ``>>``; not ``>/dev/null`` or
  ``2>&1``). Failed when its here-document is not terminated, when bash reports a
  here-document or syntax problem, or when bash cannot open the target.
- ``apply-patch``, ``replace-function``, ``search-replace``: the tools of this package,
  judged by the line each prints: ``Done. ...`` on success, a fixed error prefix on failure
  (``FAILURE_MARKERS``). A use with neither in the output (the command failed before it ran,
  or the output was cut) counts as failed only when the exit code is not 0.
- ``sed``: ``sed -i`` (``--in-place``); failed when sed prints a ``sed: ...`` error.

The command is scanned like bash does: here-document bodies and quoted strings are not
commands, so a patch or file body that mentions ``sed -i`` is not a use of ``sed``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FORMS: tuple[str, ...] = ("whole-file", "apply-patch", "replace-function", "search-replace", "sed")

TOOLS: dict[str, str] = {
    "apply_patch": "apply-patch",
    "replace_function": "replace-function",
    "search_replace": "search-replace",
}

SUCCESS_MARKERS: dict[str, re.Pattern[str]] = {
    "apply-patch": re.compile(r"^Done\. [AMDR] \S"),
    "replace-function": re.compile(r"^Done\. (?:Replaced|Added) \S"),
    "search-replace": re.compile(r"^Done\. Applied \d+ block"),
}
# apply_patch's messages have no common prefix; these are the first lines it can print.
FAILURE_MARKERS: dict[str, re.Pattern[str]] = {
    "apply-patch": re.compile(
        r"^(?:apply_patch: "
        r"|Patch line \d+: "
        r"|The patch contains no file operations\."
        r"|\S.*: hunk \d+ of \d+ \(patch line \d+\) did not match"
        r"|Cannot (?:add|update|delete|move|read) \S.*: "
        r"|Path ['\"].*['\"] (?:is absolute|does not name a file|points outside)"
        r"|Writing \S.* failed \()"
    ),
    "replace-function": re.compile(r"^replace_function: "),
    "search-replace": re.compile(r"^search_replace: "),
}
SED_FAILURE = re.compile(r"^sed: ")
BASH_HEREDOC_PROBLEM = re.compile(r"here-document at line \d+ delimited by end-of-file")
BASH_SYNTAX_PROBLEM = re.compile(
    r"syntax error near unexpected token"
    r"|syntax error: unexpected end of file"
    r"|unexpected EOF while looking for matching"
)
_OPEN_FAILURE = (
    r": {}: (No such file or directory|Permission denied|Read-only file system|Is a directory)"
)

_DETAIL_CHARS = 200
_HEREDOC = re.compile(r"<<(-?)[ \t]*(?:'([^'\n]*)'|\"([^\"\n]*)\"|\\?([A-Za-z_][\w.-]*))")
_SEPARATOR = re.compile(r"\n|;|&&|\|\||\|&?|(?<![<>&])&(?![>&])|[(){}`]")
_REDIRECT = re.compile(r"(\d*|&)(>>|>\||>&|>|<<<|<<-?|<&|<>|<)[ \t]*([^\s<>;&|()]*)")
_ASSIGNMENT = re.compile(r"^\w+=")
_PREFIX_WORDS = frozenset(
    {"then", "do", "else", "elif", "if", "while", "until", "!", "time", "exec", "command",
     "builtin", "sudo", "env", "nohup", "timeout", "xargs"}
)  # fmt: skip
_WHOLE_FILE_WRITERS = frozenset({"cat", "tee", "printf", "echo"})


@dataclass(frozen=True)
class EditUse:
    """One use of an edit form in a command: `form` is one of FORMS."""

    form: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class _Heredoc:
    delimiter: str
    terminated: bool
    body: str = ""


@dataclass(frozen=True)
class _Use:
    form: str
    detail: str
    heredocs: tuple[int, ...] = ()
    target: str = ""
    # The first target is appended to (>>), not replaced.
    appends: bool = False


# --------------------------------------------------------------------------- scanning


def _neutral(text: str) -> str:
    """Quoted text as one inert word: operators inside quotes are not operators."""
    return re.sub(r"[^\w./+,=:@%-]", "_", text)


def scan(command: str) -> tuple[str, list[_Heredoc]]:
    """The command as bash parses it, minus data: here-document bodies dropped (each
    operator becomes ``<<HEREDOC<n>``), quoted strings neutralized, comments removed."""
    out: list[str] = []
    heredocs: list[_Heredoc] = []
    pending: list[tuple[str, bool]] = []
    i, n = 0, len(command)
    while i < n:
        c = command[i]
        if c == "\n":
            out.append("\n")
            i += 1
            for delimiter, strip_tabs in pending:
                terminated = False
                body: list[str] = []
                while i < n:
                    end = command.find("\n", i)
                    end = n if end < 0 else end
                    line = command[i:end]
                    i = end + 1
                    if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                        terminated = True
                        break
                    body.append(line.lstrip("\t") if strip_tabs else line)
                heredocs.append(_Heredoc(delimiter, terminated, "".join(f"{b}\n" for b in body)))
            pending = []
        elif c == "\\":
            out.append(" " if command[i + 1 : i + 2] == "\n" else "_")
            i += 2
        elif c == "'" or (c == "$" and command[i + 1 : i + 2] == "'"):
            start = i + (2 if c == "$" else 1)
            j = start
            while j < n and command[j] != "'":
                j += 2 if c == "$" and command[j] == "\\" else 1
            if j >= n:  # never closed: bash reports a syntax error; read on as if unquoted
                out.append("_")
                i = start
                continue
            out.append("'" + _neutral(command[start:j]) + "'")
            i = j + 1
        elif c == '"':
            j = i + 1
            while j < n and command[j] != '"':
                j += 2 if command[j] == "\\" else 1
            if j >= n:
                out.append("_")
                i += 1
                continue
            out.append('"' + _neutral(command[i + 1 : j]) + '"')
            i = j + 1
        elif c == "#" and (i == 0 or command[i - 1] in " \t\n;&|(){}"):
            end = command.find("\n", i)
            i = n if end < 0 else end
        elif command.startswith("<<<", i):
            out.append("<<<")
            i += 3
        elif command.startswith("<<", i) and (match := _HEREDOC.match(command, i)):
            delimiter = next(g for g in match.groups()[1:] if g is not None)
            out.append(f" <<HEREDOC{len(heredocs) + len(pending)} ")
            pending.append((delimiter, match.group(1) == "-"))
            i = match.end()
        else:
            out.append(c)
            i += 1
    # Here-documents still open when the command ends were never terminated.
    heredocs += [_Heredoc(delimiter, False) for delimiter, _ in pending]
    return "".join(out), heredocs


def _unquote(word: str) -> str:
    return word.strip("'\"")


def _uses(skeleton: str) -> list[_Use]:
    uses: list[_Use] = []
    for segment in _SEPARATOR.split(skeleton):
        redirects = _REDIRECT.findall(segment)
        words = _REDIRECT.sub(" ", segment).split()
        after_prefix = False
        while words and (
            _ASSIGNMENT.match(words[0])
            or words[0] in _PREFIX_WORDS
            or (after_prefix and re.fullmatch(r"-\S*|\d+(?:\.\d+)?[smhd]?", words[0]))
        ):
            after_prefix = after_prefix or words[0] in _PREFIX_WORDS
            words.pop(0)
        if not words:
            continue
        heredocs = tuple(
            int(target.removeprefix("HEREDOC"))
            for _, op, target in redirects
            if op.startswith("<<") and op != "<<<" and target.startswith("HEREDOC")
        )
        name = words[0].rpartition("/")[2]
        args = words[1:]
        asks_help = any(a in ("-h", "--help") for a in args)
        if name in TOOLS:
            if not asks_help:
                uses.append(_Use(TOOLS[name], name, heredocs))
        elif re.fullmatch(r"python[\d.]*", name) and len(args) >= 2 and args[0] == "-m":
            module = args[1].rpartition(".")[2]
            if args[1].startswith("pullsmith.tools.") and module in TOOLS and not asks_help:
                uses.append(_Use(TOOLS[module], module, heredocs))
        elif name in _WHOLE_FILE_WRITERS:
            written = [
                (_unquote(target), op == ">>")
                for fd, op, target in redirects
                if op in (">", ">>", ">|") and fd in ("", "1", "&") and _is_file(target)
            ]
            targets = [target for target, _ in written]
            appends = bool(written) and written[0][1]
            if name == "tee":
                files = [_unquote(a) for a in args if not a.startswith("-")]
                targets = [f for f in files if _is_file(f)] + targets
            has_input = any(op.startswith("<<") for _, op, _ in redirects)
            if targets and (name != "cat" or has_input):
                detail = f"tee {targets[0]}" if name == "tee" else f"{name} > {targets[0]}"
                uses.append(_Use("whole-file", detail, heredocs, targets[0], appends))
        else:
            names = [w.rpartition("/")[2] for w in words]
            if "sed" in names:  # also under find -exec, xargs and the like
                options = words[names.index("sed") + 1 :]
                if any(re.match(r"^-[A-Za-z]*i", w) or w.startswith("--in-place") for w in options):
                    uses.append(_Use("sed", "sed -i", heredocs))
    return uses


def _is_file(target: str) -> bool:
    target = _unquote(target)
    return bool(target) and not target.startswith(("&", "/dev/")) and not target.isdigit()


def whole_file_writes(command: str) -> list[tuple[str, str]]:
    """(path, content) of each file `command` replaces with a terminated here-document
    (``cat > f <<'EOF' ... EOF``), in order; appends and other writers are not included."""
    skeleton, heredocs = scan(command)
    return [
        (use.target, heredocs[use.heredocs[0]].body)
        for use in _uses(skeleton)
        if use.form == "whole-file"
        and use.detail.startswith("cat ")
        and not use.appends
        and len(use.heredocs) == 1
        and heredocs[use.heredocs[0]].terminated
    ]


# --------------------------------------------------------------------------- judging


def _clip(line: str) -> str:
    line = line.strip()
    return line if len(line) <= _DETAIL_CHARS else line[: _DETAIL_CHARS - 3] + "..."


def _markers(lines: list[str], form: str) -> list[tuple[bool, str]]:
    """(ok, line) for each result line of a tool in the output, in order."""
    found = []
    for line in lines:
        if SUCCESS_MARKERS[form].match(line):
            found.append((True, line))
        elif FAILURE_MARKERS[form].match(line):
            found.append((False, line))
    return found


def classify(command: str, exit_code: int, output: str) -> list[EditUse]:
    """One EditUse per edit found in `command`, in the order they appear.

    Tools are judged by their result lines, matched to their uses in order (a tool run in a
    loop may add results beyond its uses); a use without a result line is ok when the exit
    code is 0. `sed -i` fails with a ``sed:`` error line; whole-file writes fail on an
    unterminated here-document, a bash here-document or syntax problem, or a target bash
    could not open.
    """
    skeleton, heredocs = scan(command)
    uses = _uses(skeleton)
    lines = output.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    results: dict[int, EditUse] = {}
    extra: list[tuple[int, EditUse]] = []  # results beyond a tool's uses, after its last use
    for form in ("apply-patch", "replace-function", "search-replace"):
        positions = [k for k, use in enumerate(uses) if use.form == form]
        if not positions:
            continue
        found = _markers(lines, form)
        for k, (ok, line) in zip(positions, found, strict=False):
            results[k] = EditUse(form, ok, _clip(line))
        for k in positions[len(found) :]:
            results[k] = EditUse(
                form,
                exit_code == 0,
                f"{uses[k].detail}: no result line in the output; exit code {exit_code}",
            )
        extra += [
            (positions[-1], EditUse(form, ok, _clip(line))) for ok, line in found[len(positions) :]
        ]
    sed_errors = [line for line in lines if SED_FAILURE.match(line)]
    sed_positions = [k for k, use in enumerate(uses) if use.form == "sed"]
    for index, k in enumerate(sed_positions):
        if index < len(sed_errors):
            results[k] = EditUse("sed", False, _clip(sed_errors[index]))
        else:
            results[k] = EditUse("sed", True, uses[k].detail)
    heredoc_warning = any(BASH_HEREDOC_PROBLEM.search(line) for line in lines)
    explained = any(not h.terminated for h in heredocs)
    syntax = next((line for line in lines if BASH_SYNTAX_PROBLEM.search(line)), None)
    for k, use in enumerate(uses):
        if use.form != "whole-file":
            continue
        opened = re.compile(_OPEN_FAILURE.format(re.escape(use.target)))
        failed_open = next((line for line in lines if opened.search(line)), None)
        open_heredoc = next((heredocs[h] for h in use.heredocs if not heredocs[h].terminated), None)
        if open_heredoc is not None:
            why = f"here-document not terminated (no line {open_heredoc.delimiter!r})"
        elif heredoc_warning and not explained:
            why = "bash: here-document delimited by end-of-file"
        elif syntax is not None:
            why = _clip(syntax)
        elif failed_open is not None:
            why = _clip(failed_open)
        else:
            results[k] = EditUse("whole-file", True, use.detail)
            continue
        results[k] = EditUse("whole-file", False, f"{use.detail}: {why}")
    ordered: list[EditUse] = []
    for k in range(len(uses)):
        ordered.append(results[k])
        ordered += [use for position, use in extra if position == k]
    return ordered
