"""Acknowledgements, from HL7 v2.5.1 chapter 2: the ACK's MSH, MSA (AA/AE/AR, or CA/CE/CR
in enhanced mode) and ERR (table 0357 code, location, diagnostic and text), plus what the
simulator records about each one it builds."""
from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

import hl7

from .faults import Fault
from .mllp import frame
from .validation import TABLE_0357, _f, _Header, _Problem


class Acks:
    """Builds this receiver's ACKs (MSH-3/4 = ``application`` / ``facility``); every ACK gets
    a fresh 20-character control id."""

    def __init__(self, application: str, facility: str, encoding: str) -> None:
        self.application, self.facility, self.encoding = application, facility, encoding
        self._ack_seq = itertools.count(1)

    def next_id(self) -> str:
        return f"SIM{next(self._ack_seq):09d}{uuid.uuid4().hex[:8]}"  # 20 chars, ST max

    def build(self, msg: Any, code: str, detail: Any) -> str:
        fs = msg.separators[1]
        try:
            ack = msg.create_ack(code, message_id=self.next_id(),
                                 application=self.application, facility=self.facility)
            msh_line = str(ack).split("\r")[0]
        except (IndexError, KeyError, ValueError, AttributeError, TypeError):
            ts = time.strftime("%Y%m%d%H%M%S", time.gmtime())
            msh_line = fs.join(["MSH", _f(msg.segment("MSH"), 2), self.application,
                                self.facility,
                                "", "", ts, "", "ACK", self.next_id(), "P", "2.5.1"])
        msa = ["MSA", code, _f(msg.segment("MSH"), 10)]
        lines = [msh_line]
        if isinstance(detail, _Problem):
            msa.append(msg.escape(detail.text))
            lines.append(fs.join(msa))
            lines.append(self.err_segment(detail, fs, msg.separators[3], msg.escape))
        else:
            if detail:
                msa.append(msg.escape(str(detail)))
            lines.append(fs.join(msa))
        return "\r".join(lines) + "\r"

    @staticmethod
    def err_segment(p: _Problem, fs: str, cs: str, esc) -> str:
        name = TABLE_0357.get(p.hl7_code, "")
        code = cs.join([str(p.hl7_code), esc(name), "HL70357"])
        # ERR-1 (B) empty | ERR-2 location | ERR-3 code | ERR-4 severity | 5 | 6 | ERR-7 | ERR-8
        return fs.join(["ERR", "", p.location, code, "E", "", "", esc(p.diagnostic),
                        esc(p.text)])

    def fallback(self, control_id: str, problem: _Problem | None) -> str:
        p = problem or _Problem("AR", 100, "unreadable message")
        ts = time.strftime("%Y%m%d%H%M%S", time.gmtime())
        esc = hl7.parse("MSH|^~\\&\r").escape
        cid = control_id if control_id and all(c not in control_id for c in "|^~\\&\r") else ""
        return "\r".join([
            f"MSH|^~\\&|{self.application}|{self.facility}|||{ts}||ACK|{self.next_id()}"
            "|P|2.5.1",
            f"MSA|AR|{cid}|{esc(p.text)}",
            self.err_segment(p, "|", "^", esc)]) + "\r"

    def reject_for_retry(self, msg: Any, header: _Header, fault: Fault):
        p = _Problem("AR", 207, f"receiver temporarily unavailable; retry after "
                     f"{fault.retry_after} seconds",
                     diagnostic=f"retry_after={fault.retry_after}")
        if msg is None:
            ack = self.fallback(header.control_id, p)
        else:
            ack = self.build(msg, "CR" if header.enhanced else "AR", p)
        rec = self.record(ack, "commit" if header.enhanced and msg is not None else "original")
        rec["fault"] = "reject"
        return [frame(ack.encode(self.encoding))], [rec]

    @staticmethod
    def record(ack: str, kind: str) -> dict[str, Any]:
        segs = {s.split("|", 1)[0]: s for s in ack.split("\r") if s}
        msh = segs.get("MSH", "").split("|")
        msa = segs.get("MSA", "").split("|")
        return {"kind": kind, "code": msa[1] if len(msa) > 1 else None,
                "acked_control_id": msa[2] if len(msa) > 2 else None,
                "ack_control_id": msh[9] if len(msh) > 9 else None, "raw": ack,
                "fault": None}


def problem_or(text: Any, code: str) -> Any:
    """Pass a _Problem through; anything else becomes a generic problem for ``code``."""
    if isinstance(text, _Problem):
        return text
    return _Problem(code, 207, str(text))
