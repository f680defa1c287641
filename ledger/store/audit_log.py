"""The audit trail: read per org (and session), and actions recorded outside another
aggregate's transaction (page views, refused forms)."""
from __future__ import annotations

from chartbridge.core.models import Session

from .. import audit
from .base import StoreBase


class AuditLog(StoreBase):
    def audit_trail(self, org_id: str, session_id: str | None = None) -> list[audit.AuditEntry]:
        with self.db.transaction() as tx:
            return audit.entries(tx, org_id, session_id=session_id)

    def record_audit(self, org_id: str, action: str, *, session: Session | None = None,
                     actor: str = "system", outcome: str = "success", **detail) -> None:
        with self.db.transaction() as tx:
            audit.record(tx, at=self.clock.now(), org_id=org_id,
                         session_id=session.id if session else None,
                         correlation_id=session.correlation_id if session else None,
                         actor=actor, action=action, outcome=outcome, **detail)
