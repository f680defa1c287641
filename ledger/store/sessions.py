"""Sessions: opened once per external id (the same begin again is the same session),
closed once, and the inbox of their inbound events."""
from __future__ import annotations

from sqlalchemy import bindparam, select

from chartbridge.core.errors import StateConflict
from chartbridge.core.models import Session, SessionStatus
from chartbridge.core.rules import check_transition

from .. import audit
from ..tables import SessionRow
from .base import StoreBase

_sessions = SessionRow.__table__
_FIND_SESSION = select(_sessions.c.doc).where(_sessions.c.org_id == bindparam("org_id"),
                                              _sessions.c.source == bindparam("source"),
                                              _sessions.c.external_id == bindparam("external_id"))


class SessionStore(StoreBase):
    def open_session(self, session: Session, *, begin_hash: str, event: str,
                     key: str) -> tuple[Session, bool]:
        """Store a new session and its inbox row in one transaction. The same begin again
        returns the stored session; another context for the same id is a StateConflict."""
        from sqlalchemy.exc import IntegrityError

        try:
            return self._open_session(session, begin_hash=begin_hash, event=event, key=key)
        except IntegrityError:
            # the same session opened at the same moment elsewhere (PostgreSQL's row lock
            # cannot cover a row not inserted yet): it is stored now, so read it again
            return self._open_session(session, begin_hash=begin_hash, event=event, key=key)

    def _open_session(self, session: Session, *, begin_hash: str, event: str,
                      key: str) -> tuple[Session, bool]:
        now = self.clock.now()
        with self.db.transaction() as tx:
            existing = tx.scalars(select(SessionRow).where(
                SessionRow.org_id == session.org_id, SessionRow.source == session.source,
                SessionRow.external_id == session.external_id).with_for_update()).first()
            if existing is not None:
                if existing.begin_hash != begin_hash:
                    raise StateConflict("this session was already begun with another context")
                self._first_delivery(tx, session.org_id, session.source, event, key,
                                     existing.id, existing.correlation_id)
                return Session.model_validate(existing.doc), False
            tx.add(SessionRow(id=session.id, org_id=session.org_id, source=session.source,
                              external_id=session.external_id, status=session.status,
                              correlation_id=session.correlation_id,
                              doc=session.model_dump(mode="json"), begin_hash=begin_hash,
                              created_at=now, updated_at=now))
            tx.flush()
            self._first_delivery(tx, session.org_id, session.source, event, key, session.id,
                                 session.correlation_id)
            audit.record(tx, at=now, org_id=session.org_id, session_id=session.id,
                         correlation_id=session.correlation_id, actor=str(session.source),
                         action="session.opened", source=str(session.source))
            return session, True

    def get_session(self, org_id: str, session_id: str) -> Session:
        with self.db.transaction() as tx:
            return Session.model_validate(self._session_row(tx, org_id, session_id).doc)

    def find_session(self, org_id: str, source: str, external_id: str) -> Session | None:
        with self.db.transaction() as tx:       # every Epic callback looks its session up
            doc = tx.execute(_FIND_SESSION, {"org_id": org_id, "source": source,
                                             "external_id": external_id}).scalar()
            return Session.model_validate(doc) if doc is not None else None

    def list_sessions(self, org_id: str, *, limit: int = 100) -> list[Session]:
        with self.db.transaction() as tx:
            rows = tx.scalars(select(SessionRow).where(SessionRow.org_id == org_id)
                              .order_by(SessionRow.created_at.desc()).limit(limit))
            return [Session.model_validate(r.doc) for r in rows]

    def close_session(self, org_id: str, session_id: str, status: SessionStatus, *,
                      event: str, key: str, actor: str) -> bool:
        """Returns False for a duplicate delivery or an already-closed session."""
        now = self.clock.now()
        with self.db.transaction() as tx:
            row = self._session_row(tx, org_id, session_id, lock=True)
            if not self._first_delivery(tx, org_id, row.source, event, key, row.id,
                                        row.correlation_id):
                return False
            if row.status != SessionStatus.OPEN:
                return False
            check_transition(SessionStatus(row.status), status)
            doc = dict(row.doc, status=status.value)
            row.status, row.doc, row.updated_at = status.value, doc, now
            audit.record(tx, at=now, org_id=org_id, session_id=row.id,
                         correlation_id=row.correlation_id, actor=actor,
                         action=f"session.{status.value}")
            return True

    def record_event(self, org_id: str, session: Session, *, event: str, key: str) -> bool:
        """Inbox only: True the first time this delivery is seen."""
        with self.db.transaction() as tx:
            return self._first_delivery(tx, org_id, session.source, event, key, session.id,
                                        session.correlation_id)
