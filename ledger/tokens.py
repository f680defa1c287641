"""Shared token cache and inbound replay guard, on the engine's database."""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from chartbridge.core.ports import Clock

from .db import Database
from .tables import ReplayRow, TokenRow


def _insert(tx):
    return pg_insert if tx.bind.dialect.name == "postgresql" else sqlite_insert


class DbTokenCache:
    def __init__(self, db: Database, clock: Clock, *, margin_seconds: float = 30) -> None:
        self.db, self.clock, self.margin = db, clock, timedelta(seconds=margin_seconds)

    def get(self, org_id: str, key: str) -> str | None:
        with self.db.transaction() as tx:
            row = tx.get(TokenRow, (org_id, key))
            if row and row.expires_at - self.margin > self.clock.now():
                return row.token
            return None

    def put(self, org_id: str, key: str, token: str, expires_at: datetime) -> None:
        now = self.clock.now()
        with self.db.transaction() as tx:
            stmt = _insert(tx)(TokenRow.__table__).values(
                org_id=org_id, key=key, token=token, expires_at=expires_at, requested_at=now)
            tx.execute(stmt.on_conflict_do_update(
                index_elements=["org_id", "key"],
                set_={"token": token, "expires_at": expires_at, "requested_at": now}))

    def invalidate(self, org_id: str, key: str) -> None:
        with self.db.transaction() as tx:
            tx.execute(delete(TokenRow).where(TokenRow.org_id == org_id, TokenRow.key == key))


class DbReplayGuard:
    # Expired jtis are pruned at most this often per process, not on every inbound call
    # (a DELETE per callback was a third of the acknowledgement's database work). An
    # expired row left a while longer only refuses a reuse of that jti, which exp refuses too.
    PRUNE_EVERY = timedelta(seconds=30)

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db, self.clock = db, clock
        self._pruned_at: datetime | None = None

    def first_use(self, org_id: str, jti: str, expires_at: datetime) -> bool:
        now = self.clock.now()
        prune = self._pruned_at is None or now - self._pruned_at >= self.PRUNE_EVERY
        with self.db.transaction() as tx:
            if prune:
                tx.execute(delete(ReplayRow).where(ReplayRow.expires_at < now))
                self._pruned_at = now
            stmt = _insert(tx)(ReplayRow.__table__).values(org_id=org_id, jti=jti,
                                                          expires_at=expires_at)
            got = tx.execute(stmt.on_conflict_do_nothing(index_elements=["org_id", "jti"])
                             .returning(ReplayRow.__table__.c.jti)).first()
            return got is not None

    def seen(self, org_id: str, jti: str) -> bool:
        with self.db.transaction() as tx:
            return tx.scalar(select(ReplayRow.jti).where(ReplayRow.org_id == org_id,
                                                         ReplayRow.jti == jti)) is not None
