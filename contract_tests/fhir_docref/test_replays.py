"""Replays that must not file anything twice at a FHIR server (every profile where they
apply): a reconcile that finds the note on a server that matches references strictly, and a
replayed us-core transaction that keeps ONE Provenance (the Provenance is tagged with the
write's key and created on the condition `_tag=<identifier system>|<key>`)."""
from __future__ import annotations

import pytest

from chartbridge.core.errors import OutcomeUnknown, TransientError
from chartbridge.core.models import WriteStatus
from contract_tests.fhir_docref.conftest import make_command


def test_reconcile_finds_the_note_on_a_server_that_matches_references_strictly(
        fhir, adapter, ledger):
    sim = fhir.need_sim("strict reference matching and a lost response")
    # Given a server that only matches typed references (patient=Patient/<id>), which
    # stores the note and then loses its answer
    sim.strict_references = True
    prof = fhir.profile_of
    call = "transaction" if prof.transaction else "create"
    sim.faults.add(call=call, kind="lose_response")
    command = make_command(fhir)
    with pytest.raises(TransientError):
        ledger.execute(command, adapter)
    if not prof.search_by_identifier:
        # When retried where no identifier is kept (oracle-health): the typed content
        # search is accepted by the strict server, proves nothing, and nothing is resent
        with pytest.raises(OutcomeUnknown):
            ledger.execute(command, adapter)
        searches = sim.calls("search")
        assert searches and all(c["status"] == 200 for c in searches)
        assert len(sim.documents(fhir.patient)) == 1 and len(sim.calls(call)) == 1
        return
    # When the write is retried
    record = ledger.execute(command, adapter)
    # Then the reconcile found the note: nothing was sent again
    assert record.status == WriteStatus.SUCCEEDED and record.outcome.get("reconciled") is True
    assert record.external_id == f"DocumentReference/{sim.documents(fhir.patient)[0]['id']}"
    assert len(sim.documents(fhir.patient)) == 1
    assert len(sim.calls(call)) == 1
    if prof.provenance:
        assert len(sim.resources("Provenance")) == 1


def test_content_match_searches_typed_patient_and_encounter(fhir, adapter):
    sim = fhir.need_sim("strict reference matching")
    if not fhir.profile_of.reconcile_by_content or sim.rules.text_by_url:
        pytest.skip(f"{fhir.profile}: no content match to find the note by (identifier search "
                    "proves absence, or the text is only behind attachment.url)")
    # Given a strict server holding the note without our identifier
    sim.strict_references = True
    command = make_command(fhir)
    sent = adapter.send(command)
    with sim._lock:                                    # the server "dropped" our identifier
        sim._store["DocumentReference"][sent.external_id.split("/")[1]][-1].pop(
            "identifier", None)
    # When reconciled
    found = adapter.reconcile(command)
    # Then type + date + text found it through the typed patient and encounter references
    assert found.external_id == sent.external_id and found.detail["found_by"] == "content"


def _one_of_each(sim, patient: str) -> None:
    docs, provs = sim.documents(patient), sim.resources("Provenance")
    assert len(docs) == 1, f"{len(docs)} DocumentReferences"
    assert len(provs) == 1, f"{len(provs)} Provenances"
    assert provs[0]["target"] == [{"reference": f"DocumentReference/{docs[0]['id']}"}]


def test_the_same_transaction_sent_twice_files_one_document_and_one_provenance(fhir, adapter):
    sim = fhir.need_sim("counts Provenances")
    if not fhir.profile_of.transaction:
        pytest.skip(f"{fhir.profile}: no transaction and no Provenance")
    command = make_command(fhir)
    # Given the transaction was sent once
    first = adapter.send(command)
    # When exactly the same transaction is sent again
    again = adapter.send(command)
    # Then both entries matched what exists: one DocumentReference, one Provenance
    assert again.external_id == first.external_id and again.detail.get("already_there") is True
    assert again.detail["provenance"] == first.detail["provenance"]
    _one_of_each(sim, fhir.patient)
    tag = sim.resources("Provenance")[0]["meta"]["tag"]
    assert tag == [{"system": "urn:chartbridge:write", "code": command.idempotency_key()}]


def test_a_lost_response_replayed_through_the_ledger_keeps_one_provenance(fhir, adapter,
                                                                          ledger):
    sim = fhir.need_sim("lost response and a lagging search index")
    if not fhir.profile_of.transaction:
        pytest.skip(f"{fhir.profile}: no transaction and no Provenance")
    # Given the server stores the transaction and loses its answer, and its search index
    # lags, so the reconcile cannot see the note yet
    sim.faults.add(call="transaction", kind="lose_response")
    sim.faults.add(call="search", kind="stale_search")
    command = make_command(fhir)
    with pytest.raises(TransientError):
        ledger.execute(command, adapter)
    # When the ledger retries: reconcile finds nothing, so the same transaction is resent
    record = ledger.execute(command, adapter)
    assert len(sim.calls("transaction")) == 2
    # Then the resend matched both resources: still one DocumentReference, one Provenance
    assert record.status == WriteStatus.SUCCEEDED and record.outcome["already_there"] is True
    _one_of_each(sim, fhir.patient)
