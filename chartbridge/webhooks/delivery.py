"""One delivery attempt over HTTP, and the pass that drives every due one.

POST the stored body, signed, with the subscriber's timeout and redirects not followed (a
3xx is a failed attempt: the URL in the org file is the one we sign for). A 2xx is
delivered; anything else, or any exception of the attempt (a connection error,
`InvalidURL`, ...), is retried with backoff until the
subscriber's `max_attempts`, then `failed` with the last reason (`http_503`,
`ConnectError`, ...). Nothing of a body is logged: the reason is a status or an error
class.
"""
from __future__ import annotations

import json
import logging
import uuid
from typing import Callable

import httpx

from chartbridge import metrics
from chartbridge.core.errors import ChartbridgeError
from chartbridge.core.ports import Clock

from . import signing
from .store import FAILED, Claim, WebhookStore

log = logging.getLogger("chartbridge.webhooks")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


class Deliverer:
    """`subscribers_of(org_id)`: the org's `webhooks:` list; `resolve(secret_ref)`: the
    secret's value; `http(**kw)`: an httpx.Client factory (tests hand their own)."""

    def __init__(self, store: WebhookStore, clock: Clock, *,
                 subscribers_of: Callable[[str], list], resolve: Callable[[object], str],
                 http: Callable[..., httpx.Client] | None = None) -> None:
        self.store, self.clock = store, clock
        self.subscribers_of, self.resolve = subscribers_of, resolve
        self.http = http or (lambda **kw: httpx.Client(**kw))

    def deliver(self, org_id: str, did: str) -> str | None:
        """One attempt if the delivery is due and unclaimed; returns its new status."""
        sub = self._subscriber(org_id, self._subscriber_id(org_id, did))
        claim = self.store.claim(org_id, did, owner=uuid.uuid4().hex,
                                 max_attempts=sub.max_attempts if sub is not None else None)
        if claim is None:
            return None
        if sub is None:      # removed from the org file since: nobody to send it to
            return self._record(claim, ok=False, code=None, error="subscriber_removed",
                                max_attempts=1)
        try:
            key = signing.secret_key(self.resolve(sub.secret))
        except ChartbridgeError as exc:   # names the reference, never the value
            return self._record(claim, ok=False, code=None, error=f"secret: {exc.code}",
                                max_attempts=sub.max_attempts)
        body = json.dumps(claim.body, separators=(",", ":"), sort_keys=True).encode()
        stamp = int(self.clock.now().timestamp())
        headers = signing.headers(key, claim.delivery.event_id, stamp, body)
        try:
            with self.http(timeout=httpx.Timeout(sub.timeout_s), follow_redirects=False) as client:
                response = client.post(sub.url, content=body, headers=headers)
        except Exception as exc:  # noqa: BLE001 - any failure is a failed attempt (InvalidURL...)
            return self._record(claim, ok=False, code=None, error=type(exc).__name__,
                                max_attempts=sub.max_attempts)
        ok = 200 <= response.status_code < 300
        return self._record(claim, ok=ok, code=response.status_code,
                            error=None if ok else f"http_{response.status_code}",
                            max_attempts=sub.max_attempts, retry_after=_retry_after(response))

    def run_due(self) -> dict:
        """Fan out new events and attempt every due delivery here, in this thread (the
        embedded sweeper's path when no worker is attached, and the tests')."""
        made = self.store.fan_out(self.subscribers_of)
        outcomes: dict[str, int] = {}
        for org_id, did in self.store.due():
            status = self.deliver(org_id, did)
            if status:
                outcomes[status] = outcomes.get(status, 0) + 1
        return {"fanned_out": made, **outcomes}

    def _subscriber_id(self, org_id: str, did: str) -> str | None:
        try:
            return self.store.get(org_id, did).subscriber
        except ChartbridgeError:
            return None

    def _subscriber(self, org_id: str, sub_id: str | None):
        try:
            subs = self.subscribers_of(org_id)
        except ChartbridgeError:
            return None
        return next((s for s in subs if s.id == sub_id), None)

    def _record(self, claim: Claim, *, ok: bool, code: int | None, error: str | None,
                max_attempts: int, retry_after: float | None = None) -> str | None:
        status = self.store.finish(claim, ok=ok, status_code=code, error=error,
                                   max_attempts=max_attempts, retry_after=retry_after)
        if status is None:
            return None
        d = claim.delivery
        outcome = "delivered" if ok else ("failed" if status == FAILED else "retry")
        metrics.webhook_delivery(d.org_id, d.event_type, outcome)
        level = logging.WARNING if status == FAILED else logging.INFO
        log.log(level, "webhook %s", outcome,
                extra={"org_id": d.org_id, "event": d.event_type, "key": d.id,
                       "status": status, "attempt": claim.delivery.attempts,
                       "http_status": code, "reason": error})
        return status
