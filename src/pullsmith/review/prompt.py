"""The review conversation: what the model is shown, and how its replies are read.

Small models (the bundled 1.5B one) write a short line-oriented format far more reliably than
JSON, so the model answers with `FINDING:` / `PRIORITY:` / ... lines and a closing
`VERDICT:` / `REASON:`; the parser is lenient (markdown, bullets, "high" for P1, "L12-L14")
and `place` validates each location against the diff's hunks: a location near a hunk is moved
onto its changed lines, one far from every hunk (or in a file the change does not touch) is
dropped with its reason. The conversation is append-only, so a server's prompt cache keeps the
diff between the review and the demonstration requests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pullsmith.review.diff import Change, FileDiff
from pullsmith.review.schema import Dropped, Finding, Location
from pullsmith.tools.replace_function import outline

# The diff shown to the model is cut to this many characters (the bundled model has 8k tokens).
DIFF_CAP = 12_000
# A location this many lines from a hunk is moved onto it; farther, the finding is dropped.
SNAP_DISTANCE = 8
# The longest range a location may span; longer ones are cut around the changed lines.
MAX_SPAN = 10

SYSTEM = """\
You review code changes. You read a diff and report the real bugs it introduces: wrong \
results, crashes, broken edge cases, security holes. Do not report style, naming, formatting \
or missing comments. A change that only renames or reformats code and keeps what it does has \
no bugs: then report no finding and answer VERDICT: correct.

Answer in this format, one block per bug, nothing else:

FINDING: <a short title>
PRIORITY: <P0 (breaks everything), P1 (a real bug, must fix), P2 (should fix), P3 (minor)>
CONFIDENCE: <0.0 to 1.0>
FILE: <the file's path>
LINES: <first>-<last> (the new line numbers shown in the diff)
WHY: <one sentence: what goes wrong, and for which input>

Then end with:

VERDICT: <correct or incorrect>
REASON: <one or two sentences>"""

FORMAT_REMINDER = (
    "Your reply did not follow the format. Answer again, only with FINDING/PRIORITY/"
    "CONFIDENCE/FILE/LINES/WHY blocks (none if there is no bug), then VERDICT: and REASON: lines."
)

DEMONSTRATE = """\
Now show finding {index} ("{title}", {location}) by running the code. The code there, with \
the change applied:
```
{code}
```
Write one shell command in a ```bash block. It runs in the repository's root with the change \
applied, without network. It must exit with a non-zero status while the bug is there and exit 0 \
once it is fixed. Call the code with an input whose right result you are sure of - an example \
from a docstring or a test is best - and assert that result, for example:
```bash
python -c 'from module import function; r = function(2); assert r == 4, r'
```
Reply with only the block."""

# The code shown with a demonstration request: the enclosing function, at most this many lines.
CODE_LINES = 60

DEMONSTRATE_REMINDER = "Reply with exactly one ```bash block holding the command, nothing else."


def enclosing_code(lines: list[str], start: int, end: int, cap: int = CODE_LINES) -> str:
    """Lines `start`-`end` (1-based) in their context, numbered: the innermost Python function
    or class that holds them all (`replace_function.outline`, by indentation where the file
    does not parse), else ten lines either side; at most `cap` lines, centred on the range
    when the definition is longer."""
    if not lines:
        return ""
    start = max(1, min(start, len(lines)))
    end = max(start, min(end, len(lines)))
    first, last = max(1, start - 10), min(len(lines), end + 10)
    holding = [d for d in outline(lines)[0] if d.start < start and d.end >= end]
    if holding:
        innermost = max(holding, key=lambda d: d.start)
        first, last = innermost.start + 1, innermost.end
    if last - first + 1 > cap:
        first = max(first, (start + end) // 2 - cap // 2)
        last = min(last, first + cap - 1)
    return "\n".join(f"{n:>4}  {lines[n - 1]}" for n in range(first, last + 1))


def numbered_diff(change: Change, cap: int = DIFF_CAP) -> tuple[str, bool]:
    """The diff with each new line's number in front ('  12 + code', '  13   code', '     - old'),
    cut to `cap` characters; whether it was cut."""
    out: list[str] = []
    for item in change.files:
        if not item.hunks:
            if item.binary:
                out.append(f"FILE {item.path} (binary, not shown)")
            continue
        label = f"FILE {item.path}" + (" (deleted)" if item.deleted else "")
        out.append(label)
        for hunk in item.hunks:
            out.append(f"@@ new lines {hunk.new_start}-{hunk.new_end} @@")
            number = hunk.new_start
            for line in hunk.lines:
                if line.startswith("\\"):
                    continue
                mark, text = line[:1], line[1:]
                if mark == "-":
                    out.append(f"     - {text}")
                else:
                    sign = "+" if mark == "+" else " "
                    out.append(f"{number:>4} {sign} {text}")
                    number += 1
        out.append("")
    text = "\n".join(out)
    if len(text) > cap:
        return text[:cap].rsplit("\n", 1)[0] + "\n… (the rest of the diff is cut)", True
    return text, False


def review_rules(agents_md: str) -> str | None:
    """The `## Review` (or `## Code Review Rules`) section of an AGENTS.md, without its heading."""
    lines = agents_md.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^(#{1,6})\s+(review|code review rules|code review)\s*#*\s*$", line, re.I)
        if not match:
            continue
        level = len(match.group(1))
        body = []
        for rest in lines[i + 1 :]:
            heading = re.match(r"^(#{1,6})\s", rest)
            if heading and len(heading.group(1)) <= level:
                break
            body.append(rest)
        text = "\n".join(body).strip()
        return text or None
    return None


def first_message(change: Change, focus: str | None, rules: str | None) -> str:
    diff, cut = numbered_diff(change)
    parts = [f"Review this change ({change.label}).", ""]
    if rules:
        parts += ["The repository's review rules:", rules, ""]
    if focus:
        parts += [f"Focus on: {focus}", ""]
    parts += ["```diff", diff.rstrip(), "```"]
    if cut:
        parts.append("(Only the start of the diff is shown.)")
    return "\n".join(parts)


# --- reading a review reply --------------------------------------------------------------

_KEYS = {
    "finding": "title",
    "title": "title",
    "issue": "title",
    "bug": "title",
    "priority": "priority",
    "severity": "priority",
    "confidence": "confidence",
    "file": "file",
    "path": "file",
    "lines": "lines",
    "line": "lines",
    "location": "lines",
    "why": "why",
    "explanation": "why",
    "description": "why",
    "body": "why",
    "verdict": "verdict",
    "reason": "reason",
    "reasoning": "reason",
}
_FIELD = re.compile(r"^[\s>*#_`-]*(?:\d+[.)]\s*)?([A-Za-z]+)(?:\s*\d+)?[\s*_`]*[:=]\s*(.*)$")
_WORD_PRIORITY = {
    "critical": "P0",
    "blocker": "P0",
    "high": "P1",
    "major": "P1",
    "medium": "P2",
    "moderate": "P2",
    "low": "P3",
    "minor": "P3",
    "nit": "P3",
}


@dataclass
class RawFinding:
    title: str = ""
    priority: str = ""
    confidence: str = ""
    file: str = ""
    lines: str = ""
    why: str = ""


@dataclass
class Parsed:
    findings: list[RawFinding] = field(default_factory=list)
    verdict: str | None = None
    reason: str = ""

    @property
    def empty(self) -> bool:
        return not self.findings and self.verdict is None


def _clean(text: str) -> str:
    return text.strip().strip("*_`").strip()


def parse_review(text: str) -> Parsed:
    """The findings, verdict and reason of a reply, read leniently."""
    parsed = Parsed()
    current: RawFinding | None = None
    last: str | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.strip().startswith("```"):
            continue
        match = _FIELD.match(line)
        key = _KEYS.get(match.group(1).lower()) if match else None
        if match is None or key is None:
            if line.strip() and last in ("why", "reason", "title"):
                extra = _clean(line)
                if last == "reason":
                    parsed.reason = (parsed.reason + " " + extra).strip()
                elif current is not None:
                    if last == "why":
                        current.why = (current.why + " " + extra).strip()
            elif not line.strip() and last == "title":
                last = None
            continue
        value = _clean(match.group(2))
        if key == "title":
            current = RawFinding(title=value)
            parsed.findings.append(current)
        elif key == "verdict":
            parsed.verdict = _verdict(value)
            current = None
        elif key == "reason":
            parsed.reason = value
        else:
            if current is None:
                current = RawFinding()
                parsed.findings.append(current)
            if getattr(current, key):
                # A second PRIORITY (or FILE, ...) without a FINDING: a new finding began.
                current = RawFinding()
                parsed.findings.append(current)
            setattr(current, key, value)
        last = key
    parsed.findings = [f for f in parsed.findings if f.title or f.why]
    return parsed


def _verdict(value: str) -> str | None:
    lowered = value.lower()
    if "incorrect" in lowered or "not correct" in lowered or "wrong" in lowered:
        return "incorrect"
    if "correct" in lowered:
        return "correct"
    return None


def priority_of(raw: RawFinding) -> str:
    """P0–P3 from what the model wrote (default P2)."""
    for text in (raw.priority, raw.title):
        match = re.search(r"\bP\s*([0-3])\b", text, re.I)
        if match:
            return f"P{match.group(1)}"
    match = re.fullmatch(r"\s*([0-3])\s*", raw.priority)
    if match:
        return f"P{match.group(1)}"
    for word, priority in _WORD_PRIORITY.items():
        if word in raw.priority.lower():
            return priority
    return "P2"


def confidence_of(raw: RawFinding) -> float:
    match = re.search(r"\d+(?:\.\d+)?", raw.confidence)
    if match:
        value = float(match.group(0))
        if "%" in raw.confidence or value > 1:
            value /= 100
        return min(max(value, 0.0), 1.0)
    lowered = raw.confidence.lower()
    for word, value in (("high", 0.8), ("medium", 0.5), ("low", 0.3)):
        if word in lowered:
            return value
    return 0.5


def _title(raw: RawFinding) -> str:
    title = re.sub(r"^\s*\[?P[0-3]\]?\s*[:-]?\s*", "", raw.title).strip()
    return title or (raw.why.split(".")[0][:80] if raw.why else "finding")


def _range(text: str) -> tuple[int, int] | None:
    numbers = [int(n) for n in re.findall(r"\d+", text)]
    numbers = [n for n in numbers if n > 0]
    if not numbers:
        return None
    start = numbers[0]
    end = numbers[1] if len(numbers) > 1 and numbers[1] >= start else start
    return start, end


def _file_for(raw: RawFinding, change: Change) -> FileDiff | None:
    reviewable = [f for f in change.files if f.hunks and not f.deleted]
    name = raw.file.strip().strip("`'\"").removeprefix("b/").removeprefix("./")
    name = name.split(":")[0].strip()
    if name:
        for item in reviewable:
            if item.path == name:
                return item
        for item in reviewable:
            if item.path.endswith("/" + name) or name.endswith("/" + item.path):
                return item
        base = name.rsplit("/", 1)[-1]
        matches = [f for f in reviewable if f.path.rsplit("/", 1)[-1] == base]
        if len(matches) == 1:
            return matches[0]
    if len(reviewable) == 1 and (not name or "." not in name):
        return reviewable[0]
    if len(reviewable) == 1 and name:
        # A single file changed: the model misspelled its name.
        return reviewable[0]
    return None


def place(raw: RawFinding, change: Change) -> tuple[Location, str | None] | str:
    """The finding's location on the diff (and where it was moved from), or why it is dropped."""
    item = _file_for(raw, change)
    if item is None:
        return f"it points at {raw.file or 'no file'}, which the change does not touch"
    given = _range(raw.lines) or (_range(raw.file.split(":", 1)[1]) if ":" in raw.file else None)
    written = f"{raw.file or '?'}:{raw.lines or '?'}"
    changed = item.changed_lines or [item.hunks[0].new_start]
    if given is None:
        start = changed[0]
        end = _run_end(changed, start)
        return Location(path=item.path, start_line=start, end_line=end), written
    start, end = given
    for hunk in item.hunks:
        if start <= hunk.new_end and end >= hunk.new_start:
            start, end = max(start, hunk.new_start), min(end, hunk.new_end)
            if end - start + 1 > MAX_SPAN:
                inside = [n for n in hunk.changed if start <= n <= end] or [start]
                start = inside[0]
                end = min(end, start + MAX_SPAN - 1)
            moved = written if (start, end) != given or raw.file.strip() != item.path else None
            return Location(path=item.path, start_line=start, end_line=end), moved
    distance = {
        min(abs(n - start), abs(n - end)): hunk
        for hunk in item.hunks
        for n in (hunk.new_start, hunk.new_end)
    }
    nearest = min(distance)
    if nearest > SNAP_DISTANCE:
        return f"lines {start}-{end} of {item.path} are not in the change"
    hunk = distance[nearest]
    lines = hunk.changed or [hunk.new_start]
    target = min(lines, key=lambda n: min(abs(n - start), abs(n - end)))
    return Location(path=item.path, start_line=target, end_line=_run_end(lines, target)), written


def _run_end(lines: list[int], start: int) -> int:
    """The end of the run of consecutive lines from `start` (at most MAX_SPAN long)."""
    end = start
    while end + 1 in lines and end - start + 1 < MAX_SPAN:
        end += 1
    return end


def findings_from(parsed: Parsed, change: Change) -> tuple[list[Finding], list[Dropped]]:
    findings: list[Finding] = []
    dropped: list[Dropped] = []
    for raw in parsed.findings:
        title = _title(raw)
        placed = place(raw, change)
        if isinstance(placed, str):
            dropped.append(Dropped(title=title, reason=placed))
            continue
        location, moved = placed
        findings.append(
            Finding(
                title=title,
                body=raw.why or title,
                priority=priority_of(raw),  # type: ignore[arg-type]
                confidence=confidence_of(raw),
                location=location,
                snapped_from=moved,
            )
        )
    order = {"P0": 0, "P1": 1, "P2": 2, "P3": 3}
    findings.sort(key=lambda f: (order[f.priority], -f.confidence))
    return findings, dropped


def demonstration_command(text: str) -> str | None:
    """The command of a demonstration reply: its first fenced block, else a `$ ` line."""
    match = re.search(r"```[a-zA-Z]*[ \t]*\n(.*?)```", text, re.S)
    if match and match.group(1).strip():
        return match.group(1).strip()
    match = re.search(r"```[a-zA-Z]*[ \t]*\n(.+)", text, re.S)
    if match and match.group(1).strip():  # a block the reply-token limit cut
        return None
    for line in text.splitlines():
        if line.strip().startswith("$ "):
            return line.strip()[2:].strip() or None
    return None
