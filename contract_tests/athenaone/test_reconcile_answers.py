"""athenaOne takes no idempotency key, so after a lost upload answer the only way to know
whether the note was filed is the patient's clinical document list. These tests say what
Chartbridge does with each kind of answer to that list: a transient failure is retried (and
the retry reconciles first); an answer the engine cannot read stops the write at
needs_reconciliation at once, for a person, instead of retrying it for ever or, worse,
reading "no documents" into it and filing the note twice.
"""
from __future__ import annotations

import pytest
from chartbridge.adapters.athenaone.mapping import write_id
from chartbridge.core.errors import OutcomeUnknown, TransientError
from chartbridge.core.models import WriteStatus

from .conftest import make_command
from .test_contract import adapter_for

NOTE = "Patient Zed Quimby reports chest pain."

# Bodies a 200 answer to the list can carry that are not athena's documented
# {"clinicaldocuments": [{...}, ...], "totalcount": N}. "{wid}" is replaced by the write id.
UNREADABLE = {
    "html-page": ("text/html", "<html><body><h1>Scheduled maintenance</h1></body></html>"),
    "truncated-json": ("application/json", '{"clinicaldocuments": [{"clinicaldocumentid": 1'),
    "json-scalar": ("application/json", '"OK"'),
    "other-wrapper-key": ("application/json", '{"documents": [], "totalcount": 1}'),
    "list-is-an-object": ("application/json",
                          '{"clinicaldocuments": {"clinicaldocumentid": 1}, "totalcount": 1}'),
    "entries-not-objects": ("application/json",
                            '{"clinicaldocuments": ["1", "2"], "totalcount": 2}'),
    "totalcount-not-a-number": ("application/json",
                                '{"clinicaldocuments": [], "totalcount": "several"}'),
    "written-document-without-id": ("application/json",
                                    '{"clinicaldocuments": [{"internalnote": "{wid}", '
                                    '"status": "REVIEW"}], "totalcount": 1}'),
}


def _the_write(ledger, command):
    [record] = ledger.list(command.org_id)
    return record


@pytest.mark.parametrize("content_type,body", list(UNREADABLE.values()), ids=list(UNREADABLE))
def test_unreadable_document_list_after_a_lost_upload_needs_reconciliation(
        tmp_path, athena, services, ledger, content_type, body):
    sim = athena.need_sim("injects a lost upload answer and an unreadable list")
    adapter = adapter_for(tmp_path, athena, services)
    command = make_command(patient=athena.patient_id, text=NOTE)
    # Given athena stores the upload but its answer is lost, and from then on every
    # document list comes back in a shape the client does not know
    sim.faults.add(call="upload", kind="lose_response", status=502)
    sim.faults.add(call="list", kind="unexpected_body", times=None, content_type=content_type,
                   body=body.replace("{wid}", write_id(command)))
    with pytest.raises(TransientError) as lost:
        ledger.execute(command, adapter)
    assert lost.value.maybe_delivered is True

    # When the sweeper retries the write
    with pytest.raises(OutcomeUnknown) as unknown:
        ledger.execute(command, adapter)

    # Then it stops at needs_reconciliation with a reason a person can act on, free of PHI
    record = _the_write(ledger, command)
    assert record.status == WriteStatus.NEEDS_RECONCILIATION
    assert record.last_error_class == "OutcomeUnknown"
    assert "document list" in record.last_error and "resolve" in record.last_error
    for phi in ("Quimby", "chest pain", "MRN-0001", command.encounter_key,
                f"patients/{athena.patient_id}/"):
        assert phi not in record.last_error and phi not in unknown.value.message
    # And a further retry waits for that person: no list, no upload, one document at most
    calls_before = len(sim.calls())
    with pytest.raises(OutcomeUnknown):
        ledger.execute(command, adapter)
    assert len(sim.calls()) == calls_before
    assert sim.upload_count() == 1 and len(sim.calls("upload")) == 1


@pytest.mark.parametrize("fault", [
    {"status": 503, "retry_after": 1},
    {"status": 429},
    {"kind": "drop"},
    {"kind": "unexpected_body", "status": 502, "content_type": "text/html",
     "body": "<html><body>502 Bad Gateway</body></html>"},
    {"kind": "slow", "delay_s": 1.5},
], ids=["503", "429", "connection-dropped", "html-502-from-a-proxy", "timeout"])
def test_transient_document_list_failures_stay_transient_and_the_retry_reconciles(
        tmp_path, athena, services, ledger, fault):
    sim = athena.need_sim("injects a lost upload answer and a failing list")
    adapter = adapter_for(tmp_path, athena, services, timeout_s=0.5)
    command = make_command(patient=athena.patient_id)
    # Given the upload answer is lost and the first document list fails transiently
    sim.faults.add(call="upload", kind="lose_response", status=502)
    sim.faults.add(call="list", **fault)
    with pytest.raises(TransientError):
        ledger.execute(command, adapter)
    with pytest.raises(TransientError) as failed:
        ledger.execute(command, adapter)
    assert _the_write(ledger, command).status == WriteStatus.PENDING
    assert failed.value.maybe_delivered is False     # a list never files anything
    # When retried once more: the list answers, the reconcile finds the stored document
    record = ledger.execute(command, adapter)
    # Then it is the one document athena holds, never a second upload
    assert record.status == WriteStatus.SUCCEEDED and record.outcome["reconciled"] is True
    assert sim.upload_count() == 1 and len(sim.calls("upload")) == 1
    assert record.external_id == str(sim.documents()[0]["clinicaldocumentid"])
