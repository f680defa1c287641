"""The write ledger's promises, on SQLite and on PostgreSQL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import select
from command_factory import make_command
from fake_ehr import FileEhr

from chartbridge.core.clock import FrozenClock
from chartbridge.core.errors import (IdempotencyConflict, OutcomeUnknown, PermanentError,
                                     TransientError, WriteInProgress)
from chartbridge.core.models import WriteStatus
from chartbridge.ledger import audit
from chartbridge.ledger.tables import WriteRow
from chartbridge.ledger.writes import WriteLedger
from tests.fakes import WriteCommits

HERE = Path(__file__).parent


def wait_until(predicate, timeout=20.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    raise AssertionError("condition not met before the deadline")


def test_first_write_calls_adapter_and_replay_returns_stored_outcome(db, clock, tmp_path):
    # Given a ledger and an EHR
    ledger, ehr = WriteLedger(db, clock), FileEhr(tmp_path / "ehr.jsonl")
    # When the same command is executed twice
    first = ledger.execute(make_command(), ehr)
    second = ledger.execute(make_command(), ehr)
    # Then the EHR was called once, and both callers see the same outcome
    assert ehr.sends == 1 and len(ehr.documents()) == 1
    assert first.status == second.status == WriteStatus.SUCCEEDED
    assert first.external_id == second.external_id == ehr.documents()[0]["id"]
    assert second.attempts == 1 and first.sent_at is not None and first.acknowledged_at is not None


def test_same_key_different_body_is_a_conflict_and_no_call(db, clock, tmp_path):
    ledger, ehr = WriteLedger(db, clock), FileEhr(tmp_path / "ehr.jsonl")
    ledger.execute(make_command(text="Pneumonia."), ehr)
    # When the same key arrives with another body
    with pytest.raises(IdempotencyConflict) as err:
        ledger.execute(make_command(text="Bronchitis."), ehr)
    # Then it is refused with the typed error (HTTP 422) and the EHR is not called again
    assert err.value.http_status == 422
    assert ehr.sends == 1


def test_keys_are_scoped_by_org(db, clock, tmp_path):
    ledger, ehr = WriteLedger(db, clock), FileEhr(tmp_path / "ehr.jsonl")
    a = ledger.execute(make_command(org="org-a"), ehr)
    b = ledger.execute(make_command(org="org-b"), ehr)
    assert a.key != b.key and ehr.sends == 2
    assert ledger.get("org-b", a.key) is None          # org b never sees org a's outcome
    assert [r.key for r in ledger.list("org-a")] == [a.key]


def test_permanent_error_is_recorded_and_not_retried(db, clock, tmp_path):
    ehr = FileEhr(tmp_path / "ehr.jsonl", fail_with=PermanentError("section not allowed", status=422))
    ledger = WriteLedger(db, clock)
    rec = ledger.execute(make_command(), ehr)
    again = ledger.execute(make_command(), ehr)
    assert rec.status == again.status == WriteStatus.FAILED
    assert rec.last_error == "section not allowed" and rec.last_error_class == "PermanentError"
    assert rec.outcome["status"] == 422
    assert ehr.sends == 1


def test_transient_error_schedules_retry_with_backoff_then_succeeds(db, clock, tmp_path):
    ledger = WriteLedger(db, clock)
    ehr = FileEhr(tmp_path / "ehr.jsonl",
                  fail_with=TransientError("429", status=429, retry_after=7, maybe_delivered=False))
    with pytest.raises(TransientError):
        ledger.execute(make_command(), ehr)
    rec = ledger.list("org-a")[0]
    assert rec.status == WriteStatus.PENDING and rec.last_error_class == "TransientError"
    assert (rec.next_attempt_at - clock.now()).total_seconds() >= 7     # Retry-After honoured
    assert ledger.due() == []                                           # not before its time
    clock.advance(3600)
    assert ledger.due() == [("org-a", rec.key)]
    ehr.fail_with = None
    done = ledger.execute(make_command(), ehr)
    # A 429 was never delivered, so no reconcile was needed before the resend
    assert done.status == WriteStatus.SUCCEEDED and ehr.reconciles == 0 and done.attempts == 2


def test_retry_after_possibly_delivered_error_reconciles_first(db, clock, tmp_path):
    ledger = WriteLedger(db, clock)
    ehr = FileEhr(tmp_path / "ehr.jsonl")
    real_send = ehr.send

    def file_then_time_out(command):       # the EHR filed it, but the answer was lost
        real_send(command)
        raise TransientError("read timeout", maybe_delivered=True)

    ehr.send = file_then_time_out
    with pytest.raises(TransientError):
        ledger.execute(make_command(), ehr)
    ehr.send = real_send
    rec = ledger.execute(make_command(), ehr)
    assert rec.status == WriteStatus.SUCCEEDED and rec.outcome.get("reconciled") is True
    assert len(ehr.documents()) == 1                       # no second document


def test_live_lease_gives_in_progress(db, clock, tmp_path):
    hold = threading.Event()
    ledger, ehr = WriteLedger(db, clock), FileEhr(tmp_path / "ehr.jsonl", hold=hold)
    t = threading.Thread(target=ledger.execute, args=(make_command(), ehr))
    t.start()
    wait_until(lambda: ehr.sends == 1)
    with pytest.raises(WriteInProgress) as err:
        ledger.execute(make_command(), FileEhr(tmp_path / "other.jsonl"))
    assert err.value.http_status == 409
    hold.set()
    t.join(10)


def test_fifty_threads_one_call(db, clock, tmp_path):
    # Given 50 threads released at once on the same command
    ledger, ehr = WriteLedger(db, clock), FileEhr(tmp_path / "ehr.jsonl")
    barrier, results, lock = threading.Barrier(50), [], threading.Lock()

    def run():
        barrier.wait()
        try:
            out = ledger.execute(make_command(), ehr)
        except WriteInProgress as exc:
            out = exc
        except Exception as exc:  # noqa: BLE001 - counted as unexpected below
            out = ("unexpected", exc)
        with lock:
            results.append(out)

    threads = [threading.Thread(target=run) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Then the EHR was called exactly once, and every caller got the outcome or "in progress"
    assert len(results) == 50
    assert [r for r in results if isinstance(r, tuple)] == []
    assert ehr.sends == 1 and len(ehr.documents()) == 1
    ids = {r.external_id for r in results if not isinstance(r, WriteInProgress)}
    assert ids == {ehr.documents()[0]["id"]}


def _claimants(database_url, ehr_file, *, procs, threads, mode="normal", lease=60):
    return [subprocess.Popen([sys.executable, str(HERE / "claimant.py"), database_url,
                              str(ehr_file), mode, str(lease), str(threads)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(procs)]


def test_fifty_callers_in_ten_processes_one_call(database_url, tmp_path):
    # Given 10 processes of 5 threads each executing the same write at once
    ehr_file = tmp_path / "ehr.jsonl"
    lines = []
    for p in _claimants(database_url, ehr_file, procs=10, threads=5):
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        lines += out.splitlines()
    # Then the EHR holds one document, and every caller saw it or "in progress"
    docs = FileEhr(ehr_file).documents()
    assert len(docs) == 1
    assert len(lines) == 50
    unexpected = [l for l in lines if l != "busy" and l != f"ok succeeded {docs[0]['id']}"]
    assert unexpected == []


@pytest.mark.parametrize("filed_before_death", [True, False])
def test_killed_claimant_is_reconciled_not_resent(database_url, db, tmp_path, filed_before_death):
    clock = FrozenClock(datetime.now(timezone.utc))     # the child process uses wall time
    ehr_file = tmp_path / "ehr.jsonl"
    if filed_before_death:
        # Given a worker that filed the note at the EHR and was killed before recording it
        (proc,) = _claimants(database_url, ehr_file, procs=1, threads=1, mode="hang", lease=5)
        wait_until(lambda: Path(str(ehr_file) + ".filed").exists(), timeout=60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    else:
        # Given a worker killed after claiming but before it sent anything
        ledger = WriteLedger(db, clock, lease_seconds=5)
        ledger.prepare(make_command())
        ledger._claim(make_command(), owner="dead-worker")
    row = WriteLedger(db, clock).list("org-a")[0]
    assert row.status == WriteStatus.IN_FLIGHT
    # When the next claimant comes after the lease expired
    clock.advance(3600)
    later = WriteLedger(db, clock)
    assert later.due() == [("org-a", row.key)]
    ehr = FileEhr(ehr_file)
    rec = later.execute(make_command(), ehr)
    # Then it asked the EHR first, and the note exists exactly once
    assert ehr.reconciles == 1
    assert rec.status == WriteStatus.SUCCEEDED
    assert len(ehr.documents()) == 1
    assert ehr.sends == (0 if filed_before_death else 1)


def test_unknowable_outcome_needs_a_person_and_is_never_resent(db, clock, tmp_path):
    ledger = WriteLedger(db, clock, lease_seconds=5)
    ledger.prepare(make_command())
    ledger._claim(make_command(), owner="dead-worker")
    clock.advance(60)
    ehr = FileEhr(tmp_path / "ehr.jsonl", can_look_up=False)
    with pytest.raises(OutcomeUnknown):
        ledger.execute(make_command(), ehr)
    rec = ledger.list("org-a")[0]
    assert rec.status == WriteStatus.NEEDS_RECONCILIATION and ehr.sends == 0
    with pytest.raises(OutcomeUnknown):                     # asked again: still no resend
        ledger.execute(make_command(), ehr)
    assert ehr.sends == 0
    # A person checks the EHR and settles it
    settled = ledger.resolve("org-a", rec.key, external_id="doc-found", actor="user:ops", note="seen in chart")
    assert settled.status == WriteStatus.SUCCEEDED and settled.external_id == "doc-found"


def test_every_change_is_audited(db, clock, tmp_path):
    ledger, ehr = WriteLedger(db, clock), FileEhr(tmp_path / "ehr.jsonl")
    ledger.execute(make_command(), ehr)
    with db.transaction() as tx:
        actions = [e.action for e in audit.entries(tx, "org-a")]
        event = audit.as_fhir_audit_event(audit.entries(tx, "org-a")[-1])
    assert actions == ["write.prepared", "write.claimed", "write.succeeded"]
    assert event["resourceType"] == "AuditEvent" and event["outcome"] == "0"


def test_prepared_write_is_due_and_executes_once(db, clock, tmp_path):
    ledger, ehr = WriteLedger(db, clock), FileEhr(tmp_path / "ehr.jsonl")
    key = ledger.prepare(make_command())
    assert ledger.prepare(make_command()) == key                  # idempotent
    with pytest.raises(IdempotencyConflict):
        ledger.prepare(make_command(text="Other text."))
    assert ledger.due() == [("org-a", key)] and ledger.get("org-a", key).status == WriteStatus.PENDING
    rec = ledger.execute(ledger.command_of("org-a", key), ehr)
    assert rec.status == WriteStatus.SUCCEEDED and rec.attempts == 1 and ehr.reconciles == 0
    assert ledger.due() == []


def test_a_write_costs_two_commits(db, clock, tmp_path):
    # Given a ledger whose database counts the transactions that wrote
    ledger, ehr = WriteLedger(db, clock), FileEhr(tmp_path / "ehr.jsonl")
    commits = WriteCommits(db.engine)
    # When a new write is executed: recorded and claimed in one commit, settled in another
    rec = ledger.execute(make_command(), ehr)
    assert rec.status == WriteStatus.SUCCEEDED and ehr.sends == 1
    assert commits.commits == 2
    # And a write recorded earlier (prepare, then a job with its key): claim + settle
    key = ledger.prepare(make_command(org="org-b"))
    before = commits.commits
    assert ledger.execute_key("org-b", key, ehr).status == WriteStatus.SUCCEEDED
    assert commits.commits - before == 2
    # And the replay of a finished write writes nothing
    before = commits.commits
    assert ledger.execute(make_command(), ehr).external_id == rec.external_id
    assert commits.commits == before and ehr.sends == 2


def test_the_ledger_says_maybe_sent_before_the_adapter_is_called(db, clock, tmp_path):
    # The claim itself records that the EHR may hold the write: there is no later commit
    # before the call that a crash could miss.
    ledger, ehr = WriteLedger(db, clock), FileEhr(tmp_path / "ehr.jsonl")
    seen = []
    real_send = ehr.send

    def send(command):
        with db.transaction() as tx:
            row = tx.get(WriteRow, command.idempotency_key())
            seen.append((row.status, row.maybe_sent, row.sent_at is not None, row.attempts))
        return real_send(command)

    ehr.send = send
    ledger.execute(make_command(), ehr)                     # inserted already claimed
    key = ledger.prepare(make_command(org="org-b"))
    ledger.execute_key("org-b", key, ehr)                   # claimed by update
    assert seen == [(WriteStatus.IN_FLIGHT, True, True, 1)] * 2


def test_worker_killed_between_claim_and_send_is_reconciled_not_resent(database_url, db,
                                                                      tmp_path):
    # Given a worker process that claimed a new write and was killed (SIGKILL) right
    # before calling the EHR
    clock = FrozenClock(datetime.now(timezone.utc))     # the child process uses wall time
    ehr_file = tmp_path / "ehr.jsonl"
    (proc,) = _claimants(database_url, ehr_file, procs=1, threads=1, mode="die", lease=5)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and Path(str(ehr_file) + ".dying").exists()
    with db.transaction() as tx:
        (row,) = tx.scalars(select(WriteRow)).all()
        assert (row.status, row.maybe_sent, row.attempts) == (WriteStatus.IN_FLIGHT, True, 1)
    # When the next claimant comes after the lease expired
    clock.advance(3600)
    ehr = FileEhr(ehr_file)
    rec = WriteLedger(db, clock).execute(make_command(), ehr)
    # Then it asked the EHR before sending, and the note exists exactly once
    assert ehr.reconciles == 1 and ehr.sends == 1
    assert rec.status == WriteStatus.SUCCEEDED and rec.attempts == 2
    assert len(ehr.documents()) == 1
