"""Canonical WriteCommand -> FHIR R4 DocumentReference / Provenance / transaction Bundle.

Every resource is built as a `fhir.resources.R4B` model (4.3.0; the package root is R5) and
dumped from it, so what leaves parses back. For DocumentReference R4B is the same shape as
R4 4.0.1 in the elements used here: `docStatus` is a code from composition-status
(preliminary | final | amended | entered-in-error), `context.encounter` is a LIST of
Reference (0..*), `relatesTo` is {code (replaces | transforms | signs | appends), target}
and `authenticator` is one Reference. (R5 differs on all four: `context` is a list of
Reference, docStatus gains registered/partial/..., relatesTo.code is a CodeableConcept and
authenticator became `attester`.) fhir.resources does not check code values against their
bindings, so R4 codes are checked here (`check_r4_codes`) and in the tests.

Rendering is deterministic for the same command: times come from the draft and the approval,
ids of transaction entries are uuid5 of the write's idempotency key.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import uuid
from collections.abc import Callable
from datetime import datetime
from html.parser import HTMLParser
from typing import Any

from chartbridge.core.errors import ChartbridgeError, PermanentError
from chartbridge.core.models import (
    SECTION_CODES,
    ApprovalState,
    Identifier,
    WriteCommand,
    WriteKind,
    find_identifier,
)
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.provenance import Provenance
from pydantic import ValidationError

from chartbridge import __version__

from .config import FhirDocRefConfig
from .profiles import Profile

CATEGORY_SYSTEM = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
PARTICIPANT_SYSTEM = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
LOINC = "http://loinc.org"
DEFAULT_TYPE = {"system": LOINC, "code": "11506-3", "display": "Progress note"}
DOC_STATUS = {"preliminary", "final", "amended", "entered-in-error"}           # R4 4.0.1
STATUS = {"current", "superseded", "entered-in-error"}
RELATES = {"replaces", "transforms", "signs", "appends"}
NAMESPACE = uuid.UUID("6f1d0c1e-6a3f-4c52-9a8e-2f3b7f1c9d11")


# --------------------------------------------------------------------------- identities
def write_identifier(command: WriteCommand, config: FhirDocRefConfig) -> dict[str, str]:
    """Our business identifier: the ledger's idempotency key (org-scoped, PHI-free)."""
    return {"system": str(config.identifier_system), "value": command.idempotency_key()}


def identifier_query(ident: dict[str, str]) -> str:
    """`identifier=system|value`, form-encoded, as If-None-Exist / search take it."""
    from urllib.parse import urlencode
    return urlencode({"identifier": f"{ident['system']}|{ident['value']}"})


def write_tag(ident: dict[str, str]) -> dict[str, str]:
    """The meta.tag that marks a resource without a business identifier (Provenance) as
    this write's: system = the target's identifier system, code = the idempotency key."""
    return {"system": ident["system"], "code": ident["value"]}


def tag_query(tag: dict[str, str]) -> str:
    """`_tag=system|code`, form-encoded: the common search parameter on Resource.meta.tag,
    as a transaction entry's ifNoneExist takes it."""
    from urllib.parse import urlencode
    return urlencode({"_tag": f"{tag['system']}|{tag['code']}"})


def fhir_id(ids: list[Identifier], what: str, *, required: bool = True) -> str | None:
    found = find_identifier(ids, "FHIR")
    if found is None:
        if required:
            raise PermanentError(f"the session has no FHIR {what} id ({what}_ids needs an "
                                 f"identifier of type FHIR)", vendor_code="missing_identifier",
                                 field=f"{what}_ids")
        return None
    value = found.value.split("/")[-1]
    if not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", value):
        raise PermanentError(f"the FHIR {what} id is not a FHIR id", vendor_code="bad_identifier",
                             field=f"{what}_ids")
    return value


def parent_reference(command: WriteCommand) -> str:
    """`DocumentReference/<id>` of the document this write corrects."""
    raw = (command.parent_external_id or "").strip()
    parts = [p for p in raw.split("/") if p]
    if "_history" in parts:
        parts = parts[:parts.index("_history")]
    if len(parts) < 2 or parts[-2] != "DocumentReference" or not re.fullmatch(
            r"[A-Za-z0-9\-.]{1,64}", parts[-1]):
        raise PermanentError("a correction needs parent_external_id = DocumentReference/<id>",
                             vendor_code="missing_parent", field="parent_external_id")
    return f"DocumentReference/{parts[-1]}"


def _person(ident: Identifier | None, display: str | None = None) -> dict[str, Any] | None:
    if ident is None:
        return None
    if ident.type.upper() == "FHIR":
        value = ident.value if "/" in ident.value else f"Practitioner/{ident.value}"
        ref: dict[str, Any] = {"reference": value}
    else:
        ref = {"type": "Practitioner",
               "identifier": {k: v for k, v in {"system": ident.system, "value": ident.value,
                                                "type": {"text": ident.type}}.items() if v}}
    if display:
        ref["display"] = display
    return ref


def _instant(when: datetime) -> str:
    if when.tzinfo is None:
        raise PermanentError("note times must carry a timezone", field="draft.created_at")
    return when.isoformat()


# --------------------------------------------------------------------------- the note text
def _title(code: str, given: str | None, titles: Callable[[str], str] | None) -> str:
    if titles is not None:
        try:
            return titles(code)
        except ChartbridgeError:        # a code the tables lack: fall back below
            pass
    return given or SECTION_CODES.get(code, code)


def note_text(command: WriteCommand, titles: Callable[[str], str] | None = None) -> str:
    sections = command.draft.sections if command.draft else []
    return "\n\n".join(f"{_title(s.code, s.title, titles)}:\n{s.text.strip()}"
                       for s in sections).strip() + "\n"


def _html_body(command: WriteCommand, titles: Callable[[str], str] | None) -> str:
    """Each section as an <h3> title and its lines as <p>, escaped (also well-formed XML)."""
    sections = command.draft.sections if command.draft else []
    return "".join(
        f"<h3>{html.escape(_title(s.code, s.title, titles))}</h3>"
        + "".join(f"<p>{html.escape(line)}</p>" for line in s.text.strip().split("\n") if line)
        for s in sections)


def note_html(command: WriteCommand, titles: Callable[[str], str] | None = None) -> str:
    return f"<!DOCTYPE html><html><body>{_html_body(command, titles)}</body></html>\n"


class _Text(HTMLParser):
    BLOCK = {"p", "div", "br", "h1", "h2", "h3", "h4", "h5", "h6", "li", "tr", "section"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self.BLOCK:
            self.out.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self.out.append(":\n")
        elif tag in self.BLOCK:
            self.out.append("\n")

    def handle_data(self, data):
        if not self._skip:
            self.out.append(data)


def html_to_text(markup: str) -> str:
    """Readable plain text of an HTML note (headings end with ':'; paragraphs on lines)."""
    parser = _Text()
    parser.feed(markup)
    parser.close()
    text = re.sub(r"[ \t]+", " ", "".join(parser.out))
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r":\n\n+", ":\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def content_hash(data_b64: str) -> str:
    """What reconcile compares: sha256 of the attachment's decoded bytes."""
    try:
        raw = base64.b64decode(data_b64, validate=False)
    except (ValueError, TypeError):
        return ""
    return hashlib.sha256(raw.replace(b"\r\n", b"\n").strip()).hexdigest()


# --------------------------------------------------------------------------- resources
class Rendered:
    """What one command becomes: the DocumentReference, and for us-core its Provenance."""

    def __init__(self, document: dict[str, Any], provenance: dict[str, Any] | None,
                 identifier: dict[str, str], doc_uuid: str, prov_uuid: str) -> None:
        self.document, self.provenance = document, provenance
        self.identifier, self.doc_uuid, self.prov_uuid = identifier, doc_uuid, prov_uuid


def note_type_codings(note_type: dict[str, Any] | None, config: FhirDocRefConfig,
                      profile: Profile | None = None) -> list[dict]:
    codings = [dict(note_type or DEFAULT_TYPE)]
    if config.note_type_coding is not None:
        site = config.note_type_coding.model_dump(exclude_none=True)
        site["system"] = str(site["system"])
        if profile is not None and profile.site_type_replaces_loinc and site["system"] != LOINC:
            return [site]           # the server takes LOINC codings or ONE proprietary one
        if site not in codings:
            codings.append(site)
    return codings


def note_xhtml(command: WriteCommand, titles: Callable[[str], str] | None = None) -> str:
    """The note as a strict XHTML 1.0 document (namespace, head with title, body)."""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
            '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n'
            '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">'
            '<head><title>Clinical note</title></head>'
            f"<body>{_html_body(command, titles)}</body></html>\n")


def attachment_body(command: WriteCommand, config: FhirDocRefConfig, profile: Profile,
                    titles: Callable[[str], str] | None = None) -> tuple[str, str]:
    """(contentType, text) of the note: the profile's forced format, else the config's."""
    if profile.note_format == "xhtml":
        # written exactly as Millennium documents its supported values (no space)
        return "application/xhtml+xml;charset=utf-8", note_xhtml(command, titles)
    if profile.note_format == "text/plain":
        # one inline text/plain attachment: an HTML rendering is converted to text
        text = (html_to_text(note_html(command, titles)) if config.content_type == "text/html"
                else note_text(command, titles))
        return "text/plain; charset=utf-8", text
    if config.content_type == "text/html":
        return "text/html; charset=utf-8", note_html(command, titles)
    return "text/plain; charset=utf-8", note_text(command, titles)


def render(command: WriteCommand, config: FhirDocRefConfig, *, profile: Profile,
           note_type: dict[str, Any] | None = None, titles: Callable[[str], str] | None = None
           ) -> Rendered:
    if command.draft is None:
        raise PermanentError("a DocumentReference write needs the draft", field="draft")
    approved = command.approval_state == ApprovalState.APPROVED
    if approved and command.approval is None:
        raise PermanentError("an approved write needs its approval", field="approval")
    if not approved and not profile.preliminary:
        raise PermanentError(f"the {profile.name} profile files final documents only; a "
                             "preliminary note cannot be written there (approve it first)",
                             vendor_code="unsupported_kind", field="approval_state")
    patient = fhir_id(command.patient_ids, "patient")
    encounter = fhir_id(command.encounter_ids, "encounter", required=profile.encounter_required)
    ident = write_identifier(command, config)
    key = command.idempotency_key()
    doc_uuid = f"urn:uuid:{uuid.uuid5(NAMESPACE, key + '/DocumentReference')}"
    prov_uuid = f"urn:uuid:{uuid.uuid5(NAMESPACE, key + '/Provenance')}"

    ctype, data = attachment_body(command, config, profile, titles)
    raw = data.encode("utf-8")
    codings = note_type_codings(note_type, config, profile)
    when = command.approval.at if (approved and command.approval) else command.draft.created_at
    doc: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "identifier": [ident],
        "status": "current",
        "docStatus": "final" if approved else "preliminary",
        "type": {"coding": codings, "text": codings[0].get("display") or "Clinical note"},
        "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": "clinical-note",
                                  "display": "Clinical Note"}]}],
        "subject": {"reference": f"Patient/{patient}"},
        "date": _instant(when),
        "content": [{"attachment": {
            "contentType": ctype, "language": "en-US",
            "data": base64.b64encode(raw).decode("ascii"),
            "hash": base64.b64encode(hashlib.sha1(raw).digest()).decode("ascii"),
            "title": codings[0].get("display") or "Clinical note",
            "creation": _instant(command.draft.created_at)}}],
    }
    author = _person(command.user)
    if author and profile.author_reference_only and "reference" not in author:
        author = None               # the server takes literal Practitioner references only
    if author:
        doc["author"] = [author][:profile.max_authors]
    if approved and command.approval is not None:
        approver = _person(command.approval.approver, command.approval.approver_name)
        if approver and not (profile.author_reference_only and "reference" not in approver):
            doc["authenticator"] = approver
    context: dict[str, Any] = {}
    if encounter:
        context["encounter"] = [{"reference": f"Encounter/{encounter}"}]
    if profile.context_period:
        context["period"] = {"end": _instant(when)}
    if context:
        doc["context"] = context
    if command.kind in (WriteKind.REPLACE, WriteKind.APPEND) and profile.relates_to:
        doc["relatesTo"] = [{"code": "replaces" if command.kind == WriteKind.REPLACE else "appends",
                             "target": {"reference": parent_reference(command)}}]
    document = dump(DocumentReference, doc)

    provenance = None
    if profile.provenance:
        agents = []
        if approved and command.approval is not None:
            agents.append({"type": {"coding": [{"system": PARTICIPANT_SYSTEM, "code": "verifier"}]},
                           "who": _person(command.approval.approver, command.approval.approver_name)})
        elif command.user is not None:
            agents.append({"type": {"coding": [{"system": PARTICIPANT_SYSTEM, "code": "author"}]},
                           "who": _person(command.user)})
        agents.append({"type": {"coding": [{"system": PARTICIPANT_SYSTEM, "code": "assembler"}]},
                       "who": {"display": f"Chartbridge {__version__}"}})
        # tagged with the write's key, so a replayed transaction's conditional create
        # (ifNoneExist _tag=...) matches this Provenance instead of filing a second one
        prov = {"resourceType": "Provenance", "meta": {"tag": [write_tag(ident)]},
                "target": [{"reference": doc_uuid}], "recorded": _instant(when),
                "agent": agents}
        provenance = dump(Provenance, prov)
    return Rendered(document, provenance, ident, doc_uuid, prov_uuid)


def dump(model: type, data: dict[str, Any]) -> dict[str, Any]:
    """Validate through the fhir.resources R4B model and return its JSON form."""
    try:
        resource = model.model_validate(data)
    except (ValidationError, ValueError) as exc:   # name the elements, never the values
        where = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in
                          getattr(exc, "errors", lambda: [])()[:5])
        raise PermanentError(f"the {data.get('resourceType')} would not be valid R4 "
                             f"({where or type(exc).__name__})", vendor_code="render") from None
    out = json.loads(resource.model_dump_json(exclude_none=True))
    check_r4_codes(out)
    return out


def check_r4_codes(resource: dict[str, Any]) -> None:
    """The R4 bindings fhir.resources does not enforce."""
    if resource.get("resourceType") != "DocumentReference":
        return
    bad = []
    if resource.get("status") not in STATUS:
        bad.append("status")
    if "docStatus" in resource and resource["docStatus"] not in DOC_STATUS:
        bad.append("docStatus")
    for i, rel in enumerate(resource.get("relatesTo") or []):
        if rel.get("code") not in RELATES:
            bad.append(f"relatesTo[{i}].code")
    enc = (resource.get("context") or {}).get("encounter")
    if enc is not None and not isinstance(enc, list):
        bad.append("context.encounter")
    if bad:
        raise PermanentError(f"DocumentReference has non-R4 values in {', '.join(bad)}",
                             vendor_code="render")


def transaction_bundle(rendered: Rendered, *, conditional: bool = True,
                       updates: list[tuple[dict[str, Any], str]] = ()) -> dict[str, Any]:
    """The us-core transaction: the DocumentReference (conditional on our identifier), its
    Provenance (conditional on the write's tag), and any PUTs of earlier documents (with
    their If-Match). Sent again, both creates match what the first one filed (200)."""
    doc_req: dict[str, Any] = {"method": "POST", "url": "DocumentReference"}
    prov_req: dict[str, Any] = {"method": "POST", "url": "Provenance"}
    if conditional:
        doc_req["ifNoneExist"] = identifier_query(rendered.identifier)
        prov_req["ifNoneExist"] = tag_query(write_tag(rendered.identifier))
    entries: list[dict[str, Any]] = [
        {"fullUrl": rendered.doc_uuid, "resource": rendered.document, "request": doc_req}]
    if rendered.provenance is not None:
        entries.append({"fullUrl": rendered.prov_uuid, "resource": rendered.provenance,
                        "request": prov_req})
    for resource, if_match in updates:
        entries.append({"resource": resource,
                        "request": {"method": "PUT", "url": f"DocumentReference/{resource['id']}",
                                    "ifMatch": if_match}})
    return dump(Bundle, {"resourceType": "Bundle", "type": "transaction", "entry": entries})
