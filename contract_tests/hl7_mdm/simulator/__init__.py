"""An HL7 v2.5.1 MDM receiver over MLLP, for contract tests and local runs.

Written from the standard, not from any adapter:
- HL7 v2.5.1 chapter 2: MSH, MSA, ERR; original acknowledgement (AA/AE/AR) and enhanced
  acknowledgement (commit CA/CE/CR per MSH-15; application ack per MSH-16); tables 0008,
  0155, 0357.
- HL7 v2.5.1 chapter 9: MDM T02 original + content, T06 addendum + content, T08 edit +
  content, T10 replacement + content (all MDM_T02 structure, OBX required) and T11 cancel
  (MDM_T01 structure, no OBX); TXA; tables 0271 (completion) and 0273 (availability).
- MLLP (HL7 v2 appendix C / "MLLP release 1"): <VT=0x0B> payload <FS=0x1C><CR=0x0D>.

Parsing uses python-hl7 (``hl7.parse``, ``hl7.mllp.start_hl7_server``, ``Message.create_ack``,
``Message.unescape``); the adapter builds with hl7apy, so the two libraries check each other.

In-process use::

    with HL7MDMSimulator() as sim:          # sim.host, sim.port; sim.control_url if control=True
        sim.faults.add("no_ack", times=1)
        ...send MLLP frames...
        sim.document("DOC-1")["availability_status"]

Nothing here logs message content: documents and messages are only kept in memory for
inspection by the test that owns the simulator.

Modules: ``mllp`` (framing and the asyncio server loop; the echo server), ``validation``
(MSH and MDM checks), ``store`` (documents and the chapter 9 rules), ``acks`` (building
ACKs), ``faults`` (what may be injected; queued by contract_tests.support.faults) and
``server`` (the receiver tying them together, its HTTP control plane and ``serve``).
"""
from .acks import problem_or
from .faults import FAULT_KINDS, Fault, FaultPlan
from .mllp import CR, EB, SB, MLLPEchoServer, MLLPServer, frame, server_ssl_context
from .server import HL7MDMSimulator, serve
from .validation import (CONTENT_EVENTS, EVENTS, PROCESSING_IDS, TABLE_0155, TABLE_0271,
                         TABLE_0273, TABLE_0357)

__all__ = ["CONTENT_EVENTS", "CR", "EB", "EVENTS", "FAULT_KINDS", "Fault", "FaultPlan",
           "HL7MDMSimulator", "MLLPEchoServer", "MLLPServer", "PROCESSING_IDS", "SB", "TABLE_0155",
           "TABLE_0271", "TABLE_0273", "TABLE_0357", "frame", "problem_or", "serve",
           "server_ssl_context"]
