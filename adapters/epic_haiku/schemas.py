"""Epic's wire format: the ONLY module that knows Epic's field spellings (PascalCase).

Modelled on /work/shared/vendors/epic-haiku-ambient.md. When a site's real specification
spells a field differently, this module (and the simulator) change; nothing else does.

Inbound events are parsed with `parse_event(name, raw)`, which turns any problem into an
`InputError` naming the first bad field by its Epic spelling (`PatientIDs[0].ID`), never
echoing a value (values are PHI). Unknown fields are ignored (Epic may add some).
Outbound bodies are rendered by `render(model)` to deterministic bytes: the same model
always gives the same bytes, which is what makes a resend of DocumentationReady safe
(Epic keeps one copy of an identical body).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StrictInt,
                      StringConstraints, ValidationError)

from chartbridge.core import bounds
from chartbridge.core.errors import InputError, TooLarge
from chartbridge.core.models import CareContext as CanonicalCareContext
from chartbridge.core.models import Identifier, Protection
from chartbridge.core.models import NoteType as CanonicalNoteType


# Sessions this plugin opens carry its registry name as their source.
SOURCE = "epic_haiku"


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


# A non-blank string, kept exactly as sent (identifiers are compared byte for byte).
NonEmpty = Annotated[str, StringConstraints(min_length=1), AfterValidator(_not_blank)]
# Integers land in INTEGER columns (PostgreSQL int4): nothing past 2^31 - 1 is accepted.
PositiveInt = Annotated[StrictInt, Field(ge=1, le=bounds.INT32_MAX)]

# String sizes follow the columns they are stored in (ledger/tables.py); the rest are
# generous bounds for values kept inside JSON documents. NUL characters, lone surrogates,
# nesting and list sizes are refused earlier, by `chartbridge.core.bounds`.
SESSION_ID_MAX = 128         # sessions.external_id
RECORDING_ID_MAX = 128       # recordings.recording_id, chunks.recording_id
CONTENT_TYPE_MAX = 64        # chunks.content_type
SECTION_ID_MAX = 32          # protected_sections.section
IDENTIFIER_MAX = 256         # an ID or Type inside the session document
URL_MAX = 2048               # CallbackURL
TEXT_MAX = 256               # CareContext / NoteType names


def _bounded(n: int):
    return Annotated[NonEmpty, StringConstraints(max_length=n)]


SessionIDStr = _bounded(SESSION_ID_MAX)
RecordingIDStr = _bounded(RECORDING_ID_MAX)
SectionIDStr = _bounded(SECTION_ID_MAX)
IdentifierStr = _bounded(IDENTIFIER_MAX)
ShortText = Annotated[str, StringConstraints(max_length=TEXT_MAX)]


def _absolute_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    return value


HttpUrl = Annotated[NonEmpty, StringConstraints(max_length=URL_MAX),
                   AfterValidator(_absolute_http_url)]


class _Inbound(BaseModel):
    """Epic -> engine: unknown fields ignored, every declared field type-checked."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class _Outbound(BaseModel):
    """engine -> Epic: only declared fields, in declared order."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- inbound

class EpicID(_Inbound):
    ID: IdentifierStr
    Type: IdentifierStr


class EpicCareContext(_Inbound):
    DepartmentID: ShortText | None = None
    Specialty: ShortText | None = None
    VisitType: ShortText | None = None


class EpicNoteType(_Inbound):
    Code: _bounded(64)
    System: _bounded(TEXT_MAX) = "LOINC"
    Name: ShortText | None = None


class AmbientSessionBegin(_Inbound):
    """The session contract; authoritative for the whole session."""

    SessionID: SessionIDStr
    UserID: EpicID
    PatientIDs: Annotated[list[EpicID], Field(min_length=1)]
    EncounterIDs: Annotated[list[EpicID], Field(min_length=1)]
    CallbackURL: HttpUrl
    CareContext: EpicCareContext | None = None
    NoteType: EpicNoteType | None = None
    AllowedNoteSections: Annotated[list[SectionIDStr], Field(min_length=1)] | None = None


class RecordingChunkAvailable(_Inbound):
    SessionID: SessionIDStr
    RecordingID: RecordingIDStr
    RecordingVersion: PositiveInt
    ChunkSequence: PositiveInt           # starts at 1 within a recording
    ContentType: _bounded(CONTENT_TYPE_MAX) = "audio/wav"   # assumed WAV when absent
    DurationMs: Annotated[StrictInt, Field(ge=0, le=bounds.INT32_MAX)] | None = None


class RecordingAvailable(_Inbound):
    SessionID: SessionIDStr
    RecordingID: RecordingIDStr
    RecordingVersion: PositiveInt
    ChunkCount: PositiveInt              # version N holds chunks 1..ChunkCount
    Status: Literal["Paused", "Stopped"]


class EditedSection(_Inbound):
    SectionID: SectionIDStr
    EditedBy: EpicID | None = None
    EditedInstant: AwareDatetime | None = None


class DocumentationUpdated(_Inbound):
    SessionID: SessionIDStr
    Sections: Annotated[list[EditedSection], Field(min_length=1)]


class AmbientSessionComplete(_Inbound):
    SessionID: SessionIDStr
    Reason: Literal["Signed", "Cancelled"]


EVENTS: dict[str, type[_Inbound]] = {
    "AmbientSessionBegin": AmbientSessionBegin,
    "RecordingChunkAvailable": RecordingChunkAvailable,
    "RecordingAvailable": RecordingAvailable,
    "DocumentationUpdated": DocumentationUpdated,
    "AmbientSessionComplete": AmbientSessionComplete,
}

# The answer to an event that was stored (or already stored).
ACCEPTED = {"Status": "Accepted"}


def error_body(code: str, detail: str) -> dict[str, str]:
    """Epic's error body shape. `detail` must already be PHI-free."""
    return {"Error": code, "Detail": detail}


# --------------------------------------------------------------------------- outbound

class GetAmbientRecordingChunk(_Outbound):
    SessionID: NonEmpty
    RecordingID: NonEmpty
    RecordingVersion: PositiveInt        # the newest version the engine knows of
    ChunkSequence: PositiveInt


class AmbientRecordingsProcessed(_Outbound):
    SessionID: NonEmpty
    RecordingVersion: PositiveInt


class DocumentationSection(_Outbound):
    SectionID: NonEmpty
    ContentType: Literal["text/plain"] = "text/plain"
    Text: str                            # the section's text, as generated


class DocumentationReady(_Outbound):
    SessionID: NonEmpty
    RecordingVersion: PositiveInt
    GeneratedInstant: str                # ISO 8601 with offset (see `instant`)
    Sections: Annotated[list[DocumentationSection], Field(min_length=1)]


def instant(value: datetime) -> str:
    """An ISO 8601 instant with offset, to the second, in UTC: stable whatever the
    database handed back (aware or naive-UTC, with or without microseconds)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="seconds")


def render(body: _Outbound) -> bytes:
    """Deterministic JSON bytes: declared field order, no whitespace, UTF-8."""
    return json.dumps(body.model_dump(mode="json"), ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


# --------------------------------------------------------------------------- parsing

def epic_path(loc: Iterable[Any]) -> str:
    """('PatientIDs', 0, 'ID') -> 'PatientIDs[0].ID'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def _describe(err: dict[str, Any]) -> str:
    """A PHI-free reason: built from the error type and pydantic's message, never the input."""
    kind = err.get("type", "")
    if kind == "missing":
        return "is required"
    if kind in ("string_too_short", "too_short"):
        return "must not be empty"
    if kind == "string_too_long":
        return f"is longer than {err.get('ctx', {}).get('max_length')} characters"
    if kind == "less_than_equal":
        return f"is out of range (at most {err.get('ctx', {}).get('le')})"
    if kind in ("string_type", "int_type", "list_type", "model_type", "dict_type",
                "literal_error", "greater_than_equal", "timezone_aware", "datetime_parsing",
                "datetime_type", "datetime_from_date_parsing"):
        return f"is invalid: {err.get('msg', 'wrong type')}"
    if kind == "value_error":
        return "is invalid: " + str(err.get("ctx", {}).get("error", "bad value"))
    return "is invalid"


def input_error(exc: ValidationError, *, prefix: str = "") -> InputError:
    """The FIRST bad field of a pydantic error, by its Epic spelling, without its value."""
    errors = exc.errors(include_input=False, include_url=False)
    first = errors[0] if errors else {"loc": (), "type": ""}
    field = epic_path(first["loc"])
    if prefix:
        field = f"{prefix}.{field}" if field != "body" else prefix
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return InputError(f"{field} {_describe(first)}{more}", field=field)


# Counted lists: how many entries each may hold comes from the org's limits.
_IDENTIFIER_LISTS = ("PatientIDs", "EncounterIDs")
_SECTION_LISTS = ("AllowedNoteSections", "Sections")


def parse_event(event: str, raw: bytes | str | dict[str, Any], limits: Any = None) -> _Inbound:
    """Validate an inbound event body. Raises InputError (-> Epic's 400) naming the field, or
    TooLarge (-> 413) past a limit. `limits` is the org's `targets.epic_haiku.limits`
    (EpicLimits); absent, the documented defaults."""
    model = EVENTS.get(event)
    if model is None:
        raise InputError("unknown Ambient event", field="event")
    if limits is None:
        from .config import EpicLimits
        limits = EpicLimits()
    json_limits = bounds.JsonLimits(max_bytes=limits.max_body_bytes, max_depth=limits.max_depth,
                                    max_items=max(limits.max_identifiers, limits.max_sections, 16))
    if isinstance(raw, (bytes, str)):
        raw = bounds.load_json(raw, json_limits)
    else:
        bounds.check_value(raw, json_limits)
    if not isinstance(raw, dict):
        raise InputError("body must be a JSON object", field="body")
    for name, most in ([(n, limits.max_identifiers) for n in _IDENTIFIER_LISTS]
                       + [(n, limits.max_sections) for n in _SECTION_LISTS]):
        value = raw.get(name)
        if isinstance(value, list) and len(value) > most:
            raise TooLarge(f"{name} has more than {most} entries", field=name, limit=most)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise input_error(exc) from None


def parse(model: type[_Inbound], raw: dict[str, Any]) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise input_error(exc) from None


# --------------------------------------------------------------------------- to canonical

def _identifier(i: EpicID) -> Identifier:
    return Identifier(value=i.ID, type=i.Type)


def to_canonical_begin(body: AmbientSessionBegin | dict[str, Any], org_id: str,
                       default_sections: Iterable[str]) -> dict[str, Any]:
    """The canonical fields of a session (the keyword arguments of core's open_session).
    Every identifier is kept as sent, with its type, in order; none is dropped."""
    if not isinstance(body, AmbientSessionBegin):
        body = parse(AmbientSessionBegin, body)
    care = body.CareContext
    note = body.NoteType
    return {
        "org_id": org_id,
        "source": SOURCE,
        "external_id": body.SessionID,
        "user": _identifier(body.UserID),
        "patient_ids": [_identifier(i) for i in body.PatientIDs],
        "encounter_ids": [_identifier(i) for i in body.EncounterIDs],
        "callback_url": body.CallbackURL,
        "care_context": CanonicalCareContext(department_id=care.DepartmentID, specialty=care.Specialty,
                                    visit_type=care.VisitType) if care else None,
        "note_type": CanonicalNoteType(code=note.Code, system=note.System, name=note.Name) if note else None,
        "allowed_sections": list(body.AllowedNoteSections if body.AllowedNoteSections is not None
                                 else default_sections),
    }


def to_protections(body: DocumentationUpdated,
                   section_code: Callable[[str], str] | None = None) -> list[Protection]:
    """Edited sections as canonical protections. `section_code` maps the site's Epic
    SectionID back to the LOINC section code (identity when the site uses LOINC)."""
    out = []
    for s in body.Sections:
        code = section_code(s.SectionID) if section_code else s.SectionID
        out.append(Protection(section=code,
                              edited_by=_identifier(s.EditedBy) if s.EditedBy else None,
                              edited_at=s.EditedInstant))
    return out
