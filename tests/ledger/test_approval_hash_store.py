"""The store records a decision only for the content the clinician read: a decision whose
content hash is not the open draft's (a review page left open across an edit, a tampered
form) is refused, and nothing changes — the draft stays open, no approval row exists and
nothing is queued for an EHR. On SQLite and PostgreSQL (the `db` fixture)."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from chartbridge.core import usecases as uc
from chartbridge.core.errors import StateConflict
from chartbridge.core.models import (Decision, Identifier, NoteDraft, NoteSection, Provenance)
from chartbridge.ledger.store import SqlStore
from chartbridge.ledger.tables import ApprovalRow, WriteRow

ORG = "org-a"
APPROVER = Identifier(value="E1", type="EXTERNAL")


@pytest.fixture
def store(db, clock):
    return SqlStore(db, clock)


def _open_draft(store, clock) -> tuple[NoteDraft, NoteDraft]:
    """A session with draft v1 and, after a clinician's edit, the open draft v2."""
    session, _ = uc.open_session(
        store, clock, org_id=ORG, source="epic_haiku", external_id="AMB-1",
        user=APPROVER, patient_ids=[Identifier(value="Z1", type="MRN")],
        encounter_ids=[Identifier(value="300012345", type="CSN")],
        allowed_sections=["10164-2", "51847-2"], event_body={"SessionID": "AMB-1"})
    first = store.save_draft(ORG, NoteDraft(
        id="d1", session_id=session.id, version=1,
        sections=[NoteSection(code="10164-2", text="Cough for three days, no fever."),
                  NoteSection(code="51847-2", text="Fluids and rest.")],
        provenance=Provenance(transcriber="t", transcriber_model="m", generator="g",
                              generator_version="1", template_id="default",
                              template_version="1"),
        created_at=clock.now()))
    edited = uc.edit_draft(store, clock, org_id=ORG, draft_id=first.id, section_code="10164-2",
                           text="Cough for three days, fever of 39.", editor="E1")
    return first, edited


def _decide(store, clock, draft_id: str, content_hash: str, decision=Decision.APPROVED):
    return uc.decide(store, clock, org_id=ORG, draft_id=draft_id, content_hash=content_hash,
                     approver=APPROVER, role="physician", decision=decision,
                     reason="not my patient" if decision == Decision.REJECTED else None)


def _count(db, table) -> int:
    with db.transaction() as tx:
        return tx.scalar(select(func.count()).select_from(table))


@pytest.mark.parametrize("decision", [Decision.APPROVED, Decision.REJECTED])
@pytest.mark.parametrize("which", ["stale", "wrong"])
def test_a_decision_for_other_content_is_refused_and_changes_nothing(db, store, clock, which,
                                                                     decision):
    # Given the open draft v2 (made by an edit of v1) and a decision carrying the hash of
    # the content read before the edit (stale), or of no content at all (wrong)
    first, open_draft = _open_draft(store, clock)
    content_hash = first.content_hash() if which == "stale" else "f" * 64
    assert content_hash != open_draft.content_hash()
    # When the decision is recorded against the open draft
    with pytest.raises(StateConflict, match="changed since it was reviewed"):
        _decide(store, clock, open_draft.id, content_hash, decision)
    # Then the draft is still open, no approval exists, and nothing is written anywhere
    assert store.get_draft(ORG, open_draft.id)[1] == "draft"
    assert store.approval(ORG, open_draft.id) is None
    assert _count(db, ApprovalRow) == 0 and _count(db, WriteRow) == 0
    assert not [e for e in store.audit_trail(ORG) if e.action.startswith("draft.approved")
                or e.action.startswith("draft.rejected")]
    # And the decision for the content on screen still goes through afterwards
    approval = _decide(store, clock, open_draft.id, open_draft.content_hash(), decision)
    assert store.get_draft(ORG, open_draft.id)[1] == decision.value
    assert store.approval(ORG, open_draft.id) == approval
