"""The outbox at the ledger: every terminal status of a write is one event written in the
transition's own transaction, whatever is repeated, in whatever order."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from chartbridge.core.errors import (OutcomeUnknown, PermanentError, TransientError,
                                     WriteInProgress)
from chartbridge.core.models import WriteStatus
from chartbridge.ledger.tables import WebhookEventRow
from chartbridge.ledger.writes import WriteLedger
from chartbridge.webhooks.events import Data, EventType, WebhookEvent
from chartbridge.webhooks.store import WebhookStore
from tests.ledger.command_factory import make_command
from tests.ledger.fake_ehr import FileEhr


def _events(db, clock, org="org-a"):
    return [(e["type"], e["data"].get("write_key"))
            for e in reversed(WebhookStore(db, clock).events(org))]   # oldest first


def test_needs_reconciliation_then_resolved_is_two_events(db, clock, tmp_path):
    ledger = WriteLedger(db, clock)
    ehr = FileEhr(tmp_path / "ehr.jsonl", fail_with=OutcomeUnknown("the answer was lost"))
    with pytest.raises(OutcomeUnknown):
        ledger.execute(make_command(), ehr)
    with pytest.raises(OutcomeUnknown):                      # asked again: nothing new
        ledger.execute(make_command(), ehr)
    key = make_command().idempotency_key()
    assert _events(db, clock) == [("write.needs_reconciliation", key)]
    ledger.resolve("org-a", key, external_id="doc-9", actor="user:ops", note="in the chart")
    events = WebhookStore(db, clock).events("org-a")[::-1]            # oldest first
    assert [e["type"] for e in events] == ["write.needs_reconciliation", "write.succeeded"]
    assert events[1]["data"]["ehr_id"] == "doc-9"
    assert events[0]["data"]["reason_code"] == "OutcomeUnknown"


def test_a_transient_error_to_the_last_attempt_is_write_failed(db, clock, tmp_path):
    ledger = WriteLedger(db, clock, max_attempts=2)
    ehr = FileEhr(tmp_path / "ehr.jsonl", fail_with=TransientError("429", maybe_delivered=False))
    for _ in range(2):
        with pytest.raises(TransientError):
            ledger.execute(make_command(), ehr)
        assert _events(db, clock) in ([], [("write.failed", make_command().idempotency_key())])
        clock.advance(600)
    assert _events(db, clock) == [("write.failed", make_command().idempotency_key())]


def test_a_rolled_back_transition_leaves_no_event(db, clock):
    # Given the outbox insert inside a transaction that fails after it
    from chartbridge.webhooks import outbox

    with pytest.raises(RuntimeError):
        with db.transaction() as tx:
            outbox.draft_ready(tx, org_id="org-a", session_id="s1", draft_id="d1", version=1,
                               recording_version=1, at=clock.now())
            raise RuntimeError("crash before commit")
    # Then neither the change nor its event exists
    with db.transaction() as tx:
        assert tx.query(WebhookEventRow).count() == 0


def test_the_body_schema_refuses_anything_but_ids_and_states():
    with pytest.raises(ValueError):
        Data(org="o", status="failed", transcript="cough")          # type: ignore[call-arg]
    event = WebhookEvent(id="evt_1", type=EventType.WRITE_FAILED,
                         timestamp="2026-12-01T00:00:00Z", data=Data(org="o", status="failed"))
    assert set(WebhookEvent.model_json_schema()["properties"]) == {"id", "type", "timestamp",
                                                                  "data"}
    assert b"transcript" not in event.body()


# a found failing history stays found (kept in the repo, like tests/properties/examples)
EXAMPLES_DB = DirectoryBasedExampleDatabase(str(Path(__file__).parent / "examples"))
OUTCOMES = st.sampled_from(["ok", "permanent", "transient", "unknown", "busy"])


@settings(max_examples=25, deadline=None, database=EXAMPLES_DB,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=st.lists(st.tuples(st.integers(1, 2), OUTCOMES), min_size=1, max_size=8))
def test_any_history_of_repeats_announces_each_status_reached_once(db, clock, tmp_path,
                                                                   history):
    """Two writes, each executed again and again with the EHR answering anything: the
    events are exactly one per terminal status each write reached."""
    with db.transaction() as tx:
        tx.query(WebhookEventRow).delete()
        from chartbridge.ledger.tables import AuditRow, WriteRow  # noqa: F401
        tx.query(WriteRow).delete()
    ledger = WriteLedger(db, clock, max_attempts=3)
    reached: dict[str, set] = {}
    for version, outcome in history:
        command = make_command(version=version)
        fail = {"ok": None, "permanent": PermanentError("refused", status=422),
                "transient": TransientError("503"), "unknown": OutcomeUnknown("lost"),
                "busy": None}[outcome]
        if outcome == "busy":               # another claimant holds it: nothing happens
            ledger.prepare(command)
            continue
        ehr = FileEhr(tmp_path / f"ehr-{version}.jsonl", fail_with=fail)
        try:
            ledger.execute(command, ehr)
        except (TransientError, OutcomeUnknown, WriteInProgress):
            pass
        clock.advance(3600)
        status = ledger.get("org-a", command.idempotency_key()).status
        if status in (WriteStatus.SUCCEEDED, WriteStatus.FAILED, WriteStatus.STALE,
                      WriteStatus.NEEDS_RECONCILIATION):
            reached.setdefault(command.idempotency_key(), set()).add(status.value)
    events = _events(db, clock)
    assert len(events) == len(set(events))
    assert sorted(events) == sorted((f"write.{s}", k) for k, ss in reached.items() for s in ss)


def test_a_requeued_write_that_fails_again_is_announced_again(db, clock, tmp_path):
    ledger = WriteLedger(db, clock)
    ehr = FileEhr(tmp_path / "ehr.jsonl", fail_with=PermanentError("refused", status=422))
    ledger.execute(make_command(), ehr)
    ledger.execute(make_command(), ehr)                # a repeat: finished, nothing new
    key = make_command().idempotency_key()
    ledger.requeue("org-a", key, actor="user:ops", reason="the site fixed its profile")
    ledger.execute(make_command(), ehr)
    events = WebhookStore(db, clock).events("org-a")[::-1]            # oldest first
    assert [e["type"] for e in events] == ["write.failed", "write.failed"]
    assert events[0]["id"] != events[1]["id"]
