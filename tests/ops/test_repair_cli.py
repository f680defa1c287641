"""CLI parity for the operator's repairs: `chartbridge ledger resolve | requeue | cancel` and
`chartbridge sessions stuck | redrive`, typed as a user types them, against a real ledger.
Each leaves the audit row the console's repair leaves (chartbridge/ops/repair.py); bad
input is one readable line and a non-zero exit, never a traceback."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import select

from chartbridge.cli import main
from chartbridge.core import usecases as uc
from chartbridge.core.clock import SystemClock
from chartbridge.core.errors import OutcomeUnknown, PermanentError
from chartbridge.core.models import Identifier, SessionSource, WriteStatus
from chartbridge.ledger.store import SqlStore
from chartbridge.ledger.tables import AuditRow
from chartbridge.ledger.writes import WriteLedger
from tests.ledger.command_factory import make_command
from tests.ledger.fake_ehr import FileEhr

ORG = "org-a"


@pytest.fixture(autouse=True)
def embedded(monkeypatch):
    monkeypatch.delenv("CHARTBRIDGE_BROKER_URL", raising=False)


@pytest.fixture
def ledger(db):
    return WriteLedger(db, SystemClock())


def failed(ledger, tmp_path, version=1):
    ehr = FileEhr(tmp_path / f"chart-{version}.jsonl",
                  fail_with=PermanentError("the EHR refused the document", status=422))
    record = ledger.execute(make_command(version=version), ehr)
    assert record.status == WriteStatus.FAILED
    return record.key


def unknown(ledger, tmp_path, version=3):
    ehr = FileEhr(tmp_path / "lost.jsonl", fail_with=OutcomeUnknown("the answer was lost"))
    with pytest.raises(OutcomeUnknown):
        ledger.execute(make_command(version=version), ehr)
    key = make_command(version=version).idempotency_key()
    assert ledger.get(ORG, key).status == WriteStatus.NEEDS_RECONCILIATION
    return key


def audit(db, action):
    with db.transaction() as tx:
        return [(r.actor, r.detail) for r in tx.scalars(
            select(AuditRow).where(AuditRow.action == action).order_by(AuditRow.id))]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code, err, *words):
    assert code != 0
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    for word in words:
        assert word in errors[0], err


def test_requeue_turns_a_failed_write_into_a_new_attempt_with_an_audit_row(
        capsys, db, ledger, database_url, tmp_path):
    # Given a write the EHR refused
    key = failed(ledger, tmp_path)
    # When an operator requeues it from the CLI
    code, out, err = run(capsys, "ledger", "requeue", "--org", ORG, "--key", key,
                         "--by", "ops-ana", "--reason", "EHR fixed the template",
                         "--database-url", database_url)
    # Then it is pending again, due for the sweeper, and the audit names who and why
    assert code == 0, err
    assert f"{key}: pending" in out and "sweeper" in out
    record = ledger.get(ORG, key)
    assert record.status == WriteStatus.PENDING and record.attempts == 0
    (actor, detail), = audit(db, "write.requeued")
    assert actor == "user:ops-ana" and detail["reason"] == "EHR fixed the template"
    # and the next drive sends it once, under the same key
    chart = FileEhr(tmp_path / "chart-ok.jsonl")
    assert ledger.execute_key(ORG, key, chart).status == WriteStatus.SUCCEEDED
    assert [d["key"] for d in chart.documents()] == [key]


def test_cancel_settles_a_write_for_good_with_its_reason(capsys, db, ledger, database_url,
                                                         tmp_path):
    key = failed(ledger, tmp_path)
    code, out, err = run(capsys, "ledger", "cancel", "--org", ORG, "--key", key, "--by", "ops-ana",
                         "--reason", "filed by hand in the EHR", "--json",
                         "--database-url", database_url)
    assert code == 0, err
    assert json.loads(out)["status"] == "cancelled"
    (actor, detail), = audit(db, "write.cancelled")
    assert actor == "user:ops-ana" and detail["reason"] == "filed by hand in the EHR"
    # a cancelled write is never requeued
    code, _, err = run(capsys, "ledger", "requeue", "--org", ORG, "--key", key, "--by", "x",
                       "--reason", "y", "--database-url", database_url)
    one_error_line(code, err, "cancelled")


def test_resolve_with_the_ehr_id_marks_it_delivered(capsys, db, ledger, database_url, tmp_path):
    key = unknown(ledger, tmp_path)
    code, out, err = run(capsys, "ledger", "resolve", "--org", ORG, "--key", key,
                         "--external-id", "DocumentReference/77", "--by", "ops-ana",
                         "--reason", "found it in the chart", "--database-url", database_url)
    assert code == 0, err
    assert "succeeded" in out and "DocumentReference/77" in out
    assert ledger.get(ORG, key).external_id == "DocumentReference/77"
    (actor, detail), = audit(db, "write.resolved")
    assert actor == "user:ops-ana" and detail["reason"] == "found it in the chart"


def test_resolve_resend_asks_the_ehr_then_sends_it_again_once(capsys, db, ledger, database_url,
                                                              tmp_path, monkeypatch):
    # Given a write whose answer was lost, and an EHR that has no record of it
    key = unknown(ledger, tmp_path)
    chart = FileEhr(tmp_path / "chart.jsonl")
    from chartbridge.bootstrap import Engine
    monkeypatch.setattr(Engine, "adapter", lambda self, org_id, target: chart)
    # When the operator resends after confirming absence
    code, out, err = run(capsys, "ledger", "resolve", "--org", ORG, "--key", key, "--resend",
                         "--by", "ops-ana", "--reason", "not in the chart",
                         "--database-url", database_url)
    # Then the EHR was asked first, the write is pending and sent once when driven
    assert code == 0, err
    assert chart.reconciles == 1 and f"{key}: pending" in out
    assert ledger.execute_key(ORG, key, chart).status == WriteStatus.SUCCEEDED
    assert len(chart.documents()) == 1
    (actor, detail), = audit(db, "write.resolved")
    assert actor == "user:ops-ana" and detail["resend"] is True


def session_with_a_chunk(db):
    store = SqlStore(db, SystemClock())
    session, _ = uc.open_session(
        store, SystemClock(), org_id=ORG, source=SessionSource.API, external_id="API-9",
        user=Identifier(value="D1", type="EXTERNAL"),
        patient_ids=[Identifier(value="Z4481", type="MRN", system="urn:demo:mrn")],
        encounter_ids=[Identifier(value="300012345", type="CSN")], allowed_sections=["10164-2"])
    uc.announce_chunk(store, org_id=ORG, session=session, recording_id="R1", sequence=1,
                      version=1)
    return session


def test_stuck_lists_the_session_with_its_reason_and_redrive_reopens_the_chunk(
        capsys, db, database_url):
    # Given a chunk announced that no worker finished
    session = session_with_a_chunk(db)
    # When the operator lists what is stuck
    code, out, err = run(capsys, "sessions", "stuck", "--org", ORG, "--older-than", "0s",
                         "--json", "--database-url", database_url)
    assert code == 0, err
    (found,) = json.loads(out)
    assert found["session_id"] == session.id and "chunk R1#1" in found["reasons"][0]
    assert "Z4481" not in out and "300012345" not in out
    # and re-drives the chunk
    code, out, err = run(capsys, "sessions", "redrive", "--org", ORG, "--session", session.id,
                         "--recording", "R1", "--chunk", "1", "--by", "ops-ana",
                         "--reason", "worker was killed", "--database-url", database_url)
    # Then it is audited with who and why
    assert code == 0, err
    assert "re-driven" in out
    (actor, detail), = audit(db, "chunk.redriven")
    assert actor == "user:ops-ana" and detail["reason"] == "worker was killed"
    # and another org's operator cannot touch it
    code, _, err = run(capsys, "sessions", "redrive", "--org", "org-b", "--session", session.id,
                       "--recording", "R1", "--chunk", "1", "--by", "x", "--reason", "y",
                       "--database-url", database_url)
    one_error_line(code, err, "no such session")


@pytest.mark.parametrize("argv, words", [
    (["ledger", "requeue", "--org", ORG, "--key", "nope", "--by", "a", "--reason", "b"],
     ["no such write"]),
    (["ledger", "requeue", "--org", ORG, "--key", "nope", "--by", " ", "--reason", "b"],
     ["--by"]),
    (["ledger", "resolve", "--org", ORG, "--key", "k", "--by", "a", "--reason", "b"],
     ["--external-id", "--resend"]),
    (["sessions", "redrive", "--org", ORG, "--session", "s", "--recording", "R1", "--by", "a",
      "--reason", "b"], ["--chunk", "--version"]),
    (["sessions", "stuck", "--org", ORG, "--older-than", "a while"], ["--older-than"]),
])
def test_bad_input_is_one_readable_line(capsys, database_url, argv, words):
    code, _, err = run(capsys, *argv, "--database-url", database_url)
    one_error_line(code, err, *words)


def test_an_unknown_write_in_another_org_is_not_found(capsys, ledger, database_url, tmp_path):
    key = failed(ledger, tmp_path)
    code, _, err = run(capsys, "ledger", "requeue", "--org", "org-b", "--key", key, "--by", "a",
                       "--reason", "b", "--database-url", database_url)
    one_error_line(code, err, "no such write")
    assert ledger.get(ORG, key).status == WriteStatus.FAILED


def test_the_installed_command_refuses_a_bad_number_without_a_traceback(database_url):
    out = subprocess.run([sys.executable, "-m", "chartbridge.cli", "sessions", "redrive",
                          "--org", ORG, "--session", "s", "--recording", "R1", "--chunk", "one",
                          "--by", "a", "--reason", "b", "--database-url", database_url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "--chunk" in out.stderr and "'one'" in out.stderr
