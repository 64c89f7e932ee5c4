"""The scheduler's slots: the next task goes to the executor as soon as a task's work is done,
while that task is still being closed (its PR recorded, its end stored), and never more than
`workers` tasks' work is in the executor at once."""

from __future__ import annotations

import threading
import time

from conftest import ScriptedModel
from service_helpers import GOOD_REPLIES, INSTRUCTION, SANDBOX, make_repo

from pullsmith.config import load_settings
from pullsmith.executors import ThreadExecutor
from pullsmith.service.queue import NewTask, TaskService
from pullsmith.store import Store


class CountingExecutor:
    """An executor that counts the jobs whose work is not done yet (not handed back)."""

    def __init__(self, inner: ThreadExecutor) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most = 0

    def submit(self, task, settings, on_event):
        job = self.inner.submit(task, settings, on_event)
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        executor = self

        class Counted:
            done = False

            def cancel(self) -> None:
                job.cancel()

            def result(self, timeout=None):
                result = job.result(timeout)
                with executor.lock:
                    if not self.done:
                        self.done = True
                        executor.in_flight -= 1
                return result

        return Counted()

    def shutdown(self, cancel: bool = False) -> None:
        self.inner.shutdown(cancel)


class HeldPublisher:
    """Holds the first run's closing (its PR) until `release` is set; records no PR."""

    def __init__(self) -> None:
        self.holding = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def publish(self, task, result, events):
        self.calls += 1
        if self.calls == 1:
            self.holding.set()
            assert self.release.wait(60)
        return None


def until(what, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (found := what()):
        assert time.monotonic() < deadline, "it never happened"
        time.sleep(0.05)
    return found


def test_the_next_task_starts_while_the_last_one_closes(tmp_path):
    settings = load_settings({"data_dir": str(tmp_path / "data"), "sandbox": SANDBOX}, tmp_path)
    repo = make_repo(tmp_path / "inventory")
    store = Store.open(settings)
    model = ScriptedModel([*GOOD_REPLIES, *GOOD_REPLIES])
    executor = CountingExecutor(ThreadExecutor(1, model=model))
    publisher = HeldPublisher()
    service = TaskService(settings, store, 1, executor=executor, publisher=publisher)
    service.start()
    try:
        ids = [service.create(NewTask(repo=str(repo), instruction=INSTRUCTION)).id for _ in "ab"]
        assert publisher.holding.wait(120)
        # The first task's work is done and its closing is held: it is still "running" (its
        # end is not stored), and the second one runs meanwhile, alone in the executor.
        until(lambda: service.require(ids[1]).state == "running")
        assert service.require(ids[0]).state == "running"
        assert service.require(ids[0]).result is None
        assert executor.most == 1
        publisher.release.set()
        for task_id in ids:
            until(
                lambda task_id=task_id: service.require(task_id).state not in ("queued", "running")
            )
            assert service.require(task_id).state == "passed", service.require(task_id).error
        assert executor.most == 1 and executor.in_flight == 0
        assert publisher.calls == 2
    finally:
        publisher.release.set()
        service.close(timeout=30)
        store.close()
