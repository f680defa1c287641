"""Idempotency keys of the capture API, per org (table `api_idempotency`).

`begin` claims a key with one INSERT ... ON CONFLICT DO NOTHING, so of any number of
concurrent requests under one key exactly one owns it, on SQLite and PostgreSQL alike; the
others read the row the winner inserted. A claim left in flight by a dead process is taken
over once it is older than `stale_after` (the request's work is itself idempotent: the use
cases dedupe every event).

The fingerprint is compared first: another request under a key (another body, path or
caller) is a mismatch whether or not the first one is still being answered (the draft's
422 before its 409). A claim is owned by the request that made it, identified by the
claim's `claimed_at`: `finish` and `release` change the row only while that claim still
stands, so a slow owner whose claim was taken over cannot overwrite the new owner's answer
or delete its claim.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update

from chartbridge.core.ports import Clock

from .db import Database
from .db import insert_for
from .tables import IdempotencyRow


@dataclass(frozen=True)
class Claim:
    outcome: str                 # "owner" | "replay" | "mismatch" | "in_flight"
    status: int | None = None
    response: dict | None = None
    claimed_at: datetime | None = None     # the owner's claim (for finish / release)


class IdempotencyStore:
    def __init__(self, db: Database, clock: Clock, *, keep: timedelta = timedelta(hours=24),
                 stale_after: timedelta = timedelta(seconds=60)) -> None:
        self.db, self.clock, self.keep, self.stale_after = db, clock, keep, stale_after

    def begin(self, org_id: str, key: str, fingerprint: str) -> Claim:
        now = self.clock.now()
        with self.db.transaction() as tx:
            stmt = insert_for(tx)(IdempotencyRow.__table__).values(
                org_id=org_id, key=key, fingerprint=fingerprint, state="in_flight",
                created_at=now, expires_at=now + self.keep)
            got = tx.execute(stmt.on_conflict_do_nothing(index_elements=["org_id", "key"])
                             .returning(IdempotencyRow.__table__.c.key)).first()
            if got is not None:
                return Claim("owner", claimed_at=now)
            row = tx.get(IdempotencyRow, (org_id, key))
            if row is None:                       # deleted between the two statements
                return Claim("in_flight")
            if row.fingerprint != fingerprint and not (
                    row.state == "done" and row.expires_at <= now):
                return Claim("mismatch")          # another request, in flight or answered
            if row.state == "in_flight" and row.created_at >= now - self.stale_after:
                return Claim("in_flight")         # the same request, still being answered
            if row.state == "done" and row.expires_at > now:
                return Claim("replay", row.status, row.response)
            taken = tx.execute(
                update(IdempotencyRow)
                .where(IdempotencyRow.org_id == org_id, IdempotencyRow.key == key,
                       IdempotencyRow.created_at == row.created_at,
                       (IdempotencyRow.state == "done") |
                       (IdempotencyRow.created_at < now - self.stale_after))
                .values(state="in_flight", status=None, response=None, created_at=now,
                        expires_at=now + self.keep, fingerprint=fingerprint)).rowcount
            return Claim("owner", claimed_at=now) if taken else Claim("in_flight")

    @staticmethod
    def _owned(org_id: str, key: str, claim: Claim):
        if claim.outcome != "owner" or claim.claimed_at is None:
            raise ValueError("only the owner of a claim can finish or release it")
        return (IdempotencyRow.org_id == org_id, IdempotencyRow.key == key,
                IdempotencyRow.state == "in_flight",
                IdempotencyRow.created_at == claim.claimed_at)

    def finish(self, org_id: str, key: str, claim: Claim, status: int, response: dict) -> bool:
        """Store the owner's answer. False (nothing changed) when the claim was taken over
        meanwhile: the answer of the request that holds it now is the one kept."""
        with self.db.transaction() as tx:
            return bool(tx.execute(update(IdempotencyRow)
                                   .where(*self._owned(org_id, key, claim))
                                   .values(state="done", status=status,
                                           response=response)).rowcount)

    def release(self, org_id: str, key: str, claim: Claim) -> bool:
        """The request failed in a way worth retrying (a 5xx), or changed nothing (refused
        credentials): forget the claim, if it is still this request's."""
        with self.db.transaction() as tx:
            return bool(tx.execute(delete(IdempotencyRow)
                                   .where(*self._owned(org_id, key, claim))).rowcount)

    def purge_expired(self) -> int:
        with self.db.transaction() as tx:
            return tx.execute(delete(IdempotencyRow)
                              .where(IdempotencyRow.expires_at < self.clock.now())).rowcount or 0

    def get(self, org_id: str, key: str) -> IdempotencyRow | None:
        with self.db.transaction() as tx:
            return tx.scalars(select(IdempotencyRow).where(IdempotencyRow.org_id == org_id,
                                                           IdempotencyRow.key == key)).first()
