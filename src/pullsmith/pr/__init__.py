"""Pull requests from runs: describe (title and body with evidence), local store, GitHub."""

from __future__ import annotations

from pullsmith.pr.describe import Description, PullRequestFacts, describe
from pullsmith.pr.local import Recorded, record_run

__all__ = ["Description", "PullRequestFacts", "Recorded", "describe", "record_run"]
