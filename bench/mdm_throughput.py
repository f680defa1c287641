"""MDM send+ACK throughput over loopback, next to a raw MLLP framed echo in the same run.

    .venv/bin/python bench/mdm_throughput.py [--seconds 3] [--size 2000]

1. echo: python-hl7's MLLP client (the adapter's MllpClient) sends framed payloads of the
   same size as the MDM message to the simulator's MLLPEchoServer and waits for each echo;
2. mdm: Hl7MdmAdapter.send() of distinct T02 messages (hl7apy build + validate, MLLP
   send, python-hl7 parse of the ACK, MSA-2 match) to the HL7MDMSimulator, one at a time.
Prints both rates and their ratio. One connection each, sequential (MLLP is stop-and-wait).
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chartbridge.adapters.hl7_mdm.adapter import Hl7MdmAdapter  # noqa: E402
from chartbridge.adapters.hl7_mdm.builder import Vocabulary  # noqa: E402
from chartbridge.adapters.hl7_mdm.config import Hl7MdmConfig  # noqa: E402
from chartbridge.adapters.hl7_mdm.mllp import MllpClient  # noqa: E402
from chartbridge.core.models import (Approval, ApprovalState, Identifier, NoteDraft,  # noqa: E402
                                     NoteSection, Provenance, WriteCommand)
from contract_tests.hl7_mdm.simulator import HL7MDMSimulator, MLLPEchoServer  # noqa: E402

T0 = datetime(2026, 11, 21, 15, 0, tzinfo=timezone.utc)
VOCAB = Vocabulary(txa2=lambda c: "PR", obx3=lambda c: (c, "Section", "LN"),
                   title=lambda c: "Section")


def command(i: int, size: int) -> WriteCommand:
    text = ("Assessment and plan sentence. " * (size // 30 + 1))[:size]
    draft = NoteDraft(id=f"d{i}", session_id="s", version=1,
                      sections=[NoteSection(code="51847-2", text=text)],
                      provenance=Provenance(transcriber="t", transcriber_model="m", generator="g",
                                            generator_version="1", template_id="p",
                                            template_version="1"),
                      created_at=T0)
    appr = Approval(draft_id=draft.id, draft_version=1, content_hash=draft.content_hash(),
                    approver=Identifier(value="1234567890", type="NPI"), role="physician",
                    decision="approved", at=T0)
    return WriteCommand(org_id="bench", target="hl7_mdm", session_id="s", encounter_key=f"E{i}",
                        note_version=1, resource_kind="MDM",
                        approval_state=ApprovalState.APPROVED, correlation_id="c",
                        patient_ids=[Identifier(value=f"MRN{i % 100}", type="MRN")],
                        encounter_ids=[Identifier(value=f"E{i}", type="CSN")], draft=draft,
                        approval=appr)


def run_echo(seconds: float, payload: bytes) -> tuple[int, float]:
    with MLLPEchoServer() as echo:
        client = MllpClient(echo.host, echo.port)
        # the echo of an MDM message is not an ACK: accept any frame via a tiny ACK body
        ack_like = b"MSH|^~\\&|B|B|B|B|20260101000000||ACK|E1|P|2.5.1\rMSA|AA|ECHO\r"
        body = ack_like + payload[: max(0, len(payload) - len(ack_like))]
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            client.exchange(body, "ECHO", timeout=5)
            n += 1
        elapsed = time.perf_counter() - start
        client.close()
    return n, elapsed


def run_mdm(seconds: float, size: int) -> tuple[int, float, int, float]:
    with HL7MDMSimulator(max_log=1_000_000, max_documents=1_000_000) as sim:
        cfg = Hl7MdmConfig(host=sim.host, port=sim.port, sending_facility="BENCH",
                           receiving_application=sim.application,
                           receiving_facility=sim.facility, timeout_s=5)
        adapter = Hl7MdmAdapter(cfg, VOCAB)
        length = len(adapter.render(command(0, size)).er7)
        r, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            adapter.render(command(r, size))
            r += 1
        render_rate = r / (time.perf_counter() - start)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            out = adapter.send(command(n, size))
            assert out.detail["ack"] == "AA"
            n += 1
        elapsed = time.perf_counter() - start
        adapter.close()
        assert sim.stats()["documents"] == n
    return n, elapsed, length, render_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--size", type=int, default=2000, help="note text characters")
    args = ap.parse_args()
    n_mdm, t_mdm, length, render_rate = run_mdm(args.seconds, args.size)
    n_echo, t_echo = run_echo(args.seconds, b"x" * length)
    mdm_rate, echo_rate = n_mdm / t_mdm, n_echo / t_echo
    print(f"message size        {length} bytes")
    print(f"raw MLLP echo       {echo_rate:8.0f} round trips/s  ({n_echo} in {t_echo:.1f}s)")
    print(f"MDM send+ACK        {mdm_rate:8.0f} messages/s     ({n_mdm} in {t_mdm:.1f}s)")
    print(f"ratio mdm/echo      {mdm_rate / echo_rate:8.3f}")
    print(f"render only         {render_rate:8.0f} messages/s     (hl7apy build + validate)")


if __name__ == "__main__":
    main()
