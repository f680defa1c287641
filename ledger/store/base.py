"""What every aggregate's store shares: the database and clock, one transaction per
method, the inbox (first delivery of an inbound event) and the org-scoped session row
that every aggregate hangs from."""
from __future__ import annotations

from sqlalchemy import bindparam, select

from chartbridge.core.errors import NotFound
from chartbridge.core.ports import Clock

from ..db import Database, insert_ignoring
from ..tables import InboxRow, SessionRow


_sessions = SessionRow.__table__
_SESSION_FACTS = (select(_sessions.c.id, _sessions.c.source, _sessions.c.status,
                         _sessions.c.correlation_id)
                  .where(_sessions.c.org_id == bindparam("org_id"),
                         _sessions.c.id == bindparam("session_id")))


class StoreBase:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db, self.clock = db, clock

    def _first_delivery(self, tx, org_id: str, source: str, event: str, key: str,
                        session_id: str | None, correlation_id: str | None) -> bool:
        stmt = insert_ignoring(tx, InboxRow.__table__, ("org_id", "source", "dedupe_key"),
                               "dedupe_key")
        return tx.execute(stmt, {
            "org_id": org_id, "source": source, "event": event, "dedupe_key": key,
            "session_id": session_id, "correlation_id": correlation_id,
            "received_at": self.clock.now()}).first() is not None

    def _session_facts(self, tx, org_id: str, session_id: str):
        """The org's session's id, source, status and correlation id, read with one Core
        SELECT of those columns (built once; no ORM row): what an acknowledgement that only
        adds rows under the session needs. NotFound if the org has no such session."""
        row = tx.execute(_SESSION_FACTS, {"org_id": org_id, "session_id": session_id}).first()
        if row is None:
            raise NotFound("no such session in this organization")
        return row

    def _session_row(self, tx, org_id: str, session_id: str, *, lock: bool = False) -> SessionRow:
        q = select(SessionRow).where(SessionRow.org_id == org_id, SessionRow.id == session_id)
        row = tx.scalars(q.with_for_update() if lock else q).first()
        if row is None:
            raise NotFound("no such session in this organization")
        return row
