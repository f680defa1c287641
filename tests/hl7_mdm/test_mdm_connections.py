"""Several connections per receiver (`connections` > 1): concurrent writes share the pool,
each connection stays stop-and-wait, every document is filed once."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from chartbridge.adapters.hl7_mdm.adapter import Hl7MdmAdapter
from chartbridge.adapters.hl7_mdm.builder import control_id_for
from chartbridge.adapters.hl7_mdm.config import Hl7MdmConfig
from chartbridge.adapters.hl7_mdm.mllp import MllpClient, MllpPool
from contract_tests.hl7_mdm.conftest import VOCAB, command
from contract_tests.hl7_mdm.simulator import HL7MDMSimulator


def _adapter(sim, **kw) -> Hl7MdmAdapter:
    cfg = Hl7MdmConfig(host=sim.host, port=sim.port, sending_facility="CLINIC",
                       receiving_application=sim.application,
                       receiving_facility=sim.facility, timeout_s=3, **kw)
    return Hl7MdmAdapter(cfg, VOCAB)


def test_one_connection_by_default():
    with HL7MDMSimulator() as sim:
        adapter = _adapter(sim)
        assert isinstance(adapter.client, MllpClient)
        adapter.close()


def test_concurrent_writes_use_several_connections_and_file_each_document_once():
    with HL7MDMSimulator() as sim:
        adapter = _adapter(sim, connections=3)
        assert isinstance(adapter.client, MllpPool)
        commands = [command(encounter_key=f"CSN-{i}") for i in range(24)]
        try:
            with ThreadPoolExecutor(6) as pool:
                outcomes = list(pool.map(adapter.send, commands))
        finally:
            adapter.close()
        assert {o.detail["ack"] for o in outcomes} == {"AA"}
        # each ACK was the one for its own message
        assert [o.detail["control_id"] for o in outcomes] == \
            [control_id_for(c.idempotency_key()) for c in commands]
        assert len(sim.documents()) == 24
        assert 1 < sim.stats()["connections"] <= 3
        assert set(sim.received_counts().values()) == {1}
