"""The use cases: plain functions over the ports, callable from Python and tests without
Flask or a broker. The web endpoints, the worker actors and the demo all go through these.

`store` is the canonical state store (ledger.store.SqlStore implements it); the ports are
in core/ports.py. Nothing here knows a vendor.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence

from .errors import RuleViolation, StateConflict
from .models import (Approval, ApprovalState, CareContext, Chunk, ConsentScope, Decision,
                     Identifier, NoteDraft, NoteSection, NoteType, Protection, Provenance,
                     Recording, RecordingStatus, Session, SessionSource, SessionStatus,
                     TranscriptSegment, VersionState, WriteCommand, WriteKind)
from .ports import Clock, NoteGenerator, Transcriber
from .trace import check_sections
from .rules import (check_consent, check_no_protected, check_section_codes,
                    sendable_sections, write_approval_state)


def _event_key(event: str, body: dict | None) -> str:
    return hashlib.sha256((event + "|" + json.dumps(body or {}, sort_keys=True,
                                                    default=str)).encode()).hexdigest()


# -- sessions ------------------------------------------------------------------------------
def open_session(store, clock: Clock, *, org_id: str, source: SessionSource, external_id: str,
                 user: Identifier, patient_ids: list[Identifier],
                 encounter_ids: list[Identifier], allowed_sections: Sequence[str],
                 callback_url: str | None = None, care_context: CareContext | None = None,
                 note_type: NoteType | None = None, event: str = "open",
                 event_body: dict | None = None) -> tuple[Session, bool]:
    """Open a session once. The same context again returns the stored session; another
    context under the same external id is a StateConflict (the vendor's 409)."""
    allowed = check_section_codes(allowed_sections)
    session = Session(id=uuid.uuid4().hex, org_id=org_id, source=source,
                      external_id=external_id, user=user, patient_ids=patient_ids,
                      encounter_ids=encounter_ids, callback_url=callback_url,
                      care_context=care_context, note_type=note_type,
                      allowed_sections=allowed, correlation_id=uuid.uuid4().hex,
                      created_at=clock.now())
    context = session.model_dump(mode="json", exclude={"id", "correlation_id", "created_at",
                                                       "status"})
    begin_hash = hashlib.sha256(json.dumps(context, sort_keys=True).encode()).hexdigest()
    return store.open_session(session, begin_hash=begin_hash, event=event,
                              key=_event_key(event, event_body or context))


def complete_session(store, *, org_id: str, session: Session, signed: bool,
                     event: str = "complete", event_body: dict | None = None,
                     actor: str = "system") -> bool:
    status = SessionStatus.SIGNED if signed else SessionStatus.CANCELLED
    return store.close_session(org_id, session.id, status, event=event,
                               key=_event_key(event, event_body), actor=actor)


def protect_sections(store, *, org_id: str, session: Session, protections: list[Protection],
                     event: str = "protect", event_body: dict | None = None) -> list[str]:
    """A clinician edited these sections: never send them again this session."""
    return store.protect(org_id, session.id, protections, event=event,
                         key=_event_key(event, event_body or
                                        [p.model_dump(mode="json") for p in protections]))


# -- audio -------------------------------------------------------------------------------
def announce_chunk(store, *, org_id: str, session: Session, recording_id: str, sequence: int,
                   version: int, content_type: str = "audio/wav", duration_ms: int | None = None,
                   event: str = "chunk", event_body: dict | None = None) -> bool:
    """True when the chunk is new and needs processing (enqueue it after this returns)."""
    chunk = Chunk(session_id=session.id, recording_id=recording_id, sequence=sequence,
                  version=version, content_type=content_type, duration_ms=duration_ms)
    body = event_body or chunk.model_dump(mode="json")
    return store.announce_chunk(chunk, org_id=org_id, event=event, key=_event_key(event, body))


def announce_version(store, clock: Clock, *, org_id: str, session: Session, recording_id: str,
                     version: int, chunk_count: int, status: RecordingStatus,
                     event: str = "version", event_body: dict | None = None
                     ) -> tuple[Recording, bool]:
    rec = Recording(session_id=session.id, recording_id=recording_id, version=version,
                    chunk_count=chunk_count, status=status, announced_at=clock.now())
    body = event_body or rec.model_dump(mode="json", exclude={"announced_at", "state"})
    return store.announce_version(rec, org_id=org_id, event=event, key=_event_key(event, body))


def transcribe_chunk(store, transcriber: Transcriber, *, org_id: str, session: Session,
                     recording_id: str, sequence: int, audio: bytes,
                     hotwords: Sequence[str] = (), consent_required: bool = False
                     ) -> Recording | None:
    """Transcribe one stored chunk and record its segments. Returns the recording version
    this chunk completed, if it did (claimed exactly once across all workers)."""
    check_consent(store.consents(org_id, session.id), ConsentScope.CAPTURE,
                  required=consent_required)
    chunk = store.get_chunk(org_id, session.id, recording_id, sequence)
    offset = store.chunk_offset(org_id, session.id, recording_id, sequence)
    if offset is None:
        offset = (sequence - 1) * (chunk.duration_ms or 0)
    final = store.is_last_of_stopped(org_id, session.id, recording_id, sequence)
    segments = _transcribe(store, transcriber, org_id=org_id, session=session,
                           recording_id=recording_id, sequence=sequence, audio=audio,
                           offset=offset, hotwords=hotwords, final=final)
    store.chunk_transcribed(org_id, session.id, recording_id, sequence, segments,
                            offset_ms=offset, final=final)
    return store.claim_ready_version(org_id, session.id, recording_id)


def _transcribe(store, transcriber: Transcriber, *, org_id: str, session: Session,
                recording_id: str, sequence: int, audio: bytes, offset: int,
                hotwords: Sequence[str], final: bool) -> list[TranscriptSegment]:
    lead_in = None
    if sequence > 1:
        previous = store.get_chunk(org_id, session.id, recording_id, sequence - 1)
        if not previous.final:      # a final chunk kept its tail: handing it on would double it
            lead_in = store.get_audio(org_id, session.id, recording_id, sequence - 1)
    spoken = transcriber.transcribe(audio, offset_ms=offset, hotwords=hotwords,
                                    lead_in=lead_in, final=final)
    return [TranscriptSegment(id=f"{recording_id}/{sequence}/{i}", session_id=session.id,
                              recording_id=recording_id, chunk_sequence=sequence,
                              start_ms=s.start_ms, end_ms=s.end_ms, text=s.text,
                              confidence=s.confidence)
            for i, s in enumerate(spoken)]


def finalize_recording(store, transcriber: Transcriber, *, org_id: str, session: Session,
                       recording: Recording, hotwords: Sequence[str] = ()) -> bool:
    """A stopped version's last chunk may have been transcribed before the stop was known,
    keeping its tail back for a successor that will not come: transcribe it once more as
    final. Returns True if it did."""
    chunk = store.get_chunk(org_id, session.id, recording.recording_id, recording.chunk_count)
    if chunk.final or recording.status != RecordingStatus.STOPPED:
        return False
    audio = store.get_audio(org_id, session.id, recording.recording_id, chunk.sequence)
    if audio is None:
        return False
    offset = chunk.offset_ms or 0
    segments = _transcribe(store, transcriber, org_id=org_id, session=session,
                           recording_id=recording.recording_id, sequence=chunk.sequence,
                           audio=audio, offset=offset, hotwords=hotwords, final=True)
    store.chunk_transcribed(org_id, session.id, recording.recording_id, chunk.sequence,
                            segments, offset_ms=offset, final=True, replace=True)
    return True


# -- drafting ------------------------------------------------------------------------------
def draft_note(store, clock: Clock, generator: NoteGenerator, transcriber: Transcriber, *,
               org_id: str, session: Session, recording: Recording | None,
               settings: dict | None = None) -> NoteDraft:
    """Draft from the transcript of `recording` (all chunks 1..N of that version), leaving
    out sections the session does not allow and sections a clinician protected."""
    protected = store.protected(org_id, session.id)
    allowed = [c for c in session.allowed_sections if c not in protected]
    segments = store.segments(org_id, session.id,
                              recording.recording_id if recording else None,
                              up_to_chunk=recording.chunk_count if recording else None)
    note = generator.generate(segments, allowed_sections=allowed, note_type=session.note_type,
                              settings=settings)
    sections = sendable_sections(note.sections, allowed=allowed, protected=protected)
    sections = check_sections(sections, segments)      # marks untraced terms (core/trace.py)
    known = {s.id for s in segments}
    for s in sections:
        if not set(s.segment_ids) <= known:
            raise RuleViolation("a drafted section cites transcript segments that do not exist",
                                rule="provenance", section=s.code)
    draft = NoteDraft(id=uuid.uuid4().hex, session_id=session.id, version=1,
                      recording_version=recording.version if recording else None,
                      sections=sections,
                      provenance=Provenance(transcriber=transcriber.name,
                                            transcriber_model=transcriber.model_id,
                                            generator=generator.name,
                                            generator_version=generator.version,
                                            template_id=note.template_id,
                                            template_version=note.template_version),
                      created_at=clock.now())
    return store.save_draft(org_id, draft)


def edit_draft(store, clock: Clock, *, org_id: str, draft_id: str, section_code: str,
               text: str, editor: str) -> NoteDraft:
    """A clinician's edit in the review page: a new draft version; approvals bind to it.
    Only the session's newest version can be edited; editing an approved one starts a
    correction (written later as an edit, replacement or addendum of what the EHR holds)."""
    draft, state = store.get_draft(org_id, draft_id)
    newest = store.drafts(org_id, session_id=draft.session_id)[0][0]
    if state == "superseded" or newest.id != draft.id:
        raise StateConflict(f"this draft is {state if state == 'superseded' else 'not the newest'}; "
                            "edit the newest version")
    if draft.section(section_code) is None:
        raise RuleViolation("the draft has no such section", rule="unknown_section",
                            section=section_code)
    sections = [s.model_copy(update={"text": text, "sources": [], "untraced": []})
                if s.code == section_code else s for s in draft.sections]
    new = draft.model_copy(update={"id": uuid.uuid4().hex, "sections": sections,
                                   "created_at": clock.now(), "edited_by": editor})
    return store.save_draft(org_id, new)


def decide(store, clock: Clock, *, org_id: str, draft_id: str, content_hash: str,
           approver: Identifier, role: str, decision: Decision,
           approver_name: str | None = None, reason: str | None = None) -> Approval:
    """Approve or reject the exact draft content the clinician saw (`content_hash`)."""
    draft, _ = store.get_draft(org_id, draft_id)
    if decision == Decision.REJECTED and not (reason or "").strip():
        raise RuleViolation("a rejection needs a reason", rule="reason_required")
    approval = Approval(draft_id=draft.id, draft_version=draft.version,
                        content_hash=content_hash, approver=approver,
                        approver_name=approver_name, role=role, decision=decision,
                        reason=reason, at=clock.now())
    store.decide(org_id, approval)
    return approval


# -- writes --------------------------------------------------------------------------------
def primary_encounter_key(session: Session) -> str:
    return session.encounter_ids[0].value


def _identities(session: Session) -> dict:
    return {"patient_ids": session.patient_ids, "encounter_ids": session.encounter_ids,
            "user": session.user}


def write_command(session: Session, draft: NoteDraft, *, target: str, resource_kind: str,
                  needs_approval: bool, stage_preliminary: bool,
                  approval: Approval | None = None, protected: Sequence[str] = (),
                  kind: WriteKind = WriteKind.CREATE, parent_external_id: str | None = None,
                  extra: dict | None = None) -> WriteCommand:
    """Turn a draft into one write for one target, after the rules say it may go."""
    check_no_protected(draft.sections, protected)
    state = write_approval_state(draft, approval, needs_approval=needs_approval,
                                 stage_preliminary=stage_preliminary)
    return WriteCommand(org_id=session.org_id, target=target, session_id=session.id,
                        encounter_key=primary_encounter_key(session),
                        note_version=draft.version, resource_kind=resource_kind,
                        approval_state=state, kind=kind,
                        correlation_id=session.correlation_id, draft=draft,
                        approval=approval, parent_external_id=parent_external_id,
                        extra=extra or {}, **_identities(session))


def correction_kind(previous_state: ApprovalState | None, *, policy: str) -> WriteKind:
    """What a new version of a note is at a target that already holds an earlier one: an
    edit in place while the earlier one is only staged (preliminary, not yet available), else
    a replacement or an addendum per the org's policy — never a second original."""
    if previous_state is None:
        return WriteKind.CREATE
    if previous_state == ApprovalState.PRELIMINARY:
        return WriteKind.EDIT
    return WriteKind.REPLACE if policy == "replace" else WriteKind.APPEND


def approved_write_commands(session: Session, draft: NoteDraft, approval: Approval | None, *,
                            targets: Sequence[tuple[str, str]], stage_preliminary: bool,
                            protected: Sequence[str] = (),
                            write_back_consent: bool | None = None,
                            consent_required: bool = False,
                            previous: dict[str, tuple[str, ApprovalState]] | None = None,
                            correction: str | dict[str, str] = "append") -> list[WriteCommand]:
    """On approval (or staging), one write command per configured target that needs an
    approval; `targets` are (target name, resource kind); `previous` maps a target to the
    (EHR id, approval state) of the note it already holds for this session, so a new version
    becomes a correction of it. Consent to write back is checked first: without it nothing
    is written, and the reason is visible."""
    check_consent({} if write_back_consent is None else
                  {ConsentScope.WRITE_BACK: write_back_consent}, ConsentScope.WRITE_BACK,
                  required=consent_required)
    note_type = session.note_type.code if session.note_type else None
    commands = []
    for name, resource_kind in targets:
        parent_id, parent_state = (previous or {}).get(name, (None, None))
        extra: dict = {"note_type": note_type} if note_type else {}
        if parent_id is not None:
            extra["parent_available"] = parent_state == ApprovalState.APPROVED
        commands.append(write_command(
            session, draft, target=name, resource_kind=resource_kind, needs_approval=True,
            stage_preliminary=stage_preliminary, approval=approval, protected=protected,
            kind=correction_kind(parent_state, policy=correction if isinstance(correction, str)
                                 else correction.get(name, "append")),
            parent_external_id=parent_id, extra=extra or None))
    return commands


def handoff_command(session: Session, draft: NoteDraft, recording: Recording, *,
                    target: str, protected: Sequence[str]) -> WriteCommand:
    """Sections handed back to an EHR that reviews them itself (Epic's DocumentationReady):
    keyed by the recording version, since only the newest version is documented."""
    check_no_protected(draft.sections, protected)
    return WriteCommand(org_id=session.org_id, target=target, session_id=session.id,
                        encounter_key=primary_encounter_key(session),
                        note_version=recording.version, resource_kind="DocumentationReady",
                        approval_state=ApprovalState.PRELIMINARY, kind=WriteKind.HANDOFF,
                        correlation_id=session.correlation_id, draft=draft,
                        **_identities(session),
                        extra={"external_session_id": session.external_id,
                               "recording_id": recording.recording_id,
                               "recording_version": recording.version,
                               "callback_url": session.callback_url})


def notice_command(session: Session, recording: Recording, *, target: str) -> WriteCommand:
    """A partial recording was processed (Epic's AmbientRecordingsProcessed)."""
    return WriteCommand(org_id=session.org_id, target=target, session_id=session.id,
                        encounter_key=primary_encounter_key(session),
                        note_version=recording.version,
                        resource_kind="AmbientRecordingsProcessed",
                        approval_state=ApprovalState.PRELIMINARY, kind=WriteKind.NOTICE,
                        correlation_id=session.correlation_id, **_identities(session),
                        extra={"external_session_id": session.external_id,
                               "recording_id": recording.recording_id,
                               "recording_version": recording.version,
                               "callback_url": session.callback_url})


def version_finished(store, *, org_id: str, recording: Recording, ok: bool,
                     error: str | None = None) -> None:
    store.finish_version(org_id, recording.session_id, recording.recording_id,
                         recording.version,
                         state=VersionState.DONE if ok else VersionState.FAILED, error=error)


__all__ = [n for n in dir() if not n.startswith("_")] + ["NoteSection"]
