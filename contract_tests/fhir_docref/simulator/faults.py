"""Injected failures of the FHIR simulator: its fault record and what may be injected. The
queue itself is the shared one (contract_tests/support/faults.py)."""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any

from chartbridge.core.errors import InputError

from contract_tests.support.faults import FaultQueue

FAULT_CALLS = ("*", "token", "metadata", "create", "read", "vread", "search", "update",
               "transaction")
FAULT_KINDS = ("status", "slow", "lose_response", "expired_token", "forbidden_scope",
               "not_registered", "stale_search")


@dataclass
class Fault:
    call: str = "*"
    kind: str = "status"
    status: int | None = None
    times: int | None = 1          # None: until cleared
    retry_after: float | None = None
    delay_s: float = 0.0
    resource_type: str | None = None
    drop_connection: bool = False  # lose_response only: close the socket instead of a 502
    fired: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Faults:
    """Injected failures, matched by call name (and optionally resource type) in the order
    they were added. Each fires `times` times (None: until cleared)."""

    def __init__(self, resource_types: tuple[str, ...], lock: threading.RLock | None = None
                 ) -> None:
        self._types = resource_types
        self._queue: FaultQueue[Fault] = FaultQueue(limit=100, lock=lock)

    def add(self, call: str = "*", status: int | None = None, *, kind: str | None = None,
            times: int | None = 1, retry_after: float | None = None, delay_s: float = 0.0,
            resource_type: str | None = None, drop_connection: bool = False) -> Fault:
        if call not in FAULT_CALLS:
            raise InputError(f"unknown fault call; expected one of {', '.join(FAULT_CALLS)}",
                             field="call")
        if kind is None:
            kind = "status" if status is not None else ("slow" if delay_s else "")
        if kind not in FAULT_KINDS:
            raise InputError(f"fault kind missing or unknown; expected one of "
                             f"{', '.join(FAULT_KINDS)}", field="kind")
        if kind == "status" and status is None:
            raise InputError("a status fault needs a status", field="status")
        if kind == "stale_search" and call != "search":
            raise InputError("a stale_search fault applies to call=search", field="call")
        if status is not None and (not isinstance(status, int) or not 100 <= status <= 599):
            raise InputError("status must be an HTTP status code", field="status")
        if times is not None and (not isinstance(times, int) or times < 1):
            raise InputError("times must be a positive integer or null", field="times")
        if not isinstance(delay_s, (int, float)) or delay_s < 0 or delay_s > 120:
            raise InputError("delay_s must be between 0 and 120 seconds", field="delay_s")
        if retry_after is not None and (not isinstance(retry_after, (int, float)) or retry_after < 0):
            raise InputError("retry_after must be a non-negative number", field="retry_after")
        if resource_type is not None and resource_type not in self._types:
            raise InputError("unknown resource_type", field="resource_type")
        return self._queue.add(Fault(call=call, kind=kind, status=status, times=times,
                                     retry_after=retry_after, delay_s=float(delay_s),
                                     resource_type=resource_type,
                                     drop_connection=bool(drop_connection)))

    def clear(self) -> None:
        self._queue.clear()

    def list(self) -> list[dict[str, Any]]:
        return self._queue.pending()

    def take(self, call: str, resource_type: str | None) -> Fault | None:
        return self._queue.take(lambda f: f.call in ("*", call) and (
            not f.resource_type or f.resource_type == resource_type))
