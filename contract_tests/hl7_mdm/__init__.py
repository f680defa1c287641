"""HL7 v2.5.1 MDM receiver simulator (MLLP) and its own tests.

Written from the HL7 v2.5.1 standard (chapter 2 acknowledgement rules, chapter 9 MDM) and
the MLLP framing rules, never from the adapter's code. See README.md.
"""
from contract_tests.hl7_mdm.simulator import (  # noqa: F401
    Fault,
    FaultPlan,
    HL7MDMSimulator,
    MLLPEchoServer,
    serve,
)
