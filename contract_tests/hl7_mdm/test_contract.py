"""HL7 v2.5.1 MDM contract: the adapter, driven through the WriteLedger, against the MLLP
receiver simulator (or a real receiver: see conftest.py). The simulator parses with
python-hl7; the adapter builds with hl7apy, so the two libraries check each other."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import hl7
import pytest

from chartbridge.adapters.hl7_mdm.builder import control_id_for
from chartbridge.core.errors import OutcomeUnknown, TransientError
from chartbridge.core.models import Identifier, WriteKind, WriteStatus

from .conftest import (VOCAB, command, make_config, needs_faults, needs_simulator,
                       self_signed_cert)

SAMPLES = Path(__file__).parent / "samples"


def _parent_doc(ledger, adapter, *, approved: bool):
    record = ledger.execute(command(approved=approved), adapter)
    assert record.status == WriteStatus.SUCCEEDED, record.last_error
    return record.external_id


# -- T02 ------------------------------------------------------------------------------------
def test_t02_happy_path_files_one_authenticated_document(sim, ledger, adapter):
    # Given an approved draft
    cmd = command()
    # When the ledger writes it
    record = ledger.execute(cmd, adapter)
    # Then it succeeded with the TXA-12 as the EHR id and the AA for our MSH-10
    assert record.status == WriteStatus.SUCCEEDED
    assert record.outcome["ack"] == "AA"
    assert record.outcome["control_id"] == control_id_for(cmd.idempotency_key())
    if sim is None:
        return
    doc = sim.document(record.external_id)
    assert doc["created_by"] == "T02"
    assert (doc["completion_status"], doc["availability_status"]) == ("AU", "AV")
    assert doc["document_type"] == "PR"
    assert doc["patient_id"] == "MRN0001^^^&1.2.840.114350.1.13.0&ISO^MR"
    assert [o["observation_id"] for o in doc["obx"]] == ["10164-2", "51847-2"]
    assert doc["text"] == "Cough for three days.\nCommunity acquired pneumonia.\nStart amoxicillin."


# -- corrections (ch. 9) -----------------------------------------------------------------------
# T02 staged (IP/UN) -> T08 final, T10 replace and T06 addendum with TXA-13 are the shared
# scenarios (contract_tests/capabilities/scenarios.py via test_shared.py; conftest.MdmDriver).
def test_t11_cancels_a_staged_document(sim, ledger, adapter):
    # Given a staged document
    original = _parent_doc(ledger, adapter, approved=False)
    # When it is cancelled
    record = ledger.execute(command(kind=WriteKind.CANCEL, version=1, approved=False,
                                    parent=original, parent_available=False), adapter)
    # Then T11 (no OBX) sets it to CA
    assert record.status == WriteStatus.SUCCEEDED, record.last_error
    assert record.outcome["event"] == "T11"
    if sim is not None:
        assert sim.document(original)["availability_status"] == "CA"


@pytest.mark.parametrize("kind,rule", [(WriteKind.CANCEL, "mdm_t11_unavailable_only"),
                                       (WriteKind.EDIT, "mdm_t08_unavailable_only")])
def test_cancel_or_edit_of_an_available_document_is_refused_before_sending(
        sim, ledger, adapter, kind, rule, wire):
    # Given an available document
    original = _parent_doc(ledger, adapter, approved=True)
    frames = len(wire.frames)
    # When a cancel/edit of it is attempted
    record = ledger.execute(command(kind=kind, version=2, parent=original,
                                    parent_available=True), adapter)
    # Then the ledger records a named permanent refusal and nothing went on the wire
    assert record.status == WriteStatus.FAILED
    assert record.last_error_class == "PermanentError"
    assert record.outcome["rule"] == rule
    assert len(wire.frames) == frames
    if sim is not None:
        assert sim.document(original)["availability_status"] == "AV"


def test_missing_parent_availability_is_refused_naming_the_field(ledger, adapter):
    record = ledger.execute(command(kind=WriteKind.REPLACE, version=2, parent="CBX"), adapter)
    assert record.status == WriteStatus.FAILED
    assert record.outcome["field"] == "extra.parent_available"


# -- idempotency --------------------------------------------------------------------------------
def test_crash_after_receiver_ack_before_ledger_commit_is_not_filed_twice(sim, ledger, adapter,
                                                                          wire):
    # Given the receiver already acknowledged the message but the ledger never recorded it
    cmd = command()
    adapter.send(cmd)
    # When the ledger (fresh claim) sends the write
    record = ledger.execute(cmd, adapter)
    # Then the same MSH-10 and the same bytes went again, and the ACK matched by MSA-2
    cid = control_id_for(cmd.idempotency_key())
    assert record.status == WriteStatus.SUCCEEDED and record.outcome["control_id"] == cid
    sent = wire.sent(cid)
    assert len(sent) == 2 and sent[0] == sent[1] and len(wire.frames) == 2
    # and the receiver did not file it twice
    if sim is None:
        return
    s = sim
    assert s.received_counts() == {cid: 2}
    stats = s.stats()
    assert stats["replays"] == 1 and stats.get("control_id_reused_with_different_body", 0) == 0
    assert stats.get("t02_duplicates_not_filed", 0) == 0 and len(s.documents()) == 1


def test_rendering_is_deterministic_for_the_same_command(adapter):
    a, b = adapter.render(command()), adapter.render(command())
    assert a.er7 == b.er7 and a.control_id == b.control_id


# -- lost and late ACKs -------------------------------------------------------------------------
def test_late_ack_resend_keeps_control_id_and_files_once(sim, ledger, make_adapter):
    # Given a receiver whose ACK arrives after our timeout
    s = needs_faults(sim)
    s.faults.add("late_ack", delay_s=0.6)
    adapter = make_adapter(timeout_s=0.3, max_resends=2)
    cmd = command()
    # When the ledger writes
    record = ledger.execute(cmd, adapter)
    # Then the resend used the same MSH-10 and bytes, and one document exists
    cid = control_id_for(cmd.idempotency_key())
    assert record.status == WriteStatus.SUCCEEDED and record.outcome["attempts"] >= 2
    assert s.received_counts()[cid] >= 2
    assert s.stats().get("control_id_reused_with_different_body", 0) == 0
    assert len(s.documents()) == 1


def test_late_ack_is_never_credited_to_the_next_message(sim, ledger, make_adapter):
    # Given a first write whose ACK comes late and no resends allowed
    s = needs_faults(sim)
    s.faults.add("late_ack", delay_s=0.6)
    adapter = make_adapter(timeout_s=0.2, max_resends=0)
    first = command(version=1)
    with pytest.raises(OutcomeUnknown):
        ledger.execute(first, adapter)
    assert ledger.get("org-a", first.idempotency_key()).status == \
        WriteStatus.NEEDS_RECONCILIATION
    # When the next message goes out on the same connection while the late ACK is in flight
    # (the receiver answers it only after the late ACK, so this wait is longer)
    adapter.config = adapter.config.model_copy(update={"timeout_s": 3.0})
    second = command(version=2, encounter_key="CSN-78", text="Second note.")
    record = ledger.execute(second, adapter)
    # Then the late ACK (MSA-2 = first MSH-10) was discarded, not credited to the second
    assert record.status == WriteStatus.SUCCEEDED
    assert record.outcome["control_id"] == control_id_for(second.idempotency_key())
    assert adapter.client.discarded_acks == 1
    # and each document was filed exactly once
    counts = s.received_counts()
    assert counts[control_id_for(first.idempotency_key())] == 1
    assert len(s.documents()) == 2


def test_no_ack_after_every_resend_needs_reconciliation(sim, ledger, make_adapter):
    # Given a receiver that never acknowledges
    s = needs_faults(sim)
    s.faults.add("no_ack", times=3)
    adapter = make_adapter(timeout_s=0.2, max_resends=2)
    cmd = command()
    # When the ledger writes
    with pytest.raises(OutcomeUnknown):
        ledger.execute(cmd, adapter)
    # Then 3 identical attempts, then needs_reconciliation (never a new control id)
    assert s.received_counts() == {control_id_for(cmd.idempotency_key()): 3}
    assert s.stats().get("control_id_reused_with_different_body", 0) == 0
    assert ledger.get("org-a", cmd.idempotency_key()).status == \
        WriteStatus.NEEDS_RECONCILIATION


def test_reset_connection_is_resent_on_a_new_connection(sim, ledger, make_adapter):
    s = needs_faults(sim)
    s.faults.add("reset")
    adapter = make_adapter(timeout_s=1.0, max_resends=1)
    record = ledger.execute(command(), adapter)
    assert record.status == WriteStatus.SUCCEEDED and record.outcome["attempts"] == 2
    assert s.stats()["connections"] == 2 and len(s.documents()) == 1


def test_reconcile_allows_resend_only_for_a_deduping_receiver(sim, make_adapter):
    assert make_adapter().reconcile(command()) is None
    with pytest.raises(OutcomeUnknown):
        make_adapter(receiver_dedupes=False).reconcile(command())


# -- negative ACKs --------------------------------------------------------------------------------
# AE (an edit of an unknown TXA-12) is the shared validation-refusal scenario (MdmDriver.refusal).
def test_application_reject_ack_is_permanent(sim, ledger, adapter):
    # Given a message the receiver rejects at the header (processing id it does not take)
    needs_simulator(sim, "simulator-only: a receiver rule that answers AR (MSH-11)")
    adapter.settings = dataclasses.replace(adapter.settings, processing_id="X")
    record = ledger.execute(command(), adapter)
    assert record.status == WriteStatus.FAILED and record.outcome["ack"] == "AR"
    assert record.outcome["vendor_code"] == "202"


def test_reject_with_retry_hint_is_transient_and_not_delivered(sim, ledger, adapter):
    # Given a receiver that answers AR "retry after 7 seconds"
    s = needs_faults(sim)
    s.faults.add("reject", retry_after=7)
    cmd = command()
    # When the ledger writes: Then a TransientError with the hint, nothing filed
    with pytest.raises(TransientError) as caught:
        ledger.execute(cmd, adapter)
    assert caught.value.retry_after == 7 and caught.value.maybe_delivered is False
    assert len(s.documents()) == 0
    # and the retry succeeds with one document
    assert ledger.execute(cmd, adapter).status == WriteStatus.SUCCEEDED
    assert len(s.documents()) == 1


def test_refused_connection_is_transient_not_delivered(ledger, make_adapter, sim):
    import socket
    with socket.socket() as probe:              # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    adapter = make_adapter(host="127.0.0.1", port=port, connect_timeout_s=1)
    with pytest.raises(TransientError) as caught:
        ledger.execute(command(), adapter)
    assert caught.value.maybe_delivered is False


# -- enhanced acknowledgement mode ---------------------------------------------------------------
def test_enhanced_mode_commit_ack(sim, ledger, make_adapter):
    s = needs_simulator(sim)
    adapter = make_adapter(ack_mode="enhanced")
    record = ledger.execute(command(), adapter)
    assert record.status == WriteStatus.SUCCEEDED and record.outcome["ack"] == "CA"
    assert s.messages()[0]["mode"] == "enhanced" and len(s.documents()) == 1


def test_enhanced_mode_waits_for_the_application_ack_when_asked(make_adapter, ledger):
    from .simulator import HL7MDMSimulator
    with HL7MDMSimulator(application_ack="same_connection") as s:
        adapter = make_adapter(host=s.host, port=s.port, ack_mode="enhanced",
                               application_ack="AL")
        ok = ledger.execute(command(), adapter)
        bad = ledger.execute(command(kind=WriteKind.EDIT, version=2, parent="CBNONE",
                                     parent_available=False), adapter)
    assert ok.outcome["ack"] == "AA"
    assert bad.status == WriteStatus.FAILED and bad.outcome["ack"] == "AE"


# -- TLS -------------------------------------------------------------------------------------------
def test_tls_write_and_untrusted_certificate_refused(tmp_path, ledger, make_adapter):
    from .simulator import HL7MDMSimulator
    cert, key = self_signed_cert(tmp_path)
    with HL7MDMSimulator(certfile=str(cert), keyfile=str(key)) as s:
        # Given the receiver's self-signed cert as our CA: the write goes over TLS
        adapter = make_adapter(host=s.host, port=s.port,
                               tls={"enabled": True, "ca_file": str(cert)})
        assert ledger.execute(command(), adapter).status == WriteStatus.SUCCEEDED
        assert len(s.documents()) == 1
        # Given no trust in that cert: the handshake fails, nothing is sent (transient)
        (tmp_path / "other").mkdir()
        other_ca, _ = self_signed_cert(tmp_path / "other")
        untrusting = make_adapter(host=s.host, port=s.port,
                                  tls={"enabled": True, "ca_file": str(other_ca)})
        with pytest.raises(TransientError) as caught:
            untrusting.send(command(version=5))
        assert caught.value.maybe_delivered is False and len(s.documents()) == 1


# -- delimiters and identifiers round-trip -------------------------------------------------------
TRICKY = "BP 120/80 | HR 72 ^ temp 37.0 & SpO2 ~98%\nescape \\ and \\F\\ and \\.br\\ stay\n\n- end"


@pytest.mark.parametrize("value_type", ["FT", "TX"])
@pytest.mark.parametrize("obx_mode", ["per_section", "per_note"])
def test_delimiters_in_text_and_identifiers_round_trip(sim, ledger, make_adapter, value_type,
                                                       obx_mode):
    s = needs_simulator(sim)
    ids = [Identifier(value="A|B^C&D~E\\F", type="MRN", system="urn:oid:1.2.3"),
           Identifier(value="X^1", type="EXTERNAL", system="https://ids.example.org/p")]
    adapter = make_adapter(value_type=value_type, obx_mode=obx_mode)
    record = ledger.execute(command(text=TRICKY, patient_ids=ids), adapter)
    assert record.status == WriteStatus.SUCCEEDED, record.last_error
    doc = s.document(record.external_id)
    if obx_mode == "per_section":
        assert doc["obx"][1]["text"] == TRICKY
    else:
        assert doc["text"] == ("History of present illness:\nCough for three days.\n\n"
                               f"Assessment and plan:\n{TRICKY}")
    # the receiver's patient key, decoded component by component, is the original value
    unescape = hl7.parse("MSH|^~\\&\r").unescape
    first = doc["patient_id"].split("^")
    assert unescape(first[0]) == "A|B^C&D~E\\F" and first[4] == "MR"


def test_control_characters_in_text_are_refused_naming_the_field(ledger, adapter):
    record = ledger.execute(command(text="bad \x07 bell"), adapter)
    assert record.status == WriteStatus.FAILED
    assert record.outcome["field"] == "draft.sections[1].text"
    assert "bell" not in record.last_error


# -- golden samples ------------------------------------------------------------------------------
SAMPLE_CASES = {
    "t02_per_section_ft.hl7": (dict(), dict()),
    "t02_staged_per_note_tx.hl7": (dict(approved=False),
                                   dict(obx_mode="per_note", value_type="TX")),
    "t02_enhanced.hl7": (dict(), dict(ack_mode="enhanced")),
    "t08_edit.hl7": (dict(kind=WriteKind.EDIT, version=2, parent="CB0000000000000000000000000001",
                          parent_available=False, text="Edited."), dict()),
    "t10_replace.hl7": (dict(kind=WriteKind.REPLACE, version=2,
                             parent="CB0000000000000000000000000001", parent_available=True,
                             text="Replacement."), dict()),
    "t06_addendum.hl7": (dict(kind=WriteKind.APPEND, version=2,
                              parent="CB0000000000000000000000000001", parent_available=True,
                              text="Addendum."), dict()),
    "t11_cancel.hl7": (dict(kind=WriteKind.CANCEL, approved=False,
                            parent="CB0000000000000000000000000001", parent_available=False),
                       dict()),
}


def _golden(cmd_kwargs, cfg_kwargs) -> str:
    from chartbridge.adapters.hl7_mdm.adapter import Hl7MdmAdapter
    cfg = make_config(_FakeSim(), **cfg_kwargs)
    adapter = Hl7MdmAdapter(cfg, VOCAB, client=object())   # never sends
    return adapter.render(command(**cmd_kwargs)).er7


class _FakeSim:
    host, port, application, facility = "127.0.0.1", 2575, "EHRSIM", "SIMHOSP"


@pytest.mark.parametrize("name", sorted(SAMPLE_CASES))
def test_payloads_match_golden_samples(name):
    # Given the golden sample (generated by this builder, reviewed, see samples/README.md)
    expected = (SAMPLES / name).read_text(encoding="utf-8").split("\n", 1)[1]
    # When the same command is rendered; Then byte-identical ER7 (segments shown one a line)
    assert _golden(*SAMPLE_CASES[name]).replace("\r", "\n") == expected


def test_golden_samples_parse_with_python_hl7():
    """Every sample parses with the other library and carries its trigger in MSH-9."""
    for name in SAMPLE_CASES:
        text = (SAMPLES / name).read_text(encoding="utf-8").split("\n", 1)[1]
        msg = hl7.parse(text.replace("\n", "\r"))
        assert str(msg.segment("MSH")[9]).split("^")[1] == name[:3].upper()


# -- factory -------------------------------------------------------------------------------------
def test_registry_factory_builds_a_working_adapter_from_an_org_config(sim, ledger):
    # Given the demo org config and the demo target block pointing at the simulator
    from chartbridge.adapters.hl7_mdm.config import Hl7MdmConfig
    from chartbridge.adapters.registry import registry
    from contract_tests.hl7_mdm.sandbox import demo_target_settings
    from chartbridge.config.loader import load_org_file

    s = needs_simulator(sim)
    org = load_org_file(Path(__file__).resolve().parents[2] / "config/orgs/demo-multi.yaml")
    target = Hl7MdmConfig.model_validate(demo_target_settings(s))
    # When the registry's factory builds the adapter
    adapter = registry.get("hl7_mdm").factory(org, target, None)
    try:
        # Then TXA-2 comes from the org's note type table and a write is filed
        record = ledger.execute(command(), adapter)
    finally:
        adapter.close()
    assert record.status == WriteStatus.SUCCEEDED
    assert s.document(record.external_id)["document_type"] == "PR"


def test_long_notes_are_sent_whole_and_oversize_values_refused_without_quoting(sim, ledger,
                                                                               adapter, wire):
    # Given a section of 20 000 characters (FT allows 65 536 per value)
    long_text = ("Plan discussed with patient. " * 700)[:20000]
    record = ledger.execute(command(text=long_text), adapter)
    # Then it is acknowledged, went whole, and arrives whole
    assert record.status == WriteStatus.SUCCEEDED, record.last_error
    assert long_text in wire.sent(record.outcome["control_id"])[0]
    if sim is not None:
        assert sim.document(record.external_id)["obx"][1]["text"] == long_text
    # Given an identifier longer than its HL7 field allows: refused, value not quoted
    big = Identifier(value="Z" * 300, type="MRN")
    failed = ledger.execute(command(version=3, patient_ids=[big]), adapter)
    assert failed.status == WriteStatus.FAILED and "ZZZZ" not in (failed.last_error or "")
