"""What athenaOne checks in a request (docs.athenahealth.com; README.md beside this package
cites each rule): the clinical document upload's form, the listing's paging, patient and
department ids of the practice, and athena's error bodies."""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Request, Response

from contract_tests.support.http import json_response

if TYPE_CHECKING:
    from .store import Practice

# Subclasses of the CLINICALDOCUMENT class (docs.athenahealth.com/api/workflows/
# document-classification-guide).
CLINICAL_DOCUMENT_SUBCLASSES = frozenset({
    "CLINICALDOCUMENT_ADMISSIONDISCHARGE",
    "CLINICALDOCUMENT_CONSULTNOTE",
    "CLINICALDOCUMENT_MENTALHEALTH",
    "CLINICALDOCUMENT_OPERATIVENOTE",
    "CLINICALDOCUMENT_URGENTCARE",
})
# attachmenttype values the simulator accepts (athena recommends PDF; images are common).
ATTACHMENT_TYPES = frozenset({"PDF", "JPG", "JPEG", "PNG", "TIFF", "TIF", "GIF"})

_DATE = re.compile(r"^(0[1-9]|1[0-2])/(0[1-9]|[12]\d|3[01])/\d{4}$")
_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_INT = re.compile(r"^\d{1,18}$")
_TRUE = {"true", "1", "y", "yes"}
_FALSE = {"false", "0", "n", "no"}


def athena_error(status: int, error: str, detailed: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> Response:
    body: dict[str, Any] = {"error": error}
    if detailed:
        body["detailedmessage"] = detailed
    body.update(extra)
    return json_response(body, status, headers)


def retry_after_header(seconds: float | None) -> dict[str, str]:
    if seconds is None:
        return {}
    return {"Retry-After": str(max(0, int(round(seconds))))}


def check_patient(practice: Practice, patientid: str) -> Response | None:
    if not _INT.match(patientid) or patientid not in practice.patients:
        return athena_error(404, "The patient ID is invalid.",
                            "No patient with this ID exists in this practice.")
    return None


def check_department(practice: Practice, value: str | None) -> Response | None:
    if value is None or value == "":
        return athena_error(400, "Additional fields are required.",
                            missingfields=["departmentid"])
    if not _INT.match(value) or value not in practice.departments:
        return athena_error(400, "Invalid departmentid.",
                            "The department ID does not exist in this practice.")
    return None


@dataclass
class Upload:
    """A clinical document upload that passed every check."""

    form: Any                      # the request's form fields (werkzeug MultiDict)
    text: str | None
    attachment: bytes | None
    attachment_type: str | None
    closed: bool


def check_upload(request: Request, practice: Practice, patientid: str) -> Response | Upload:
    """The upload's refusal in athena's words, or the upload."""
    missing = check_patient(practice, patientid)
    if missing:
        return missing
    form = request.form
    required = [f for f in ("departmentid", "documentsubclass") if not form.get(f)]
    if required:
        return athena_error(400, "Additional fields are required.", missingfields=required)
    bad = check_department(practice, form.get("departmentid"))
    if bad:
        return bad
    subclass = form["documentsubclass"]
    if subclass not in CLINICAL_DOCUMENT_SUBCLASSES:
        return athena_error(400, "Invalid documentsubclass.",
                            "Use a CLINICALDOCUMENT_* subclass.")
    for name in ("providerid", "clinicalproviderid", "documenttypeid"):
        if form.get(name) and not _INT.match(form[name]):
            return athena_error(400, f"Invalid {name}.", f"{name} must be an integer.")
    if form.get("observationdate") and not _DATE.match(form["observationdate"]):
        return athena_error(400, "Invalid observationdate.",
                            "observationdate must be mm/dd/yyyy.")
    if form.get("observationtime") and not _TIME.match(form["observationtime"]):
        return athena_error(400, "Invalid observationtime.",
                            "observationtime must be hh24:mi.")
    if form.get("priority") and form["priority"] not in ("1", "2"):
        return athena_error(400, "Invalid priority.", "priority must be 1 or 2.")
    autoclose = (form.get("autoclose") or "").lower()
    if autoclose and autoclose not in _TRUE | _FALSE:
        return athena_error(400, "Invalid autoclose.", "autoclose must be true or false.")
    if form.get("originalfilename") and len(form["originalfilename"]) > 200:
        return athena_error(400, "Invalid originalfilename.",
                            "originalfilename must not exceed 200 characters.")

    text = form.get("documentdata") or None
    raw_attachment = form.get("attachmentcontents")
    if raw_attachment is None and "attachmentcontents" in request.files:
        raw_attachment = request.files["attachmentcontents"].read().decode("ascii", "replace")
    attachment: bytes | None = None
    attachment_type: str | None = None
    if raw_attachment:
        try:
            attachment = base64.b64decode(raw_attachment, validate=True)
        except (binascii.Error, ValueError):
            return json_response({"success": False,
                                  "errormessage": "The attachment could not be decoded; "
                                                  "attachmentcontents must be Base64."})
        attachment_type = (form.get("attachmenttype") or "").upper() or None
        if attachment_type is None:
            return json_response({"success": False,
                                  "errormessage": "attachmenttype is required with "
                                                  "attachmentcontents."})
        if attachment_type not in ATTACHMENT_TYPES:
            return json_response({"success": False,
                                  "errormessage": "The attachment type is not supported."})
    if text is None and attachment is None:
        return json_response({"success": False,
                              "errormessage": "Either documentdata or attachmentcontents must "
                                              "be provided."})
    return Upload(form, text, attachment, attachment_type, autoclose in _TRUE)


def check_paging(args: Any) -> Response | tuple[int, int]:
    """(limit, offset) of a listing (default 1500 from 0, at most 5000), or the refusal."""
    try:
        limit = int(args.get("limit", "1500"))
        offset = int(args.get("offset", "0"))
    except ValueError:
        return athena_error(400, "Invalid limit or offset.", "limit and offset are integers.")
    if limit < 1 or limit > 5000 or offset < 0:
        return athena_error(400, "Invalid limit or offset.",
                            "limit is 1..5000 and offset is 0 or more.")
    return limit, offset


def flag(value: str | None) -> bool:
    return (value or "").lower() in _TRUE
