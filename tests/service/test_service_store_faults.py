"""A store that can't be written: the database file read-only, the disk it is on full.

Real faults, on a real `pullsmith serve` process: the database file (`--database-url`) is made
read-only by a read-only bind mount of the file itself (as root, permissions alone would not
stop the server), and the disk is full on a small tmpfs holding only the database, filled up
with a file until the kernel says ENOSPC (SQLite then answers SQLITE_FULL itself). The mounts
are undone at the end. Each is one sentence in the API's 503 and in the server's log, and no
task is left half-written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_helpers import (
    INSTRUCTION,
    Server,
    make_repo,
    stream,
)

FINAL = ("passed", "failed", "passed-unfinished", "untested", "error", "cancelled", "interrupted")


def mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"can not mount here (mount {' '.join(args)}: {done.stderr.strip()})")


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """`path` (a file) read-only for everyone, root included, until the block ends."""
    if os.geteuid() != 0:
        pytest.skip("making a file read-only for the server takes a bind mount, so root")
    mount("--bind", str(path), str(path))
    try:
        mount("-o", "remount,bind,ro", str(path))
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@contextlib.contextmanager
def small_disk(path: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of `size` at `path` until the block ends."""
    if os.geteuid() != 0:
        pytest.skip("a small filesystem of its own takes a mount, so root")
    path.mkdir(parents=True)
    mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill(path: Path) -> None:
    """Write `path` until its filesystem has no room left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (1 << 20, 4096, 1):
            block = b"\0" * chunk
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)


def wait_for_log(server: Server, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.errors:
        if time.monotonic() > deadline:
            raise AssertionError(f"the server never said {text!r}{server.logs}")
        time.sleep(0.1)


def test_a_read_only_database_is_one_sentence_and_the_queue_keeps(recordings, tmp_path):
    db = tmp_path / "db" / "pullsmith.db"
    url = f"sqlite:///{db}"
    args = ("--workers", "1", "--database-url", url)
    repo = make_repo(tmp_path / "inventory")
    # A first server leaves one task cancelled and one queued (its one worker was busy).
    first = Server(tmp_path / "data", *args).start()
    try:
        busy = first.create(repo, recordings["sleepy"])["id"]
        first.wait_event(busy, lambda e: e.get("data", {}).get("command") == "sleep 60")
        queued = first.create(repo, recordings["good"])["id"]
        assert first.task(queued)["state"] == "queued"
    finally:
        assert first.stop() == 0
    assert db.is_file()

    with read_only(db):
        second = Server(tmp_path / "data", *args).start()
        try:
            sentence = (
                f"the store at {url} could not be written (attempt to write a readonly "
                "database): the database is read-only; make the database file and its "
                "directory writable, then retry."
            )
            body = {"repo": str(repo), "instruction": INSTRUCTION, "model": recordings["good"]}
            answer = second.post("/api/tasks", json=body)
            assert answer.status_code == 503, answer.text
            assert answer.json() == {"error": sentence}
            assert f"pullsmith serve: POST /api/tasks failed: {sentence}\n" in second.errors
            # The scheduler can't claim the queued task: said once, and the task stays queued.
            wait_for_log(second, f"could not take the next task from the queue ({sentence})")
            listed = second.get("/api/tasks").json()
            assert listed["total"] == 2
            states = {t["id"]: (t["state"], t["tries"]) for t in listed["tasks"]}
            assert states == {busy: ("cancelled", 1), queued: ("queued", 0)}
            assert "Traceback" not in second.errors, second.logs
        finally:
            assert second.stop() == 0
    assert second.errors.count("could not take the next task from the queue") == 1


def test_a_full_disk_is_one_sentence_and_an_end_is_stored_once_there_is_room(recordings, tmp_path):
    repo = make_repo(tmp_path / "inventory")
    with small_disk(tmp_path / "small") as small:
        url = f"sqlite:///{small / 'pullsmith.db'}"
        server = Server(tmp_path / "data", "--workers", "1", "--database-url", url).start()
        filler = small / "filler"
        try:
            # Queueing a task: refused in one sentence, and no task is there.
            fill(filler)
            body = {"repo": str(repo), "instruction": INSTRUCTION, "model": recordings["good"]}
            answer = server.post("/api/tasks", json=body)
            assert answer.status_code == 503, answer.text
            sentence = answer.json()["error"]
            assert sentence == (
                f"the store at {url} could not be written (database or disk is full): the "
                "disk it is on is full; free some space there, then retry."
            )
            assert f"pullsmith serve: POST /api/tasks failed: {sentence}\n" in server.errors
            assert server.get("/api/tasks").json() == {
                "tasks": [],
                "total": 0,
                "limit": 50,
                "offset": 0,
            }
            filler.unlink()

            # A task that ends while the disk is full: its end waits, and is stored, events
            # first, once there is room again; its PR is recorded on request.
            task_id = server.create(repo, recordings["slow"])["id"]
            server.wait_event(task_id, lambda e: e.get("data", {}).get("command") == "sleep 4")
            fill(filler)
            wait_for_log(server, f"could not record the end of task {task_id} (the store at")
            said = server.errors
            assert "database or disk is full" in said and "Traceback" not in said, server.logs
            assert said.count("could not store event") == 1
            waiting = server.task(task_id)
            assert (waiting["state"], waiting["result"], waiting["finished_at"]) == (
                "running",
                None,
                None,
            )
            filler.unlink()
            task = server.wait(task_id, FINAL)
            assert task["state"] == "passed" and task["pr"] is None, task
            wait_for_log(server, f"recorded the end of task {task_id} (passed) after all.")
            events = stream(server, task_id)
            assert [e["id"] for e in events] == list(range(1, len(events) + 1))
            assert events[-1]["type"] == "task.finished"
            assert any(
                "was not recorded as a pull request" in e["data"].get("message", "") for e in events
            )
            recorded = server.post(f"/api/tasks/{task_id}/pr")
            assert recorded.status_code == 201, recorded.text
            assert server.task(task_id)["pr"] == recorded.json()["number"]
            assert "Traceback" not in server.errors, server.logs
        finally:
            with contextlib.suppress(FileNotFoundError):
                filler.unlink()
            server.close()
