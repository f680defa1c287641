"""Each stuck or failed state made for real — a write the EHR refused, an answer lost on the
way back, a worker killed mid-job — and repaired with chartbridge/ops/repair.py; afterwards
the FHIR simulator holds exactly one document, and the audit trail says who did it and why.
The engine runs for real (ledger, use cases, actors, FHIR adapter); the queue is drained by
the test, so no timing is involved (except waiting for the killed worker to hang)."""
from __future__ import annotations

import pytest

from chartbridge.core.errors import InputError, NotFound, StateConflict
from chartbridge.core.models import ChunkState, VersionState, WriteStatus
from chartbridge.ops import repair
from tests.ops.site import Site

ORG, OTHER = "demo-ops", "demo-ops-other"
WHO = "user:ops.jane"


@pytest.fixture
def site(tmp_path, database_url):
    s = Site(tmp_path, database_url, orgs=(ORG, OTHER))
    yield s
    s.close()


def _audit(site, action):
    with site.engine.db.transaction() as tx:
        from chartbridge.ledger import audit
        return [e for e in audit.entries(tx, ORG) if e.action == action]


def creates(site) -> int:
    return len([c for c in site.fhir.calls() if c.get("call") in ("create", "transaction")
                and c.get("method") == "POST"])


def test_a_refused_write_is_requeued_as_the_same_write_and_filed_once(site):
    # Given a note the EHR refused once (a 422), so its write failed
    _, draft = site.drafted(ORG)
    site.fhir.faults.add("transaction", 422, times=1)
    (key,) = site.approve(ORG, draft)
    site.jobs.execute_write.fn(ORG, key)
    failed = site.engine.ledger.get(ORG, key)
    assert failed.status == WriteStatus.FAILED and site.documents() == []
    command = site.engine.ledger.command_of(ORG, key)
    # When another org's operator tries to requeue it, it is not found there
    with pytest.raises(NotFound):
        repair.requeue_failed(site.engine, OTHER, key, actor=WHO, reason="x")
    # And a requeue without a reason is refused, naming the field
    with pytest.raises(InputError) as err:
        repair.requeue_failed(site.engine, ORG, key, actor=WHO, reason="  ")
    assert err.value.fields.get("field") == "reason" or "reason" in str(err.value)
    # When the operator requeues it
    record = repair.requeue_failed(site.engine, ORG, key, actor=WHO,
                                   reason="the EHR's validator was fixed")
    # Then it is the same write (key, stored command), pending, and enqueued
    assert (record.key, record.status, record.attempts) == (key, WriteStatus.PENDING, 0)
    assert site.engine.ledger.command_of(ORG, key) == command
    assert site.jobs.pending == [("execute_write", (ORG, key))]
    site.drain()
    # And the EHR holds exactly one document, the ledger row's
    done = site.engine.ledger.get(ORG, key)
    assert done.status == WriteStatus.SUCCEEDED
    (doc,) = site.documents()
    assert done.external_id == f"DocumentReference/{doc['id']}"
    # And requeueing it again is refused: it is not failed any more
    with pytest.raises(StateConflict):
        repair.requeue_failed(site.engine, ORG, key, actor=WHO, reason="again")
    (entry,) = _audit(site, "write.requeued")
    assert entry.actor == WHO and entry.detail["reason"] == "the EHR's validator was fixed"
    assert entry.detail["previous_error_class"] and entry.detail["previous_attempts"] == 1


def test_a_lost_answer_is_resolved_from_what_the_ehr_holds_without_a_resend(site):
    # Given a create the EHR performed whose answer was lost, with no attempts left
    site.engine.ledger.max_attempts = 1
    _, draft = site.drafted(ORG)
    site.fhir.faults.add("transaction", kind="lose_response", times=1)
    (key,) = site.approve(ORG, draft)
    site.jobs.execute_write.fn(ORG, key)
    assert site.engine.ledger.get(ORG, key).status == WriteStatus.NEEDS_RECONCILIATION
    assert len(site.documents()) == 1
    sent = creates(site)
    # When the operator asks to resend it
    record = repair.resolve_reconciliation(site.engine, ORG, key, actor=WHO,
                                           reason="checked the chart", resend=True)
    # Then the EHR was asked first, found it, and nothing was sent again
    (doc,) = site.documents()
    assert record.status == WriteStatus.SUCCEEDED and record.external_id == f"DocumentReference/{doc['id']}"
    assert creates(site) == sent and site.jobs.pending == []
    (entry,) = _audit(site, "write.resolved")
    assert (entry.actor, entry.detail["checked"], entry.detail.get("found_in_ehr")) == (
        WHO, "by_ehr", True)


def test_an_unknown_outcome_the_ehr_never_got_is_resent_once_after_checking(site):
    # Given a create refused with a 503 (it may have been delivered), no attempts left
    site.engine.ledger.max_attempts = 1
    _, draft = site.drafted(ORG)
    site.fhir.faults.add("transaction", 503, times=1)
    (key,) = site.approve(ORG, draft)
    site.jobs.execute_write.fn(ORG, key)
    assert site.engine.ledger.get(ORG, key).status == WriteStatus.NEEDS_RECONCILIATION
    # When neither or both of the EHR id and resend are given, it is refused
    for kwargs in ({}, {"external_id": "x", "resend": True}):
        with pytest.raises(InputError):
            repair.resolve_reconciliation(site.engine, ORG, key, actor=WHO, reason="r",
                                          **kwargs)
    # When the operator resends it
    site.engine.ledger.max_attempts = 12
    record = repair.resolve_reconciliation(site.engine, ORG, key, actor=WHO,
                                           reason="not in the chart", resend=True)
    assert record.status == WriteStatus.PENDING
    site.drain()
    # Then the EHR, which had none, holds exactly one
    (doc,) = site.documents()
    assert site.engine.ledger.get(ORG, key).external_id == f"DocumentReference/{doc['id']}"
    (entry,) = _audit(site, "write.resolved")
    assert entry.detail["checked"] == "by_ehr" and entry.detail["resend"] is True


def test_marking_delivered_with_the_ehr_id_and_cancelling(site):
    site.engine.ledger.max_attempts = 1
    _, draft = site.drafted(ORG)
    site.fhir.faults.add("transaction", kind="lose_response", times=1)
    (key,) = site.approve(ORG, draft)
    site.jobs.execute_write.fn(ORG, key)
    (doc,) = site.documents()
    # When the operator marks it delivered with the id they found in the EHR
    record = repair.resolve_reconciliation(site.engine, ORG, key, actor=WHO,
                                           reason="found it", external_id=doc["id"])
    assert (record.status, record.external_id) == (WriteStatus.SUCCEEDED, doc["id"])
    # Then a succeeded write cannot be cancelled
    with pytest.raises(StateConflict):
        repair.cancel_write(site.engine, ORG, key, actor=WHO, reason="no")
    # Given a second session's write refused by the EHR
    _, draft2 = site.drafted(ORG)
    site.fhir.faults.add("transaction", 422, times=1)
    (key2,) = site.approve(ORG, draft2)
    site.jobs.execute_write.fn(ORG, key2)
    # When it is cancelled, it is terminal: a requeue or a driven job sends nothing
    cancelled = repair.cancel_write(site.engine, ORG, key2, actor=WHO, reason="duplicate visit")
    assert cancelled.status == WriteStatus.CANCELLED
    assert "duplicate visit" in cancelled.last_error
    with pytest.raises(StateConflict):
        repair.requeue_failed(site.engine, ORG, key2, actor=WHO, reason="x")
    site.jobs.execute_write.fn(ORG, key2)
    assert len(site.documents()) == 1
    assert site.engine.ledger.get(ORG, key2).status == WriteStatus.CANCELLED
    assert _audit(site, "write.cancelled")[0].detail["previous_status"] == "failed"


def test_a_chunk_left_by_a_killed_worker_is_redriven_and_the_note_filed_once(site, tmp_path):
    # Given a worker killed while transcribing a chunk: announced, never transcribed
    s = site.open_session(ORG)
    site.kill_worker_during(tmp_path, "process_chunk", ORG, s.id, "R1", 1)
    assert site.engine.store.get_chunk(ORG, s.id, "R1", 1).state == ChunkState.ANNOUNCED
    # Then it is flagged stuck, with the reason, in its org only
    (stuck,) = repair.stuck_sessions(site.engine, ORG, older_than_s=0)
    assert stuck["session_id"] == s.id and "chunk R1#1 announced" in stuck["reasons"][0]
    assert repair.stuck_sessions(site.engine, OTHER, older_than_s=0) == []
    assert repair.stuck_sessions(site.engine, ORG, older_than_s=3600) == []
    # When the operator re-drives it (another org's operator cannot)
    with pytest.raises(NotFound):
        repair.redrive_chunk(site.engine, OTHER, s.id, "R1", 1, actor=WHO, reason="x")
    repair.redrive_chunk(site.engine, ORG, s.id, "R1", 1, actor=WHO, reason="worker died")
    assert site.jobs.pending == [("process_chunk", (ORG, s.id, "R1", 1))]
    site.drain()
    # Then it is transcribed, and the session goes on to one filed note
    assert site.engine.store.get_chunk(ORG, s.id, "R1", 1).state == ChunkState.TRANSCRIBED
    ready = site.stop_recording(ORG, s)
    site.jobs.finish_version.fn(ORG, s.id, "R1", ready.version)
    (draft, _), = site.engine.store.drafts(ORG, session_id=s.id)
    keys = site.approve(ORG, draft)
    for key in keys:
        site.jobs.execute_write.fn(ORG, key)
    assert len(site.documents()) == 1
    with pytest.raises(StateConflict):
        repair.redrive_chunk(site.engine, ORG, s.id, "R1", 1, actor=WHO, reason="again")
    (entry,) = _audit(site, "chunk.redriven")
    assert entry.actor == WHO and entry.detail["previous_state"] == "announced"


def test_a_version_left_claimed_by_a_killed_worker_is_redriven(site, tmp_path):
    # Given a version claimed ready whose worker was killed while drafting it
    s = site.open_session(ORG)
    site.jobs.process_chunk.fn(ORG, s.id, "R1", 1)
    ready = site.stop_recording(ORG, s)
    site.kill_worker_during(tmp_path, "finish_version", ORG, s.id, "R1", ready.version)
    (rec,) = site.engine.store.recordings(ORG, s.id)
    assert rec.state == VersionState.READY and site.engine.store.drafts(ORG, session_id=s.id) == []
    (stuck,) = repair.stuck_sessions(site.engine, ORG, older_than_s=0)
    assert any("claimed but never finished" in r for r in stuck["reasons"])
    # When the operator re-drives the version
    repair.redrive_version(site.engine, ORG, s.id, "R1", 1, actor=WHO, reason="worker died")
    assert site.jobs.pending == [("finish_version", (ORG, s.id, "R1", 1))]
    site.drain()
    # Then it is drafted and done, and its note filed once
    (rec,) = site.engine.store.recordings(ORG, s.id)
    assert rec.state == VersionState.DONE
    (draft, _), = site.engine.store.drafts(ORG, session_id=s.id)
    for key in site.approve(ORG, draft):
        site.jobs.execute_write.fn(ORG, key)
    assert len(site.documents()) == 1
    # And a done version has nothing to re-drive
    with pytest.raises(StateConflict):
        repair.redrive_version(site.engine, ORG, s.id, "R1", 1, actor=WHO, reason="again")
    assert repair.stuck_sessions(site.engine, ORG, older_than_s=0) == []


def test_a_failed_chunk_is_redriven_and_its_version_reopened(site):
    # Given a chunk that failed permanently (no audio), failing its version
    s = site.open_session(ORG)
    site.stop_recording(ORG, s)
    site.engine.store.chunk_failed(ORG, s.id, "R1", 1, "the transcriber refused the audio")
    (rec,) = site.engine.store.recordings(ORG, s.id)
    assert rec.state == VersionState.FAILED
    with pytest.raises(StateConflict):       # the version names the chunk to fix first
        repair.redrive_version(site.engine, ORG, s.id, "R1", 1, actor=WHO, reason="x")
    # When the chunk is re-driven
    repair.redrive_chunk(site.engine, ORG, s.id, "R1", 1, actor=WHO, reason="audio restored")
    site.drain()
    # Then the chunk is transcribed and the version drafted and done
    assert site.engine.store.get_chunk(ORG, s.id, "R1", 1).state == ChunkState.TRANSCRIBED
    (rec,) = site.engine.store.recordings(ORG, s.id)
    assert rec.state == VersionState.DONE
    assert len(site.engine.store.drafts(ORG, session_id=s.id)) == 1
