"""A receiver that does not dedupe on MSH-10/TXA-12 (`receiver_dedupes: false`) files every
copy it gets. After a message that may have arrived (no ACK in time, or the connection broke
after it was written) Chartbridge must not send it again: the write stops at
needs_reconciliation for a person, as docs/vendors/hl7-mdm.md promises. A deduping
receiver keeps the resend of the identical bytes (test_contract.py covers that side)."""
from __future__ import annotations

import pytest

from chartbridge.adapters.hl7_mdm.builder import control_id_for
from chartbridge.core.errors import OutcomeUnknown
from chartbridge.core.models import WriteStatus

from .conftest import command, needs_simulator


@pytest.mark.parametrize("fault", ["no_ack", "reset"], ids=["no-ack", "connection-reset"])
def test_maybe_delivered_message_is_not_resent_to_a_non_deduping_receiver(
        sim, ledger, make_adapter, fault):
    # Given a receiver that files what it gets, does not dedupe, and then never answers
    # (or resets the connection) however often it is sent the message
    s = needs_simulator(sim)
    s.faults.add(fault, times=3)
    adapter = make_adapter(timeout_s=0.3, max_resends=2, receiver_dedupes=False)
    cmd = command()
    cid = control_id_for(cmd.idempotency_key())
    # When the ledger writes
    with pytest.raises(OutcomeUnknown) as unknown:
        ledger.execute(cmd, adapter)
    # Then the receiver got exactly one copy, and the write waits for a person
    assert s.received_counts() == {cid: 1}
    assert len(s.documents()) == 1
    record = ledger.get("org-a", cmd.idempotency_key())
    assert record.status == WriteStatus.NEEDS_RECONCILIATION
    assert "does not dedupe" in unknown.value.message
    # And a retry (the sweeper) sends nothing more
    with pytest.raises(OutcomeUnknown):
        ledger.execute(cmd, adapter)
    assert s.received_counts() == {cid: 1}
