"""`pullsmith eval review`: precision and recall of review findings on diffs with known answers.

From each task of a suite with a reference fix (HumanEvalFix: the buggy function and its
canonical solution) two changes are built, each in a small repository of its own:

- **bug**: the reverse of the fix — from the reference solution to the buggy one. It introduces
  a known bug at known lines (the new side's changed lines, and the line before a deletion);
  a review should flag it there.
- **clean**: a behaviour-preserving change of the same function — a local variable renamed
  (the first one the function assigns, to `<name>_value`), or, in a function without one, the
  function reformatted (`ast.unparse`). It is checked to keep the hidden tests passing; it
  should get no P0/P1 finding.

Both are generated deterministically from the suite data. Each review appends one line to
OUT/results.jsonl (`--resume` skips the diffs recorded there without an error); report.md and
report.json hold the figures per model: recall (a P0/P1 finding overlapping the bug's lines),
location hit rate, precision, false positives per clean diff, verdicts, and the share of
P0/P1 findings demonstrated.
"""

from __future__ import annotations

import ast
import io
import json
import shutil
import statistics
import tempfile
import time
import tokenize
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pullsmith.config import Settings
from pullsmith.errors import UserError
from pullsmith.eval.snapshot import SNAPSHOT_AUTHOR, write_files
from pullsmith.eval.tasks import EvalTask
from pullsmith.models.base import Model
from pullsmith.review.diff import Change, resolve_change
from pullsmith.review.runner import review_change
from pullsmith.review.schema import Review
from pullsmith.sandbox import agent_policy, make_sandbox
from pullsmith.workspace import git

RESULTS_FILE = "results.jsonl"
REPORT_MD = "report.md"
REPORT_JSON = "report.json"
KINDS = ("bug", "clean")


@dataclass
class ReviewDiff:
    """One change with a known answer."""

    id: str
    task_id: str
    kind: str  # "bug" or "clean"
    base_files: dict[str, bytes]
    head_files: dict[str, bytes]
    how: str  # what the change is, in words
    known: dict[str, list[int]] = field(default_factory=dict)  # bug lines per file (new side)


# --- building the diffs ------------------------------------------------------------------


def _function(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    return None


def _local_name(func: ast.FunctionDef, source: str) -> str | None:
    """The first name the function assigns that is not a parameter (in source order)."""
    params = {a.arg for a in (*func.args.posonlyargs, *func.args.args, *func.args.kwonlyargs)}
    if func.args.vararg:
        params.add(func.args.vararg.arg)
    if func.args.kwarg:
        params.add(func.args.kwarg.arg)
    stored = [
        node
        for node in ast.walk(func)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id not in params
    ]
    stored.sort(key=lambda n: (n.lineno, n.col_offset))
    for node in stored:
        if node.id != "_" and f"{node.id}_value" not in source:
            return node.id
    return None


def rename_local(source: str, entry_point: str) -> tuple[str, str] | None:
    """`source` with a local variable of `entry_point` renamed, and what was renamed; None when
    the function assigns no local name."""
    tree = ast.parse(source)
    func = _function(tree, entry_point)
    if func is None:
        return None
    name = _local_name(func, source)
    if name is None:
        return None
    first, last = func.lineno, func.end_lineno or func.lineno
    new = f"{name}_value"
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    lines = source.splitlines(keepends=True)
    # Replace from the end so earlier columns stay valid.
    edits = []
    for i, tok in enumerate(tokens):
        if tok.type != tokenize.NAME or tok.string != name:
            continue
        if not first <= tok.start[0] <= last:
            continue
        previous = tokens[i - 1].string if i else ""
        if previous == ".":
            continue
        edits.append(tok)
    if not edits:
        return None
    for tok in reversed(edits):
        row, col = tok.start
        line = lines[row - 1]
        lines[row - 1] = line[:col] + new + line[col + len(name) :]
    return "".join(lines), f"renamed the local variable {name} to {new} in {entry_point}"


def reformat_function(source: str, entry_point: str) -> tuple[str, str] | None:
    """`source` with `entry_point` rewritten as `ast.unparse` writes it (same behaviour)."""
    tree = ast.parse(source)
    func = _function(tree, entry_point)
    if func is None or func.end_lineno is None:
        return None
    start = min([func.lineno, *(d.lineno for d in func.decorator_list)])
    lines = source.splitlines(keepends=True)
    indent = lines[start - 1][: len(lines[start - 1]) - len(lines[start - 1].lstrip())]
    text = ast.unparse(func)
    text = "".join(indent + row + "\n" if row else "\n" for row in text.splitlines())
    result = "".join(lines[: start - 1]) + text + "".join(lines[func.end_lineno :])
    if result == source:
        return None
    return result, f"reformatted {entry_point} (ast.unparse)"


def _module(task: EvalTask) -> tuple[str, bytes, bytes]:
    if task.reference is None or not task.reference.files:
        raise UserError(
            f"task {task.id} has no reference fix; eval review needs a suite whose tasks have "
            "one (suites/humanevalfix)."
        )
    path = sorted(task.reference.files)[0]
    buggy = task.files.get(path)
    if buggy is None:
        raise UserError(f"task {task.id}'s reference changes {path}, which the task does not have.")
    return path, task.reference.files[path], buggy


def bug_diff(task: EvalTask) -> ReviewDiff:
    """The reverse of the task's fix: reference solution → buggy one, the bug's lines known."""
    path, fixed, buggy = _module(task)
    base = dict(task.files) | {path: fixed}
    return ReviewDiff(
        id=f"{task.id}:bug",
        task_id=task.id,
        kind="bug",
        base_files=base,
        head_files=dict(task.files),
        how=f"introduces the task's bug into {path} (the reverse of its fix)",
    )


def clean_diff(task: EvalTask) -> ReviewDiff | None:
    """A behaviour-preserving change of the reference solution, or None when none is found."""
    path, fixed, _buggy = _module(task)
    source = fixed.decode("utf-8")
    entry = str(task.metadata.get("entry_point") or "")
    made = rename_local(source, entry) or reformat_function(source, entry)
    if made is None:
        return None
    new, how = made
    base = dict(task.files) | {path: fixed}
    return ReviewDiff(
        id=f"{task.id}:clean",
        task_id=task.id,
        kind="clean",
        base_files=base,
        head_files=base | {path: new.encode("utf-8")},
        how=how,
    )


def known_lines(change: Change) -> dict[str, list[int]]:
    """The new-side lines of a bug: added lines, and the lines on both sides of a deletion."""
    out: dict[str, list[int]] = {}
    for item in change.files:
        lines: set[int] = set()
        for hunk in item.hunks:
            lines.update(hunk.added)
            for n in hunk.removed_at:
                if n not in hunk.added:  # a pure deletion: the lines on both sides of it
                    lines.update(m for m in (n - 1, n) if m >= 1)
        if lines:
            out[item.path] = sorted(lines)
    return out


def make_repo(diff: ReviewDiff, root: Path) -> Change:
    """A repository under `root` with the diff's base and head as two commits; the change."""
    repo = root / diff.id.replace(":", "-").replace("/", "-")
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    git("init", "--quiet", "--initial-branch=main", cwd=repo)
    write_files(repo, diff.base_files)
    git("add", "--all", cwd=repo)
    git(*SNAPSHOT_AUTHOR, "commit", "--quiet", "-m", "base", cwd=repo)
    for rel in diff.base_files:
        if rel not in diff.head_files:
            (repo / rel).unlink()
    write_files(repo, diff.head_files)
    git("add", "--all", cwd=repo)
    git(*SNAPSHOT_AUTHOR, "commit", "--quiet", "-m", "change", cwd=repo)
    return resolve_change(repo, base="HEAD~1", head="HEAD", label="the change under review")


def keeps_behaviour(task: EvalTask, diff: ReviewDiff, settings: Settings) -> bool:
    """Whether the hidden tests pass on the diff's head (run in the sandbox)."""
    with tempfile.TemporaryDirectory(prefix="pullsmith-review-clean-") as tmp:
        tree = Path(tmp)
        write_files(tree, diff.head_files)
        write_files(tree, task.tests.change.files)
        sandbox = make_sandbox(settings.sandbox, tree, agent_policy(settings))
        try:
            for _kind, command in task.tests.commands:
                if sandbox.run(command, timeout_s=task.tests.timeout_s or 30).exit_code != 0:
                    return False
        finally:
            sandbox.close()
    return True


def build_diffs(
    tasks: Iterable[EvalTask], settings: Settings, kinds: tuple[str, ...] = KINDS
) -> list[ReviewDiff]:
    """The bug and clean diffs of `tasks`, interleaved task by task."""
    diffs: list[ReviewDiff] = []
    for task in tasks:
        if "bug" in kinds:
            diffs.append(bug_diff(task))
        if "clean" in kinds:
            clean = clean_diff(task)
            if clean is not None and not keeps_behaviour(task, clean, settings):
                source = _module(task)[1].decode("utf-8")
                made = reformat_function(source, str(task.metadata.get("entry_point") or ""))
                clean = None
                if made is not None:
                    path = _module(task)[0]
                    candidate = bug_diff(task)
                    clean = ReviewDiff(
                        id=f"{task.id}:clean",
                        task_id=task.id,
                        kind="clean",
                        base_files=candidate.base_files,
                        head_files=candidate.base_files | {path: made[0].encode("utf-8")},
                        how=made[1],
                    )
                    if not keeps_behaviour(task, clean, settings):
                        clean = None
            if clean is not None:
                diffs.append(clean)
    return diffs


# --- scoring one review ------------------------------------------------------------------


def score(diff: ReviewDiff, review: Review) -> dict[str, Any]:
    """The result line of one review of `diff`."""
    serious = review.checked
    findings = []
    for f in review.findings:
        hit = f.location.overlaps(diff.known.get(f.location.path, []))
        findings.append(
            {
                "priority": f.priority,
                "confidence": f.confidence,
                "title": f.title,
                "location": str(f.location),
                "hit": hit,
                "check": f.check,
                "command": f.demonstration.command if f.demonstration else None,
            }
        )
    serious_rows = [row for row in findings if row["priority"] in ("P0", "P1")]
    return {
        "id": diff.id,
        "task_id": diff.task_id,
        "kind": diff.kind,
        "how": diff.how,
        "known": diff.known,
        "model": review.model,
        "verdict": review.verdict,
        "findings": findings,
        "p0p1": len(serious),
        "hit": any(row["hit"] for row in serious_rows),
        "hit_any_priority": any(row["hit"] for row in findings),
        "demonstrated": sum(1 for f in serious if f.check == "demonstrated"),
        "dropped": len(review.dropped),
        "seconds": review.seconds,
        "model_calls": review.usage.model_calls,
        "prompt_tokens": review.usage.prompt_tokens,
        "completion_tokens": review.usage.completion_tokens,
        "error": None,
    }


def load_results(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def run_bench(
    diffs: list[ReviewDiff],
    model: Model,
    settings: Settings,
    out: Path,
    *,
    resume: bool = False,
    check: bool = True,
    on_result: Callable[[dict[str, Any], int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Review every diff not yet done, appending each result to OUT/results.jsonl."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    previous = load_results(path)
    if previous and not resume:
        raise UserError(
            f"{out} already holds results; pass --resume to continue that run, or another --out."
        )
    done = {row["id"] for row in previous if not row.get("error")}
    todo = [d for d in diffs if d.id not in done]
    with tempfile.TemporaryDirectory(prefix="pullsmith-eval-review-") as tmp:
        for number, diff in enumerate(todo, start=1):
            started = time.monotonic()
            try:
                change = make_repo(diff, Path(tmp))
                if diff.kind == "bug":
                    diff.known = known_lines(change)
                review = review_change(change, model, settings, check=check)
                row = score(diff, review)
            except UserError as exc:
                row = {
                    "id": diff.id,
                    "task_id": diff.task_id,
                    "kind": diff.kind,
                    "model": getattr(model, "name", ""),
                    "error": exc.message,
                    "seconds": round(time.monotonic() - started, 2),
                }
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
            if on_result is not None:
                on_result(row, number, len(todo))
    return latest(load_results(path))


def latest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last result of each diff (a resumed error is replaced by its retry)."""
    by_id: dict[str, dict[str, Any]] = {}
    for row in rows:
        by_id[row["id"]] = row
    return list(by_id.values())


# --- the report --------------------------------------------------------------------------


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The benchmark's figures over `rows` (one model's results)."""
    ok = [r for r in rows if not r.get("error")]
    bug = [r for r in ok if r["kind"] == "bug"]
    clean = [r for r in ok if r["kind"] == "clean"]
    serious = [f for r in ok for f in r["findings"] if f["priority"] in ("P0", "P1")]
    bug_serious = [f for r in bug for f in r["findings"] if f["priority"] in ("P0", "P1")]
    clean_serious = [f for r in clean for f in r["findings"] if f["priority"] in ("P0", "P1")]
    demonstrated = [f for f in serious if f["check"] == "demonstrated"]
    seconds = [r["seconds"] for r in ok]
    return {
        "diffs": len(rows),
        "errors": len(rows) - len(ok),
        "bug_diffs": len(bug),
        "clean_diffs": len(clean),
        "recall": _ratio(sum(r["hit"] for r in bug), len(bug)),
        "recall_any_priority": _ratio(sum(r["hit_any_priority"] for r in bug), len(bug)),
        "bug_flagged": _ratio(sum(r["p0p1"] > 0 for r in bug), len(bug)),
        "bug_verdict_incorrect": _ratio(sum(r["verdict"] == "incorrect" for r in bug), len(bug)),
        "location_hit_rate": _ratio(sum(f["hit"] for f in bug_serious), len(bug_serious)),
        "precision": _ratio(sum(f["hit"] for f in bug_serious), len(serious)),
        "false_positives_per_clean_diff": _ratio(len(clean_serious), len(clean)),
        "clean_with_p0p1": _ratio(sum(r["p0p1"] > 0 for r in clean), len(clean)),
        "clean_verdict_correct": _ratio(sum(r["verdict"] == "correct" for r in clean), len(clean)),
        "p0p1_findings": len(serious),
        "demonstrated_share": _ratio(len(demonstrated), len(serious)),
        "demonstrated_on_bug": _ratio(
            sum(f["check"] == "demonstrated" for f in bug_serious), len(bug_serious)
        ),
        "demonstrated_on_clean": _ratio(
            sum(f["check"] == "demonstrated" for f in clean_serious), len(clean_serious)
        ),
        "demonstrated_and_hit": sum(
            1 for f in bug_serious if f["check"] == "demonstrated" and f["hit"]
        ),
        "seconds_median": statistics.median(seconds) if seconds else None,
        "seconds_mean": statistics.fmean(seconds) if seconds else None,
        "tokens_mean": statistics.fmean(r["prompt_tokens"] + r["completion_tokens"] for r in ok)
        if ok
        else None,
    }


def build_report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    models: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        models.setdefault(row.get("model") or "?", []).append(row)
    return {"meta": meta, "models": {name: figures(group) for name, group in models.items()}}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render_markdown(report: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    meta = report["meta"]
    out = [
        f"# Review benchmark: {meta.get('suite')}"
        + (f" ({meta['subset']})" if meta.get("subset") else ""),
        "",
        f"Command: `{meta.get('command')}`" if meta.get("command") else "",
        "",
        "Bug diffs are the reverse of each task's canonical fix (a known bug at known lines); "
        "clean diffs rename a local variable or reformat the same function (hidden tests still "
        "pass). Recall: a P0/P1 finding overlaps the bug's lines. Location hit rate: P0/P1 "
        "findings on bug diffs that overlap them. Precision: of all P0/P1 findings (bug and "
        "clean diffs), those on a bug's lines. Demonstrated: the finding's command failed on the "
        "change and passed on the base.",
        "",
    ]
    for name, f in report["models"].items():
        out += [
            f"## {name}",
            "",
            "| figure | value |",
            "| --- | --- |",
            f"| diffs reviewed | {f['diffs'] - f['errors']} ({f['bug_diffs']} bug, {f['clean_diffs']} clean; {f['errors']} errors) |",
            f"| recall (P0/P1 at an overlapping location) | {_pct(f['recall'])} |",
            f"| recall, any priority | {_pct(f['recall_any_priority'])} |",
            f"| bug diffs with any P0/P1 finding | {_pct(f['bug_flagged'])} |",
            f"| bug diffs judged incorrect | {_pct(f['bug_verdict_incorrect'])} |",
            f"| location hit rate (P0/P1 on bug diffs) | {_pct(f['location_hit_rate'])} |",
            f"| precision (P0/P1 on a bug's lines) | {_pct(f['precision'])} |",
            f"| false positives (P0/P1) per clean diff | {_num(f['false_positives_per_clean_diff'])} |",
            f"| clean diffs with a P0/P1 finding | {_pct(f['clean_with_p0p1'])} |",
            f"| clean diffs judged correct | {_pct(f['clean_verdict_correct'])} |",
            f"| P0/P1 findings | {f['p0p1_findings']} |",
            f"| P0/P1 findings demonstrated | {_pct(f['demonstrated_share'])} (bug diffs {_pct(f['demonstrated_on_bug'])}, clean diffs {_pct(f['demonstrated_on_clean'])}) |",
            f"| demonstrated and on the bug's lines | {f['demonstrated_and_hit']} |",
            f"| seconds per review (median / mean) | {_num(f['seconds_median'], 0)} / {_num(f['seconds_mean'], 0)} |",
            f"| tokens per review (mean) | {_num(f['tokens_mean'], 0)} |",
            "",
        ]
    out += [
        "## Diffs",
        "",
        "| diff | verdict | P0/P1 | hit | demonstrated | findings | s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if row.get("error"):
            out.append(f"| {row['id']} | error: {row['error']} | | | | | {row['seconds']:.0f} |")
            continue
        shown = "; ".join(
            f"{f['priority']} {f['location']}{' ✓' if f['hit'] else ''}" for f in row["findings"]
        ).replace("|", "\\|")
        out.append(
            f"| {row['id']} | {row['verdict']} | {row['p0p1']} | {'yes' if row['hit'] else 'no'} "
            f"| {row['demonstrated']} | {shown} | {row['seconds']:.0f} |"
        )
    return "\n".join(out).replace("\n\n\n", "\n\n") + "\n"


def write_report(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    report = build_report(rows, meta)
    (out / REPORT_JSON).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / REPORT_MD).write_text(render_markdown(report, rows), encoding="utf-8")
    return report
