"""athenaOne faults: what may be injected (5xx and 429 storms, slow answers, an expired
token, ``success: false``, a response lost after storing, a dropped connection, an
unexpected body) is this simulator's; queueing and matching is the shared FaultQueue's."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from chartbridge.core.errors import InputError
from contract_tests.support.faults import VendorFaults

CALLS = ("token", "upload", "list", "get", "ping", "any")
FAULT_KINDS = ("status", "slow", "expired_token", "success_false", "lose_response", "drop",
               "unexpected_body")


@dataclass
class Fault:
    call: str = "any"
    kind: str = "status"
    status: int | None = None
    times: int | None = 1          # how many more calls it applies to; None: until cleared
    retry_after: float | None = None
    delay_s: float = 0.0
    errormessage: str | None = None
    body: str | None = None
    content_type: str = "application/json"
    fired: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Faults(VendorFaults[Fault]):
    """Queued faults, matched first-in first-out by call name (``any`` matches every API
    call but not the token endpoint; use ``call="token"`` for that)."""

    def add(self, call: str = "any", status: int | None = None, times: int | None = 1, *,
            kind: str | None = None, retry_after: float | None = None, delay_s: float = 0.0,
            errormessage: str | None = None, body: str | None = None,
            content_type: str = "application/json") -> Fault:
        """Queue a fault. ``kind`` defaults to ``status`` when a status is given, else ``slow``
        when only a delay is given. Kinds:

        - ``status``: answer ``status`` (5xx, 429...) with an athena-style body, optional
          ``Retry-After``; nothing is stored.
        - ``slow``: wait ``delay_s`` then answer normally (``delay_s`` also delays any kind).
        - ``expired_token``: answer 401 as athena does for an expired bearer token.
        - ``success_false``: (upload) answer 200 ``{"success": false, "errormessage": ...}``.
        - ``lose_response``: process and store normally, then answer ``status`` (default 502),
          or drop the connection when ``status`` is 0.
        - ``drop``: close the connection without answering and without processing.
        - ``unexpected_body``: answer ``status`` (default 200) with ``body`` verbatim as
          ``content_type`` (an HTML error page, a truncated or differently shaped JSON
          document: what a proxy or an API change puts in front of a client); nothing is
          processed.
        """
        if call not in CALLS:
            raise InputError(f"call must be one of {', '.join(CALLS)}", field="call")
        if kind is None:
            kind = "status" if status else ("slow" if delay_s else "")
        if kind not in FAULT_KINDS:
            raise InputError(f"kind must be one of {', '.join(FAULT_KINDS)}", field="kind")
        if kind == "status" and (status is None or not 400 <= int(status) <= 599):
            raise InputError("a status fault needs a 4xx/5xx status", field="status")
        if kind == "lose_response" and status is None:
            status = 502
        if kind == "unexpected_body":
            if body is None:
                raise InputError("an unexpected_body fault needs a body", field="body")
            status = 200 if status is None else status
            if not 200 <= int(status) <= 599:
                raise InputError("an unexpected_body status must be 200..599", field="status")
        if times is not None and int(times) < 1:
            raise InputError("times must be at least 1 (or null for unlimited)", field="times")
        if delay_s < 0 or delay_s > 120:
            raise InputError("delay_s must be between 0 and 120", field="delay_s")
        fault = Fault(call=call, kind=kind, status=None if status is None else int(status),
                      times=None if times is None else int(times),
                      retry_after=retry_after, delay_s=float(delay_s), errormessage=errormessage,
                      body=None if body is None else str(body), content_type=str(content_type))
        return self._queue.add(fault)

    def take(self, call: str) -> Fault | None:
        return self._queue.take(lambda f: f.call == call or (f.call == "any" and call != "token"))
