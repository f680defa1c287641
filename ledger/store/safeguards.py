"""The clinician's safeguards on a session: sections protected from being sent again
(edited in the EHR) and the patient's consents (capture, write-back)."""
from __future__ import annotations

from sqlalchemy import select

from chartbridge.core.models import Consent, ConsentScope, Protection

from .. import audit
from ..tables import ConsentRow, ProtectionRow
from .base import StoreBase


class SafeguardStore(StoreBase):
    def protect(self, org_id: str, session_id: str, protections: list[Protection], *,
                event: str, key: str) -> list[str]:
        now = self.clock.now()
        with self.db.transaction() as tx:
            session = self._session_row(tx, org_id, session_id, lock=True)
            self._first_delivery(tx, org_id, session.source, event, key, session.id,
                                 session.correlation_id)
            added = []
            for p in protections:
                if tx.get(ProtectionRow, (session_id, p.section)) is None:
                    tx.add(ProtectionRow(session_id=session_id, section=p.section, org_id=org_id,
                                         doc=p.model_dump(mode="json"), created_at=now))
                    added.append(p.section)
            if added:
                audit.record(tx, at=now, org_id=org_id, session_id=session_id,
                             correlation_id=session.correlation_id, actor=session.source,
                             action="sections.protected", sections=added)
            return added

    def protected(self, org_id: str, session_id: str) -> dict[str, Protection]:
        with self.db.transaction() as tx:
            rows = tx.scalars(select(ProtectionRow).where(ProtectionRow.org_id == org_id,
                                                          ProtectionRow.session_id == session_id))
            return {r.section: Protection.model_validate(r.doc) for r in rows}

    def set_consent(self, org_id: str, consent: Consent) -> None:
        with self.db.transaction() as tx:
            session = self._session_row(tx, org_id, consent.session_id)
            row = tx.get(ConsentRow, (consent.session_id, consent.scope.value))
            if row is None:
                tx.add(ConsentRow(session_id=consent.session_id, scope=consent.scope.value,
                                  org_id=org_id, granted=consent.granted,
                                  doc=consent.model_dump(mode="json"), at=consent.at))
            else:
                row.granted, row.doc, row.at = consent.granted, consent.model_dump(mode="json"), consent.at
            audit.record(tx, at=consent.at, org_id=org_id, session_id=consent.session_id,
                         correlation_id=session.correlation_id, action="consent.recorded",
                         scope=consent.scope.value, granted=consent.granted)

    def consents(self, org_id: str, session_id: str) -> dict[ConsentScope, bool]:
        with self.db.transaction() as tx:
            rows = tx.scalars(select(ConsentRow).where(ConsentRow.org_id == org_id,
                                                       ConsentRow.session_id == session_id))
            return {ConsentScope(r.scope): r.granted for r in rows}
