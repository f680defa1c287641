"""Canonical WriteCommand -> athenaOne clinical document form fields, and back.

The one module that knows athena's field names for the clinical document upload
(POST /v1/{practiceid}/patients/{patientid}/documents/clinicaldocument, form-encoded):
departmentid, documentsubclass, documentdata | attachmentcontents + attachmenttype,
originalfilename, providerid, clinicalproviderid, observationdate (mm/dd/yyyy),
observationtime (hh24:mi), internalnote, autoclose, priority.

Rendering is deterministic: the same command gives the same fields, byte for byte (times
come from the draft, never from now()).
"""
from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any, Callable
from zoneinfo import ZoneInfo

from chartbridge.core.errors import ChartbridgeError, PermanentError
from chartbridge.core.models import (
    SECTION_CODES,
    ApprovalState,
    Decision,
    Identifier,
    WriteCommand,
    WriteKind,
    find_identifier,
)

from .config import AthenaOneConfig
from .pdf import render_pdf

# Identifier types (Identifier.type, compared case-insensitively) that carry athena ids.
# One spelling each; documented in docs/vendors/athenaone.md.
PATIENT_ID_TYPE = "athena-patient"
DEPARTMENT_ID_TYPE = "athena-department"
PROVIDER_ID_TYPE = "athena-provider"

WRITE_ID_PREFIX = "CBW-"
INTERNALNOTE_LABEL = "Chartbridge write id"


def write_id(command: WriteCommand) -> str:
    """The Chartbridge write id filed in `internalnote`: derived from the idempotency key,
    so a resend of the same write carries the same id (and reconcile can find it)."""
    return WRITE_ID_PREFIX + hashlib.sha256(command.idempotency_key().encode()).hexdigest()[:24]


def internalnote(command: WriteCommand) -> str:
    return f"{INTERNALNOTE_LABEL}: {write_id(command)} (AI-drafted, clinician-approved)"


@dataclass(frozen=True)
class Target:
    """Where the document goes at athena (ids only; never logged with values)."""

    practice_id: str
    patient_id: str
    department_id: str


def _digits(ident: Identifier | None, what: str) -> str | None:
    if ident is None:
        return None
    value = ident.value.strip()
    if not value.isdigit():
        # athena ids are integers; never echo the value
        raise PermanentError(f"the {what} identifier ({ident.type}) is not an athena id "
                             f"(digits expected)", vendor_code="invalid_identifier")
    return value


def target_of(command: WriteCommand, cfg: AthenaOneConfig) -> Target:
    """Patient from the command's athena-patient identifier; department from an
    athena-department identifier (encounter or patient ids), else the org config."""
    patient = _digits(find_identifier(command.patient_ids, PATIENT_ID_TYPE), "patient")
    if patient is None:
        raise PermanentError(f"the session has no {PATIENT_ID_TYPE} identifier, so the "
                             f"athena patient id is missing", vendor_code="missing_identifier",
                             field="patient_ids")
    department = _digits(find_identifier(command.encounter_ids + command.patient_ids,
                                         DEPARTMENT_ID_TYPE), "department")
    return Target(practice_id=cfg.practice_id, patient_id=patient,
                  department_id=department or cfg.department_id)


def _section_title(code: str, given: str | None, titles: Callable[[str], str] | None) -> str:
    if titles is not None:
        try:
            return titles(code)
        except ChartbridgeError:        # a code the table lacks: fall back below
            pass
    return given or SECTION_CODES.get(code) or code


def note_text(command: WriteCommand, titles: Callable[[str], str] | None = None) -> str:
    """The note as plain text: each section's title on its own line, then its text."""
    assert command.draft is not None
    parts = []
    for s in command.draft.sections:
        parts.append(f"{_section_title(s.code, s.title, titles)}:\n{s.text.strip()}")
    return "\n\n".join(parts) + "\n"


def _check_writable(command: WriteCommand) -> None:
    if command.kind != WriteKind.CREATE:
        raise PermanentError(f"the athenaone target files new documents only (kind "
                             f"{command.kind} is not supported)", vendor_code="unsupported_kind")
    if command.approval_state != ApprovalState.APPROVED:
        raise PermanentError("the athenaone target files approved notes only",
                             vendor_code="not_approved")
    draft, approval = command.draft, command.approval
    if draft is None or not draft.sections:
        raise PermanentError("the write has no note draft (or the draft has no sections)",
                             vendor_code="missing_draft", field="draft")
    if approval is None or approval.decision != Decision.APPROVED:
        raise PermanentError("the write has no approval", vendor_code="not_approved",
                             field="approval")
    if approval.draft_id != draft.id or approval.content_hash != draft.content_hash():
        raise PermanentError("the approval does not match this draft's content",
                             vendor_code="approval_mismatch", field="approval")


def render_form(command: WriteCommand, cfg: AthenaOneConfig, *, subclass: str,
                timezone: str, titles: Callable[[str], str] | None = None) -> dict[str, str]:
    """The form fields of the upload, in a fixed order."""
    _check_writable(command)
    assert command.draft is not None and command.approval is not None
    target = target_of(command, cfg)
    provider = _digits(command.approval.approver
                       if command.approval.approver.type.lower() == PROVIDER_ID_TYPE else None,
                       "approver") or cfg.provider_id
    seen = command.draft.created_at.astimezone(ZoneInfo(timezone))
    text = note_text(command, titles)
    form: dict[str, str] = {"departmentid": target.department_id,
                            "documentsubclass": subclass}
    if cfg.payload == "pdf":
        try:
            pdf = render_pdf(text, title="Clinical note")
        except ValueError as exc:
            raise PermanentError(f"the note cannot be rendered as PDF ({exc}); "
                                 f"use payload: text", vendor_code="pdf_render") from None
        form["attachmentcontents"] = base64.b64encode(pdf).decode("ascii")
        form["attachmenttype"] = "PDF"
        form["originalfilename"] = f"chartbridge-note-{write_id(command)}"
    else:
        form["documentdata"] = text
    if provider:
        form["providerid"] = provider
    if cfg.clinical_provider_id:
        form["clinicalproviderid"] = cfg.clinical_provider_id
    form["observationdate"] = seen.strftime("%m/%d/%Y")
    form["observationtime"] = seen.strftime("%H:%M")
    form["internalnote"] = internalnote(command)
    form["autoclose"] = "true" if cfg.autoclose else "false"
    form["priority"] = str(cfg.priority)
    return form


def find_written(documents: list[dict[str, Any]], wid: str) -> dict[str, Any] | None:
    """The listed document whose internalnote carries write id `wid` (athena appends to
    internalnote on updates, so the id is searched within it, not compared whole)."""
    for doc in documents:
        note = doc.get("internalnote")
        if isinstance(note, str) and wid in note:
            return doc
    return None
