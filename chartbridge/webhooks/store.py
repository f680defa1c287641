"""Deliveries: one row per (event, subscriber), driven from the database.

- `fan_out` turns each new event row into a delivery per subscriber of the org that asked
  for its type (the org file as it is when the sweeper first sees the event); the insert
  does nothing on a conflict, so two sweepers fanning out the same event make one delivery.
- `claim` takes a due delivery under a row lock (SELECT ... FOR UPDATE; SQLite: BEGIN
  IMMEDIATE) and a lease: a second worker holding the same message finds it claimed, or
  not due, and does nothing. A lease that expired (a dead worker) makes it due again: at
  least once. A delivery whose last allowed attempt was lost that way (finish never ran)
  is failed there (`attempt_lost`), so none stays "delivering" for ever.
- `finish` records the attempt's outcome, guarded by the lease: delivered, or pending
  again after a backoff, or failed (terminal, with the last reason) after `max_attempts`.
- `replay` puts a failed (or delivered) delivery back to pending, due now, with a fresh
  attempt budget. The event and its id are unchanged, so a receiver that dedupes on
  webhook-id sees the same message.

`list` and `events` are newest first (a limit shows the latest, never hides them); `get`
reads one delivery by id. Every query names the org.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

from sqlalchemy import select, update

from chartbridge.core.errors import NotFound, StateConflict
from chartbridge.core.ports import Clock
from chartbridge.ledger.db import Database
from chartbridge.ledger.tables import WebhookDeliveryRow, WebhookEventRow

PENDING, DELIVERING, DELIVERED, FAILED = "pending", "delivering", "delivered", "failed"
STATUSES = (PENDING, DELIVERING, DELIVERED, FAILED)


def delivery_id(event_id: str, subscriber: str) -> str:
    return "dlv_" + hashlib.sha256(f"{event_id}\x1f{subscriber}".encode()).hexdigest()[:32]


def backoff(attempt: int, *, base: float = 10.0, cap: float = 3600.0,
            retry_after: float | None = None) -> float:
    """Exponential backoff with jitter (half fixed, half random: never an immediate
    retry), never sooner than the receiver's Retry-After."""
    span = min(cap, base * (2 ** max(0, attempt - 1)))
    return max(span / 2 + random.uniform(0, span / 2), min(retry_after or 0.0, cap))


@dataclass(frozen=True)
class Delivery:
    id: str
    org_id: str
    event_id: str
    event_type: str
    subscriber: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    updated_at: datetime

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in d.items()}


@dataclass(frozen=True)
class Claim:
    delivery: Delivery
    body: dict            # the event's stored body (signed as stored)
    owner: str


def _delivery(row: WebhookDeliveryRow, event_type: str) -> Delivery:
    return Delivery(row.id, row.org_id, row.event_id, event_type, row.subscriber, row.status,
                    row.attempts, row.last_status_code, row.last_error, row.next_attempt_at,
                    row.delivered_at, row.created_at, row.updated_at)


class WebhookStore:
    # longer than one attempt can take (httpx's timeout is per phase: connect, write, read,
    # pool; each at most 30 s), so a live worker's claim never expires under it
    def __init__(self, db: Database, clock: Clock, *, lease_s: float = 150.0) -> None:
        self.db, self.clock, self.lease = db, clock, timedelta(seconds=lease_s)

    # -- events -> deliveries ------------------------------------------------------------
    def fan_out(self, subscribers_of: Callable[[str], list], *, limit: int = 200) -> int:
        """Deliveries for events not fanned out yet; returns how many were created.
        `subscribers_of(org_id)` gives that org's subscribers; an org with no config file
        has none (its events are settled as told to nobody), an org whose file does not
        validate keeps its events for a later pass, without holding up the other orgs."""
        from chartbridge.ledger.db import insert_for

        made, now = 0, self.clock.now()
        with self.db.transaction() as tx:
            orgs = list(tx.scalars(select(WebhookEventRow.org_id).distinct()
                                   .where(WebhookEventRow.fanned_out.is_(False))))
        for org_id in orgs:
            try:
                subs = list(subscribers_of(org_id))
            except NotFound:
                subs = []
            except Exception:  # noqa: BLE001 - the org's bad config waits for a fix
                continue
            with self.db.transaction() as tx:
                events = list(tx.scalars(select(WebhookEventRow).where(
                    WebhookEventRow.org_id == org_id, WebhookEventRow.fanned_out.is_(False))
                    .order_by(WebhookEventRow.created_at).limit(limit)))
                for event in events:
                    for sub in subs:
                        if event.type not in {str(e) for e in sub.events}:
                            continue
                        got = tx.execute(insert_for(tx)(WebhookDeliveryRow.__table__).values(
                            id=delivery_id(event.id, sub.id), org_id=org_id,
                            event_id=event.id, subscriber=sub.id, status=PENDING, attempts=0,
                            next_attempt_at=now, created_at=now, updated_at=now)
                            .on_conflict_do_nothing()
                            .returning(WebhookDeliveryRow.__table__.c.id)).first()
                        made += got is not None
                    tx.execute(update(WebhookEventRow).where(
                        WebhookEventRow.org_id == org_id, WebhookEventRow.id == event.id)
                        .values(fanned_out=True))
        return made

    def due(self, *, limit: int = 200) -> list[tuple[str, str]]:
        """(org, delivery id) of deliveries whose time has come or whose lease expired."""
        now = self.clock.now()
        with self.db.transaction() as tx:
            q = select(WebhookDeliveryRow.org_id, WebhookDeliveryRow.id).where(
                ((WebhookDeliveryRow.status == PENDING)
                 & (WebhookDeliveryRow.next_attempt_at <= now))
                | ((WebhookDeliveryRow.status == DELIVERING)
                   & (WebhookDeliveryRow.lease_expires_at < now))
            ).order_by(WebhookDeliveryRow.next_attempt_at).limit(limit)
            return [(o, i) for o, i in tx.execute(q)]

    # -- one attempt ---------------------------------------------------------------------
    def claim(self, org_id: str, did: str, owner: str, *,
              max_attempts: int | None = None) -> Claim | None:
        """The delivery under a lease for one attempt, or None (not due, delivered, failed,
        or another worker holds it). A delivery whose lease expired after its last allowed
        attempt (the attempt died with its worker, so `finish` never ran) is marked failed
        here, reason `attempt_lost`, instead of being tried past its budget forever."""
        now = self.clock.now()
        with self.db.transaction() as tx:
            row = tx.scalars(select(WebhookDeliveryRow).where(
                WebhookDeliveryRow.org_id == org_id, WebhookDeliveryRow.id == did)
                .with_for_update()).first()
            if row is None:
                return None
            due = ((row.status == PENDING and row.next_attempt_at is not None
                    and row.next_attempt_at <= now)
                   or (row.status == DELIVERING and row.lease_expires_at is not None
                       and row.lease_expires_at < now))
            if not due:
                return None
            if (max_attempts is not None and row.status == DELIVERING
                    and row.attempts >= max_attempts):
                row.status, row.next_attempt_at, row.last_error = FAILED, None, "attempt_lost"
                row.lease_owner, row.lease_expires_at, row.updated_at = None, None, now
                return None
            event = tx.scalars(select(WebhookEventRow).where(
                WebhookEventRow.org_id == org_id, WebhookEventRow.id == row.event_id)).one()
            row.status, row.lease_owner = DELIVERING, owner
            row.lease_expires_at, row.updated_at = now + self.lease, now
            row.attempts += 1
            return Claim(_delivery(row, event.type), dict(event.body), owner)

    def finish(self, claim: Claim, *, ok: bool, status_code: int | None, error: str | None,
               max_attempts: int, retry_after: float | None = None) -> str | None:
        """Record the attempt; returns the delivery's new status ('delivered', 'pending'
        for a retry, 'failed'), or None if the lease was lost meanwhile."""
        now = self.clock.now()
        with self.db.transaction() as tx:
            row = tx.scalars(select(WebhookDeliveryRow).where(
                WebhookDeliveryRow.org_id == claim.delivery.org_id,
                WebhookDeliveryRow.id == claim.delivery.id).with_for_update()).first()
            if row is None or row.status != DELIVERING or row.lease_owner != claim.owner:
                return None
            row.last_status_code, row.last_error = status_code, (error or None)
            row.lease_owner, row.lease_expires_at, row.updated_at = None, None, now
            if ok:
                row.status, row.delivered_at, row.next_attempt_at = DELIVERED, now, None
                row.last_error = None
            elif row.attempts >= max_attempts:
                row.status, row.next_attempt_at = FAILED, None
            else:
                row.status = PENDING
                row.next_attempt_at = now + timedelta(
                    seconds=backoff(row.attempts, retry_after=retry_after))
            return row.status

    # -- reads and repairs ---------------------------------------------------------------
    def list(self, org_id: str, *, status: str | None = None,
             limit: int = 500) -> list[Delivery]:
        """The org's deliveries, newest first (the first `limit`)."""
        with self.db.transaction() as tx:
            q = (select(WebhookDeliveryRow, WebhookEventRow.type)
                 .join(WebhookEventRow, WebhookEventRow.id == WebhookDeliveryRow.event_id)
                 .where(WebhookDeliveryRow.org_id == org_id, WebhookEventRow.org_id == org_id))
            if status:
                q = q.where(WebhookDeliveryRow.status == status)
            q = q.order_by(WebhookDeliveryRow.created_at.desc(),
                           WebhookDeliveryRow.id.desc()).limit(limit)
            return [_delivery(r, t) for r, t in tx.execute(q)]

    def events(self, org_id: str, *, limit: int = 500) -> list[dict]:
        """The org's recorded events, newest first (the first `limit`)."""
        with self.db.transaction() as tx:
            q = (select(WebhookEventRow).where(WebhookEventRow.org_id == org_id)
                 .order_by(WebhookEventRow.created_at.desc(), WebhookEventRow.id.desc())
                 .limit(limit))
            return [dict(r.body) for r in tx.scalars(q)]

    def get(self, org_id: str, did: str) -> Delivery:
        with self.db.transaction() as tx:
            got = tx.execute(
                select(WebhookDeliveryRow, WebhookEventRow.type)
                .join(WebhookEventRow, WebhookEventRow.id == WebhookDeliveryRow.event_id)
                .where(WebhookDeliveryRow.org_id == org_id, WebhookEventRow.org_id == org_id,
                       WebhookDeliveryRow.id == did)).first()
            if got is None:
                raise NotFound("no such webhook delivery in this organization", key=did)
            return _delivery(*got)

    def replay(self, org_id: str, did: str, *, actor: str = "system",
               reason: str | None = None) -> Delivery:
        """Send a failed or delivered delivery again: pending, due now, attempts from 0
        (audited: who, why, what it was)."""
        from chartbridge.ledger import audit

        now = self.clock.now()
        with self.db.transaction() as tx:
            row = tx.scalars(select(WebhookDeliveryRow).where(
                WebhookDeliveryRow.org_id == org_id, WebhookDeliveryRow.id == did)
                .with_for_update()).first()
            if row is None:
                raise NotFound("no such webhook delivery in this organization", key=did)
            if row.status not in (FAILED, DELIVERED):
                raise StateConflict(f"delivery is {row.status}; it is being delivered already",
                                    key=did)
            previous = {"previous_status": row.status, "previous_attempts": row.attempts,
                        "previous_error": row.last_error}
            row.status, row.attempts, row.next_attempt_at = PENDING, 0, now
            row.updated_at = now
            event = tx.scalars(select(WebhookEventRow).where(
                WebhookEventRow.org_id == org_id, WebhookEventRow.id == row.event_id)).one()
            audit.record(tx, at=now, org_id=org_id, session_id=event.session_id, actor=actor,
                         action="webhook.replayed", delivery=did, event=event.id,
                         subscriber=row.subscriber, reason=reason, **previous)
            return _delivery(row, event.type)

    def replay_failed(self, org_id: str, *, actor: str = "system",
                      reason: str | None = None) -> list[Delivery]:
        with self.db.transaction() as tx:
            ids = list(tx.scalars(select(WebhookDeliveryRow.id).where(
                WebhookDeliveryRow.org_id == org_id, WebhookDeliveryRow.status == FAILED)
                .order_by(WebhookDeliveryRow.created_at, WebhookDeliveryRow.id)))
        return [self.replay(org_id, did, actor=actor, reason=reason) for did in ids]
