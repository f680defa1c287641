"""What every aggregate's store shares: the database and clock, one transaction per
method, the inbox (first delivery of an inbound event) and the org-scoped session row
that every aggregate hangs from."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from chartbridge.core.errors import NotFound
from chartbridge.core.ports import Clock

from ..db import Database
from ..tables import InboxRow, SessionRow


def insert_for(tx):
    """The dialect's INSERT (both have ON CONFLICT DO NOTHING)."""
    return pg_insert if tx.bind.dialect.name == "postgresql" else sqlite_insert


class StoreBase:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db, self.clock = db, clock

    def _first_delivery(self, tx, org_id: str, source: str, event: str, key: str,
                        session_id: str | None, correlation_id: str | None) -> bool:
        stmt = insert_for(tx)(InboxRow.__table__).values(
            org_id=org_id, source=source, event=event, dedupe_key=key, session_id=session_id,
            correlation_id=correlation_id, received_at=self.clock.now())
        got = tx.execute(stmt.on_conflict_do_nothing(
            index_elements=["org_id", "source", "dedupe_key"])
            .returning(InboxRow.__table__.c.id)).first()
        return got is not None

    def _session_row(self, tx, org_id: str, session_id: str, *, lock: bool = False) -> SessionRow:
        q = select(SessionRow).where(SessionRow.org_id == org_id, SessionRow.id == session_id)
        row = tx.scalars(q.with_for_update() if lock else q).first()
        if row is None:
            raise NotFound("no such session in this organization")
        return row
