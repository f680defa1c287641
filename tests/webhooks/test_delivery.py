"""Webhooks for a real session: the engine (ledger, use cases, jobs, adapters) against the
FHIR and MLLP simulators, a receiver that verifies every request with the independent
Standard Webhooks library, and time moved by hand (FrozenClock) instead of sleeps."""
from __future__ import annotations

import json

from chartbridge.core import usecases as uc
from chartbridge.core.models import (Consent, ConsentScope, Decision, Identifier,
                                     RecordingStatus, SessionSource, WriteStatus)
from chartbridge.jobs import Sweeper
from chartbridge.webhooks.store import WebhookStore
from chartbridge.webhooks.wiring import deliverer

from tests.webhooks.support import ENCOUNTER, ORG, PATIENT, body_text, cli

DR = Identifier(value="D1", type="EXTERNAL")
WORDS = "cough for four days"
MRN, CSN = "MRN-77310-Z", "CSN-300012345"
IDENTIFIERS = [MRN, "urn:demo:mrn", PATIENT, CSN, ENCOUNTER, "Dr. Demo"]


def _drafted(engine, jobs, external_id="API-1", words=WORDS):
    s, _ = uc.open_session(engine.store, engine.clock, org_id=ORG, source=SessionSource.API,
                           external_id=external_id, user=DR,
                           patient_ids=[Identifier(value=MRN, type="MRN", system="urn:demo:mrn"),
                                        Identifier(value=PATIENT, type="FHIR")],
                           encounter_ids=[Identifier(value=CSN, type="CSN"),
                                          Identifier(value=ENCOUNTER, type="FHIR")],
                           allowed_sections=["10164-2"])
    for scope in ConsentScope.CAPTURE, ConsentScope.WRITE_BACK:
        engine.store.set_consent(ORG, Consent(session_id=s.id, scope=scope, granted=True,
                                              at=engine.clock.now()))
    uc.announce_chunk(engine.store, org_id=ORG, session=s, recording_id="R1", sequence=1, version=1)
    engine.store.store_audio(ORG, s.id, "R1", 1, words.encode(), "audio/wav")
    jobs.process_chunk.fn(ORG, s.id, "R1", 1)
    ready = uc.recording_available(engine.store, engine.clock, org_id=ORG, session=s,
                                   recording_id="R1", version=1, chunk_count=1,
                                   status=RecordingStatus.STOPPED)
    jobs.finish_version.fn(ORG, s.id, "R1", ready.version)
    (draft, _), = engine.store.drafts(ORG, session_id=s.id)
    return s, draft


def _approve_and_write(engine, jobs, draft):
    uc.decide(engine.store, engine.clock, org_id=ORG, draft_id=draft.id,
              content_hash=draft.content_hash(), approver=DR, approver_name="Dr. Demo",
              role="physician", decision=Decision.APPROVED)
    keys = engine.submit_approved(ORG, draft.id)
    for key in keys:
        jobs.execute_write.fn(ORG, key)
    return [engine.ledger.get(ORG, k) for k in keys]


def test_a_session_to_written_notes_announces_each_step_signed_and_without_phi(site, receiver):
    engine, jobs, fhir, mllp = site
    # Given a session drafted, approved and written to both targets
    s, draft = _drafted(engine, jobs)
    rows = _approve_and_write(engine, jobs, draft)
    assert all(r.status == WriteStatus.SUCCEEDED for r in rows)
    # When the deliverer runs (what the sweeper and the worker do)
    counts = deliverer(engine).run_due()
    # Then the receiver got draft.ready and one write.succeeded per target, every request
    # verified by the standardwebhooks library (a bad one would be in `rejected`)
    assert receiver.rejected == []
    assert counts.get("delivered") == 3
    (ready,) = receiver.events("draft.ready")
    assert ready["data"] == {"org": ORG, "session_id": s.id, "draft_id": draft.id,
                             "draft_version": 1, "recording_version": 1, "status": "draft"}
    written = {e["data"]["target"]: e["data"] for e in receiver.events("write.succeeded")}
    assert set(written) == {"fhir_docref", "hl7_mdm"}
    for row in rows:
        assert written[row.target]["write_key"] == row.key
        assert written[row.target]["ehr_id"] == row.external_id
        assert written[row.target]["draft_version"] == 1
    # the webhook-id header is the event id in the body (what a receiver dedupes on)
    for r in receiver.received:
        assert r["headers"]["webhook-id"] == r["event"]["id"]
        assert r["headers"]["webhook-signature"].startswith("v1,")
    # and nothing of the visit travels: not the transcript, not a name, not an identifier
    text = body_text(receiver)
    for secret in [WORDS, *(w for w in WORDS.split() if len(w) > 3), *IDENTIFIERS]:
        assert secret not in text, secret
    assert draft.sections[0].text not in text


def test_a_tampered_body_fails_the_independent_verification(receiver):
    # Given our signer and the reference library's verifier
    from standardwebhooks import Webhook
    from standardwebhooks.webhooks import WebhookVerificationError

    from chartbridge.webhooks import signing
    from tests.webhooks.support import SECRET
    import time

    key = signing.secret_key(SECRET)
    body = b'{"type":"write.failed"}'
    now = int(time.time())
    headers = signing.headers(key, "evt_1", now, body)
    # Then our signature verifies, and a changed body, id or secret does not
    assert Webhook(SECRET).verify(body, headers) == {"type": "write.failed"}
    for bad_body, bad_headers, secret in [
            (b'{"type":"write.succeeded"}', headers, SECRET),
            (body, dict(headers, **{"webhook-id": "evt_2"}), SECRET),
            (body, headers, "whsec_" + "QUJD" * 11)]:
        try:
            Webhook(secret).verify(bad_body, bad_headers)
        except WebhookVerificationError:
            continue
        raise AssertionError("a tampered delivery verified")


def test_receiver_down_is_retried_with_backoff_then_delivered(site, receiver):
    engine, jobs, fhir, mllp = site
    hooks, clock = deliverer(engine), engine.clock
    from prometheus_client import REGISTRY

    def counted(outcome):
        return REGISTRY.get_sample_value("chartbridge_webhook_deliveries_total", {
            "org": ORG, "event": "draft.ready", "outcome": outcome}) or 0
    before = {o: counted(o) for o in ("retry", "delivered")}
    # Given the receiver is down when the draft is ready
    receiver.stop()
    _drafted(engine, jobs)
    hooks.run_due()
    (d,) = hooks.store.list(ORG)
    assert (d.status, d.attempts, d.last_error) == ("pending", 1, "ConnectError")
    # Then no retry before the backoff (at least half of the first 10 s span)
    clock.advance(4.9)
    assert hooks.run_due().get("pending") is None
    assert hooks.store.list(ORG)[0].attempts == 1
    # When it is back up and the backoff has passed
    receiver.start()
    clock.advance(10.2)
    hooks.run_due()
    # Then it is delivered, once, verified
    (d,) = hooks.store.list(ORG)
    assert (d.status, d.attempts, d.last_error) == ("delivered", 2, None)
    assert [e["type"] for e in receiver.events()] == ["draft.ready"]
    assert receiver.rejected == []
    # and the metric counted one retry and one delivery (labels: org, event type, outcome)
    assert {o: counted(o) - before[o] for o in before} == {"retry": 1, "delivered": 1}


def test_a_repeated_transition_is_one_event(site, receiver):
    engine, jobs, fhir, mllp = site
    # Given a draft written once
    s, draft = _drafted(engine, jobs)
    rows = _approve_and_write(engine, jobs, draft)
    # When the same approval is submitted and executed again, and the version's job re-runs
    again = engine.submit_approved(ORG, draft.id)
    for key in again:
        jobs.execute_write.fn(ORG, key)
    jobs.finish_version.fn(ORG, s.id, "R1", 1)
    store = WebhookStore(engine.db, engine.clock)
    hooks = deliverer(engine)
    hooks.run_due()
    hooks.run_due()
    # Then each transition was announced once
    types = sorted(e["type"] for e in store.events(ORG))
    assert types == ["draft.ready", "write.succeeded", "write.succeeded"]
    assert sorted(e["type"] for e in receiver.events()) == types
    assert {r.key for r in rows} == set(again)


def test_a_crash_between_the_state_change_and_delivery_still_delivers(site, receiver,
                                                                       database_url):
    import subprocess
    import sys
    from pathlib import Path

    from dramatiq import Worker
    from dramatiq.brokers.stub import StubBroker

    from chartbridge.jobs import Jobs

    engine, jobs, fhir, mllp = site
    # Given a process that wrote the notes and died right after (os._exit), before any
    # delivery could run
    script = Path(__file__).with_name("crash_after_write.py")
    done = subprocess.run([sys.executable, str(script), database_url, str(engine.config_dir)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 137, done.stderr[-2000:]
    assert done.stdout.strip() == "succeeded,succeeded"
    store = WebhookStore(engine.db, engine.clock)
    assert len(store.events(ORG)) == 3 and store.list(ORG) == [] and receiver.requests == 0
    # When this process's sweeper runs and its worker takes the messages
    broker = StubBroker()
    worker_jobs = Jobs(engine, broker, queue="hooks-crash")
    counts = Sweeper(worker_jobs).sweep_once()
    worker = Worker(broker, worker_threads=1)
    worker.start()
    try:
        broker.join(worker_jobs.queue, timeout=20_000)
    finally:
        worker.stop()
    # Then every event the dead process recorded was delivered, once
    assert counts["webhooks"] == 3
    assert sorted(e["type"] for e in receiver.events()) == [
        "draft.ready", "write.succeeded", "write.succeeded"]
    assert {d.status for d in store.list(ORG)} == {"delivered"}


def test_failed_after_max_attempts_is_listed_by_the_cli_and_replay_delivers(
        site, receiver, database_url):
    engine, jobs, fhir, mllp = site
    hooks, clock = deliverer(engine), engine.clock
    # Given a receiver answering 503 to every attempt (3 allowed)
    receiver.answer = 503
    _drafted(engine, jobs)
    for _ in range(3):
        hooks.run_due()
        clock.advance(45)
    (d,) = hooks.store.list(ORG)
    assert (d.status, d.attempts, d.last_status_code, d.last_error) == (
        "failed", 3, 503, "http_503")
    # When an operator lists failed deliveries, as typed
    shown = cli("webhooks", "list", "--org", ORG, "--status", "failed", "--json",
                database_url=database_url)
    assert shown.returncode == 0, shown.stderr
    (listed,) = json.loads(shown.stdout)
    assert (listed["id"], listed["status"], listed["last_error"]) == (d.id, "failed", "http_503")
    table = cli("webhooks", "list", "--org", ORG, database_url=database_url)
    assert d.id in table.stdout and "http_503" in table.stdout
    # and replays it once the receiver is fixed
    receiver.answer = 204
    replayed = cli("webhooks", "replay", "--org", ORG, d.id, "--by", "ops.jane",
                   "--reason", "receiver fixed", database_url=database_url)
    assert replayed.returncode == 0, replayed.stderr
    from chartbridge.ledger.tables import AuditRow
    with engine.db.transaction() as tx:
        (row,) = tx.query(AuditRow).filter(AuditRow.action == "webhook.replayed").all()
        assert (row.actor, row.detail["reason"], row.detail["previous_status"]) == (
            "user:ops.jane", "receiver fixed", "failed")
    hooks.run_due()
    # Then it is delivered, with the same event id
    (d2,) = hooks.store.list(ORG)
    assert (d2.status, d2.attempts, d2.event_id) == ("delivered", 1, d.event_id)
    assert [e["id"] for e in receiver.events()] == [d.event_id]
    # and a delivery of another org is not found (one readable line, non-zero)
    other = cli("webhooks", "replay", "--org", "other-org", d.id, database_url=database_url)
    assert other.returncode == 1 and "no such webhook delivery" in other.stderr
    assert "Traceback" not in other.stderr
    # and a delivery being delivered is not replayed over (delivered: fine, pending: refused)
    hooks.store.replay(ORG, d.id)
    busy = cli("webhooks", "replay", "--org", ORG, "--all-failed", database_url=database_url)
    assert (busy.returncode, busy.stdout.strip()) == (0, "no failed deliveries")
    again = cli("webhooks", "replay", "--org", ORG, d.id, database_url=database_url)
    assert again.returncode == 1 and "pending" in again.stderr


def test_stale_and_failed_writes_are_announced_with_their_reason(site, receiver):
    engine, jobs, fhir, mllp = site
    # Given the FHIR server refuses the note (a permanent 422)
    fhir.faults.add("transaction", 422)
    _, draft = _drafted(engine, jobs)
    rows = _approve_and_write(engine, jobs, draft)
    failed = next(r for r in rows if r.target == "fhir_docref")
    assert failed.status == WriteStatus.FAILED
    deliverer(engine).run_due()
    (event,) = receiver.events("write.failed")
    assert event["data"]["write_key"] == failed.key
    assert event["data"]["status"] == "failed"
    assert event["data"]["reason_code"] == failed.last_error_class
    assert event["data"]["http_status"] == 422
    assert "ehr_id" not in event["data"]
    assert len(receiver.events("write.succeeded")) == 1          # the MDM target


def test_a_failed_recording_version_is_session_failed(site, receiver):
    engine, jobs, fhir, mllp = site
    s, _ = uc.open_session(engine.store, engine.clock, org_id=ORG, source=SessionSource.API,
                           external_id="API-F", user=DR,
                           patient_ids=[Identifier(value=PATIENT, type="FHIR")],
                           encounter_ids=[Identifier(value=ENCOUNTER, type="FHIR")],
                           allowed_sections=["10164-2"])
    engine.store.set_consent(ORG, Consent(session_id=s.id, scope=ConsentScope.CAPTURE,
                                          granted=True, at=engine.clock.now()))
    # Given a chunk whose audio never arrived (an API session downloads nothing)
    uc.announce_chunk(engine.store, org_id=ORG, session=s, recording_id="R1", sequence=1,
                      version=1)
    uc.recording_available(engine.store, engine.clock, org_id=ORG, session=s,
                           recording_id="R1", version=1, chunk_count=1,
                           status=RecordingStatus.STOPPED)
    jobs.process_chunk.fn(ORG, s.id, "R1", 1)
    jobs.process_chunk.fn(ORG, s.id, "R1", 1)       # a redelivered message changes nothing
    deliverer(engine).run_due()
    (event,) = receiver.events("session.failed")
    assert event["data"] == {"org": ORG, "session_id": s.id, "recording_version": 1,
                             "status": "failed", "reason_code": "chunk_failed"}


def test_an_edit_at_the_ehr_makes_the_approved_note_write_stale(tmp_path, database_url,
                                                                 receiver):
    from tests.webhooks.support import make_site

    engine, jobs, fhir, mllp = make_site(tmp_path, database_url, receiver,
                                         approval="stage_preliminary",
                                         events=["write.stale"])
    try:
        # Given the draft staged as a preliminary document, then edited at the EHR
        _, draft = _drafted(engine, jobs)
        staged = [engine.ledger.get(ORG, k) for k in engine.submit_approved(ORG, draft.id)]
        for row in staged:
            jobs.execute_write.fn(ORG, row.key)
        doc = engine.ledger.get(ORG, next(r.key for r in staged if r.target == "fhir_docref"))
        fhir.ehr_update("DocumentReference", doc.external_id.split("/")[1],
                        {"description": "edited at the EHR"})
        # When the approved note goes out as an edit of it (412: stale)
        rows = _approve_and_write(engine, jobs, draft)
        stale = next(r for r in rows if r.target == "fhir_docref")
        assert stale.status == WriteStatus.STALE
        deliverer(engine).run_due()
        # Then only write.stale was asked for, and it came with the 412
        (event,) = receiver.events()
        assert event["type"] == "write.stale"
        assert (event["data"]["write_key"], event["data"]["http_status"]) == (stale.key, 412)
    finally:
        fhir.stop()
        mllp.stop()
        engine.db.dispose()
