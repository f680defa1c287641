"""What the receiver checks in a message, from HL7 v2.5.1: MSH (chapter 2, tables 0008,
0155, 0103, 0357) and the MDM triggers' segments and TXA/PID/OBX fields (chapter 9, tables
0271 and 0273). A refusal is a _Problem: ACK code, table 0357 code, text and location,
never a field's value."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import hl7
import hl7.util

from chartbridge.core.errors import InputError


class _NoFieldValues(logging.Filter):
    """python-hl7's unescape warns with the whole field (note text = PHI) in the message;
    drop those records so the simulator never puts message content in a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Error ")


_HL7_UTIL_LOG = logging.getLogger(hl7.util.__file__)  # python-hl7 names it by file path
if not any(isinstance(f, _NoFieldValues) for f in _HL7_UTIL_LOG.filters):
    _HL7_UTIL_LOG.addFilter(_NoFieldValues())

# HL7 v2.5.1 chapter 9 trigger events this receiver accepts -> required MSH-9.3 structure.
EVENTS = {"T02": "MDM_T02", "T06": "MDM_T02", "T08": "MDM_T02", "T10": "MDM_T02", "T11": "MDM_T01"}
CONTENT_EVENTS = {"T02", "T06", "T08", "T10"}
TABLE_0271 = {  # document completion status
    "AU": "Authenticated", "DI": "Dictated", "DO": "Documented", "IN": "Incomplete",
    "IP": "In progress", "LA": "Legally authenticated", "PA": "Pre-authenticated",
}
TABLE_0273 = {  # document availability status
    "AV": "Available for patient care", "CA": "Deleted", "OB": "Obsolete",
    "UN": "Unavailable for patient care",
}
TABLE_0155 = {"AL", "ER", "NE", "SU"}  # accept/application acknowledgment conditions
PROCESSING_IDS = {"P", "T", "D"}  # table 0103
TABLE_0357 = {  # message error condition codes used here
    100: "Segment sequence error", 101: "Required field missing", 102: "Data type error",
    103: "Table value not found", 200: "Unsupported message type",
    201: "Unsupported event code", 202: "Unsupported processing id",
    203: "Unsupported version id", 204: "Unknown key identifier",
    205: "Duplicate key identifier", 206: "Application record locked",
    207: "Application internal error",
}


class _Problem(InputError):
    """Why a message is refused; becomes MSA-1 + ERR in the ACK. Never carries values."""

    def __init__(self, ack: str, hl7_code: int, text: str, location: str = "",
                 diagnostic: str = "") -> None:
        super().__init__(text, field=location or None)
        self.ack, self.hl7_code, self.text = ack, hl7_code, text
        self.location, self.diagnostic = location, diagnostic


def _f(seg: Any, n: int) -> str:
    """Field n of a python-hl7 segment as its raw (still escaped) string, '' if absent.
    For MSH, python-hl7 numbers fields so that seg[n] is MSH-n."""
    try:
        return str(seg[n]) if len(seg) > n else ""
    except (IndexError, KeyError):
        return ""


def _comp(raw: str, n: int, seps: str) -> str:
    """Component n (1-based) of the first repetition of a raw field."""
    first = raw.split(seps[2])[0]
    parts = first.split(seps[3])
    return parts[n - 1] if len(parts) >= n else ""


def _key(raw: str, seps: str) -> str:
    """Canonical key for an EI/CX field: first repetition, trailing empty components dropped."""
    parts = raw.split(seps[2])[0].split(seps[3])
    while parts and not parts[-1]:
        parts.pop()
    return seps[3].join(parts)


@dataclass
class _Header:
    control_id: str = ""
    event: str | None = None
    accept_type: str = ""  # MSH-15
    app_type: str = ""  # MSH-16

    @property
    def enhanced(self) -> bool:
        return bool(self.accept_type or self.app_type)


def parse(block: bytes, encoding: str) -> tuple[Any, _Header, _Problem | None]:
    """The message, its MSH facts and the reason to refuse it at the header (or None)."""
    header = _Header()
    try:
        text = block.decode(encoding)
    except UnicodeDecodeError:
        text = block.decode("latin-1")
        header.control_id = crude_control_id(text)
        return None, header, _Problem("AR", 102, f"message is not valid {encoding}")
    header.control_id = crude_control_id(text)
    try:
        msg = hl7.parse(text)
        msh = msg.segment("MSH")
    except (hl7.ParseException, KeyError, IndexError, ValueError):
        return None, header, _Problem("AR", 100, "message must begin with an MSH segment",
                                      "MSH")
    seps = msg.separators
    header.control_id = _f(msh, 10)
    header.accept_type = _comp(_f(msh, 15), 1, seps)
    header.app_type = _comp(_f(msh, 16), 1, seps)
    header.event = _comp(_f(msh, 9), 2, seps) or None
    return msg, header, check_header(msg, header)


def crude_control_id(text: str) -> str:
    if not text.startswith("MSH") or len(text) < 4:
        return ""
    fields = text.split("\r", 1)[0].split(text[3])
    return fields[9] if len(fields) > 9 else ""


def check_header(msg: Any, header: _Header) -> _Problem | None:
    msh, seps = msg.segment("MSH"), msg.separators
    if not header.control_id:
        return _Problem("AR", 101, "MSH-10 message control id is required", "MSH^1^10")
    if _comp(_f(msh, 12), 1, seps) != "2.5.1":
        return _Problem("AR", 203, "MSH-12 version id must be 2.5.1", "MSH^1^12")
    if _comp(_f(msh, 11), 1, seps) not in PROCESSING_IDS:
        return _Problem("AR", 202, "MSH-11 processing id must be P, T or D", "MSH^1^11")
    msg9 = _f(msh, 9)
    if _comp(msg9, 1, seps) != "MDM":
        return _Problem("AR", 200, "MSH-9.1 message code must be MDM", "MSH^1^9^1^1")
    if header.event not in EVENTS:
        return _Problem("AR", 201, "MSH-9.2 trigger event must be one of "
                        + ", ".join(EVENTS), "MSH^1^9^1^2")
    if _comp(msg9, 3, seps) != EVENTS[header.event]:
        return _Problem("AR", 200, f"MSH-9.3 message structure must be "
                        f"{EVENTS[header.event]} for {header.event}", "MSH^1^9^1^3")
    for n, value in ((15, header.accept_type), (16, header.app_type)):
        if value and value not in TABLE_0155:
            return _Problem("AR", 103, f"MSH-{n} must be AL, ER, NE or SU", f"MSH^1^{n}")
    return None


def check_body(msg: Any, event: str) -> dict[str, Any]:
    """Required segments/fields of the trigger; returns the extracted TXA/PID facts."""
    seps = msg.separators
    names = [str(s[0]) for s in msg]
    for seg in ("EVN", "PID", "PV1", "TXA"):
        if names.count(seg) != 1:
            raise _Problem("AE", 100, f"exactly one {seg} segment is required", seg)
    order = [names.index(s) for s in ("EVN", "PID", "PV1", "TXA")]
    if order != sorted(order):
        raise _Problem("AE", 100, "segments must be in the order MSH EVN PID PV1 TXA",
                       "TXA")
    obx_at = [i for i, n in enumerate(names) if n == "OBX"]
    if event in CONTENT_EVENTS and not obx_at:
        raise _Problem("AE", 100, f"{event} requires at least one OBX segment", "OBX")
    if event == "T11" and obx_at:
        raise _Problem("AE", 100, "T11 (MDM_T01) must not carry OBX segments", "OBX")
    if obx_at and min(obx_at) < names.index("TXA"):
        raise _Problem("AE", 100, "OBX segments must follow TXA", "OBX")
    evn, pid, txa = msg.segment("EVN"), msg.segment("PID"), msg.segment("TXA")
    if not _f(evn, 2):
        raise _Problem("AE", 101, "EVN-2 recorded date/time is required", "EVN^1^2")
    patient = _key(_f(pid, 3), seps)
    if not _comp(_f(pid, 3), 1, seps):
        raise _Problem("AE", 101, "PID-3 patient identifier list is required", "PID^1^3")
    if not _comp(_f(txa, 2), 1, seps):
        raise _Problem("AE", 101, "TXA-2 document type is required", "TXA^1^2")
    doc_key = _key(_f(txa, 12), seps)
    if not _comp(_f(txa, 12), 1, seps):
        raise _Problem("AE", 101, "TXA-12 unique document number is required", "TXA^1^12")
    completion = _comp(_f(txa, 17), 1, seps)
    if not completion:
        raise _Problem("AE", 101, "TXA-17 document completion status is required",
                       "TXA^1^17")
    if completion not in TABLE_0271:
        raise _Problem("AE", 103, "TXA-17 is not a table 0271 value", "TXA^1^17")
    availability = _comp(_f(txa, 19), 1, seps)
    if not availability:
        raise _Problem("AE", 101, "TXA-19 document availability status is required",
                       "TXA^1^19")
    if availability not in TABLE_0273:
        raise _Problem("AE", 103, "TXA-19 is not a table 0273 value", "TXA^1^19")
    parent = _key(_f(txa, 13), seps)
    if event in ("T06", "T10") and not _comp(_f(txa, 13), 1, seps):
        raise _Problem("AE", 101, f"TXA-13 parent document number is required on {event}",
                       "TXA^1^13")
    obx = []
    for i in obx_at:
        seg = msg[i]
        texts = [msg.unescape(rep, app_map={".br": "\n"})
                 for rep in _f(seg, 5).split(seps[2])]
        obx.append({"set_id": _f(seg, 1), "value_type": _f(seg, 2),
                    "observation_id": _comp(_f(seg, 3), 1, seps),
                    "text": "\n".join(texts)})
    if event in CONTENT_EVENTS and not any(o["text"] for o in obx):
        raise _Problem("AE", 101, "OBX-5 observation value (the note text) is empty",
                       "OBX^1^5")
    return {"key": doc_key, "parent": parent or None, "patient": patient,
            "document_type": _comp(_f(txa, 2), 1, seps), "completion": completion,
            "availability": availability, "obx": obx,
            "text": "\n".join(o["text"] for o in obx)}

