"""One logging configuration for every library: JSON lines, and no PHI even when a library
logs a traceback of a failing INSERT that carried note text."""
from __future__ import annotations

import io
import json
import logging

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy.exc import IntegrityError

from chartbridge.ledger.tables import SegmentRow
from chartbridge.logs import configure_logging

NOTE = "Patient reports crushing chest pain since Tuesday"


@pytest.fixture
def captured():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    handler = configure_logging(stream=stream)
    yield stream
    root.removeHandler(handler)
    root.level = saved[1]


def lines(stream) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_failing_insert_in_a_dramatiq_actor_never_prints_the_note_text(captured, db):
    from dramatiq import Worker

    def insert_twice():
        for _ in range(2):           # the second INSERT violates the primary key
            with db.transaction() as tx:
                tx.add(SegmentRow(session_id="s1", id="seg-1", org_id="org-a", recording_id="R1",
                                  chunk_sequence=1, start_ms=0, end_ms=1, text=NOTE,
                                  confidence=-0.1))

    broker = StubBroker()
    broker.emit_after("process_boot")
    actor = dramatiq.actor(insert_twice, broker=broker, actor_name="insert_twice", max_retries=0)
    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        actor.send()
        broker.join(actor.queue_name, fail_fast=False, timeout=20_000)
        worker.join()
    finally:
        worker.stop()
    out = captured.getvalue()
    records = lines(captured)                      # every line is JSON
    failed = [r for r in records if r["logger"].startswith("dramatiq")
              and r.get("exc_class") == "IntegrityError"]
    assert failed, out                             # dramatiq's traceback went through us...
    assert failed[0]["exception"][0]["frames"]     # ...with its frames,
    assert NOTE not in out and "chest pain" not in out and "seg-1" not in out   # not the text
    assert "INSERT" not in out


def test_library_arguments_and_exception_messages_are_dropped(captured):
    logging.getLogger("waitress").error("Exception while serving %s", "/orgs/x?mrn=Z4481")
    try:
        raise IntegrityError("INSERT INTO transcript_segments", {"text": NOTE}, Exception(NOTE))
    except IntegrityError:
        logging.getLogger("sqlalchemy.engine").exception("boom %s", NOTE)
    logging.getLogger("chartbridge.web").info("engine message %s", "kept", extra={"status": 3,
                                                                                  "mrn": "Z4481"})
    out = captured.getvalue()
    assert "Z4481" not in out and NOTE not in out
    records = lines(captured)
    assert records[0]["msg"] == "Exception while serving %s"
    assert records[1]["exc_class"] == "IntegrityError"
    assert records[2]["msg"] == "engine message kept" and records[2]["status"] == 3


def test_sqlalchemy_errors_hide_bound_parameters(db):
    with pytest.raises(IntegrityError) as err:
        for _ in range(2):
            with db.transaction() as tx:
                tx.add(SegmentRow(session_id="s1", id="seg-1", org_id="org-a", recording_id="R1",
                                  chunk_sequence=1, start_ms=0, end_ms=1, text=NOTE,
                                  confidence=-0.1))
    assert NOTE not in str(err.value)
