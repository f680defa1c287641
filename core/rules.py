"""The domain rules, as plain functions. Each refusal is a RuleViolation naming its rule."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from .errors import InputError, RuleViolation
from .models import (SECTION_CODES, Approval, ApprovalState, ChunkState, ConsentScope,
                     Decision, NoteDraft, NoteSection, SessionStatus, WriteKind)

SESSION_TRANSITIONS: dict[SessionStatus, set[SessionStatus]] = {
    SessionStatus.OPEN: {SessionStatus.SIGNED, SessionStatus.CANCELLED},
    SessionStatus.SIGNED: set(),
    SessionStatus.CANCELLED: set(),
}


def check_transition(current: SessionStatus, new: SessionStatus) -> None:
    if new not in SESSION_TRANSITIONS[current]:
        raise RuleViolation(f"a session cannot go from {current} to {new}",
                            rule="session_transition")


def check_section_codes(codes: Iterable[str], *, field: str = "allowed_sections") -> list[str]:
    codes = list(codes)
    for i, code in enumerate(codes):
        if code not in SECTION_CODES:
            raise InputError(f"unknown section code at {field}[{i}]", field=f"{field}[{i}]")
    return codes


def version_complete(chunk_states: Mapping[int, ChunkState], chunk_count: int) -> bool:
    """A recording version is complete only when every chunk 1..N is processed."""
    return chunk_count > 0 and all(
        chunk_states.get(seq) == ChunkState.TRANSCRIBED for seq in range(1, chunk_count + 1))


def sendable_sections(sections: Iterable[NoteSection], *, allowed: Iterable[str],
                      protected: Iterable[str]) -> list[NoteSection]:
    """Drop sections the session does not allow and sections a clinician has edited."""
    allowed, protected = set(allowed), set(protected)
    return [s for s in sections if s.code in allowed and s.code not in protected]


def check_no_protected(sections: Iterable[NoteSection], protected: Iterable[str]) -> None:
    """A protected section is never in a draft sent out."""
    hit = sorted({s.code for s in sections} & set(protected))
    if hit:
        raise RuleViolation("the draft holds sections a clinician edited: " + ", ".join(hit),
                            rule="section_protected", sections=hit)


def write_approval_state(draft: NoteDraft, approval: Approval | None, *,
                         needs_approval: bool, stage_preliminary: bool) -> ApprovalState:
    """A write to a target that needs approval needs an Approval of this exact draft
    content, unless the org's policy stages unapproved drafts as preliminary."""
    if not needs_approval:
        return ApprovalState.APPROVED
    if approval is not None:
        if approval.decision != Decision.APPROVED:
            raise RuleViolation("the draft was rejected", rule="approval_rejected")
        if approval.draft_id != draft.id or approval.content_hash != draft.content_hash():
            raise RuleViolation("the approval is for different note content",
                                rule="approval_mismatch")
        return ApprovalState.APPROVED
    if stage_preliminary:
        return ApprovalState.PRELIMINARY
    raise RuleViolation("this target needs a clinician's approval of the exact draft",
                        rule="approval_required")


def correction_kind(previous_state: ApprovalState | None, *, policy: str) -> WriteKind:
    """What a new version of a note is at a target that already holds an earlier one: an
    edit in place while the earlier one is only staged (preliminary, not yet available), else
    a replacement or an addendum per the org's policy — never a second original."""
    if previous_state is None:
        return WriteKind.CREATE
    if previous_state == ApprovalState.PRELIMINARY:
        return WriteKind.EDIT
    return WriteKind.REPLACE if policy == "replace" else WriteKind.APPEND


def check_consent(granted: Mapping[ConsentScope, bool], scope: ConsentScope, *,
                  required: bool) -> None:
    """Consent missing (where the org requires it) means no audio is processed / nothing is
    written, and the reason is visible."""
    state = granted.get(scope)
    if state is False or (required and state is None):
        raise RuleViolation(f"no {scope.value} consent recorded for this session",
                            rule="consent_missing", scope=scope.value)
