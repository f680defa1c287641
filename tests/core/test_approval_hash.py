"""An approval binds to the exact note content the clinician read (its content hash), not
just to a draft id: the domain rule must refuse a write whose approval's hash is for other
content even when the draft id matches, whatever the policy on staging unapproved drafts."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from chartbridge.core import usecases as uc
from chartbridge.core.errors import RuleViolation
from chartbridge.core.models import (Approval, Decision, Identifier, NoteDraft, NoteSection,
                                     Provenance, Session)
from chartbridge.core.rules import write_approval_state

AT = datetime(2026, 11, 21, 15, 0, tzinfo=timezone.utc)
TARGETS = [("fhir_docref", "DocumentReference"), ("hl7_mdm", "MDM")]


def _draft(text: str) -> NoteDraft:
    return NoteDraft(id="draft-1", session_id="sess-1", version=1,
                     sections=[NoteSection(code="10164-2", text=text),
                               NoteSection(code="51847-2", text="Fluids and rest.")],
                     provenance=Provenance(transcriber="t", transcriber_model="m",
                                           generator="g", generator_version="1",
                                           template_id="default", template_version="1"),
                     created_at=AT)


def _approval_of(draft: NoteDraft, *, content_hash: str | None = None) -> Approval:
    return Approval(draft_id=draft.id, draft_version=draft.version,
                    content_hash=draft.content_hash() if content_hash is None else content_hash,
                    approver=Identifier(value="E1", type="EXTERNAL"), role="physician",
                    decision=Decision.APPROVED, at=AT)


def _session() -> Session:
    return Session(id="sess-1", org_id="org-a", source="epic_haiku",
                   external_id="AMB-1", user=Identifier(value="E1", type="EXTERNAL"),
                   patient_ids=[Identifier(value="Z1", type="MRN")],
                   encounter_ids=[Identifier(value="300012345", type="CSN")],
                   allowed_sections=["10164-2", "51847-2"], correlation_id="corr-1",
                   created_at=AT)


READ = _draft("Cough for three days, no fever.")
# the same draft id carrying other words (changed after the clinician read it)
CHANGED = _draft("Cough for three days, fever of 39.")
OTHER_HASHES = {"approval-of-other-content": READ.content_hash(),
                "hash-of-nothing": "0" * 64, "empty": ""}


@pytest.mark.parametrize("stage_preliminary", [False, True], ids=["approval-required",
                                                                  "staging-allowed"])
@pytest.mark.parametrize("content_hash", list(OTHER_HASHES.values()), ids=list(OTHER_HASHES))
def test_an_approval_of_other_content_is_refused_by_the_rule(content_hash, stage_preliminary):
    # Given an approval whose draft id matches but whose content hash is not the draft's
    approval = _approval_of(CHANGED, content_hash=content_hash)
    assert approval.draft_id == CHANGED.id and approval.content_hash != CHANGED.content_hash()
    # When the rule decides the write's approval state
    with pytest.raises(RuleViolation) as err:
        write_approval_state(CHANGED, approval, needs_approval=True,
                             stage_preliminary=stage_preliminary)
    # Then it is refused as a mismatch (never approved, never quietly staged instead)
    assert err.value.rule == "approval_mismatch"


@pytest.mark.parametrize("stage_preliminary", [False, True], ids=["approval-required",
                                                                  "staging-allowed"])
def test_no_write_command_is_made_from_an_approval_of_other_content(stage_preliminary):
    # Given the approval the clinician gave for the words they read
    approval = _approval_of(READ)
    # When the draft now carries other words under the same id
    with pytest.raises(RuleViolation) as err:
        uc.approved_write_commands(_session(), CHANGED, approval, targets=TARGETS,
                                   stage_preliminary=stage_preliminary)
    # Then no command exists for any target
    assert err.value.rule == "approval_mismatch"


def test_the_approval_of_the_content_read_is_accepted():
    # the control: the same rule accepts the hash of the exact content
    assert write_approval_state(READ, _approval_of(READ), needs_approval=True,
                                stage_preliminary=False) == "approved"
    cmds = uc.approved_write_commands(_session(), READ, _approval_of(READ), targets=TARGETS,
                                      stage_preliminary=False)
    assert [c.approval_state for c in cmds] == ["approved", "approved"]
