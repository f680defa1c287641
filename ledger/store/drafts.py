"""Drafts and approvals: each draft a numbered version of the session's note, decided
(approved or rejected) once, bound to the content hash the clinician saw."""
from __future__ import annotations

from sqlalchemy import func, select

from chartbridge.core.errors import NotFound, StateConflict
from chartbridge.core.models import Approval, NoteDraft

from chartbridge.webhooks import outbox

from .. import audit
from ..tables import ApprovalRow, DraftRow
from .base import StoreBase


class DraftStore(StoreBase):
    def save_draft(self, org_id: str, draft: NoteDraft) -> NoteDraft:
        """Store a draft as the session's next version (the version is assigned here)."""
        with self.db.transaction() as tx:
            session = self._session_row(tx, org_id, draft.session_id, lock=True)
            latest = tx.scalar(select(func.max(DraftRow.version)).where(
                DraftRow.session_id == draft.session_id)) or 0
            draft = draft.model_copy(update={"version": latest + 1})
            for older in tx.scalars(select(DraftRow).where(DraftRow.session_id == draft.session_id,
                                                           DraftRow.state == "draft")):
                older.state = "superseded"
            tx.add(DraftRow(id=draft.id, session_id=draft.session_id, org_id=org_id,
                            version=draft.version, recording_version=draft.recording_version,
                            content_hash=draft.content_hash(), state="draft",
                            doc=draft.model_dump(mode="json"), created_at=draft.created_at))
            audit.record(tx, at=draft.created_at, org_id=org_id, session_id=draft.session_id,
                         correlation_id=session.correlation_id,
                         actor=f"user:{draft.edited_by}" if draft.edited_by else "system",
                         action="draft.saved", draft_id=draft.id, version=draft.version,
                         sections=[s.code for s in draft.sections],
                         generator=draft.provenance.generator)
            outbox.draft_ready(tx, org_id=org_id, session_id=draft.session_id,
                               draft_id=draft.id, version=draft.version,
                               recording_version=draft.recording_version, at=draft.created_at)
            return draft

    def get_draft(self, org_id: str, draft_id: str) -> tuple[NoteDraft, str]:
        with self.db.transaction() as tx:
            row = tx.scalars(select(DraftRow).where(DraftRow.org_id == org_id,
                                                    DraftRow.id == draft_id)).first()
            if row is None:
                raise NotFound("no such draft in this organization")
            return NoteDraft.model_validate(row.doc), row.state

    def drafts(self, org_id: str, *, session_id: str | None = None,
               state: str | None = None) -> list[tuple[NoteDraft, str]]:
        with self.db.transaction() as tx:
            q = select(DraftRow).where(DraftRow.org_id == org_id)
            if session_id:
                q = q.where(DraftRow.session_id == session_id)
            if state:
                q = q.where(DraftRow.state == state)
            rows = tx.scalars(q.order_by(DraftRow.created_at.desc(), DraftRow.version.desc()))
            return [(NoteDraft.model_validate(r.doc), r.state) for r in rows]

    def decide(self, org_id: str, approval: Approval) -> None:
        with self.db.transaction() as tx:
            row = tx.scalars(select(DraftRow).where(DraftRow.org_id == org_id,
                                                    DraftRow.id == approval.draft_id)
                             .with_for_update()).first()
            if row is None:
                raise NotFound("no such draft in this organization")
            if row.state != "draft":
                raise StateConflict(f"this draft is {row.state}; only an open draft can be decided")
            if row.content_hash != approval.content_hash:
                raise StateConflict("the draft changed since it was reviewed")
            row.state = approval.decision.value
            tx.add(ApprovalRow(org_id=org_id, draft_id=approval.draft_id,
                               content_hash=approval.content_hash,
                               decision=approval.decision.value,
                               doc=approval.model_dump(mode="json"), at=approval.at))
            session = self._session_row(tx, org_id, row.session_id)
            audit.record(tx, at=approval.at, org_id=org_id, session_id=row.session_id,
                         correlation_id=session.correlation_id,
                         actor=f"user:{approval.approver.value}",
                         action=f"draft.{approval.decision.value}", draft_id=row.id,
                         version=row.version, role=approval.role)

    def approval(self, org_id: str, draft_id: str) -> Approval | None:
        with self.db.transaction() as tx:
            row = tx.scalars(select(ApprovalRow).where(ApprovalRow.org_id == org_id,
                                                       ApprovalRow.draft_id == draft_id)
                             .order_by(ApprovalRow.id.desc())).first()
            return Approval.model_validate(row.doc) if row else None
