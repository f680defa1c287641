"""The athenaOne contract suite: the real adapter, through the WriteLedger, against the
athenaOne simulator (or a live athenaOne when CHARTBRIDGE_CONTRACT_BASE_URL is set; see
conftest.py). Each test says what athena does and what Chartbridge must then do.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import re
import time
from pathlib import Path

import pytest
from chartbridge.adapters.athenaone import SPEC
from chartbridge.adapters.athenaone.client import Throttle, _retry_after
from chartbridge.adapters.athenaone.config import AthenaOneConfig
from chartbridge.adapters.athenaone.mapping import write_id
from chartbridge.adapters.athenaone.pdf import render_pdf
from chartbridge.core.errors import PermanentError, TransientError
from chartbridge.core.models import Identifier, WriteStatus

from chartbridge.bootstrap import make_services
from contract_tests.athenaone.sandbox import demo_target_settings

from .conftest import make_command, org_config

SAMPLES = Path(__file__).resolve().parent / "samples"
PRACTICE = "195900"


def adapter_for(tmp_path, athena, services, **overrides):
    settings = {**athena.settings, **overrides}
    org = org_config(tmp_path, settings, extra_types=("11506-3",))
    return SPEC.factory(org, org.targets["athenaone"], services)


def drive(ledger, command, adapter, *, deadline_s: float = 20.0):
    """Execute until the ledger has a finished record (retrying transient errors, as the
    worker's sweeper would), within a deadline. Returns (record, transient errors seen)."""
    seen: list[TransientError] = []
    end = time.monotonic() + deadline_s
    while True:
        try:
            return ledger.execute(command, adapter), seen
        except TransientError as exc:
            seen.append(exc)
            if time.monotonic() > end:
                raise


# --------------------------------------------------------------------------- the write
def test_text_upload_files_one_clinical_document_with_the_write_id(tmp_path, athena, services,
                                                                     ledger):
    # Given an approved draft for a patient with an athena-patient identifier
    adapter = adapter_for(tmp_path, athena, services)
    command = make_command(patient=athena.patient_id)
    # When it goes through the ledger
    record = ledger.execute(command, adapter)
    # Then one clinical document exists, filed as athena was told, carrying the write id
    assert record.status == WriteStatus.SUCCEEDED and record.external_id
    assert record.outcome["write_id"] == write_id(command)
    sim = athena.need_sim("reads stored documents")
    [doc] = sim.documents(patientid=athena.patient_id)
    assert str(doc["clinicaldocumentid"]) == record.external_id
    assert doc["practiceid"] == PRACTICE and doc["departmentid"] == "1"
    assert doc["documentsubclass"] == "CLINICALDOCUMENT_CONSULTNOTE"   # 11488-4 in mappings/
    assert doc["documentdata"].startswith("History of present illness:\nCough for three days")
    assert "Assessment:\nViral bronchitis" in doc["documentdata"]
    # draft made 15:04 UTC on 21 Nov 2026 = 10:04 in the org's America/New_York
    assert (doc["observationdate"], doc["observationtime"]) == ("11/21/2026", "10:04")
    assert write_id(command) in doc["internalnote"]
    assert doc["status"] == "REVIEW" and doc["priority"] == "2"          # autoclose false


def test_pdf_upload_attaches_a_well_formed_pdf(tmp_path, athena, services, ledger):
    # Given an org that files notes as PDF
    adapter = adapter_for(tmp_path, athena, services, payload="pdf", autoclose=True,
                          priority=1)
    command = make_command(patient=athena.patient_id, text="Cough (dry) \u2265 3 days \u2014 no fever.")
    # When the write goes out
    record = ledger.execute(command, adapter)
    # Then athena holds a PDF attachment, no text body, closed and high priority
    assert record.status == WriteStatus.SUCCEEDED
    sim = athena.need_sim("reads the stored attachment")
    [doc] = sim.documents(patientid=athena.patient_id)
    pdf = doc["attachment_bytes"]
    assert doc["attachmenttype"] == "PDF" and doc["documentdata"] is None
    assert doc["status"] == "CLOSED" and doc["priority"] == "1"
    assert_well_formed_pdf(pdf)
    assert b"(Cough \\(dry\\) >= 3 days \x97 no fever.) Tj" in pdf      # escaped, cp1252 dash


def assert_well_formed_pdf(pdf: bytes) -> None:
    assert pdf.startswith(b"%PDF-1.4") and pdf.rstrip().endswith(b"%%EOF")
    startxref = int(re.search(rb"startxref\n(\d+)\n", pdf).group(1))
    assert pdf[startxref:startxref + 4] == b"xref"
    count = int(re.search(rb"xref\n0 (\d+)\n", pdf).group(1))
    entries = re.findall(rb"(\d{10}) 00000 n \n", pdf[startxref:])
    assert len(entries) == count - 1
    for number, off in enumerate(entries, start=1):       # every offset lands on its object
        assert pdf[int(off):].startswith(f"{number} 0 obj".encode())
    for m in re.finditer(rb"/Length (\d+) >>\nstream\n", pdf):
        start = m.end()
        assert pdf[start + int(m.group(1)):].startswith(b"\nendstream")


def test_long_note_pdf_spans_pages_and_unshowable_text_is_refused(tmp_path, athena, services):
    # Given a note longer than a page, and one with a character Helvetica cannot show
    long_pdf = render_pdf("\n".join(f"line {i}" for i in range(200)))
    # Then the PDF has several pages and stays well formed
    assert b"/Count 4" in long_pdf
    assert_well_formed_pdf(long_pdf)
    # And a character the font lacks is a named PermanentError, not a silently lost glyph
    adapter = adapter_for(tmp_path, athena, services, payload="pdf")
    with pytest.raises(PermanentError, match="cannot be rendered as PDF.*payload: text"):
        adapter.send(make_command(patient=athena.patient_id, text="\u6cbb\u7597"))


def test_rendering_is_deterministic_and_matches_golden_samples(tmp_path, athena, services):
    # Given the same command rendered twice (text and PDF)
    for payload in ("text", "pdf"):
        adapter = adapter_for(tmp_path, athena, services, payload=payload, provider_id="71")
        command = make_command(patient="7", encounter="700000", department="150",
                               approver=Identifier(value="86", type="athena-provider"))
        _, first = adapter.render(command)
        _, again = adapter.render(command.model_copy(update={"correlation_id": "other"}))
        # Then the payload is byte-identical and equals the golden sample
        assert first == again
        assert first["providerid"] == "86"              # the approver's athena id wins
        assert first["departmentid"] == "150"           # the session's athena-department
        sample = SAMPLES / f"clinicaldocument-{payload}.json"
        if os.environ.get("CHARTBRIDGE_UPDATE_SAMPLES"):
            sample.write_text(json.dumps(first, indent=2) + "\n", encoding="utf-8")
        assert json.loads(sample.read_text(encoding="utf-8")) == first
    pdf = base64.b64decode(first["attachmentcontents"])
    if os.environ.get("CHARTBRIDGE_UPDATE_SAMPLES"):
        (SAMPLES / "clinicaldocument.pdf").write_bytes(pdf)
    assert_well_formed_pdf(pdf)
    assert pdf == (SAMPLES / "clinicaldocument.pdf").read_bytes()


# --------------------------------------------------------------------------- exactly once
@pytest.mark.parametrize("status", [502, 0], ids=["502-after-store", "connection-dropped"])
def test_lost_response_is_reconciled_not_resent(tmp_path, athena, services, ledger, status):
    sim = athena.need_sim("injects a lost response")
    # Given athena stores the document but the answer is lost
    sim.faults.add(call="upload", kind="lose_response", status=status)
    adapter = adapter_for(tmp_path, athena, services)
    command = make_command(patient=athena.patient_id)
    with pytest.raises(TransientError) as lost:
        ledger.execute(command, adapter)
    assert lost.value.maybe_delivered is True
    # When the write is retried
    record = ledger.execute(command, adapter)
    # Then reconcile finds it by the write id in internalnote; no second document
    assert record.status == WriteStatus.SUCCEEDED and record.outcome["reconciled"] is True
    assert record.outcome["found_by"] == "internalnote"
    assert sim.upload_count() == 1 and len(sim.calls("upload")) == 1
    assert record.external_id == str(sim.documents()[0]["clinicaldocumentid"])


class Crash(BaseException):
    """The worker died after athena answered but before the ledger recorded it."""


def test_crash_after_athena_success_before_ledger_commit_is_reconciled(tmp_path, athena,
                                                                      services, ledger):
    sim = athena.need_sim("counts uploads")
    adapter = adapter_for(tmp_path, athena, services)

    class DiesAfterSend:
        name = adapter.name

        def send(self, command):
            adapter.send(command)           # athena has it now...
            raise Crash()                   # ...and the worker dies before recording it

        def reconcile(self, command):
            return adapter.reconcile(command)

    command = make_command(patient=athena.patient_id)
    with pytest.raises(Crash):
        ledger.execute(command, DiesAfterSend())
    record = ledger.execute(command, adapter)
    assert record.status == WriteStatus.SUCCEEDED and record.outcome["reconciled"] is True
    assert sim.upload_count() == 1


def test_5xx_may_have_delivered_so_the_retry_reconciles_first(tmp_path, athena, services,
                                                              ledger):
    sim = athena.need_sim("injects a 503")
    # Given athena answers 503 (nothing stored)
    sim.faults.add(call="upload", status=503, retry_after=2)
    adapter = adapter_for(tmp_path, athena, services)
    command = make_command(patient=athena.patient_id)
    with pytest.raises(TransientError) as err:
        ledger.execute(command, adapter)
    assert err.value.maybe_delivered is True and err.value.retry_after == 2
    # When retried: the ledger reconciles (nothing found), then sends once
    record = ledger.execute(command, adapter)
    assert record.status == WriteStatus.SUCCEEDED and "reconciled" not in record.outcome
    assert [c["call"] for c in sim.calls() if c["call"] in ("upload", "list")] == [
        "upload", "list", "upload"]
    assert sim.upload_count() == 1


# --------------------------------------------------------------------------- rate limits
def test_429_storm_stays_within_quota_and_finishes(tmp_path, athena, services, ledger):
    sim = athena.need_sim("injects 429s and measures the request rate")
    # Given a practice quota of 10 requests/second, an org throttle of 8/s, and a storm
    # of 429s (with and without Retry-After)
    sim.configure(qps_per_practice=10)
    sim.faults.add(call="upload", status=429, times=1, retry_after=1)
    sim.faults.add(call="upload", status=429, times=3)
    adapter = adapter_for(tmp_path, athena, services, requests_per_second=8)
    commands = [make_command(patient=str(1 + i % 20)) for i in range(14)]
    # When every write is driven to completion
    seen: list[TransientError] = []
    for command in commands:
        record, errors = drive(ledger, command, adapter)
        seen += errors
        assert record.status == WriteStatus.SUCCEEDED
    # Then each 429 was a transient, never-delivered error (Retry-After kept when given)
    assert len(seen) == 4 and all(e.status == 429 and not e.maybe_delivered for e in seen)
    assert [e.retry_after for e in seen] == [1, None, None, None]
    # And every note was filed once, without the practice ever going over its quota
    assert sim.upload_count() == 14
    assert sim.max_requests_per_second(PRACTICE) <= 10
    assert not [c for c in sim.calls() if c.get("quota")]


def test_throttle_spaces_calls_and_honours_retry_after():
    # Given a throttle of 4/s on a fake clock
    now = [100.0]
    slept: list[float] = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    throttle = Throttle(4, monotonic=lambda: now[0], sleep=sleep)
    # When five calls arrive at once, then athena says Retry-After: 3
    for _ in range(5):
        throttle.acquire()
    throttle.hold(3)
    throttle.acquire()
    # Then they were spaced 0.25 s apart, and the next waited out the Retry-After
    assert slept[:4] == pytest.approx([0.25] * 4)
    assert now[0] == pytest.approx(104.0)


def test_retry_after_accepts_seconds_and_http_dates():
    import httpx

    assert _retry_after(httpx.Response(429, headers={"Retry-After": "7"})) == 7
    assert _retry_after(httpx.Response(429)) is None
    assert _retry_after(httpx.Response(429, headers={"Retry-After": "soon"})) is None
    assert _retry_after(httpx.Response(
        429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0


# --------------------------------------------------------------------------- auth
def test_expired_token_is_refreshed_once(tmp_path, athena, services, ledger, clock):
    sim = athena.need_sim("expires tokens and counts token requests")
    adapter = adapter_for(tmp_path, athena, services)
    assert ledger.execute(make_command(patient="3"), adapter).status == WriteStatus.SUCCEEDED
    # Given athena expires the token the engine still has cached
    sim.expire_tokens()
    # When the next write goes out
    record = ledger.execute(make_command(patient="4"), adapter)
    # Then the 401 caused exactly one new token and the write succeeded
    assert record.status == WriteStatus.SUCCEEDED
    assert sim.token_request_count() == 2 and sim.upload_count() == 2
    # And when the cached token reaches its expires_in, a new one is fetched before use
    clock.advance(3600)
    assert ledger.execute(make_command(patient="5"), adapter).status == WriteStatus.SUCCEEDED
    assert sim.token_request_count() == 3
    assert [c["status"] for c in sim.calls("upload")] == [200, 401, 200, 200]


def test_token_is_shared_between_adapter_instances(tmp_path, athena, db, clock, ledger):
    sim = athena.need_sim("counts token requests")
    # Given two workers, each building its own adapter for the same org, one database
    org = org_config(tmp_path, athena.settings)
    one = SPEC.factory(org, org.targets["athenaone"], make_services(db, clock))
    two = SPEC.factory(org, org.targets["athenaone"], make_services(db, clock))
    # When each files a note
    ledger.execute(make_command(patient="1"), one)
    ledger.execute(make_command(patient="2"), two)
    # Then athena issued one token (the second worker found it in the shared cache)
    assert sim.token_request_count() == 1 and sim.upload_count() == 2


def test_wrong_practice_token_is_refused_and_orgs_never_cross(tmp_path, athena, services,
                                                              ledger, monkeypatch):
    sim = athena.need_sim("registers a second practice")
    # Given org A (practice 195900) and org B (practice 195901), each with its own client
    a = adapter_for(tmp_path, athena, services)
    org_b = org_config(tmp_path, {**athena.settings, "practice_id": "195901",
                                  "client_id": "sim-client-2",
                                  "client_secret": "env:ATHENA_B_SECRET"}, org="athena-org-b")
    monkeypatch.setenv("ATHENA_B_SECRET", "sim-secret-2")          # simulator-only
    b = SPEC.factory(org_b, org_b.targets["athenaone"], services)
    # When each org files a note
    ra = ledger.execute(make_command(patient="2"), a)
    rb = ledger.execute(make_command(org="athena-org-b", patient="2"), b)
    # Then each landed in its own practice, and every call used the org's own practice
    assert ra.status == rb.status == WriteStatus.SUCCEEDED
    assert [d["practiceid"] for d in sim.documents()] == ["195900", "195901"]
    assert [c["practiceid"] for c in sim.calls("upload")] == ["195900", "195901"]
    assert services.token_cache.get("athena-org", "athenaone:195900:sim-client")
    assert services.token_cache.get("athena-org-b", "athenaone:195901:sim-client-2")
    # And an adapter never writes another org's command with its credentials
    with pytest.raises(PermanentError, match="another organization"):
        a.send(make_command(org="athena-org-b", patient="2"))
    # Given a misconfigured org whose practice is not its client's
    wrong = org_config(tmp_path, {**athena.settings, "practice_id": "195901"},
                       org="athena-org-c")
    c = SPEC.factory(wrong, wrong.targets["athenaone"], services)
    before = sim.token_request_count()
    record = ledger.execute(make_command(org="athena-org-c", patient="2"), c)
    # Then athena refuses (401 Incorrect permissions) after one refresh; nothing filed
    assert record.status == WriteStatus.FAILED
    assert "Incorrect permissions." in record.last_error and "401" in record.last_error
    assert sim.token_request_count() - before == 2 and len(sim.documents()) == 2


def test_bad_client_secret_is_a_permanent_auth_error(tmp_path, athena, services, ledger,
                                                     monkeypatch):
    athena.need_sim("uses simulator credentials")
    monkeypatch.setenv("WRONG_SECRET", "not-the-secret")
    adapter = adapter_for(tmp_path, athena, services, client_secret="env:WRONG_SECRET")
    record = ledger.execute(make_command(patient="2"), adapter)
    assert record.status == WriteStatus.FAILED
    assert "token endpoint refused the client (HTTP 401: invalid_client)" in record.last_error
    assert "not-the-secret" not in record.last_error


# --------------------------------------------------------------------------- bad input
def test_missing_or_malformed_athena_identifiers_are_named(tmp_path, athena, services, ledger):
    adapter = adapter_for(tmp_path, athena, services)
    # Given a session without an athena-patient identifier
    record = ledger.execute(make_command(patient=None), adapter)
    # Then the write fails permanently, naming what is missing, and nothing was called
    assert record.status == WriteStatus.FAILED
    assert "athena-patient" in record.last_error and "missing" in record.last_error
    # And an athena id that is not digits is named by its type, never echoed
    record = ledger.execute(make_command(patient="MRN-X99"), adapter)
    assert record.status == WriteStatus.FAILED and "patient identifier (athena-patient)" in \
        record.last_error and "X99" not in record.last_error
    if athena.sim is not None:
        assert athena.sim.token_request_count() == 0 and athena.sim.calls() == []


def test_athena_4xx_and_success_false_are_permanent_with_athena_text(tmp_path, athena,
                                                                     services, ledger):
    sim = athena.need_sim("seeds known ids and injects success=false")
    adapter = adapter_for(tmp_path, athena, services)
    # Given an unknown patient and a 200 with success false (an unknown department is the
    # shared validation-refusal scenario: AthenaDriver.refusal)
    bad_patient = ledger.execute(make_command(patient="99999"), adapter)
    sim.faults.add(call="upload", kind="success_false", errormessage="Document type disabled.")
    refused = ledger.execute(make_command(patient="2"), adapter)
    # Then each is FAILED (never retried) with athena's own error text and status
    assert bad_patient.status == refused.status == WriteStatus.FAILED
    assert "HTTP 404" in bad_patient.last_error and "The patient ID is invalid." in \
        bad_patient.last_error
    assert "Document type disabled." in refused.last_error
    assert refused.outcome["vendor_code"] == "success_false"
    assert bad_patient.outcome["status"] == 404
    assert sim.upload_count() == 0


def test_note_type_without_a_clinicaldocument_subclass_is_named(tmp_path, athena, services,
                                                                ledger):
    # Given a progress note, which mappings/ file as ENCOUNTERDOCUMENT_PROGRESSNOTE
    patient = athena.patient_id if athena.sim is None else "2"
    adapter = adapter_for(tmp_path, athena, services)
    record = ledger.execute(make_command(patient=patient, note_type="11506-3"), adapter)
    # Then the write fails naming the mapping gap and how to fix it
    assert record.status == WriteStatus.FAILED
    assert "encounterdocument" in record.last_error and "fallback_subclass" in record.last_error
    # And with the site's fallback subclass (its config: a subclass its practice accepts) it is filed
    if not athena.fallback_subclass:
        pytest.skip("set CHARTBRIDGE_ATHENA_FALLBACK_SUBCLASS (the org's fallback_subclass) to "
                    "a CLINICALDOCUMENT subclass the practice accepts")
    fallback = adapter_for(tmp_path, athena, services, fallback_subclass=athena.fallback_subclass)
    ok = ledger.execute(make_command(patient=patient, note_type="11506-3", encounter="700999"),
                        fallback)
    assert ok.status == WriteStatus.SUCCEEDED, ok.last_error
    assert ok.outcome["documentsubclass"] == athena.fallback_subclass


def test_logs_carry_no_phi(tmp_path, athena, services, ledger, caplog):
    sim = athena.need_sim("injects a refusal")
    caplog.set_level(logging.DEBUG)
    adapter = adapter_for(tmp_path, athena, services)
    sim.faults.add(call="upload", kind="expired_token")
    ledger.execute(make_command(patient="17", text="Patient Zed Quimby reports chest pain."),
                   adapter)
    text = caplog.text + " ".join(str(r.__dict__) for r in caplog.records)
    assert "Quimby" not in text and "chest pain" not in text and "MRN-0001" not in text


# --------------------------------------------------------------------------- wiring
def test_factory_and_demo_settings_validate(tmp_path, athena):
    athena.need_sim("demo settings point at the simulator")
    settings = demo_target_settings(athena.sim)
    cfg = AthenaOneConfig.model_validate(settings)
    assert cfg.base_url == athena.sim.base_url and cfg.practice_id == PRACTICE
    with pytest.raises(ValueError, match="priority"):
        AthenaOneConfig.model_validate({**settings, "priority": 3})
    with pytest.raises(ValueError, match="fallback_subclass"):
        AthenaOneConfig.model_validate({**settings, "fallback_subclass": "ENCOUNTERDOCUMENT_X"})


def test_unapproved_or_non_create_writes_are_refused(tmp_path, athena, services):
    adapter = adapter_for(tmp_path, athena, services)
    command = make_command(patient="2")
    with pytest.raises(PermanentError, match="approved notes only"):
        adapter.send(command.model_copy(update={"approval_state": "preliminary"}))
    with pytest.raises(PermanentError, match="new documents only"):
        adapter.send(command.model_copy(update={"kind": "append"}))
    tampered = command.model_copy(deep=True)
    tampered.draft.sections[0].text = "changed after approval"
    with pytest.raises(PermanentError, match="approval does not match"):
        adapter.send(tampered)
