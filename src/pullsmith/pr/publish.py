"""Publishers: how the engine records a finished run as a pull request.

Both implement `pullsmith.engine.Publisher`: `LocalPublisher` records the run in pullsmith's
store and opens (or, for a follow-up, updates) the local PR; `GitHubPublisher` does that and
then pushes the branch and opens or updates the PR on GitHub, as `pr.published`.
"""

from __future__ import annotations

from pullsmith.config import Settings
from pullsmith.errors import UserError
from pullsmith.events import ErrorEvent, EventLog, PullRequestPublished
from pullsmith.pr import local
from pullsmith.store import Store
from pullsmith.task import AttemptResult, Task


class LocalPublisher:
    """Records each run in the store; opens a PR for a run that committed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def publish(self, task: Task, result: AttemptResult, events: EventLog) -> int | None:
        with Store.open(self.settings) as store:
            recorded = local.record_run(store, task, result, events=events)
        return recorded.pull_request.number if recorded.pull_request else None


class GitHubPublisher:
    """The local PR first, then the same PR on GitHub. `failure` holds why GitHub refused,
    when it did: the local PR stands either way."""

    def __init__(self, settings: Settings, local_publisher: LocalPublisher | None = None) -> None:
        self.settings = settings
        self.local = local_publisher or LocalPublisher(settings)
        self.failure: str | None = None

    def publish(self, task: Task, result: AttemptResult, events: EventLog) -> int | None:
        number = self.local.publish(task, result, events)
        if number is None:
            return None
        from pullsmith.pr.github import publish

        try:
            with Store.open(self.settings) as store:
                published = publish(store, store.pull_request(number), self.settings)
        except UserError as exc:
            self.failure = (
                f"{exc.message.rstrip('.')}; pull request #{number} is kept locally "
                f"(`pullsmith pr show {number}`)."
            )
            events.emit(ErrorEvent(message=self.failure))
            return number
        events.emit(
            PullRequestPublished(
                number=number,
                url=published.url,
                created=published.created,
                draft=published.draft,
                checks=published.pull_request.checks,
            )
        )
        return number
