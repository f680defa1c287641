"""Request and response bodies of the capture API: pydantic models, the one source of both
validation and the OpenAPI document (openapi.py). Identifiers keep their types
(core.models.Identifier); lengths are bounded by the ledger's columns."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from chartbridge.core.models import SECTION_CODES

Text64 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64,
                                          pattern=r"^[^\x00-\x1f]+$")]
Text128 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128,
                                           pattern=r"^[^\x00-\x1f]+$")]
SectionCode = Literal[tuple(SECTION_CODES)]          # type: ignore[valid-type]
Hash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Identifier(Body):
    """An identifier exactly as the capture client knows it: `type` is its own word (MRN,
    FHIR, CSN, a practice's own ...), `system` the assigning authority."""

    value: Text128
    type: Text64
    system: Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00-\x1f]*$")] | None = None


class CareContext(Body):
    department_id: Text64 | None = None
    specialty: Text64 | None = None
    visit_type: Text64 | None = None


class NoteType(Body):
    code: Text64
    system: Text64 = "LOINC"
    name: Text128 | None = None


class Consent(Body):
    capture: bool | None = None
    write_back: bool | None = None
    secondary_use: bool | None = None


class SessionCreate(Body):
    external_id: Text128 = Field(description="the client's own id for this visit; the same "
                                 "id with the same context returns the stored session")
    user: Identifier
    patient_ids: Annotated[list[Identifier], Field(min_length=1, max_length=20)]
    encounter_ids: Annotated[list[Identifier], Field(min_length=1, max_length=20)]
    note_type: NoteType | None = None
    sections: Annotated[list[SectionCode], Field(min_length=1, max_length=50)] | None = None
    care_context: CareContext | None = None
    consent: Consent = Consent()


class RecordingStatusBody(Body):
    status: Literal["Paused", "Stopped"]
    chunk_count: Annotated[int, Field(ge=1, le=10_000)]


class Edit(Body):
    section: SectionCode
    text: Annotated[str, StringConstraints(min_length=1, max_length=20_000)]


class ApprovalBody(Body):
    decision: Literal["approved", "rejected"]
    content_hash: Hash
    reason: Annotated[str, StringConstraints(max_length=2000)] | None = None


# -- responses -----------------------------------------------------------------------------
class ChunkOut(BaseModel):
    recording_version: int
    sequence: int
    state: str
    duration_ms: int | None = None
    error: str | None = None


class ChunkAccepted(BaseModel):
    recording_version: int
    sequence: int
    duration_ms: int
    source_format: str
    sha256: Hash                              # of the audio as stored (WAV)


class RecordingOut(BaseModel):
    version: int
    chunk_count: int
    status: str
    state: str
    error: str | None = None


class Segment(BaseModel):
    id: str
    start_ms: int
    end_ms: int


class SectionOut(BaseModel):
    code: str
    title: str | None = None
    text: str
    segments: list[Segment]


class DraftProvenance(BaseModel):
    transcriber: str
    transcriber_model: str
    generator: str
    generator_version: str
    template_id: str
    template_version: str


class DraftOut(BaseModel):
    id: str
    session_id: str
    version: int
    recording_version: int | None = None
    state: str
    content_hash: Hash
    sections: list[SectionOut]
    provenance: DraftProvenance
    created_at: datetime


class DraftSummary(BaseModel):
    version: int
    state: str
    content_hash: Hash


class Approver(BaseModel):
    id: Identifier
    name: str | None = None
    role: str


class ApprovalOut(BaseModel):
    draft_version: int
    decision: str
    content_hash: Hash
    approver: Approver
    writes: list[str]


class WriteOut(BaseModel):
    target: str
    resource_kind: str
    kind: str
    status: Literal["pending", "in_flight", "written", "failed", "stale",
                    "needs_reconciliation", "cancelled"]
    draft_version: int | None = None
    external_id: str | None = None
    reason: str | None = None
    attempts: int
    updated_at: datetime


class WritesOut(BaseModel):
    session_id: str
    writes: list[WriteOut]


class SessionOut(BaseModel):
    id: str
    external_id: str
    status: str
    user: Identifier
    patient_ids: list[Identifier]
    encounter_ids: list[Identifier]
    note_type: NoteType | None = None
    sections: list[str]
    created_at: datetime
    recordings: list[RecordingOut]
    chunks: list[ChunkOut]
    drafts: list[DraftSummary]
    writes: list[WriteOut]


class Token(BaseModel):
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int
    scope: str


class TokenRequest(BaseModel):
    """application/x-www-form-urlencoded (RFC 6749 4.4, RFC 7523 2.2)."""

    grant_type: Literal["client_credentials"]
    client_assertion_type: Literal["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
    client_assertion: str = Field(description="a JWT signed with a key of the client's JWKS: "
                                  "iss = sub = client_id, aud = this token endpoint's URL, "
                                  "exp within 5 minutes, a unique jti")
    scope: str | None = Field(None, description="space-separated: capture read approve")


class OAuthError(BaseModel):
    error: str
    error_description: str | None = None


class Error(BaseModel):
    """Every refusal of the API: a code, a readable detail (never PHI), and the field or
    header at fault when there is one."""

    error: str
    detail: str
    field: str | None = None
