"""Reports: totals with a confidence interval, a table per task, and two runs side by side."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pullsmith.errors import UserError

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
GROUP_KEYS = ("bug_type", "category", "repo")


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a proportion (95% for z = 1.96); (0, 1) when n = 0."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def _records(records: Iterable[Any]) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        row = record.to_dict() if hasattr(record, "to_dict") else dict(record)
        row.setdefault(
            "total_tokens", row.get("prompt_tokens", 0) + row.get("completion_tokens", 0)
        )
        rows.append(row)
    return rows


def _cost(rows: list[dict[str, Any]]) -> float | None:
    """The rows' cost in US dollars; None when a row's is unknown (a model without a price,
    or a record written before costs were kept): never a partial sum."""
    costs = [r.get("cost_usd") for r in rows]
    if not costs or any(c is None for c in costs):
        return None
    return round(sum(float(c) for c in costs), 6)


def _stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    costs = [r.get("cost_usd") for r in rows]
    return {
        "median_cost_usd": None
        if any(c is None for c in costs)
        else _median(float(c) for c in costs),
        "count": len(rows),
        "median_wall_seconds": _median(r["wall_seconds"] for r in rows),
        "median_model_seconds": _median(r["model_seconds"] for r in rows),
        "median_tokens": _median(r["total_tokens"] for r in rows),
        "median_prompt_tokens": _median(r["prompt_tokens"] for r in rows),
        "median_completion_tokens": _median(r["completion_tokens"] for r in rows),
        "median_turns": _median(r["turns"] for r in rows),
    }


def totals(records: Iterable[Any], selected: int | None = None) -> dict[str, Any]:
    rows = _records(records)
    n = len(rows)
    resolved = sum(1 for r in rows if r["resolved"])
    low, high = wilson_interval(resolved, n)
    return {
        "selected": max(selected or 0, n),
        "done": n,
        "resolved": resolved,
        "resolve_rate": resolved / n if n else None,
        "ci95": [low, high],
        "errors": sum(1 for r in rows if r.get("error_kind")),
        "per_task": _stats(rows),
        "per_resolved_task": _stats([r for r in rows if r["resolved"]]),
        "sum_wall_seconds": round(sum(r["wall_seconds"] for r in rows), 3),
        "sum_model_seconds": round(sum(r["model_seconds"] for r in rows), 3),
        "sum_prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "sum_completion_tokens": sum(r["completion_tokens"] for r in rows),
        "sum_cached_tokens": sum(r["cached_tokens"] for r in rows),
        "sum_cache_write_tokens": sum(int(r.get("cache_write_tokens") or 0) for r in rows),
        "sum_cost_usd": _cost(rows),
        "attempts": _attempt_totals(rows),
        "edits": _edit_totals(rows),
        "context": _context_totals(rows),
    }


def _attempt_totals(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Best-of-N: the first attempt alone, any attempt (an oracle), and what the tests chose."""
    if not any(len(r.get("attempt_results") or []) > 1 for r in rows):
        return None
    n = len(rows)
    firsts = [(r.get("attempt_results") or [r])[0] for r in rows]
    first = sum(1 for a in firsts if a.get("resolved"))
    later = [a for r in rows for a in (r.get("attempt_results") or [])[1:]]
    anyone = sum(
        1
        for r in rows
        if r["resolved"] or any(a.get("resolved") for a in r.get("attempt_results") or [])
    )
    return {
        "first_resolved": first,
        "first_rate": first / n if n else None,
        "first_ci95": list(wilson_interval(first, n)),
        "first_median_wall_seconds": _median(float(a.get("wall_seconds") or 0) for a in firsts),
        "any_resolved": anyone,
        "any_rate": anyone / n if n else None,
        "median_attempts": _median(len(r.get("attempt_results") or [1]) for r in rows),
        "chosen_not_first": sum(1 for r in rows if int(r.get("attempt") or 1) != 1),
        # Attempts after the first, and those whose final diff was an earlier attempt's again
        # (None for records made before attempts recorded it).
        "later_attempts": len(later),
        "repeated_diffs": sum(1 for a in later if a.get("repeats_attempt"))
        if any("repeats_attempt" in a for a in later)
        else None,
    }


def _edit_totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How often each edit form was used and failed, and the replies the protocol refused."""
    forms: dict[str, dict[str, Any]] = {}
    for r in rows:
        for form, (uses, errors) in (r.get("edits") or {}).items():
            cell = forms.setdefault(form, {"uses": 0, "errors": 0})
            cell["uses"] += uses
            cell["errors"] += errors
    for cell in forms.values():
        cell["error_rate"] = cell["errors"] / cell["uses"] if cell["uses"] else None
    return {
        "forms": dict(sorted(forms.items())),
        "format_errors": sum(int(r.get("format_errors") or 0) for r in rows),
        "tasks_with_format_errors": sum(1 for r in rows if r.get("format_errors")),
    }


def _context_totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Compactions and context-window stops over every attempt, and the reply latency just
    before a compaction against just after it (medians, seconds)."""
    done = [c for r in rows for c in r.get("compactions") or []]
    pairs = [c for c in done if c.get("before_s") is not None and c.get("after_s") is not None]
    return {
        "compactions": len(done),
        "tasks_compacted": sum(1 for r in rows if r.get("compactions")),
        "context_full": sum(int(r.get("context_full") or 0) for r in rows),
        "tasks_context_full": sum(1 for r in rows if r.get("context_full")),
        "median_summary_seconds": _median(float(c.get("summary_s") or 0) for c in done),
        "median_reply_seconds_before": _median(float(c["before_s"]) for c in pairs),
        "median_reply_seconds_after": _median(float(c["after_s"]) for c in pairs),
    }


def _groups(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, int]]]:
    groups: dict[str, dict[str, dict[str, int]]] = {}
    for key in GROUP_KEYS:
        values = [r.get("metadata", {}).get(key) for r in rows]
        if not any(isinstance(v, str) for v in values):
            continue
        table: dict[str, dict[str, int]] = {}
        for row, value in zip(rows, values, strict=True):
            cell = table.setdefault(str(value), {"done": 0, "resolved": 0})
            cell["done"] += 1
            cell["resolved"] += int(bool(row["resolved"]))
        groups[key] = dict(sorted(table.items()))
    return groups


def build_report(meta: Mapping[str, Any], records: Iterable[Any]) -> dict[str, Any]:
    """A run's report: its description, totals, groups, and a row per task in selection order."""
    rows = _records(records)
    order = {task_id: n for n, task_id in enumerate(meta.get("selection", []))}
    rows.sort(key=lambda r: (order.get(r["task_id"], len(order)), r["task_id"]))
    done = {r["task_id"] for r in rows}
    pending = [i for i in meta.get("selection", []) if i not in done]
    return {
        "run": dict(meta),
        "totals": totals(rows, selected=len(meta.get("selection", []))),
        "groups": _groups(rows),
        "pending": pending,
        "tasks": rows,
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    text = f"{value:,.0f}" if abs(value) >= 10 or value == int(value) else f"{value:.1f}"
    return text + unit


def _usd(value: float | None) -> str:
    """A cost in US dollars; "unknown" when the model's price (or a record's cost) is."""
    if value is None:
        return "unknown"
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def headline(report: Mapping[str, Any]) -> str:
    t = report["totals"]
    low, high = t["ci95"]
    return (
        f"{t['resolved']} / {t['done']} resolved ({_pct(t['resolve_rate'])}, "
        f"95% CI {_pct(low)}–{_pct(high)})"
    )


def render_markdown(report: Mapping[str, Any]) -> str:
    run, t = report["run"], report["totals"]
    title = run.get("suite", "suite") + (f" ({run['subset']})" if run.get("subset") else "")
    lines = [f"# Evaluation: {title}", ""]
    facts = [
        f"model `{run.get('model')}`",
        f"sandbox {run.get('sandbox')}",
        f"max {run.get('max_turns')} turns",
        f"attempts {run.get('attempts', 1)}" + (" until pass" if run.get("until_pass") else ""),
        f"protocol {run.get('protocol', 'text')}",
        f"edit forms {', '.join(run.get('edit_forms') or []) or '–'}",
        f"pullsmith {run.get('pullsmith_version')}",
        f"started {run.get('started_at')}",
    ]
    lines += [" · ".join(facts), ""]
    if run.get("command"):
        lines += [f"Command: `{run['command']}`", ""]
    lines += [f"**{headline(report)}**", ""]
    if report.get("pending"):
        lines += [
            f"Partial: {t['done']} of {t['selected']} tasks done, {len(report['pending'])} "
            "not yet run.",
            "",
        ]
    if t["errors"]:
        lines += [
            f"{t['errors']} task(s) ended in an error outside the agent's control "
            "(counted as unresolved).",
            "",
        ]
    per, res = t["per_task"], t["per_resolved_task"]
    lines += [
        "| median | per task | per resolved task |",
        "|---|---:|---:|",
        f"| wall time | {_num(per['median_wall_seconds'], ' s')} | "
        f"{_num(res['median_wall_seconds'], ' s')} |",
        f"| model time | {_num(per['median_model_seconds'], ' s')} | "
        f"{_num(res['median_model_seconds'], ' s')} |",
        f"| tokens (prompt + completion) | {_num(per['median_tokens'])} | "
        f"{_num(res['median_tokens'])} |",
        f"| turns | {_num(per['median_turns'])} | {_num(res['median_turns'])} |",
        f"| cost | {_usd(per.get('median_cost_usd'))} | {_usd(res.get('median_cost_usd'))} |",
        "",
        f"Totals: {_num(t['sum_wall_seconds'], ' s')} wall, "
        f"{_num(t['sum_model_seconds'], ' s')} in the model, "
        f"{t['sum_prompt_tokens']:,} prompt + {t['sum_completion_tokens']:,} completion tokens "
        f"({t['sum_cached_tokens']:,} prompt tokens cached); cost {_usd(t.get('sum_cost_usd'))}.",
        "",
    ]
    lines += _attempt_lines(t)
    lines += _edit_lines(t.get("edits"))
    lines += _context_lines(t.get("context"))
    for key, table in report.get("groups", {}).items():
        lines += [
            f"## By {key.replace('_', ' ')}",
            "",
            f"| {key} | resolved | rate |",
            "|---|---:|---:|",
        ]
        for value, cell in table.items():
            rate = cell["resolved"] / cell["done"] if cell["done"] else None
            lines.append(f"| {_cell(value)} | {cell['resolved']} / {cell['done']} | {_pct(rate)} |")
        lines.append("")
    lines += [
        "## Tasks",
        "",
        "| task | resolved | turns | wall s | model s | prompt | completion | cached | cost | "
        "exit reason |",
        "|---|:---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["tasks"]:
        reason = r.get("exit_reason") or r.get("status") or ""
        if r.get("error_kind"):
            first = (r.get("error") or "").strip().splitlines()[:1]
            reason = f"error ({r['error_kind']}): {first[0] if first else ''}"[:120]
        lines.append(
            f"| {_cell(r['task_id'])} | {'✅' if r['resolved'] else '❌'} | {r['turns']} | "
            f"{r['wall_seconds']:.0f} | {r['model_seconds']:.0f} | {r['prompt_tokens']:,} | "
            f"{r['completion_tokens']:,} | {r['cached_tokens']:,} | {_usd(r.get('cost_usd'))} | "
            f"{_cell(reason)} |"
        )
    if report.get("pending"):
        lines += ["", "Not yet run: " + ", ".join(report["pending"])]
    return "\n".join(lines) + "\n"


def _attempt_lines(t: Mapping[str, Any]) -> list[str]:
    a, n = t.get("attempts"), t["done"]
    if not a:
        return []
    low, high = a["first_ci95"]
    repeated = (
        [
            f"Of the {a['later_attempts']} attempts after a first one, {a['repeated_diffs']} "
            "ended with the same diff as an earlier attempt.",
            "",
        ]
        if a.get("repeated_diffs") is not None
        else []
    )
    return [
        "## Attempts",
        "",
        "| | resolved | rate |",
        "|---|---:|---:|",
        f"| first attempt alone | {a['first_resolved']} / {n} | {_pct(a['first_rate'])} "
        f"(95% CI {_pct(low)}–{_pct(high)}) |",
        f"| chosen by the visible tests (the result) | {t['resolved']} / {n} | "
        f"{_pct(t['resolve_rate'])} |",
        f"| any attempt (an oracle picking with the hidden tests) | {a['any_resolved']} / {n} | "
        f"{_pct(a['any_rate'])} |",
        "",
        f"Median wall time of the first attempt: {_num(a['first_median_wall_seconds'], ' s')}; "
        f"median attempts run: {_num(a['median_attempts'])}; a later attempt was chosen in "
        f"{a['chosen_not_first']} task(s). The per-task wall time, model time, tokens and "
        "turns above and below count every attempt that ran.",
        "",
        *repeated,
    ]


def _edit_lines(e: Mapping[str, Any] | None) -> list[str]:
    if not e or (not e["forms"] and not e["format_errors"]):
        return []
    lines = ["## Edit forms", "", "| form | uses | failed | failure rate |", "|---|---:|---:|---:|"]
    for form, cell in e["forms"].items():
        lines.append(
            f"| {_cell(form)} | {cell['uses']} | {cell['errors']} | {_pct(cell['error_rate'])} |"
        )
    lines += [
        "",
        f"Replies refused by the protocol (no command block, repeats): {e['format_errors']} "
        f"in {e['tasks_with_format_errors']} task(s).",
        "",
    ]
    return lines


def _context_lines(c: Mapping[str, Any] | None) -> list[str]:
    if not c or (not c["compactions"] and not c["context_full"]):
        return []
    return [
        "## Context window",
        "",
        f"Compactions: {c['compactions']} in {c['tasks_compacted']} task(s) (each an attempt "
        "that would have stopped with 'context window full' without one); attempts that still "
        f"stopped with 'context window full': {c['context_full']} in "
        f"{c['tasks_context_full']} task(s).",
        "",
        f"Median seconds of the summary request: {_num(c['median_summary_seconds'], ' s')}; of "
        f"the model's reply just before a compaction: "
        f"{_num(c['median_reply_seconds_before'], ' s')}, just after it: "
        f"{_num(c['median_reply_seconds_after'], ' s')}.",
        "",
    ]


def write_reports(out: Path, report: Mapping[str, Any]) -> tuple[Path, Path]:
    json_path, md_path = out / REPORT_JSON, out / REPORT_MD
    for path, text in (
        (json_path, json.dumps(report, indent=1, ensure_ascii=False, default=str)),
        (md_path, render_markdown(report)),
    ):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return json_path, md_path


def load_report(path: str | Path) -> dict[str, Any]:
    """A report from its report.json, or from the output directory that holds it."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / REPORT_JSON
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a report.json or the --out of an eval run.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); pass a report.json.") from None
    if not isinstance(data, dict) or "tasks" not in data or "totals" not in data:
        raise UserError(f"{path} is not a pullsmith eval report; pass a report.json.")
    data["_path"] = str(path)
    return data


# --- comparing two runs -------------------------------------------------------------------


def compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Two reports task by task: which tasks flipped, and the totals over the shared tasks."""
    rows_a = {r["task_id"]: r for r in a["tasks"]}
    rows_b = {r["task_id"]: r for r in b["tasks"]}
    shared = [i for i in rows_a if i in rows_b]
    rows = []
    for task_id in shared:
        ra, rb = rows_a[task_id], rows_b[task_id]
        flip = ""
        if ra["resolved"] != rb["resolved"]:
            flip = "fixed" if rb["resolved"] else "broken"
        rows.append(
            {
                "task_id": task_id,
                "a_resolved": ra["resolved"],
                "b_resolved": rb["resolved"],
                "flip": flip,
                "a_wall_seconds": ra["wall_seconds"],
                "b_wall_seconds": rb["wall_seconds"],
                "a_tokens": ra.get("total_tokens", ra["prompt_tokens"] + ra["completion_tokens"]),
                "b_tokens": rb.get("total_tokens", rb["prompt_tokens"] + rb["completion_tokens"]),
            }
        )
    return {
        "a": {
            "path": a.get("_path"),
            "run": a.get("run", {}),
            "totals": totals(rows_a[i] for i in shared),
        },
        "b": {
            "path": b.get("_path"),
            "run": b.get("run", {}),
            "totals": totals(rows_b[i] for i in shared),
        },
        "shared": len(shared),
        "only_a": [i for i in rows_a if i not in rows_b],
        "only_b": [i for i in rows_b if i not in rows_a],
        "fixed": [r["task_id"] for r in rows if r["flip"] == "fixed"],
        "broken": [r["task_id"] for r in rows if r["flip"] == "broken"],
        "tasks": rows,
    }


def render_compare_markdown(cmp: Mapping[str, Any]) -> str:
    a, b = cmp["a"], cmp["b"]

    def label(side: Mapping[str, Any], name: str) -> str:
        run = side["run"]
        return f"{name}: `{side.get('path')}` (model `{run.get('model')}`)"

    def line(side: Mapping[str, Any]) -> str:
        return headline({"totals": side["totals"]})

    lines = [
        "# Evaluation compared",
        "",
        f"- {label(a, 'A')}",
        f"- {label(b, 'B')}",
        "",
        f"On the {cmp['shared']} tasks both ran:",
        "",
        f"- A: {line(a)}",
        f"- B: {line(b)}",
        f"- fixed in B (unresolved in A): {', '.join(cmp['fixed']) or 'none'}",
        f"- broken in B (resolved in A): {', '.join(cmp['broken']) or 'none'}",
    ]
    if cmp["only_a"] or cmp["only_b"]:
        lines.append(
            f"- only in A: {len(cmp['only_a'])} task(s); only in B: {len(cmp['only_b'])} task(s)"
        )
    mark = {True: "✅", False: "❌"}
    lines += [
        "",
        "| task | A | B | flip | A wall s | B wall s | A tokens | B tokens |",
        "|---|:---:|:---:|---|---:|---:|---:|---:|",
    ]
    for r in cmp["tasks"]:
        lines.append(
            f"| {_cell(r['task_id'])} | {mark[bool(r['a_resolved'])]} | "
            f"{mark[bool(r['b_resolved'])]} | {r['flip']} | {r['a_wall_seconds']:.0f} | "
            f"{r['b_wall_seconds']:.0f} | {r['a_tokens']:,} | {r['b_tokens']:,} |"
        )
    return "\n".join(lines) + "\n"
