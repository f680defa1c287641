"""Epic faults per call (5xx, 429 + Retry-After, delay, 403, 401), before or after Epic did
the work: what may be injected is this simulator's; queueing is the shared FaultQueue's."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from werkzeug.wrappers import Response

from chartbridge.core.errors import InputError
from contract_tests.support.faults import VendorFaults
from contract_tests.support.http import json_response

from .spec import FAULTABLE_CALLS, OUTBOUND_CALLS


@dataclass
class Fault:
    call: str
    status: int | None = None
    times: int = 1                 # how many more requests it applies to
    retry_after: float | int | None = None
    delay_s: float = 0.0
    after_processing: bool = False
    fired: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Faults(VendorFaults[Fault]):
    """Per-call fault queue. ``call`` is one of FAULTABLE_CALLS or ``"*"`` (any outbound call)."""

    def add(self, call: str, status: int | None = None, times: int = 1, retry_after: float | int | None = None,
            delay_s: float = 0.0, after_processing: bool = False) -> Fault:
        """Make the next ``times`` requests to ``call`` fail with ``status`` (and/or wait ``delay_s``).

        ``after_processing=True`` applies the fault to the answer only: Epic does the work, then the
        engine sees the error (models an answer lost after commit)."""
        if call != "*" and call not in FAULTABLE_CALLS:
            raise InputError(f"unknown call; expected one of {', '.join(FAULTABLE_CALLS)} or *", field="call")
        if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
            raise InputError("status must be an HTTP error status 400-599", field="status")
        if not isinstance(times, int) or times < 1:
            raise InputError("times must be a positive integer", field="times")
        if not isinstance(delay_s, (int, float)) or delay_s < 0 or delay_s > 120:
            raise InputError("delay_s must be between 0 and 120 seconds", field="delay_s")
        if status is None and not delay_s:
            raise InputError("a fault needs a status or a delay", field="status")
        if retry_after is not None and (not isinstance(retry_after, (int, float)) or retry_after < 0):
            raise InputError("retry_after must be a non-negative number of seconds", field="retry_after")
        return self._queue.add(Fault(call=call, status=status, times=times, retry_after=retry_after,
                                     delay_s=float(delay_s), after_processing=bool(after_processing)))

    def take(self, call: str) -> Fault | None:
        return self._queue.take(lambda f: f.call == call or (f.call == "*" and call in OUTBOUND_CALLS))


def fault_response(call: str, fault: Fault) -> Response:
    """The answer an injected fault gives: OAuth-style at the token endpoint, Epic-style elsewhere."""
    status = fault.status or 500
    if call == "token":
        code = "invalid_client" if status in (400, 401) else "temporarily_unavailable"
        resp = json_response({"error": code, "error_description": "injected fault"}, status)
    else:
        code = {401: "TokenExpired", 403: "PermissionDenied", 429: "TooManyRequests"}.get(
            status, "ServiceUnavailable" if status >= 500 else "Rejected")
        resp = json_response({"Error": code, "Detail": "injected fault"}, status)
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer error="invalid_token", error_description="token expired"'
    if fault.retry_after is not None:
        ra = fault.retry_after
        resp.headers["Retry-After"] = str(int(ra) if float(ra).is_integer() else ra)
    return resp
