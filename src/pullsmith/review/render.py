"""A review for people: Rich in a terminal (the code around each location), Markdown for a PR."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax

from pullsmith.review.diff import file_lines
from pullsmith.review.schema import Finding, Review

PRIORITY_STYLES = {"P0": "bold red", "P1": "red", "P2": "yellow", "P3": "dim"}
CHECK_STYLES = {"demonstrated": "green", "not demonstrated": "yellow", "not checked": "dim"}
CONTEXT = 3


def _lexer(path: str) -> str:
    return Syntax.guess_lexer(path, code="") or "text"


def print_review(console: Console, review: Review, repo: Path | None = None) -> None:
    """The verdict, then each finding with the code around its location and its check."""
    repo = repo or Path(review.repo)
    style = "green" if review.verdict == "correct" else "red"
    count = len(review.findings)
    console.print(
        f"[bold]review[/] of {escape(review.target)} · model {escape(review.model)} · "
        f"{review.seconds:.0f} s"
    )
    console.print(
        f"[bold {style}]verdict: {review.verdict}[/] · {count} finding{'s' if count != 1 else ''}"
    )
    console.print(escape(review.reasoning), style="italic")
    for number, finding in enumerate(review.findings, start=1):
        console.print()
        _print_finding(console, number, finding, review, repo)
    if review.dropped:
        console.print()
        for item in review.dropped:
            console.print(
                f"[dim]left out: {escape(item.title)} ({escape(item.reason)})[/]", highlight=False
            )


def _print_finding(
    console: Console, number: int, finding: Finding, review: Review, repo: Path
) -> None:
    pstyle = PRIORITY_STYLES[finding.priority]
    cstyle = CHECK_STYLES[finding.check]
    console.print(
        f"[bold]{number}.[/] [{pstyle}][{finding.priority}][/] [bold]{escape(finding.title)}[/] "
        f"· {escape(str(finding.location))} · confidence {finding.confidence:.2f}"
        + (f" · [{cstyle}]{finding.check}[/]" if finding.check != "not checked" else "")
    )
    console.print("   " + escape(finding.body), highlight=False)
    lines = file_lines(repo, review.head, finding.location.path)
    if lines:
        first = max(1, finding.location.start_line - CONTEXT)
        last = min(len(lines), finding.location.end_line + CONTEXT)
        code = "\n".join(lines[first - 1 : last])
        console.print(
            Syntax(
                code,
                _lexer(finding.location.path),
                line_numbers=True,
                start_line=first,
                highlight_lines=set(
                    range(finding.location.start_line, finding.location.end_line + 1)
                ),
                theme="ansi_dark",
                word_wrap=True,
            )
        )
    demo = finding.demonstration
    if demo is not None:
        if demo.command:
            console.print(f"   [{cstyle}]$ {escape(demo.command.splitlines()[0])}[/]")
        for run in demo.runs:
            console.print(
                f"   on the {'change' if run.tree == 'head' else 'base'}: exit {run.exit_code}"
                + (" (timed out)" if run.timed_out else "")
                + f" · {run.seconds:.1f} s",
                style="dim",
            )
            for row in run.output.splitlines()[-4:]:
                console.print("     " + escape(row), style="dim", highlight=False)
        console.print(f"   {escape(demo.reason)}", style=cstyle)


def review_markdown(review: Review) -> str:
    """The review as Markdown: the verdict and reasoning, then each finding (a PR comment)."""
    out = [
        f"**pullsmith review: the change is {review.verdict}.** {review.reasoning}",
        "",
        f"Reviewed {review.target} ({review.head[:10]}) with {review.model}.",
    ]
    for finding in review.findings:
        out += ["", finding_markdown(finding, with_location=True)]
    return "\n".join(out).strip() + "\n"


def finding_markdown(finding: Finding, with_location: bool = False) -> str:
    where = f" — `{finding.location}`" if with_location else ""
    out = [
        f"**[{finding.priority}] {finding.title}**{where} (confidence {finding.confidence:.2f})",
        "",
        finding.body,
    ]
    demo = finding.demonstration
    if demo is not None and demo.command:
        out += ["", f"*{finding.check}*: {demo.reason}", "", "```console", f"$ {demo.command}"]
        for run in demo.runs:
            side = "change" if run.tree == "head" else "base"
            out.append(f"# on the {side}: exit {run.exit_code}")
            out += run.output.splitlines()[-12:]
        out.append("```")
    elif finding.check != "not checked":
        out += ["", f"*{finding.check}*" + (f": {demo.reason}" if demo else "")]
    return "\n".join(out)
