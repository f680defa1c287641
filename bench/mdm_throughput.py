"""MDM send+ACK throughput over loopback, next to a raw MLLP framed echo in the same run.

    .venv/bin/python bench/mdm_throughput.py [--seconds 3] [--size 2000] [--connections 4]

The receivers run in their own process (an interface engine is not in our process):
1. echo: the adapter's MllpClient sends framed payloads of the MDM message's size to the
   simulator's MLLPEchoServer and waits for each echo, one connection, stop-and-wait (the
   reference), and also over --connections connections at once;
2. mdm: Hl7MdmAdapter.send() of distinct T02 messages (fast build, MLLP send, python-hl7
   parse of the ACK, MSA-2 match) over one connection, and over --connections connections
   (`connections` in the target config) from as many threads, to a receiver that answers
   AA without parsing (as cheap as the echo: the ratio is the engine's), and to the full
   HL7MDMSimulator (python-hl7 parse, store, dedupe: ~1-3 ms a message of its own).
Each connection is stop-and-wait (MLLP's one message in flight). Prints the rates, the
builder's own rate (fast path vs hl7apy STRICT), writes docs/bench/mdm_throughput.png and
prints the ratio (mdm over 1 or N connections, the better, / echo over one) last.
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import bar_plot  # noqa: E402
from chartbridge.adapters.hl7_mdm.adapter import Hl7MdmAdapter  # noqa: E402
from chartbridge.adapters.hl7_mdm.builder import (MdmSettings, Vocabulary, build,  # noqa: E402
                                                  build_strict)
from chartbridge.adapters.hl7_mdm.config import Hl7MdmConfig  # noqa: E402
from chartbridge.adapters.hl7_mdm.mllp import MllpClient  # noqa: E402
from chartbridge.core.models import (Approval, ApprovalState, Identifier, NoteDraft,  # noqa: E402
                                     NoteSection, Provenance, WriteCommand)

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


def _ack_only_server():
    """A receiver that costs next to nothing, like the echo: it reads MSH-10 with a split and
    answers AA (no parsing, no store), so engine send+ACK against it measures the engine and
    the wire, not a receiver's own parser (the full simulator's figure is printed too)."""
    from contract_tests.hl7_mdm.simulator import MLLPEchoServer

    class AckOnly(MLLPEchoServer):
        application, facility = "EHRSIM", "SIMHOSP"

        def reply(self, block: bytes) -> bytes:
            cid = block.split(b"\r", 1)[0].split(b"|")[9]
            return (b"MSH|^~\\&|EHRSIM|SIMHOSP|B|B|20260101000000||ACK^T02^ACK|A"
                    + cid + b"|P|2.5.1\rMSA|AA|" + cid + b"\r")

    return AckOnly()


def _receiver(kind: str, pipe) -> None:
    """Child process: run one receiver, send its port, answer "stats" then stop."""
    from contract_tests.hl7_mdm.simulator import HL7MDMSimulator, MLLPEchoServer
    server = {"echo": MLLPEchoServer, "ack": _ack_only_server,
              "mdm": lambda: HL7MDMSimulator(max_log=1000, max_documents=10_000_000)}[kind]()
    with server:
        pipe.send((server.host, server.port, getattr(server, "application", ""),
                   getattr(server, "facility", "")))
        pipe.recv()
        pipe.send(server.stats() if kind == "mdm" else {"documents": server.frames_echoed})


class Receiver:
    def __init__(self, kind: str) -> None:
        self.pipe, child = multiprocessing.Pipe()
        self.proc = multiprocessing.get_context("spawn").Process(
            target=_receiver, args=(kind, child), daemon=True)

    def __enter__(self):
        self.proc.start()
        self.host, self.port, self.application, self.facility = self.pipe.recv()
        return self

    def stats(self) -> dict:
        self.pipe.send("stats")
        return self.pipe.recv()

    def __exit__(self, *exc) -> None:
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()


def _threads(n: int, seconds: float, work) -> tuple[int, float]:
    """Run work(thread_index, i) in n threads for `seconds`; (calls, elapsed)."""
    counts = [0] * n
    stop = time.perf_counter() + seconds

    def loop(k: int) -> None:
        i = 0
        while time.perf_counter() < stop:
            work(k, i)
            i += 1
        counts[k] = i

    start = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts), time.perf_counter() - start


def run_echo(seconds: float, payload: bytes, connections: int) -> float:
    with Receiver("echo") as echo:
        clients = [MllpClient(echo.host, echo.port) for _ in range(connections)]
        # the echo of an MDM message is not an ACK: accept any frame via a tiny ACK body
        ack_like = b"MSH|^~\\&|B|B|B|B|20260101000000||ACK|E1|P|2.5.1\rMSA|AA|ECHO\r"
        body = ack_like + payload[: max(0, len(payload) - len(ack_like))]
        for c in clients:
            c.exchange(body, "ECHO", timeout=5)
        n, elapsed = _threads(connections, seconds,
                              lambda k, i: clients[k].exchange(body, "ECHO", timeout=5))
        for c in clients:
            c.close()
        echo.stats()
    return n / elapsed


def run_mdm(seconds: float, size: int, connections: int, offset: int,
            receiver: str = "mdm") -> float:
    with Receiver(receiver) as sim:
        cfg = Hl7MdmConfig(host=sim.host, port=sim.port, sending_facility="BENCH",
                           receiving_application=sim.application,
                           receiving_facility=sim.facility, timeout_s=5,
                           connections=connections)
        adapter = Hl7MdmAdapter(cfg, VOCAB)
        adapter.send(command(offset, size))                # connect + verify the shape

        def send(k: int, i: int) -> None:
            out = adapter.send(command(offset + 1 + k * 10_000_000 + i, size))
            assert out.detail["ack"] == "AA"

        n, elapsed = _threads(connections, seconds, send)
        adapter.close()
        assert sim.stats()["documents"] == n + 1
    return n / elapsed


def render_rate(fn, seconds: float, size: int) -> float:
    s = MdmSettings()
    r, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(command(r, size), s, VOCAB)
        r += 1
    return r / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--size", type=int, default=2000, help="note text characters")
    ap.add_argument("--connections", type=int, default=4)
    args = ap.parse_args()
    c, sec = args.connections, args.seconds
    length = len(build(command(0, args.size), MdmSettings(), VOCAB).er7)
    fast = render_rate(build, sec / 3, args.size)
    strict = render_rate(build_strict, sec / 3, args.size)
    echo1 = run_echo(sec, b"x" * length, 1)
    echo_n = run_echo(sec, b"x" * length, c)
    ack1 = run_mdm(sec, args.size, 1, 0, "ack")
    ack_n = run_mdm(sec, args.size, c, 10**9, "ack")
    mdm1 = run_mdm(sec, args.size, 1, 2 * 10**9)
    mdm_n = run_mdm(sec, args.size, c, 3 * 10**9)
    print(f"message size          {length} bytes")
    print(f"build, fast path      {fast:8.0f} messages/s   (hl7apy STRICT: {strict:.0f}/s)")
    print(f"raw MLLP echo, 1 conn {echo1:8.0f} round trips/s")
    print(f"raw MLLP echo, {c} conn {echo_n:8.0f} round trips/s")
    print(f"MDM send+ACK, 1 conn  {ack1:8.0f} messages/s   (ratio {ack1 / echo1:.3f}; "
          "receiver answers AA without parsing, like the echo)")
    print(f"MDM send+ACK, {c} conn  {ack_n:8.0f} messages/s   (vs echo over {c}: "
          f"{ack_n / echo_n:.3f})")
    print(f"  to the full HL7MDMSimulator (python-hl7 parse, store, dedupe): 1 conn "
          f"{mdm1:.0f}/s, {c} conn {mdm_n:.0f}/s")
    plot = bar_plot("mdm_throughput", "HL7 MDM over loopback MLLP (receiver in its own "
                    "process)", {"echo, 1 conn": echo1, f"echo, {c} conn": echo_n,
                                 "MDM send+ACK, 1 conn": ack1,
                                 f"MDM send+ACK, {c} conn": ack_n,
                                 "to full simulator, 1 conn": mdm1,
                                 f"to full simulator, {c} conn": mdm_n,
                                 "build only (fast)": fast, "build only (hl7apy)": strict},
                    "per second", f"{length}-byte T02; targets: >= 500/s and >= 0.25 x echo")
    print(f"plot                  {plot.relative_to(Path.cwd()) if plot.is_relative_to(Path.cwd()) else plot}")
    best, label = max((ack1, "1 conn"), (ack_n, f"{c} conn"))
    print(f"ratio mdm ({label}, the better)/echo(1 conn) {best / echo1:8.3f}")


if __name__ == "__main__":
    main()
