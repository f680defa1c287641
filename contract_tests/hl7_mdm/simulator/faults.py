"""The receiver's faults: what may be injected (HL7/MLLP misbehaviours a real interface
engine shows) is this vendor's; storing and matching them is the shared FaultQueue's."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chartbridge.core.errors import InputError
from contract_tests.support.faults import VendorFaults

from .validation import EVENTS

FAULT_KINDS = ("no_ack", "late_ack", "wrong_control_id", "garbage", "reset", "reject")


@dataclass
class Fault:
    """One planned misbehaviour, applied to the next ``times`` matching messages.

    kind:
      no_ack            process the message, send nothing, keep the connection open
      late_ack          process, wait ``delay_s``, then send the true ACK (MSA-2 = the
                        ORIGINAL MSH-10, so a correct sender does not credit it elsewhere)
      wrong_control_id  process, answer an ACK whose MSA-2 names another control id
      garbage           process, answer unframed non-HL7 bytes instead of an ACK
      reset             process, then reset the TCP connection (RST, no ACK)
      reject            do NOT process; answer AR with a retry hint in ERR-7/ERR-8
    process=False makes the first four drop the message instead of filing it (lost on
    the wire rather than lost ACK).
    """

    kind: str
    times: int = 1  # how many more matching messages it applies to
    delay_s: float = 2.0
    retry_after: int = 30
    event: str | None = None  # only messages of this trigger (e.g. "T02")
    process: bool = True
    fired: int = 0  # how often it has applied (the queue counts)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise InputError(f"kind must be one of {', '.join(FAULT_KINDS)}", field="kind")
        if not isinstance(self.times, int) or isinstance(self.times, bool) or self.times < 1:
            raise InputError("times must be a positive integer", field="times")
        if not isinstance(self.delay_s, (int, float)) or not 0 <= self.delay_s <= 3600:
            raise InputError("delay_s must be a number of seconds in 0..3600", field="delay_s")
        if not isinstance(self.retry_after, int) or self.retry_after < 0:
            raise InputError("retry_after must be a non-negative integer", field="retry_after")
        if self.event is not None and self.event not in EVENTS:
            raise InputError(f"event must be one of {', '.join(EVENTS)}", field="event")
        if not isinstance(self.process, bool):
            raise InputError("process must be true or false", field="process")


class FaultPlan(VendorFaults[Fault]):
    """Planned faults; the first one matching a message's trigger is consumed per message."""

    def add(self, kind: str, times: int = 1, **options: Any) -> Fault:
        unknown = set(options) - {"delay_s", "retry_after", "event", "process"}
        if unknown:
            raise InputError("unknown fault option", field=sorted(unknown)[0])
        return self._queue.add(Fault(kind=kind, times=times, **options))

    def take(self, event: str | None) -> Fault | None:
        return self._queue.take(lambda f: f.event is None or f.event == event)
