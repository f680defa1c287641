"""The canonical domain: vendor-free, validated, typed.

Every adapter maps its vendor's payloads to and from these. Identifiers are kept exactly as
a source sent them, each with its type; nothing is flattened to "the MRN".
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]

# LOINC section codes the engine knows, with their display names.
SECTION_CODES: dict[str, str] = {
    "10164-2": "History of present illness",
    "10187-3": "Review of systems",
    "29545-1": "Physical findings",
    "30954-2": "Relevant diagnostic tests/laboratory data",
    "51847-2": "Assessment and plan",
    "51848-0": "Assessment",
    "18776-5": "Plan of care",
}


class Model(BaseModel):
    model_config = ConfigDict(frozen=False, extra="forbid", validate_assignment=True)


class Identifier(Model):
    """An identifier as its source sent it: `type` is the source's own word (MRN, FHIR,
    CSN, EXTERNAL, athena-patient...), `system` the assigning authority if known."""

    value: NonEmpty
    type: NonEmpty
    system: str | None = None


def find_identifier(ids: list[Identifier], *types: str) -> Identifier | None:
    wanted = {t.upper() for t in types}
    return next((i for i in ids if i.type.upper() in wanted), None)


class CareContext(Model):
    department_id: str | None = None
    specialty: str | None = None
    visit_type: str | None = None


class NoteType(Model):
    code: NonEmpty
    system: str = "LOINC"
    name: str | None = None


class SessionSource(StrEnum):
    EPIC_HAIKU = "epic_haiku"
    API = "api"


class SessionStatus(StrEnum):
    OPEN = "open"
    SIGNED = "signed"
    CANCELLED = "cancelled"


class RecordingStatus(StrEnum):
    PAUSED = "Paused"
    STOPPED = "Stopped"


class ChunkState(StrEnum):
    ANNOUNCED = "announced"
    TRANSCRIBED = "transcribed"
    FAILED = "failed"


class VersionState(StrEnum):
    """Where one announced recording version is in its processing."""

    WAITING = "waiting"          # announced, chunks still being processed
    READY = "ready"              # every chunk 1..N processed; next step claimed once
    DONE = "done"                # next step (processed/documented) finished
    SUPERSEDED = "superseded"    # a newer version was announced before this one finished
    FAILED = "failed"


class Protection(Model):
    """A clinician edited this section in the EHR; it is never sent again this session."""

    section: NonEmpty
    edited_by: Identifier | None = None
    edited_at: datetime | None = None


class Session(Model):
    id: str                                   # engine id (uuid hex)
    org_id: NonEmpty
    source: SessionSource
    external_id: NonEmpty                     # the vendor's session id (Epic SessionID)
    user: Identifier
    patient_ids: list[Identifier] = Field(min_length=1)
    encounter_ids: list[Identifier] = Field(min_length=1)
    callback_url: str | None = None
    care_context: CareContext | None = None
    note_type: NoteType | None = None
    allowed_sections: list[str]
    status: SessionStatus = SessionStatus.OPEN
    correlation_id: str
    created_at: datetime


class Recording(Model):
    """One announced recording version: version N holds chunks 1..chunk_count."""

    session_id: str
    recording_id: NonEmpty
    version: int = Field(ge=1)
    chunk_count: int = Field(ge=0)
    status: RecordingStatus
    state: VersionState = VersionState.WAITING
    error: str | None = None                  # why the version failed, in plain words
    announced_at: datetime


class Chunk(Model):
    session_id: str
    recording_id: NonEmpty
    sequence: int = Field(ge=1)
    version: int = Field(ge=1)                # the version it was announced with
    content_type: str = "audio/wav"
    duration_ms: int | None = None
    offset_ms: int | None = None              # start within the whole recording
    state: ChunkState = ChunkState.ANNOUNCED
    final: bool = False                       # transcribed as a recording's last chunk
    lead_in: bool = False                     # transcribed with the audio before it (or
                                              # needing none); False: the final pass redoes it
    attempts: int = 0
    error: str | None = None                  # a reason a person can read; never PHI


class TranscriptSegment(Model):
    id: str                                   # stable: "<recording>/<chunk>/<n>"
    session_id: str
    recording_id: str
    chunk_sequence: int
    start_ms: int
    end_ms: int
    text: str
    confidence: float                         # faster-whisper avg_logprob


class SpeakerRole(StrEnum):
    """Who said a statement, as the drafter inferred it (the audio has no speaker labels)."""

    CLINICIAN = "clinician"
    PATIENT = "patient"
    UNKNOWN = "unknown"


class StatementSource(Model):
    """Provenance of one drafted statement: the segments it came from and who said it."""

    text: str                                 # the statement as it reads in the section
    segment_ids: list[str] = Field(default_factory=list)
    speaker: SpeakerRole = SpeakerRole.UNKNOWN


class NoteSection(Model):
    code: NonEmpty                            # canonical LOINC section code
    title: str | None = None
    text: str
    segment_ids: list[str] = Field(default_factory=list)
    # Optional provenance (absent in drafts stored before they existed):
    sources: list[StatementSource] = Field(default_factory=list)   # per statement
    untraced: list[str] = Field(default_factory=list)  # terms the cited segments lack


class Provenance(Model):
    transcriber: str
    transcriber_model: str
    generator: str
    generator_version: str
    template_id: str
    template_version: str


class NoteDraft(Model):
    id: str
    session_id: str
    version: int = Field(ge=1)               # the draft's own version within the session
    recording_version: int | None = None
    sections: list[NoteSection]
    provenance: Provenance
    created_at: datetime
    edited_by: str | None = None             # set when a clinician's edit made this version

    def content_hash(self) -> str:
        return draft_content_hash(self.sections)

    def section(self, code: str) -> NoteSection | None:
        return next((s for s in self.sections if s.code == code), None)


def draft_content_hash(sections: list[NoteSection]) -> str:
    """The hash an approval binds to: section codes and text, in order."""
    canon = [{"code": s.code, "text": s.text} for s in sections]
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()


class Decision(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"


class Approval(Model):
    draft_id: str
    draft_version: int
    content_hash: str
    approver: Identifier
    approver_name: str | None = None
    role: str
    decision: Decision
    reason: str | None = None
    at: datetime


class ConsentScope(StrEnum):
    CAPTURE = "capture"
    WRITE_BACK = "write_back"
    SECONDARY_USE = "secondary_use"


class Consent(Model):
    session_id: str
    scope: ConsentScope
    granted: bool
    recorded_by: str | None = None
    at: datetime


class ApprovalState(StrEnum):
    APPROVED = "approved"
    PRELIMINARY = "preliminary"


class WriteKind(StrEnum):
    """What a write does at the EHR, from the canonical point of view."""

    CREATE = "create"          # first document for this draft lineage
    EDIT = "edit"              # change a not-yet-available document in place
    REPLACE = "replace"        # supersede an available document
    APPEND = "append"          # addendum to an available document
    CANCEL = "cancel"          # withdraw a not-yet-available document
    HANDOFF = "handoff"        # hand sections back to the EHR (Epic DocumentationReady)
    NOTICE = "notice"          # a notification with no document (AmbientRecordingsProcessed)


class WriteCommand(Model):
    """One outbound write, enough for an adapter to render its vendor payload.

    Its identity (the idempotency key) is decided once, from immutable facts — org, target,
    session, the draft (or recording version) and approval state — and never from what the
    ledger holds when it is sent. Where a write is one of a note's lineage at a target
    (`correction_policy` set), the ledger decides its kind and parent once, when it records
    it, and stores them with it (`WriteLedger.prepare`)."""

    org_id: str
    target: str                # configured target name (an adapter name)
    session_id: str
    encounter_key: str         # the session's primary encounter identifier value
    note_version: int          # draft version (or recording version for Epic)
    resource_kind: str         # "DocumentReference", "MDM", "clinicaldocument", ...
    approval_state: ApprovalState
    kind: WriteKind = WriteKind.CREATE
    correlation_id: str
    # the session's identifiers, every one kept with its type (adapters pick theirs)
    patient_ids: list[Identifier] = Field(default_factory=list)
    encounter_ids: list[Identifier] = Field(default_factory=list)
    user: Identifier | None = None
    draft: NoteDraft | None = None
    approval: Approval | None = None
    # "append" / "replace": this write is one of the note's lineage at this target; the
    # ledger decides kind and parent when it records it. None: kind and parent are as given.
    correction_policy: str | None = None
    parent_key: str | None = None           # the ledger write this one corrects, if any
    parent_external_id: str | None = None   # the EHR id this write corrects, if any
    parent_version: str | None = None       # the EHR version the engine's own parent write got
    extra: dict = Field(default_factory=dict)

    # What the ledger decides or fills in: not part of "the same request".
    LINEAGE_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"correlation_id", "kind", "parent_key", "parent_external_id", "parent_version"})

    def request_hash(self) -> str:
        """What "the same request" means: everything but the correlation id and what the
        ledger decides about the write's place in its lineage (kind, parent)."""
        body = self.model_dump(mode="json", exclude=set(self.LINEAGE_FIELDS)
                               if self.correction_policy else {"correlation_id"})
        if self.correction_policy:
            body["extra"] = {k: v for k, v in body["extra"].items() if k != "parent_available"}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def idempotency_key(self) -> str:
        # A lineage write's kind is decided by the ledger, so it is not part of its identity;
        # any other write's kind is (a cancel and a create of the same draft differ).
        intent = "note" if self.correction_policy else str(self.kind)
        if self.draft is not None and self.kind == WriteKind.HANDOFF:
            # a version drafted anew (a section edited before its handoff was confirmed)
            # is a new handoff of that recording version
            intent += f":draft{self.draft.version}"
        return idempotency_key(self.org_id, self.target, self.session_id, self.encounter_key,
                               self.note_version, self.resource_kind, self.approval_state,
                               intent)


def idempotency_key(org_id: str, target: str, session_id: str, encounter_key: str,
                    note_version: int, resource_kind: str, approval_state: str,
                    intent: str = "create") -> str:
    """Deterministic, org-scoped, PHI-free (the material is hashed, never shown), and made
    only of facts that never change for one write: the session and the draft version (or,
    for Epic, the recording version) within it — so a second session in the same encounter
    is a new write, and the same approval sent again is the same one."""
    material = "|".join([org_id, target, session_id, encounter_key, str(note_version),
                         resource_kind, str(approval_state), str(intent)])
    digest = hashlib.sha256(material.encode()).hexdigest()[:32]
    return f"{org_id}:{target}:{digest}"


class WriteStatus(StrEnum):
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    SUCCEEDED = "succeeded"
    FAILED = "failed"                         # permanent: recorded with its reason
    STALE = "stale"                           # the EHR's copy changed since the engine wrote it:
                                              # nothing was overwritten; a person decides
    NEEDS_RECONCILIATION = "needs_reconciliation"
    CANCELLED = "cancelled"                   # an operator stopped it, with a reason (audited)


class WriteOutcome(Model):
    """What an adapter reports after a send or a reconcile look-up."""

    external_id: str | None = None            # EHR resource id / document id / MSH-10
    external_version: str | None = None
    detail: dict = Field(default_factory=dict)   # vendor facts worth keeping (ACK code...)
