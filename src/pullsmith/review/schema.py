"""A review as data: the pydantic models behind `pullsmith review --json` (docs/review.md).

`SCHEMA_VERSION` changes when a field changes meaning or goes away; new optional fields keep it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

SCHEMA_VERSION = 1
PRIORITIES = ("P0", "P1", "P2", "P3")
Check = Literal["demonstrated", "not demonstrated", "not checked"]


class Location(BaseModel):
    """Where a finding points: a file of the change and a short range of its new lines that
    overlaps the diff (1-based, inclusive)."""

    path: str
    start_line: int = Field(ge=1)
    end_line: int = Field(ge=1)

    def overlaps(self, lines: set[int] | list[int]) -> bool:
        return any(self.start_line <= n <= self.end_line for n in lines)

    def __str__(self) -> str:
        if self.start_line == self.end_line:
            return f"{self.path}:{self.start_line}"
        return f"{self.path}:{self.start_line}-{self.end_line}"


class Run(BaseModel):
    """One run of a demonstration command in the sandbox, on one side of the change."""

    tree: Literal["head", "base"]
    exit_code: int
    output: str = Field(description="The command's output, cut to its last lines.")
    seconds: float
    timed_out: bool = False


class Demonstration(BaseModel):
    """What pullsmith ran to check a P0/P1 finding, and what that showed."""

    command: str = Field(description="The shell command, as the model wrote it.")
    runs: list[Run] = Field(default_factory=list)
    reason: str = Field(description="One sentence: why the finding is (not) demonstrated.")


class Finding(BaseModel):
    title: str
    body: str = Field(description="The explanation: what is wrong and why it matters.")
    priority: Literal["P0", "P1", "P2", "P3"] = Field(
        description="P0 drop everything, P1 fix before merging, P2 should fix, P3 a nit."
    )
    confidence: float = Field(ge=0.0, le=1.0)
    location: Location
    check: Check = Field(
        "not checked",
        description="P0/P1 findings are checked: 'demonstrated' when a command showed the "
        "problem on the change (and not on the base), else 'not demonstrated'.",
    )
    demonstration: Demonstration | None = None
    # Where the model first pointed, when its location was moved onto the diff.
    snapped_from: str | None = None


class Dropped(BaseModel):
    """A finding the model wrote that the review left out, and why."""

    title: str
    reason: str


class ReviewUsage(BaseModel):
    model_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Review(BaseModel):
    """One review of one change."""

    schema_version: int = SCHEMA_VERSION
    repo: str
    target: str = Field(description="What was reviewed, in words ('commit 1a2b3c4d5e', ...).")
    base: str = Field(description="The base commit the change is measured from.")
    head: str = Field(description="The commit reviewed (for uncommitted changes: a snapshot).")
    focus: str | None = None
    rules: str | None = Field(None, description="The AGENTS.md review rules given to the model.")
    model: str
    findings: list[Finding] = Field(default_factory=list)
    verdict: Literal["correct", "incorrect"]
    reasoning: str = Field(description="One paragraph on why the verdict.")
    dropped: list[Dropped] = Field(default_factory=list)
    created_at: str
    seconds: float
    usage: ReviewUsage = Field(default_factory=ReviewUsage)

    @property
    def checked(self) -> list[Finding]:
        return [f for f in self.findings if f.priority in ("P0", "P1")]


def review_schema() -> dict[str, Any]:
    """The JSON Schema of `pullsmith review --json`."""
    return Review.model_json_schema()
