"""Render an HL7 v2.5.1 MDM message from a canonical WriteCommand (hl7apy, validated).

Trigger events (HL7 v2.5.1 chapter 9):
    WriteKind.CREATE  -> T02 original document notification and content   (MDM_T02)
    WriteKind.EDIT    -> T08 edit notification and content, SAME TXA-12, only while the
                         document is unavailable                          (MDM_T02)
    WriteKind.REPLACE -> T10 replacement: new TXA-12, TXA-13 = the original (MDM_T02)
    WriteKind.APPEND  -> T06 addendum: new TXA-12, TXA-13 = the original   (MDM_T02)
    WriteKind.CANCEL  -> T11 cancel, no OBX, only while unavailable        (MDM_T01)

The command says whether the document it corrects is available for patient care in
`command.extra["parent_available"]` (bool); an illegal transition is refused with a
PermanentError whose `rule` field names the rule, before anything is sent.

Identifiers derive from `command.idempotency_key()` (never time or randomness):
    MSH-10 = "CB" + 18 hex of sha256("msh10|" + key)        (20 chars, ST max in 2.5.1)
    TXA-12 = "CB" + 30 hex of sha256("txa12|" + key)        (new documents)
           = command.parent_external_id                     (T08 edit, T11 cancel)
Times come from the approval (or the draft), never from now().

Escaping: every value is escaped here (`\\E\\` first, then `\\F\\ \\S\\ \\T\\ \\R\\`) and handed to
hl7apy as ER7; hl7apy's own escaping leaves those sequences alone (its regex skips
`\\[HNFSTRE]\\`). Line breaks in FT become `\\.br\\` (hl7apy would escape the backslashes of
`\\.br\\`, so the builder puts a placeholder control character in and swaps it after
`to_er7()`; control characters are refused in input, so the placeholder is unambiguous).
In TX, each line is one repetition of OBX-5.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Component, Message
from hl7apy.exceptions import HL7apyException

from chartbridge.core.errors import InputError, PermanentError
from chartbridge.core.models import ApprovalState, Identifier, WriteCommand, WriteKind

VERSION = "2.5.1"
EVENTS = {WriteKind.CREATE: "T02", WriteKind.EDIT: "T08", WriteKind.REPLACE: "T10",
          WriteKind.APPEND: "T06", WriteKind.CANCEL: "T11"}
STRUCTURE = {"T02": "MDM_T02", "T06": "MDM_T02", "T08": "MDM_T02", "T10": "MDM_T02",
             "T11": "MDM_T01"}
# canonical identifier types -> HL7 table 0203 identifier type codes (others kept as sent)
ID_TYPES = {"MRN": "MR", "MR": "MR", "SSN": "SS", "CSN": "VN", "FIN": "AN", "EXTERNAL": "PT",
            "FHIR": "PI", "EPI": "PI"}
_BR = "\x1e"                                   # placeholder for \.br\ (see module doc)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_OID = re.compile(r"^(urn:oid:)?([0-2](\.\d+)+)$")


@dataclass(frozen=True)
class Vocabulary:
    """What the builder needs from the org's code tables (chartbridge.mappings)."""

    txa2: Callable[[str | None], str]                      # note type code -> TXA-2
    obx3: Callable[[str], tuple[str, str, str]]            # section code -> code, text, system
    title: Callable[[str], str]                            # section code -> heading
    note_type: Callable[[str | None], tuple[str, str]] = (  # note type -> OBX-3 code, name
        lambda code: (code or "11506-3", "Progress note"))


@dataclass(frozen=True)
class MdmSettings:
    sending_application: str = "CHARTBRIDGE"
    sending_facility: str = "CHARTBRIDGE"
    receiving_application: str = "EHR"
    receiving_facility: str = "EHR"
    processing_id: str = "P"
    obx_mode: str = "per_section"              # per_section | per_note
    value_type: str = "FT"                     # FT | TX
    ack_mode: str = "original"                 # original | enhanced
    accept_ack: str = "AL"                     # MSH-15 in enhanced mode
    application_ack: str = "NE"                # MSH-16 in enhanced mode
    patient_class: str = "U"                   # PV1-2 (table 0004; U = unknown)


@dataclass(frozen=True)
class Rendered:
    er7: str                                   # segments joined by \r, no MLLP framing
    control_id: str                            # MSH-10
    document_number: str                       # TXA-12
    parent_document_number: str | None         # TXA-13
    event: str
    extras: dict = field(default_factory=dict)


def control_id_for(key: str) -> str:
    return "CB" + hashlib.sha256(f"msh10|{key}".encode()).hexdigest()[:18].upper()


def document_number_for(key: str) -> str:
    return "CB" + hashlib.sha256(f"txa12|{key}".encode()).hexdigest()[:30].upper()


def escape(value: str, where: str, *, allow_newlines: bool = False) -> str:
    """ER7-escape one value. Control characters are refused (naming the field)."""
    if not allow_newlines and ("\r" in value or "\n" in value):
        raise InputError("line breaks are not allowed here", field=where)
    if _CONTROL.search(value):
        raise InputError("control characters are not allowed", field=where)
    return (value.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
            .replace("&", "\\T\\").replace("~", "\\R\\"))


def lines(text: str) -> list[str]:
    return re.split(r"\r\n|\r|\n", text)


def ts(at: datetime) -> str:
    """HL7 DTM to the second with an explicit UTC offset."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return at.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S+0000")


def _hd(system: str | None, fallback: str, where: str) -> str:
    """HD (assigning authority): an OID as &oid&ISO, a URI as &uri&URI, else a namespace."""
    if system:
        m = _OID.match(system.strip())
        if m:
            return f"&{m.group(2)}&ISO"
        if ":" in system:
            return f"&{escape(system, where)}&URI"
        return escape(system, where)
    return escape(fallback, where)


def cx(ident: Identifier, where: str) -> str:
    """CX: ID^^^assigning authority^identifier type code."""
    id_type = ID_TYPES.get(ident.type.upper(), ident.type)
    return "^".join([escape(ident.value, where), "", "", _hd(ident.system, ident.type, where),
                     escape(id_type, where)])


def xcn(ident: Identifier, name: str | None, where: str) -> str:
    """XCN: ID^family^given^^^^^^assigning authority. A display name "Given Family" or
    "Family, Given" is split; anything else goes in the family component."""
    family = given = ""
    if name:
        if "," in name:
            family, _, given = (p.strip() for p in name.partition(","))
        elif " " in name.strip():
            given, _, family = name.strip().rpartition(" ")
        else:
            family = name.strip()
    parts = [escape(ident.value, where), escape(family, where), escape(given, where),
             "", "", "", "", "", _hd(ident.system, ident.type, where)]
    return "^".join(parts).rstrip("^")


def plan(command: WriteCommand) -> tuple[str, str, str | None]:
    """(event, TXA-12, TXA-13) for a command; refuses illegal transitions by name."""
    kind = WriteKind(command.kind)
    event = EVENTS.get(kind)
    if event is None:
        raise PermanentError(f"the hl7_mdm target cannot perform a {kind.value} write",
                             vendor_code="unsupported_kind", rule="mdm_kind")
    key = command.idempotency_key()
    parent = command.parent_external_id
    if kind == WriteKind.CREATE:
        if parent:
            raise PermanentError("a create names no parent document; use replace or append",
                                 vendor_code="illegal_transition", rule="mdm_t02_no_parent")
        return event, document_number_for(key), None
    if not parent:
        raise PermanentError(f"a {kind.value} write needs parent_external_id (the TXA-12 of "
                             "the document it changes)", vendor_code="illegal_transition",
                             rule="mdm_parent_required", field="parent_external_id")
    available = command.extra.get("parent_available")
    if not isinstance(available, bool):
        raise PermanentError("extra.parent_available (true/false) is required for a "
                             f"{kind.value} write", vendor_code="illegal_transition",
                             rule="mdm_parent_availability", field="extra.parent_available")
    if kind in (WriteKind.EDIT, WriteKind.CANCEL):
        if available:
            rule = "mdm_t08_unavailable_only" if kind == WriteKind.EDIT else \
                "mdm_t11_unavailable_only"
            raise PermanentError(f"{event} is only valid while the document is unavailable "
                                 "(TXA-19 UN); an available document is changed by replace "
                                 "(T10) or append (T06)", vendor_code="illegal_transition",
                                 rule=rule)
        return event, parent, None
    if not available:
        raise PermanentError(f"{event} corrects an available document; while it is still "
                             "unavailable, edit (T08) or cancel (T11) it",
                             vendor_code="illegal_transition",
                             rule="mdm_t10_t06_available_only")
    return event, document_number_for(key), parent


def status_codes(command: WriteCommand) -> tuple[str, str]:
    """(TXA-17 completion, TXA-19 availability): IP/UN staged, AU/AV approved and signed,
    DO/AV approved without an approval record (documented)."""
    if command.approval_state == ApprovalState.PRELIMINARY:
        return "IP", "UN"
    return ("AU", "AV") if command.approval is not None else ("DO", "AV")


def _set(segment, name: str, er7: str) -> None:
    if er7:
        setattr(segment, name, er7)


def build(command: WriteCommand, settings: MdmSettings, vocab: Vocabulary) -> Rendered:
    """The validated ER7 message for `command`. Raises PermanentError for an illegal
    transition and InputError (naming the field) for content that cannot be sent."""
    try:
        return _build(command, settings, vocab)
    except (HL7apyException, ValueError) as exc:
        # hl7apy's own messages may quote the value (PHI): keep only the element's name
        raise InputError(f"the MDM message does not validate: {type(exc).__name__}",
                         field=_element_named(str(exc))) from None


def _build(command: WriteCommand, settings: MdmSettings, vocab: Vocabulary) -> Rendered:
    event, doc_number, parent_number = plan(command)
    if not command.patient_ids:
        raise InputError("at least one patient identifier is required", field="patient_ids")
    draft = command.draft
    if event != "T11" and (draft is None or not any(s.text.strip() for s in draft.sections)):
        raise InputError(f"{event} needs a draft with text", field="draft.sections")
    key = command.idempotency_key()
    control_id = control_id_for(key)
    if command.approval is not None:
        at = command.approval.at
    elif draft is not None:
        at = draft.created_at
    else:
        raise InputError("a draft or an approval is needed for the message time", field="draft")
    stamp = ts(at)
    completion, availability = status_codes(command)
    note_type = command.extra.get("note_type")

    structure = STRUCTURE[event]
    msg = Message(structure, version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    msh = msg.msh
    msh.msh_3 = escape(settings.sending_application, "MSH-3")
    msh.msh_4 = escape(settings.sending_facility, "MSH-4")
    msh.msh_5 = escape(settings.receiving_application, "MSH-5")
    msh.msh_6 = escape(settings.receiving_facility, "MSH-6")
    msh.msh_7 = stamp
    msh.msh_9 = f"MDM^{event}^{structure}"
    msh.msh_10 = control_id
    msh.msh_11 = settings.processing_id
    msh.msh_12 = VERSION
    if settings.ack_mode == "enhanced":
        msh.msh_15 = settings.accept_ack
        msh.msh_16 = settings.application_ack

    evn = msg.add_segment("EVN")
    evn.evn_1 = event
    evn.evn_2 = stamp

    pid = msg.add_segment("PID")
    pid.pid_1 = "1"
    for i, ident in enumerate(command.patient_ids):
        rep = pid.add_field("PID_3")
        rep.value = cx(ident, f"patient_ids[{i}]")
    # PID-5 is required in 2.5.1; the canonical command carries no patient name (the
    # receiver matches on PID-3), so the name is sent as "unspecified" (XPN.7 = U).
    pid.pid_5 = "^^^^^^U"

    pv1 = msg.add_segment("PV1")
    pv1.pv1_1 = "1"
    pv1.pv1_2 = settings.patient_class
    if command.encounter_ids:
        pv1.pv1_19 = cx(command.encounter_ids[0], "encounter_ids[0]")

    txa = msg.add_segment("TXA")
    txa.txa_1 = "1"
    try:
        txa2 = vocab.txa2(note_type)
    except InputError:
        raise
    txa.txa_2 = escape(txa2, "TXA-2")
    txa.txa_3 = settings.value_type
    if draft is not None:
        txa.txa_4 = ts(draft.created_at)
        txa.txa_6 = ts(draft.created_at)
    if command.user is not None:
        _set(txa, "txa_5", xcn(command.user, None, "user"))
    if command.approval is not None:
        ap = command.approval
        txa.txa_9 = xcn(ap.approver, ap.approver_name, "approval.approver")
        txa.txa_10 = xcn(ap.approver, ap.approver_name, "approval.approver")
    elif command.user is not None:
        txa.txa_9 = xcn(command.user, None, "user")
    txa.txa_12 = escape(doc_number, "TXA-12")
    if parent_number:
        txa.txa_13 = escape(parent_number, "parent_external_id")
    txa.txa_17 = completion
    txa.txa_19 = availability

    if event != "T11":
        assert draft is not None
        result_status = "F" if completion in ("AU", "DO") else "P"
        if settings.obx_mode == "per_note":
            blocks = []
            for s in draft.sections:
                if s.text.strip():
                    blocks.append(f"{s.title or vocab.title(s.code)}:\n{s.text}")
            code, name = vocab.note_type(note_type)
            obx_list = [((code, name, "LN"), "\n\n".join(blocks), "draft")]
        else:
            obx_list = [(vocab.obx3(s.code), s.text, f"draft.sections[{i}]")
                        for i, s in enumerate(draft.sections) if s.text.strip()]
        for n, ((code, text, system), body, where) in enumerate(obx_list, start=1):
            group = msg.add_group("MDM_T02_OBXNTE_SUPPGRP")
            obx = group.add_segment("OBX")
            obx.obx_1 = str(n)
            obx.obx_2 = settings.value_type
            obx.obx_3 = "^".join([escape(code, where + ".code"), escape(text, where + ".title"),
                                  escape(system, where + ".system")])
            if settings.value_type == "FT":
                values = [_BR.join(escape(line, where + ".text") for line in lines(body))]
            else:
                values = [escape(line, where + ".text") for line in lines(body)]
            for value in values:
                _observation_value(obx, settings.value_type, value, where + ".text")
            obx.obx_11 = result_status
    try:
        msg.validate()
        er7 = msg.to_er7()
    except HL7apyException as exc:
        # say which element, never the value (hl7apy's messages can quote it)
        raise InputError(f"the MDM message does not validate: {type(exc).__name__}",
                         field=_element_named(str(exc))) from None
    er7 = er7.replace(_BR, "\\.br\\")
    return Rendered(er7=er7 + "\r", control_id=control_id, document_number=doc_number,
                    parent_document_number=parent_number, event=event)


def _observation_value(obx, value_type: str, er7: str, where: str) -> None:
    """One repetition of OBX-5 typed as FT/TX (max 65536), not hl7apy's default for the
    `varies` field (ST, max 199): a Component named VARIES_1 with that datatype."""
    rep = obx.add_field("OBX_5")
    comp = Component("VARIES_1", datatype=value_type, version=VERSION,
                     validation_level=VALIDATION_LEVEL.STRICT)
    try:
        comp.value = er7
    except HL7apyException as exc:      # MaxLengthReached quotes the value: never pass it on
        raise InputError(f"the text is too long for one {value_type} value "
                         f"({type(exc).__name__})", field=where) from None
    rep.add(comp)


def _element_named(text: str) -> str:
    m = re.search(r"\b([A-Z]{3}(?:_\d+)*|MDM_T0[12](?:\.[A-Z0-9_]+)?)\b", text)
    return m.group(1) if m else "message"
