"""The event log: its reference page, `pullsmith events schema`, and EventLog's promises."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pullsmith.cli import main, main_group
from pullsmith.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    Event,
    EventLog,
    read_events,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "events.md"
HEADING = re.compile(r"^## `([^`]+)`\s*$", re.MULTILINE)


def doc_sections() -> dict[str, str]:
    """Each `## \\`type\\`` heading of docs/events.md and the text up to the next `## `."""
    text = DOC.read_text(encoding="utf-8")
    sections = {}
    for match in HEADING.finditer(text):
        rest = text[match.end() :]
        end = re.search(r"^## ", rest, re.MULTILINE)
        sections[match.group(1)] = rest[: end.start()] if end else rest
    return sections


def test_every_event_type_has_a_section_naming_each_of_its_fields():
    sections = doc_sections()
    assert list(sections) == list(EVENT_TYPES), "one section per type, in EVENT_TYPES order"
    for name, cls in EVENT_TYPES.items():
        for field in cls.model_fields:
            assert f"| `{field}` |" in sections[name], f"{name}: field {field} is not in its table"


def test_the_doc_names_the_envelope_fields():
    text = DOC.read_text(encoding="utf-8")
    envelope = text[text.index("### The envelope") : text.index("### Schema version")]
    for field in ("v", "id", "type", "task_id", "ts", "data"):
        assert f"| `{field}` |" in envelope


def test_schema_command_prints_the_schema_of_every_type():
    result = CliRunner().invoke(main_group, ["events", "schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    assert schema["properties"]["type"]["enum"] == list(EVENT_TYPES)
    assert schema["properties"]["v"]["const"] == SCHEMA_VERSION
    consts = [variant["properties"]["type"]["const"] for variant in schema["oneOf"]]
    assert consts == list(EVENT_TYPES)


def test_schema_command_with_a_type_prints_that_types_data():
    result = CliRunner().invoke(main_group, ["events", "schema", "--type", "tests.ran"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    assert schema["title"] == "tests.ran"
    assert set(schema["properties"]) == set(EVENT_TYPES["tests.ran"].model_fields)
    assert schema["additionalProperties"] is False


def test_schema_command_with_an_unknown_type_is_one_sentence(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["events", "schema", "--type", "no.such"])
    assert exit_info.value.code != 0
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "no.such" in lines[0] and "Traceback" not in err
    for name in EVENT_TYPES:
        assert name in lines[0]


def test_an_event_is_in_the_file_before_a_listener_sees_it(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog("t1", path)
    seen: list[tuple[int, bool]] = []

    def reader(event: Event) -> None:
        on_disk = {e.id: e for e in read_events(path)}
        seen.append((event.id, on_disk.get(event.id) == event))

    log.subscribe(reader)
    for turn in range(1, 6):
        log.emit("command.started", turn=turn, command=f"echo {turn}")
    log.close(timeout=10)
    assert seen == [(i, True) for i in range(1, 6)]


def test_a_listener_that_raises_is_dropped_and_reported(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog("t1", path)
    bad_calls: list[int] = []
    good: list[Event] = []
    reported = threading.Event()

    def bad(event: Event) -> None:
        bad_calls.append(event.id)
        raise RuntimeError("listener broke")

    def keeper(event: Event) -> None:
        good.append(event)
        if event.type == "listener.failed":
            reported.set()

    log.subscribe(bad, name="bad-listener")
    log.subscribe(keeper)
    log.emit("warning", message="first")
    assert reported.wait(10), "no listener.failed event came"
    log.emit("warning", message="second")
    log.emit("warning", message="third")
    log.close(timeout=10)

    assert bad_calls == [1]
    failed = [e for e in read_events(path) if e.type == "listener.failed"]
    assert len(failed) == 1
    assert failed[0].data["listener"] == "bad-listener"
    assert "RuntimeError: listener broke" in failed[0].data["error"]
    messages = [e.data.get("message") for e in good if e.type == "warning"]
    assert messages == ["first", "second", "third"]
    assert [e.type for e in good].count("listener.failed") == 1


def test_a_slow_listener_does_not_delay_emit(tmp_path):
    log = EventLog("t1", tmp_path / "events.jsonl")
    order: list[str] = []
    lock = threading.Lock()
    first_done = threading.Event()

    def slow(event: Event) -> None:
        time.sleep(0.5)
        with lock:
            order.append(f"handled {event.id}")
        first_done.set()

    log.subscribe(slow)
    for i in range(5):
        event = log.emit("format.error", turn=i, message="bad reply")
        with lock:
            order.append(f"emitted {event.id}")
    returned_before_first = not first_done.is_set()
    log.close(timeout=30)

    assert returned_before_first
    assert order[:5] == [f"emitted {i}" for i in range(1, 6)]
    assert order[5:] == [f"handled {i}" for i in range(1, 6)]


def test_emit_refuses_an_unknown_type_or_a_wrong_field(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog("t1", path)
    with pytest.raises(ValueError, match="unknown event type"):
        log.emit("no.such.event", message="x")
    with pytest.raises(ValueError):
        log.emit("warning", message="x", colour="red")  # not a field of warning
    with pytest.raises(ValueError):
        log.emit("commit.created", commit="abc")  # branch is missing
    with pytest.raises(ValueError):
        log.emit(
            "tests.ran", phase="after", command="pytest", exit_code="zero", seconds=1.0, output=""
        )
    event = log.emit("warning", message="fine")
    log.close()
    assert event.id == 1  # the refused events took no number and left no line
    assert [e.type for e in read_events(path)] == ["warning"]


def test_attempt_is_set_by_an_attempts_log_and_left_out_otherwise():
    plain = EventLog("t1").emit("commit.created", commit="abc", branch="b")
    assert "attempt" not in plain.data
    numbered = EventLog("t1", attempt=2).emit("commit.created", commit="abc", branch="b")
    assert numbered.data["attempt"] == 2


def test_a_line_round_trips_and_an_old_line_without_v_is_read():
    event = EventLog("t1").emit("edit", form="sed", ok=True)
    line = event.to_json()
    assert json.loads(line)["v"] == SCHEMA_VERSION
    assert Event.from_json(line) == event

    old = '{"id": 3, "type": "edit", "task_id": "t0", "ts": 1700000000.5, "data": {"form": "sed", "ok": false}}'
    read = Event.from_json(old)
    assert (read.id, read.type, read.task_id, read.ts) == (3, "edit", "t0", 1700000000.5)
    assert read.v == SCHEMA_VERSION
    assert read.payload.form == "sed" and read.payload.ok is False
