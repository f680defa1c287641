"""The use cases: plain functions over the ports, callable from Python and tests without
Flask or a broker. The web endpoints, the worker actors and the demo all go through these.

`store` is the canonical state store, typed by the narrowest port each function needs
(core/ports.py: SessionStore, RecordingStore, DraftStore, SafeguardStore, or the whole
Store; ledger.store.SqlStore implements them all). Nothing here knows a vendor.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence

from .errors import NotFound, RuleViolation, StateConflict
from .models import (Approval, ApprovalState, CareContext, Chunk, ConsentScope, Decision,
                     Identifier, NoteDraft, NoteSection, NoteType, Protection, Provenance,
                     Recording, RecordingStatus, Session, SessionStatus,
                     TranscriptSegment, VersionState, WriteCommand, WriteKind)
from .ports import (Clock, DraftStore, JobQueue, NoteGenerator, RecordingStore,
                    SafeguardStore, SessionStore, Store, Transcriber, WriteRecorder)
from .trace import check_sections
from .rules import (check_consent, check_no_protected, check_section_codes, correction_kind,
                    sendable_sections, write_approval_state)


def _event_key(event: str, body: dict | None) -> str:
    return hashlib.sha256((event + "|" + json.dumps(body or {}, sort_keys=True,
                                                    default=str)).encode()).hexdigest()


# -- sessions ------------------------------------------------------------------------------
def open_session(store: SessionStore, clock: Clock, *, org_id: str, source: str,
                 external_id: str, user: Identifier, patient_ids: list[Identifier],
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


def complete_session(store: SessionStore, *, org_id: str, session: Session, signed: bool,
                     event: str = "complete", event_body: dict | None = None,
                     actor: str = "system") -> bool:
    status = SessionStatus.SIGNED if signed else SessionStatus.CANCELLED
    return store.close_session(org_id, session.id, status, event=event,
                               key=_event_key(event, event_body), actor=actor)


def protect_sections(store: SafeguardStore, *, org_id: str, session: Session,
                     protections: list[Protection], event: str = "protect",
                     event_body: dict | None = None) -> list[str]:
    """A clinician edited these sections: never send them again this session."""
    return store.protect(org_id, session.id, protections, event=event,
                         key=_event_key(event, event_body or
                                        [p.model_dump(mode="json") for p in protections]))


# -- audio -------------------------------------------------------------------------------
def announce_chunk(store: RecordingStore, *, org_id: str, session: Session, recording_id: str,
                   sequence: int, version: int, content_type: str = "audio/wav",
                   duration_ms: int | None = None, event: str = "chunk",
                   event_body: dict | None = None) -> bool:
    """True when the chunk is new and needs processing (enqueue it after this returns)."""
    chunk = Chunk(session_id=session.id, recording_id=recording_id, sequence=sequence,
                  version=version, content_type=content_type, duration_ms=duration_ms)
    body = event_body or chunk.model_dump(mode="json")
    return store.announce_chunk(chunk, org_id=org_id, event=event, key=_event_key(event, body))


def announce_version(store: RecordingStore, clock: Clock, *, org_id: str, session: Session,
                     recording_id: str, version: int, chunk_count: int, status: RecordingStatus,
                     event: str = "version", event_body: dict | None = None
                     ) -> tuple[Recording, bool]:
    rec = Recording(session_id=session.id, recording_id=recording_id, version=version,
                    chunk_count=chunk_count, status=status, announced_at=clock.now())
    body = event_body or rec.model_dump(mode="json", exclude={"announced_at", "state"})
    return store.announce_version(rec, org_id=org_id, event=event, key=_event_key(event, body))


def recording_available(store: RecordingStore, clock: Clock, *, org_id: str, session: Session,
                        recording_id: str, version: int, chunk_count: int,
                        status: RecordingStatus, event: str = "version",
                        event_body: dict | None = None) -> Recording | None:
    """A recording version was announced. Returns the version if it is complete now (every
    chunk may already be done: the announcement can come last, or its commit can overtake
    the last chunk's claim) — claimed exactly once; enqueue its next step after this
    returns. Every entry point (Epic's callback, the capture API, the demo) goes through
    this, so no announcement leaves a complete version waiting."""
    announce_version(store, clock, org_id=org_id, session=session, recording_id=recording_id,
                     version=version, chunk_count=chunk_count, status=status, event=event,
                     event_body=event_body)
    return store.claim_ready_version(org_id, session.id, recording_id)


def transcribe_chunk(store: Store, transcriber: Transcriber, *, org_id: str, session: Session,
                     recording_id: str, sequence: int, audio: bytes,
                     hotwords: Sequence[str] = (), consent_required: bool = False
                     ) -> Recording | None:
    """Transcribe one stored chunk and record its segments. Returns the recording version
    this chunk completed, if it did (claimed exactly once across all workers).

    Nothing waits on a neighbour: a chunk whose predecessor has not arrived yet is heard on
    its own now and flagged, and the version's final pass (`finalize_recording`) hears it
    again with its lead-in once every chunk is there."""
    check_consent(store.consents(org_id, session.id), ConsentScope.CAPTURE,
                  required=consent_required)
    chunk = store.get_chunk(org_id, session.id, recording_id, sequence)
    offset = store.chunk_offset(org_id, session.id, recording_id, sequence)
    if offset is None:
        offset = (sequence - 1) * (chunk.duration_ms or 0)
    final = store.is_last_of_stopped(org_id, session.id, recording_id, sequence)
    segments, lead_in = _transcribe(store, transcriber, org_id=org_id, session=session,
                                    recording_id=recording_id, sequence=sequence, audio=audio,
                                    offset=offset, hotwords=hotwords, final=final)
    store.chunk_transcribed(org_id, session.id, recording_id, sequence, segments,
                            offset_ms=offset, final=final, lead_in=lead_in)
    return store.claim_ready_version(org_id, session.id, recording_id)


def _lead_in(store: RecordingStore, org_id: str, session: Session, recording_id: str,
             sequence: int) -> tuple[bytes | None, bool]:
    """(the audio to hear before this chunk, whether the boundary is whole). The first
    chunk and a chunk after a final one (which kept its own tail) need none; a predecessor
    not announced or not downloaded yet leaves the boundary to the final pass."""
    if sequence == 1:
        return None, True
    try:
        previous = store.get_chunk(org_id, session.id, recording_id, sequence - 1)
    except NotFound:
        return None, False
    if previous.final:          # a final chunk kept its tail: handing it on would double it
        return None, True
    audio = store.get_audio(org_id, session.id, recording_id, sequence - 1)
    return audio, audio is not None


def _transcribe(store: RecordingStore, transcriber: Transcriber, *, org_id: str, session: Session,
                recording_id: str, sequence: int, audio: bytes, offset: int,
                hotwords: Sequence[str], final: bool) -> tuple[list[TranscriptSegment], bool]:
    lead_in, whole = _lead_in(store, org_id, session, recording_id, sequence)
    spoken = transcriber.transcribe(audio, offset_ms=offset, hotwords=hotwords,
                                    lead_in=lead_in, final=final)
    return [TranscriptSegment(id=f"{recording_id}/{sequence}/{i}", session_id=session.id,
                              recording_id=recording_id, chunk_sequence=sequence,
                              start_ms=s.start_ms, end_ms=s.end_ms, text=s.text,
                              confidence=s.confidence)
            for i, s in enumerate(spoken)], whole


def finalize_recording(store: RecordingStore, transcriber: Transcriber, *, org_id: str,
                       session: Session, recording: Recording, hotwords: Sequence[str] = ()) -> int:
    """The final pass over a complete, stopped version, so its transcript is the one an
    in-order delivery would have given, whatever order chunks arrived, downloaded and were
    transcribed in: a chunk heard without its lead-in, or at a guessed offset, is heard
    again now that every chunk is there; and the last chunk, if it was transcribed before
    the stop was known (keeping its tail back for a successor that will not come), once more
    as final. Returns how many chunks it transcribed again."""
    if recording.status != RecordingStatus.STOPPED:
        return 0
    redone = 0
    for sequence in range(1, recording.chunk_count + 1):
        chunk = store.get_chunk(org_id, session.id, recording.recording_id, sequence)
        last = sequence == recording.chunk_count
        offset = store.chunk_offset(org_id, session.id, recording.recording_id, sequence)
        offset = chunk.offset_ms or 0 if offset is None else offset
        if chunk.lead_in and chunk.offset_ms == offset and (chunk.final or not last):
            continue
        audio = store.get_audio(org_id, session.id, recording.recording_id, sequence)
        if audio is None:
            continue
        final = chunk.final or last
        segments, lead_in = _transcribe(store, transcriber, org_id=org_id, session=session,
                                        recording_id=recording.recording_id,
                                        sequence=sequence, audio=audio, offset=offset,
                                        hotwords=hotwords, final=final)
        store.chunk_transcribed(org_id, session.id, recording.recording_id, sequence,
                                segments, offset_ms=offset, final=final, replace=True,
                                lead_in=lead_in)
        redone += 1
    return redone


# -- drafting ------------------------------------------------------------------------------
def draft_note(store: Store, clock: Clock, generator: NoteGenerator, transcriber: Transcriber, *,
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


def edit_draft(store: DraftStore, clock: Clock, *, org_id: str, draft_id: str, section_code: str,
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


def decide(store: DraftStore, clock: Clock, *, org_id: str, draft_id: str, content_hash: str,
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


def approved_write_commands(session: Session, draft: NoteDraft, approval: Approval | None, *,
                            targets: Sequence[tuple[str, str]], stage_preliminary: bool,
                            protected: Sequence[str] = (),
                            write_back_consent: bool | None = None,
                            consent_required: bool = False,
                            correction: str | dict[str, str] = "append") -> list[WriteCommand]:
    """On approval (or staging), one write command per configured target that needs an
    approval; `targets` are (target name, resource kind). Each command is one of the note's
    lineage at its target: when the ledger records it, it becomes the original or a
    correction of the write before it (`correction_kind`), decided once and stored — never
    from what the ledger holds when it is sent. Consent to write back is checked first:
    without it nothing is written, and the reason is visible."""
    check_consent({} if write_back_consent is None else
                  {ConsentScope.WRITE_BACK: write_back_consent}, ConsentScope.WRITE_BACK,
                  required=consent_required)
    note_type = session.note_type.code if session.note_type else None
    commands = []
    for name, resource_kind in targets:
        policy = correction if isinstance(correction, str) else correction.get(name, "append")
        command = write_command(
            session, draft, target=name, resource_kind=resource_kind, needs_approval=True,
            stage_preliminary=stage_preliminary, approval=approval, protected=protected,
            extra={"note_type": note_type} if note_type else None)
        commands.append(command.model_copy(update={"correction_policy": str(policy)}))
    return commands


def submit_approved(store: Store, ledger: WriteRecorder, queue: JobQueue | None, *,
                    org_id: str, draft_id: str, targets: Sequence[tuple[str, str]],
                    stage_preliminary: bool, consent_required: bool,
                    correction: str | Mapping[str, str] = "append") -> list[str]:
    """Turn an approved (or, by policy, staged) draft into one ledger write per target that
    needs approval, each recorded as pending (`ledger.prepare`) before any is enqueued on
    `queue` (None: the caller runs or enqueues them). Returns the write keys. `targets` are
    (target name, resource kind) of the org's targets that need an approval — the caller
    asks its adapter registry; `correction` is the org's policy per target.

    Calling it again for the same draft (a double-click, a retried request, many threads)
    returns the same keys and records nothing new: each write's identity, kind and parent
    were decided when it was first recorded."""
    draft, _state = store.get_draft(org_id, draft_id)
    session = store.get_session(org_id, draft.session_id)
    commands = approved_write_commands(
        session, draft, store.approval(org_id, draft_id), targets=targets,
        stage_preliminary=stage_preliminary,
        protected=list(store.protected(org_id, session.id)),
        write_back_consent=store.consents(org_id, session.id).get(ConsentScope.WRITE_BACK),
        consent_required=consent_required,
        correction=correction if isinstance(correction, str) else dict(correction))
    keys = [ledger.prepare(c) for c in commands]
    if queue is not None:
        for key in keys:
            queue.enqueue("execute_write", org_id, key)
    return keys


def handoff_command(session: Session, draft: NoteDraft, recording: Recording, *,
                    target: str, resource_kind: str, protected: Sequence[str]) -> WriteCommand:
    """Sections handed back to an EHR that reviews them itself (the opening plugin's
    `handoff_kind`): keyed by the recording version, since only the newest version is
    documented."""
    check_no_protected(draft.sections, protected)
    return WriteCommand(org_id=session.org_id, target=target, session_id=session.id,
                        encounter_key=primary_encounter_key(session),
                        note_version=recording.version, resource_kind=resource_kind,
                        approval_state=ApprovalState.PRELIMINARY, kind=WriteKind.HANDOFF,
                        correlation_id=session.correlation_id, draft=draft,
                        **_identities(session),
                        extra={"external_session_id": session.external_id,
                               "recording_id": recording.recording_id,
                               "recording_version": recording.version,
                               "callback_url": session.callback_url})


def notice_command(session: Session, recording: Recording, *, target: str,
                   resource_kind: str) -> WriteCommand:
    """A partial recording was processed (the opening plugin's `notice_kind`)."""
    return WriteCommand(org_id=session.org_id, target=target, session_id=session.id,
                        encounter_key=primary_encounter_key(session),
                        note_version=recording.version,
                        resource_kind=resource_kind,
                        approval_state=ApprovalState.PRELIMINARY, kind=WriteKind.NOTICE,
                        correlation_id=session.correlation_id, **_identities(session),
                        extra={"external_session_id": session.external_id,
                               "recording_id": recording.recording_id,
                               "recording_version": recording.version,
                               "callback_url": session.callback_url})


def version_finished(store: RecordingStore, *, org_id: str, recording: Recording, ok: bool,
                     error: str | None = None) -> None:
    store.finish_version(org_id, recording.session_id, recording.recording_id,
                         recording.version,
                         state=VersionState.DONE if ok else VersionState.FAILED, error=error)


__all__ = [n for n in dir() if not n.startswith("_")] + ["NoteSection"]
