"""Validation by hand from the R4 StructureDefinitions plus each profile's rules
(rules.ServerRules), not with fhir.resources. Every issue found goes into one
OperationOutcome; diagnostics never carry a value from the body, expressions name the
element (e.g. `DocumentReference.content[0].attachment.data`).

400 = the resource failed base R4 rules; 422 = it broke a profile or business rule; an
unknown patient or encounter answers the profile's `unknown_reference_status`."""
from __future__ import annotations

import base64
import binascii
import re
import xml.etree.ElementTree as ET
from typing import Any

from .answers import Issues
from .rules import LOINC, XHTML_NS, ServerRules
from .store import Store
from .values import is_b64, parse_instant

DOCREF_STATUS = ("current", "superseded", "entered-in-error")
DOC_STATUS = ("preliminary", "final", "amended", "entered-in-error")
RELATES_CODES = ("replaces", "transforms", "signs", "appends")
D = "DocumentReference"
Pending = set[tuple[str, str]]


class Validator:
    def __init__(self, rules: ServerRules, store: Store) -> None:
        self.rules, self.store = rules, store

    def validate(self, rtype: str, res: dict[str, Any], pending: Pending,
                 current: dict[str, Any] | None = None) -> None:
        v = Issues()
        if rtype == D:
            self.docref(res, v, pending, current)
        elif rtype == "Provenance":
            self.provenance(res, v, pending)
        elif rtype == "Binary":
            if not isinstance(res.get("contentType"), str) or not res.get("contentType"):
                v.add(400, "required", "Binary.contentType is required", "Binary.contentType")
            if "data" in res and not is_b64(res["data"]):
                v.add(400, "value", "Binary.data is not valid base64", "Binary.data")
        v.raise_if_any()

    # ------------------------------------------------------------ DocumentReference
    def docref(self, res: dict[str, Any], v: Issues, pending: Pending,
               current: dict[str, Any] | None) -> None:
        rules = self.rules
        # status 1..1 (base); a create may be narrower (oracle-health: current only)
        status = res.get("status")
        if status is None:
            v.add(400, "required", "status is required", f"{D}.status")
        elif status not in DOCREF_STATUS:
            v.add(400, "code-invalid", "status must be current, superseded or entered-in-error",
                  f"{D}.status")
        elif current is None and status not in rules.create_status:
            v.add(422, "not-supported", "this server creates documents with status "
                  + " or ".join(rules.create_status) + " only", f"{D}.status")
        # docStatus 0..1 (base); required and narrowed by some servers
        if "docStatus" in res:
            if res["docStatus"] not in DOC_STATUS:
                v.add(400, "code-invalid",
                      "docStatus must be preliminary, final, amended or entered-in-error",
                      f"{D}.docStatus")
            elif res["docStatus"] not in rules.doc_status:
                v.add(422, "not-supported", "this server takes docStatus "
                      + " or ".join(rules.doc_status) + " only", f"{D}.docStatus")
        elif rules.doc_status_required:
            v.add(422, "required", "docStatus is required by this server", f"{D}.docStatus")
        self._type(res, v)
        # category (US Core 1..*)
        category = res.get("category")
        if category is None:
            if rules.category_required:
                v.add(422, "required", "category is required (US Core 1..*)", f"{D}.category")
        elif not isinstance(category, list) or not all(isinstance(c, dict) for c in category):
            v.add(400, "structure", "category must be an array of CodeableConcept", f"{D}.category")
        # identifier 0..*
        if "identifier" in res:
            ids = res["identifier"]
            if not isinstance(ids, list) or not all(
                    isinstance(i, dict) and isinstance(i.get("value", ""), str)
                    and isinstance(i.get("system", ""), str) for i in ids):
                v.add(400, "structure", "identifier must be an array of Identifier",
                      f"{D}.identifier")
        # date 0..1 instant
        if "date" in res and parse_instant(res["date"]) is None:
            v.add(400, "value", "date must be an instant with a time zone", f"{D}.date")
        patient_id = self._subject(res, v, pending)
        if current is not None and patient_id is not None:
            if (current.get("subject") or {}).get("reference") != f"Patient/{patient_id}":
                v.add(422, "business-rule", "an update may not move a document to another patient",
                      f"{D}.subject")
        self._authors(res, v)
        self._context(res, v, pending, patient_id)
        self._content(res, v)
        self._relates_to(res, v, pending)

    def _type(self, res: dict[str, Any], v: Issues) -> None:
        doc_type = res.get("type")
        if doc_type is None:
            v.add(422, "required", "type is required", f"{D}.type")
            return
        if not isinstance(doc_type, dict) or not (
                isinstance(doc_type.get("coding"), list) or isinstance(doc_type.get("text"), str)):
            v.add(400, "structure", "type must be a CodeableConcept", f"{D}.type")
            return
        if self.rules.type_loinc_or_one_proprietary:
            systems = [c.get("system") for c in doc_type.get("coding") or []
                       if isinstance(c, dict)]
            other = [s for s in systems if s != LOINC]
            if not systems or (other and (len(systems) > 1)):
                v.add(422, "business-rule", "type must carry LOINC codings or a single "
                      "proprietary coding, not both", f"{D}.type.coding")

    def _subject(self, res: dict[str, Any], v: Issues, pending: Pending) -> str | None:
        where = f"{D}.subject"
        subject = res.get("subject")
        if subject is None:
            v.add(422, "required", "subject is required", where)
            return None
        if not isinstance(subject, dict) or not isinstance(subject.get("reference"), str):
            v.add(400, "structure", "subject must be a Reference with a reference string", where)
            return None
        ref = self.store.ref(subject["reference"])
        if ref is None:
            v.add(400, "value", "subject.reference must look like Patient/<id>", where)
            return None
        if ref[0] != "Patient":
            v.add(422, "business-rule", "subject must reference a Patient", where)
            return None
        if not self.store.exists("Patient", ref[1], pending):
            v.add(self.rules.unknown_reference_status, "not-found", "subject patient is not known",
                  where)
            return None
        return ref[1]

    def _authors(self, res: dict[str, Any], v: Issues) -> None:
        if "author" not in res:
            return
        where = f"{D}.author"
        authors = res["author"]
        if not isinstance(authors, list) or not all(isinstance(a, dict) for a in authors):
            v.add(400, "structure", "author must be an array of Reference", where)
            return
        if self.rules.max_authors is not None and len(authors) > self.rules.max_authors:
            v.add(422, "business-rule",
                  f"at most {self.rules.max_authors} author may be given", where)
        if self.rules.author_practitioner_only:
            for i, a in enumerate(authors):
                ref = self.store.ref(a.get("reference"))
                if ref is None or ref[0] != "Practitioner":
                    v.add(422, "business-rule",
                          "author must be a Practitioner/<id> reference", f"{where}[{i}]")

    def _context(self, res: dict[str, Any], v: Issues, pending: Pending,
                 patient_id: str | None) -> None:
        rules = self.rules
        where = f"{D}.context.encounter"
        context = res.get("context")
        if context is not None and not isinstance(context, dict):
            v.add(400, "structure", "context must be an object", f"{D}.context")
            return
        if context is None and rules.context_required and not rules.encounter_required:
            v.add(422, "required", "context is required by this server", f"{D}.context")
        self._period(context or {}, v)
        encounters = (context or {}).get("encounter")
        if encounters is None:
            if rules.encounter_required:
                v.add(422, "required", "context.encounter is required by this server", where)
            return
        if not isinstance(encounters, list):
            v.add(400, "structure", "context.encounter must be an array of Reference in R4", where)
            return
        if rules.encounter_required and len(encounters) != 1:
            v.add(422, "business-rule", "exactly one context.encounter is required", where)
        for i, enc in enumerate(encounters):
            here = f"{where}[{i}]"
            ref = self.store.ref(enc.get("reference") if isinstance(enc, dict) else None)
            if ref is None or ref[0] not in ("Encounter", "EpisodeOfCare"):
                v.add(400, "value", "context.encounter reference must look like Encounter/<id>", here)
                continue
            if ref[0] != "Encounter":
                v.add(422, "not-supported", "only Encounter references are supported", here)
                continue
            stored = self.store.current("Encounter", ref[1])
            if stored is None:
                v.add(rules.unknown_reference_status, "not-found", "encounter is not known", here)
                continue
            owner = self.store.ref(stored.get("subject", {}).get("reference"))
            if patient_id is not None and (owner is None or owner[1] != patient_id):
                v.add(422, "business-rule", "encounter belongs to a different patient", here)

    def _period(self, context: dict[str, Any], v: Issues) -> None:
        where = f"{D}.context.period"
        period = context.get("period")
        if period is None:
            if self.rules.period_end_required:
                v.add(422, "required", "context.period.end is required by this server",
                      f"{where}.end")
            return
        if not isinstance(period, dict):
            v.add(400, "structure", "context.period must be a Period", where)
            return
        if self.rules.period_end_required and "end" not in period:
            v.add(422, "required", "context.period.end is required by this server", f"{where}.end")
        for key in ("start", "end"):
            if key in period and not self._datetime_ok(period[key]):
                v.add(422 if isinstance(period[key], str) else 400, "value",
                      "dates must be dateTimes with a time and a zone" if self.rules.dates_need_time
                      else "not a dateTime", f"{where}.{key}")

    def _datetime_ok(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        if self.rules.dates_need_time:
            return parse_instant(value) is not None
        return bool(re.fullmatch(r"\d{4}(-\d{2}(-\d{2}(T.+)?)?)?", value))

    def _content(self, res: dict[str, Any], v: Issues) -> None:
        rules = self.rules
        content = res.get("content")
        if content is None:
            v.add(400, "required", "content is required (1..*)", f"{D}.content")
            return
        if not isinstance(content, list) or not content:
            v.add(400, "required", "content must be a non-empty array", f"{D}.content")
            return
        if rules.content_entries == "exactly-one" and len(content) != 1:
            v.add(422, "business-rule", "content must contain exactly one entry", f"{D}.content")
        for i, item in enumerate(content):
            where = f"{D}.content[{i}]"
            if rules.content_entries == "first-kept" and i > 0:
                break  # only the first attachment is kept (and looked at)
            if not isinstance(item, dict) or not isinstance(item.get("attachment"), dict):
                v.add(400, "required", "content.attachment is required", f"{where}.attachment")
                continue
            self._attachment(item["attachment"], v, f"{where}.attachment")

    def _attachment(self, att: dict[str, Any], v: Issues, where: str) -> None:
        rules = self.rules
        ctype = att.get("contentType")
        if ctype is None:
            v.add(422, "required", "attachment.contentType is required", f"{where}.contentType")
        elif not isinstance(ctype, str) or "/" not in ctype:
            v.add(400, "value", "attachment.contentType must be a MIME type", f"{where}.contentType")
        else:
            mime = ctype.partition(";")[0].strip().lower()
            if rules.content_types is not None and rules.charset_required:
                if ctype.strip().lower() not in rules.content_types:
                    v.add(422, "not-supported", "attachment.contentType must be exactly one of "
                          + ", ".join(rules.content_types), f"{where}.contentType")
            elif rules.content_types is not None and mime not in rules.content_types:
                v.add(422, "not-supported", "attachment.contentType must be one of "
                      + ", ".join(rules.content_types), f"{where}.contentType")
        if "data" in att and not is_b64(att["data"]):
            v.add(400, "value", "attachment.data is not valid base64", f"{where}.data")
        elif "data" in att and rules.xhtml_only and not _is_xhtml(att["data"]):
            v.add(422, "invalid", "the document must be well-formed XHTML (an <html> root in "
                  "the XHTML namespace with a <body>)", f"{where}.data")
        if rules.inline_required and "data" not in att:
            v.add(422, "required", "the note must be inline (attachment.data)", f"{where}.data")
        elif "data" not in att and "url" not in att:
            v.add(422, "required", "attachment needs data or url (us-core-6)", where)
        if rules.dates_need_time and "creation" in att and not self._datetime_ok(att["creation"]):
            v.add(422, "value", "attachment.creation must carry a time", f"{where}.creation")

    def _relates_to(self, res: dict[str, Any], v: Issues, pending: Pending) -> None:
        if "relatesTo" not in res:
            return
        rel = res["relatesTo"]
        if not isinstance(rel, list):
            v.add(400, "structure", "relatesTo must be an array", f"{D}.relatesTo")
            return
        for i, item in enumerate(rel):
            where = f"{D}.relatesTo[{i}]"
            if not isinstance(item, dict):
                v.add(400, "structure", "relatesTo entry must be an object", where)
                continue
            if item.get("code") not in RELATES_CODES:
                v.add(400, "code-invalid",
                      "relatesTo.code must be replaces, transforms, signs or appends",
                      f"{where}.code")
            target = self.store.ref((item.get("target") or {}).get("reference")
                                    if isinstance(item.get("target"), dict) else None)
            if target is None or target[0] != D:
                v.add(400, "structure", "relatesTo.target must reference DocumentReference/<id>",
                      f"{where}.target")
            elif not self.store.exists(D, target[1], pending):
                v.add(422, "not-found", "relatesTo.target is not a known DocumentReference",
                      f"{where}.target")

    # ------------------------------------------------------------ Provenance
    def provenance(self, res: dict[str, Any], v: Issues, pending: Pending) -> None:
        P = "Provenance"
        targets = res.get("target")
        if not isinstance(targets, list) or not targets:
            v.add(400, "required", "target is required (1..*)", f"{P}.target")
        else:
            for i, t in enumerate(targets):
                ref = self.store.ref(t.get("reference") if isinstance(t, dict) else None)
                if ref is None:
                    v.add(400, "value", "target reference must look like Type/<id>",
                          f"{P}.target[{i}]")
                elif not self.store.exists(ref[0], ref[1], pending):
                    v.add(422, "not-found", "target does not resolve", f"{P}.target[{i}]")
        if parse_instant(res.get("recorded")) is None:
            v.add(400, "required", "recorded is required (an instant)", f"{P}.recorded")
        agents = res.get("agent")
        if not isinstance(agents, list) or not agents:
            v.add(400, "required", "agent is required (1..*)", f"{P}.agent")
        else:
            for i, a in enumerate(agents):
                if not isinstance(a, dict) or not isinstance(a.get("who"), dict):
                    v.add(400, "required", "agent.who is required", f"{P}.agent[{i}].who")


def _is_xhtml(data_b64: str) -> bool:
    """Well-formed XML whose root is XHTML's <html> with a <body>. No entity declarations
    (nothing to expand), so parsing untrusted bytes stays cheap."""
    try:
        raw = base64.b64decode(re.sub(r"\s+", "", data_b64), validate=True)
    except (binascii.Error, ValueError):
        return False
    if b"<!ENTITY" in raw.upper():
        return False
    try:
        root = ET.fromstring(raw)
    except ET.ParseError:
        return False
    return root.tag == f"{{{XHTML_NS}}}html" and root.find(f"{{{XHTML_NS}}}body") is not None
