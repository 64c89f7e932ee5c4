"""Direct repair: before the agent's turns, the functions most likely at fault, one at a time.

A small model handed a package of dozens of files tends to wander: it rewrites the tests, copies
long files back cut short, or sends the same reply again (pypi-bugs, 0 of 12 resolved at 600 s
a task). Asked one narrow question — here is the function the failing tests most likely
reach, write it again fixed — it does what it does best: edit one function whole with the
failure in front of it. So before the agent starts, for each of the first few functions
`localize.rank_functions` ranks for the failures, the model gets the agent's own system prompt
and first message (the server has them cached) and then one more user message asking for that
function with `replace_function`. The reply's definition of the function replaces it; the
tests run; a change they pass is kept, anything else is put back. Each question is a branch of
its own off the first message, so no wrong answer stays in the conversation the agent then
starts from the same first message.

The tests decide, never the model: a change is kept only when the whole test command passes.

A small model asked once at a low temperature mostly copies the function back as it was (the
example's `range(len(rows) - 1)`: 3 of 3 copies at 0.2, 3 of 5 fixes at 0.7). So each
candidate is first asked at the attempt's own temperature, and then again, while the time
lasts, at `temperature` (`samples` asks a candidate at most), the first-ranked ones soonest
(`ask_order`). A rewrite already tried for that function is not tested again.

A long function is not asked for whole: writing 40-60 lines back costs a minute or two here
(pypi-bugs: 400-850 tokens at 4-8 tokens a second), so only 3-4 asks fit the time, and most of
each reply is copying. A function longer than `lines_over` lines is asked for a SEARCH/REPLACE
block of the lines to change; it is applied to that function's text alone (so it cannot touch
the rest of the file), and the function that results goes the same way as a whole rewrite.
"""

from __future__ import annotations

import ast
import re
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import replace as replace_fields
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

from pullsmith.agent.failures import TestReport, function_source
from pullsmith.agent.localize import Candidate, rank_functions
from pullsmith.models.base import Message, Model, Usage
from pullsmith.task import TestRun
from pullsmith.tools.edit_forms import scan
from pullsmith.tools.replace_function import ReplaceFunctionError, replace_function
from pullsmith.tools.search_replace import (
    Block,
    SearchReplaceError,
    apply_to_text,
    parse_blocks,
)

# A function longer than this is not asked for whole: the model would copy it back for
# minutes (at 5-20 tokens a second) and small models cut long copies short.
MAX_FUNCTION_LINES = 80
# Nor for its lines when longer than this: it is shown whole in the request, which has to fit
# the bundled model's 8k context after the first message (about 4k tokens on pypi-bugs).
MAX_LINES_ASK = 160
# How many places in the order of asks a function's next ask comes after its last one.
RESAMPLE_STEP = 2
# How alike (difflib's ratio, whitespace at line ends aside) a lines reply's SEARCH text and
# one run of the function's lines must be for the reply to apply to those lines.
SNAP_RATIO = 0.95
_FENCE = re.compile(r"```([\w+-]*)[^\n]*\n(.*?)(?:\n```|\Z)", re.S)


@dataclass(frozen=True)
class RepairCandidate:
    """A function to ask for: its file (relative to the root), `Class.method` name, lines."""

    path: str
    name: str
    start: int
    end: int
    source: str
    rank: int
    # How it is asked for: "function" (written whole, with replace_function) or "lines" (a
    # SEARCH/REPLACE block of the lines to change, for a function over `lines_over` lines).
    form: str = "function"


@dataclass
class RepairTry:
    """What came of asking for one candidate. `outcome`: "passed" (kept), "failed" (the tests
    still fail: put back), "unchanged" (the reply wrote the function as it was), "no
    definition" (the reply had none of it), "not applied" (replace_function refused it),
    "stopped" (out of time, or cancelled, while the reply was written), "repeated" (the
    reply wrote a rewrite already tried for this function: not tested again). `sample` counts
    the asks of this candidate (1 = its first, at the attempt's temperature)."""

    candidate: RepairCandidate
    outcome: str
    sample: int = 1
    detail: str = ""
    reply: str = ""
    seconds: float = 0.0
    usage: Usage = field(default_factory=Usage)
    tests: TestRun | None = None


@dataclass
class RepairResult:
    tries: list[RepairTry] = field(default_factory=list)
    # Why the tries stopped before the candidates ran out ("" when they did not).
    stopped: str = ""

    @property
    def passed(self) -> RepairTry | None:
        return next((t for t in self.tries if t.outcome == "passed"), None)


def repair_candidates(
    root: Path,
    report: TestReport,
    limit: int,
    ranked: list[Candidate] | None = None,
    lines_over: int = 0,
) -> list[RepairCandidate]:
    """The first `limit` functions `rank_functions` ranks for the failures of `report` (or
    `ranked`, that ranking already made) that can be asked for: found again in their file,
    the only definition of their name there (a property's getter and setter share one, and
    `replace_function` could not tell which a reply means), and at most `MAX_FUNCTION_LINES`
    long; with `lines_over` > 0, a function longer than that is asked for its changed lines
    (form "lines"), up to `MAX_LINES_ASK` lines long."""
    found: list[RepairCandidate] = []
    if limit <= 0 or not report.failures:
        return found
    if ranked is None:
        ranked = rank_functions(root, report)
    names = Counter((c.definition.path, c.definition.name) for c in ranked)
    for one in ranked:
        definition = one.definition
        if names[definition.path, definition.name] > 1:
            continue
        located = function_source(root / definition.path, definition.name)
        if located is None:
            continue
        start, end, source = located
        size = end - start + 1
        form = "lines" if 0 < lines_over < size else "function"
        if size > (MAX_LINES_ASK if form == "lines" else MAX_FUNCTION_LINES):
            continue
        found.append(
            RepairCandidate(definition.path, definition.name, start, end, source, one.rank, form)
        )
        if len(found) >= limit:
            break
    return found


def repair_request(candidate: RepairCandidate) -> str:
    """The question after the first message: this one function, fixed, with replace_function
    (form "function") or with a SEARCH/REPLACE block of its wrong lines (form "lines")."""
    body = textwrap.dedent(candidate.source).rstrip("\n")
    shown = (
        f"Before you run anything: the failing tests above most likely reach "
        f"`{candidate.name}` in `{candidate.path}` (lines {candidate.start}-{candidate.end}):\n"
        f"```python\n{body}\n```\n"
    )
    if candidate.form == "lines":
        return shown + (
            "If the bug that makes those tests fail is in this function, reply with ONE "
            "```bash block that fixes only the wrong line(s), like this:\n"
            f"```bash\nsearch_replace {candidate.path} <<'EOF'\n"
            "<<<<<<< SEARCH\n"
            "<the wrong line(s), copied exactly from the function above>\n"
            "=======\n"
            "<the fixed line(s)>\n"
            ">>>>>>> REPLACE\n"
            "EOF\n```\n"
            "Copy only the few lines you change, never the whole function. If the bug is not "
            "in this function, reply that it is not, with no block."
        )
    return shown + (
        "If the bug that makes those tests fail is in this function, reply with ONE ```bash "
        f"block that replaces it with `replace_function {candidate.path} {candidate.name} "
        "<<'EOF'`, the complete fixed function, then `EOF`. Change only the lines that cause "
        "the failures; keep everything else (docstring, comments, names) as it is. If the bug "
        "is not in this function, reply with the function unchanged."
    )


def definition_in(reply: str, name: str) -> str | None:
    """The text of the definition of `name` (its last part: `Class.method` -> `method`) that
    `reply` writes: in a here-document of a bash block or in a python block; from a whole file
    or class written out, only that definition. None when the reply has none."""
    leaf = name.rpartition(".")[2]
    for text in _written(reply):
        found = _definition(text, leaf)
        if found is not None:
            return found
    return None


def _written(reply: str) -> list[str]:
    """What the fenced blocks of `reply` write: a shell block's here-documents (the block
    itself when it has none), any other block whole."""
    texts: list[str] = []
    for lang, block in _FENCE.findall(reply):
        bodies = []
        if lang.lower() in ("", "bash", "sh", "shell", "console"):
            bodies = [doc.body for doc in scan(block)[1] if doc.body.strip()]
        texts.extend(bodies or [block])
    return texts


def lines_edit_in(reply: str, candidate: RepairCandidate) -> str | None:
    """The function `candidate` as the SEARCH/REPLACE blocks of `reply` change it (applied to
    its text alone, so they cannot reach the rest of the file), else the definition the reply
    writes whole (a model may answer that way too); None when the reply has neither. Raises
    SearchReplaceError when its blocks do not parse or do not match the function."""
    for text in [*_written(reply), reply]:
        if "<<<<<<<" in text:
            blocks = _lenient_blocks(text, candidate.path)
            source, shown = candidate.source + "\n", f"`{candidate.name}`"
            try:
                edited = apply_to_text(source, blocks, shown=shown)
            except SearchReplaceError:
                snapped = [_snapped(source, block) for block in blocks]
                if snapped == blocks:
                    raise
                edited = apply_to_text(source, snapped, shown=shown)
            return textwrap.dedent(edited)
    return definition_in(reply, candidate.name)


def _snapped(source: str, block: Block) -> Block:
    """`block` with its SEARCH lines put back as the function has them, when they are a
    near copy (SNAP_RATIO alike, whitespace aside) of one run of its lines and of no other
    place in it: a small model copying lines back drops or changes a character now and then
    (semver-01: 98% alike, nothing applied). Only here, where the text is one function and the tests then decide;
    the agent's own search_replace stays exact. The REPLACE lines move by the indentation
    the SEARCH lines were off by, and the slipped lines copied into them are mended.
    Unchanged when no single run is that close."""
    search = list(block.search)
    while search and not search[-1].strip():
        search.pop()
    while search and not search[0].strip():
        search.pop(0)
    lines = source.splitlines()
    n = len(search)
    if not n or n > len(lines):
        return block
    wanted = "\n".join(line.strip() for line in search)
    close: dict[int, float] = {}
    for i in range(len(lines) - n + 1):
        matcher = SequenceMatcher(None, "\n".join(w.strip() for w in lines[i : i + n]), wanted)
        if matcher.quick_ratio() >= SNAP_RATIO:
            ratio = matcher.ratio()
            if ratio >= SNAP_RATIO:
                close[i] = ratio
    if not close:
        return block
    best = max(close, key=close.__getitem__)
    # A run one line off the best shares most of its lines (long ones weigh most: 95% for
    # semver-01's one line off), so only a close run elsewhere, or one as close, is a rival.
    if any(i != best and (abs(i - best) >= n or r >= close[best]) for i, r in close.items()):
        return block
    window = lines[best : best + n]
    # The slip is mostly copied into the REPLACE part as well: a line there that is a SEARCH
    # line with a slip becomes the function's line it stands for.
    slips = {
        wrote.strip(): have.strip()
        for wrote, have in zip(search, window, strict=True)
        if wrote.strip() != have.strip()
    }
    shift = _indent(window[0]) - _indent(search[0])

    def shifted(line: str, mend: bool) -> str:
        if not line.strip():
            return line
        if mend:
            line = line[: _indent(line)] + slips.get(line.strip(), line.strip())
        return " " * shift + line if shift > 0 else line[min(-shift, _indent(line)) :]

    replace = [shifted(line, mend=True) for line in block.replace]
    if [line.strip() for line in replace] == [line.strip() for line in window]:
        # Mended, it would change nothing: the model wrote its fix into the SEARCH part as
        # well (webcolors-02: `if not isinstance(...)` in both parts, `if isinstance(...)` in
        # the function), so its REPLACE part is taken as written.
        replace = [shifted(line, mend=False) for line in block.replace]
    return replace_fields(block, search=window, replace=replace)


def _lenient_blocks(text: str, path: str) -> list[Block]:
    """The blocks of a lines reply, forgiving two slips of a small model: a reply that ends
    inside its last REPLACE part ('>>>>>>> REPLACE' never written), and a second '======='
    line closing a REPLACE part (which would be written into the function). Raises
    search_replace's own error when the text does not parse even so."""
    try:
        blocks = parse_blocks(text, file=path)
    except SearchReplaceError as exc:
        tail = text.rpartition("=======")[2]
        if "=======" not in text or ">>>>>>>" in tail or "<<<<<<<" in tail:
            raise
        try:
            blocks = parse_blocks(text.rstrip() + "\n>>>>>>> REPLACE\n", file=path)
        except SearchReplaceError:
            raise exc from None
    return [
        replace_fields(b, replace=b.replace[:-1])
        if b.replace and b.replace[-1].strip() == "======="
        else b
        for b in blocks
    ]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _definition(text: str, leaf: str) -> str | None:
    source = textwrap.dedent(text)
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    lines = source.splitlines()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == leaf:
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            return textwrap.dedent("\n".join(lines[start - 1 : node.end_lineno])) + "\n"
    return None


def _normalized(text: str) -> str:
    """A rewrite as compared with the earlier ones: trailing spaces and blank lines aside."""
    return "\n".join(line.rstrip() for line in textwrap.dedent(text).strip().splitlines())


def ask_order(candidates: list[RepairCandidate], samples: int) -> list[tuple[RepairCandidate, int]]:
    """The asks in the order made, as (candidate, the how-manieth ask of it): each candidate's
    first ask comes at its place in the ranking, and its k-th one `RESAMPLE_STEP` × (k - 1)
    places later, before a new candidate at the same place. So the first function, the one
    most often at fault, is asked again early: a first round over every candidate before any
    ask again took the whole time budget on pypi-bugs, where a function's rewrite takes a
    minute (c1 c2 c1 c3 c2 c4 c1 c3 c5 ... rather than c1 c2 c3 c4 c5 c1 ...)."""
    asks = [
        (position + RESAMPLE_STEP * (sample - 1), position, candidate, sample)
        for position, candidate in enumerate(candidates, 1)
        for sample in range(1, max(1, samples) + 1)
    ]
    asks.sort(key=lambda ask: (ask[0], ask[1]))
    return [(candidate, sample) for _, _, candidate, sample in asks]


def direct_repair(
    model: Model,
    prefix: list[Message],
    root: Path,
    candidates: list[RepairCandidate],
    run_tests: Callable[[], TestRun | None],
    *,
    budget_s: float,
    samples: int = 1,
    temperature: float | None = None,
    seed: int | None = None,
    deadline: float | None = None,
    on_text: Callable[[str], None] | None = None,
    on_try: Callable[[RepairTry], None] | None = None,
) -> RepairResult:
    """Ask for the candidates after `prefix` (the agent's system prompt and first message) in
    `ask_order`: each one's first ask at the model's own temperature, its later ones (up to
    `samples` in all) at `temperature` (with `seed`, when given, plus the ask's number), until
    the tests pass, the asks run out or the time does: `budget_s` seconds from the first
    piece of the first reply (the prompt of `prefix` before it is the agent's too, cached for
    its first turn), and never past `deadline` (time.monotonic()). A change the tests do not
    pass is put back, so the worktree is as it was unless the result has a try that passed.
    `on_text` is given each piece of a reply as it streams (it may raise InterruptedError to
    stop: a cancel); `on_try` each try when it is done."""
    result = RepairResult()
    clock: list[float] = []

    def out_of_time() -> str:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return "the task's time budget left no room for more"
        if clock and now - clock[0] >= budget_s:
            return f"its {budget_s:g} s were used up"
        return ""

    def guard(text: str) -> None:
        if not clock:
            clock.append(time.monotonic())
        why = out_of_time()
        if why:
            raise TimeoutError(why)
        if on_text is not None:
            on_text(text)

    # The rewrites tried of each function, so a repeated one is not tested again.
    seen: dict[RepairCandidate, set[str]] = {}
    order = ask_order(candidates, samples)
    for number, (candidate, sample) in enumerate(order, 1):
        why = out_of_time()
        if why:
            result.stopped = why
            break
        path = root / candidate.path
        original = path.read_bytes()
        messages = [*prefix, {"role": "user", "content": repair_request(candidate)}]
        started = time.monotonic()
        attempt = RepairTry(candidate, "", sample=sample)
        result.tries.append(attempt)
        sampling: dict[str, Any] = {}
        if sample > 1:
            sampling["temperature"] = temperature
            if seed is not None:
                sampling["seed"] = seed + number
        try:
            reply = model.complete(messages, on_text=guard, **sampling)
        except (TimeoutError, InterruptedError) as exc:  # out of time, or a cancel
            attempt.outcome, attempt.detail = "stopped", str(exc)
            attempt.seconds = round(time.monotonic() - started, 3)
            result.stopped = str(exc)
            if on_try is not None:
                on_try(attempt)
            break
        attempt.seconds, attempt.usage = round(time.monotonic() - started, 3), reply.usage
        attempt.reply = reply.text
        try:
            text = (
                lines_edit_in(reply.text, candidate)
                if candidate.form == "lines"
                else definition_in(reply.text, candidate.name)
            )
        except SearchReplaceError as exc:
            text, attempt.outcome, attempt.detail = None, "not applied", str(exc)
        tried = seen.setdefault(candidate, set())
        key = _normalized(text) if text is not None else ""
        if attempt.outcome:
            pass  # the reply's blocks did not apply
        elif text is None:
            attempt.outcome = "no definition"
            blocks = "had no SEARCH/REPLACE block and " if candidate.form == "lines" else ""
            attempt.detail = f"the reply {blocks}did not define {candidate.name.rpartition('.')[2]}"
        elif key in tried:
            attempt.outcome = "repeated"
            attempt.detail = "the same rewrite as an earlier ask of this function"
        else:
            try:
                replaced = replace_function(path, candidate.name, text, shown=candidate.path)
            except ReplaceFunctionError as exc:
                attempt.outcome, attempt.detail = "not applied", str(exc)
            else:
                if replaced.unchanged:
                    attempt.outcome = "unchanged"
                else:
                    tried.add(key)
                    attempt.tests = run_tests()
                    passed = attempt.tests is not None and attempt.tests.passed
                    attempt.outcome = "passed" if passed else "failed"
        if attempt.outcome != "passed" and path.read_bytes() != original:
            path.write_bytes(original)
        if on_try is not None:
            on_try(attempt)
        if attempt.outcome == "passed":
            break
    return result
