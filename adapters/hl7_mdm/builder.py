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

Two paths, one verdict. `build_strict()` is the hl7apy build + STRICT validation (~10 ms a
message). `build()` writes the same ER7 with string joins and checks every value it writes
against the maximum length of that element's base datatype, read from hl7apy's own 2.5.1
reference (`_limit`): under STRICT validation, a value over its base type's length is the
only per-value refusal hl7apy makes for what this builder writes (table and field-length
checks are warnings in hl7apy's `Validator`; timestamps and set ids are ours). Everything
else hl7apy checks — segments, groups, cardinality, datatypes — depends only on the
message's *shape*: its delimiter skeleton (the ER7 with every run of content replaced by
`x`). The first message of each shape is also built by `build_strict()`; the shape is
remembered only if hl7apy accepts it and writes byte-identical ER7, otherwise hl7apy's
verdict (its error, or its ER7) is what is returned. tests/hl7_mdm/test_builder_equivalence.py
compares the two paths on the bad-message cases and a generated corpus.
"""
from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache

from hl7apy import load_library, load_reference
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Component, Message
from hl7apy.exceptions import HL7apyException

from chartbridge.core.errors import InputError, PermanentError
from chartbridge.core.models import ApprovalState, Identifier, WriteCommand, WriteKind

log = logging.getLogger("chartbridge.adapters.hl7_mdm")

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


def token(value: str, where: str) -> str:
    """A coded value, identifier or name: surrounding whitespace dropped, then escaped
    (hl7apy strips some components and not others; stripping first makes both paths and
    every receiver see the same value)."""
    return escape(value.strip(), where)


def lines(text: str) -> list[str]:
    return re.split(r"\r\n|\r|\n", text)


def ts(at: datetime) -> str:
    """HL7 DTM to the second with an explicit UTC offset."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return at.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S+0000")


Check = Callable[..., str]


def _unchecked(value: str, *path: object) -> str:
    return value


@lru_cache(maxsize=None)
def _limit(field_name: str, *path: int) -> int | None:
    """Maximum length hl7apy's STRICT validation allows for the leaf at `path` (component,
    subcomponent) of `field_name`, from hl7apy's 2.5.1 reference and base datatypes."""
    ref = load_reference(field_name, "Field", VERSION)
    for index in path:
        if ref[0] != "sequence":
            break                              # a leaf addressed as its first component
        ref = ref[1][index - 1][1]
    if ref[0] == "sequence":                   # a composite given as one value: its first leaf
        return _limit_of_leaf(ref[1][0][1])
    return _limit_of_leaf(ref)


def _limit_of_leaf(ref) -> int | None:
    if ref[0] == "sequence":
        return _limit_of_leaf(ref[1][0][1])
    base = load_library(VERSION).get_base_datatypes()[ref[2]]
    try:
        return base("").max_length
    except TypeError:                          # numeric / date types take no text
        return base().max_length


def _checked(value: str, where: str, field_name: str, *path: int) -> str:
    """The fast path's per-value check: refuse a value over its element's length (naming
    our field, never quoting the value)."""
    limit = _limit(field_name, *path)
    if limit is not None and len(value) > limit:
        raise InputError(f"the value is too long for {field_name} ({limit} characters "
                         "escaped)", field=where)
    return value


def _hd(system: str | None, fallback: str, where: str, check: Check = _unchecked,
        at: tuple = ()) -> str:
    """HD (assigning authority): an OID as &oid&ISO, a URI as &uri&URI, else a namespace."""
    if system:
        m = _OID.match(system.strip())
        if m:
            return f"&{check(m.group(2), where, *at, 2)}&ISO"
        if ":" in system:
            return f"&{check(token(system, where), where, *at, 2)}&URI"
        return check(token(system, where), where, *at, 1)
    return check(token(fallback, where), where, *at, 1)


def cx(ident: Identifier, where: str, check: Check = _unchecked, at: str = "PID_3") -> str:
    """CX: ID^^^assigning authority^identifier type code."""
    id_type = ID_TYPES.get(ident.type.upper(), ident.type)
    return "^".join([check(token(ident.value, where), where, at, 1), "", "",
                     _hd(ident.system, ident.type, where, check, (at, 4)),
                     check(token(id_type, where), where, at, 5)]).rstrip("^")


def xcn(ident: Identifier, name: str | None, where: str, check: Check = _unchecked,
        at: str = "TXA_9") -> str:
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
    parts = [check(token(ident.value, where), where, at, 1),
             check(token(family, where), where, at, 2, 1),
             check(token(given, where), where, at, 3),
             "", "", "", "", "", _hd(ident.system, ident.type, where, check, (at, 9))]
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
    """The validated ER7 message for `command` (fast path; see the module doc). Raises
    PermanentError for an illegal transition and InputError (naming the field) for content
    that cannot be sent — the same messages `build_strict` refuses."""
    fast = _build_fast(command, settings, vocab)
    shape = (fast.event, _SKELETON.sub("x", fast.er7))
    if shape in _verified_shapes:
        return fast
    strict = build_strict(command, settings, vocab)      # hl7apy's verdict for a new shape
    if strict.er7 != fast.er7:
        log.warning("mdm: the fast builder disagrees with hl7apy for a message shape; "
                    "sending hl7apy's rendering", extra={"event": fast.event})
        return strict
    with _shapes_lock:
        if len(_verified_shapes) >= _MAX_SHAPES:
            _verified_shapes.clear()
        _verified_shapes.add(shape)
    return fast


_SKELETON = re.compile(r"[^|^~&\r]+")
_MAX_SHAPES = 4096
_verified_shapes: set[tuple[str, str]] = set()
_shapes_lock = threading.Lock()


def build_strict(command: WriteCommand, settings: MdmSettings, vocab: Vocabulary) -> Rendered:
    """The message built and validated by hl7apy (VALIDATION_LEVEL.STRICT): the reference
    the fast path is checked against."""
    try:
        return _build_strict(command, settings, vocab)
    except (HL7apyException, ValueError) as exc:
        # hl7apy's own messages may quote the value (PHI): keep only the element's name
        raise InputError(f"the MDM message does not validate: {type(exc).__name__}",
                         field=_element_named(str(exc))) from None


@dataclass(frozen=True)
class _Common:
    event: str
    structure: str
    doc_number: str
    parent_number: str | None
    control_id: str
    stamp: str
    completion: str
    availability: str
    note_type: str | None


def _common(command: WriteCommand) -> _Common:
    event, doc_number, parent_number = plan(command)
    if not command.patient_ids:
        raise InputError("at least one patient identifier is required", field="patient_ids")
    draft = command.draft
    if event != "T11" and (draft is None or not any(s.text.strip() for s in draft.sections)):
        raise InputError(f"{event} needs a draft with text", field="draft.sections")
    if command.approval is not None:
        at = command.approval.at
    elif draft is not None:
        at = draft.created_at
    else:
        raise InputError("a draft or an approval is needed for the message time", field="draft")
    completion, availability = status_codes(command)
    return _Common(event, STRUCTURE[event], doc_number, parent_number,
                   control_id_for(command.idempotency_key()), ts(at), completion,
                   availability, command.extra.get("note_type"))


def _observations(command: WriteCommand, settings: MdmSettings, vocab: Vocabulary,
                  note_type: str | None) -> list[tuple[tuple[str, str, str], str, str]]:
    """[(OBX-3 (code, text, system), body, where)] in message order."""
    draft = command.draft
    assert draft is not None
    if settings.obx_mode == "per_note":
        blocks = []
        for s in draft.sections:
            if s.text.strip():
                blocks.append(f"{s.title or vocab.title(s.code)}:\n{s.text}")
        code, name = vocab.note_type(note_type)
        return [((code, name, "LN"), "\n\n".join(blocks), "draft")]
    return [(vocab.obx3(s.code), s.text, f"draft.sections[{i}]")
            for i, s in enumerate(draft.sections) if s.text.strip()]


def _build_fast(command: WriteCommand, settings: MdmSettings, vocab: Vocabulary) -> Rendered:
    """The same ER7 as `_build_strict`, written with joins; every value is length-checked
    against its element (`_checked`)."""
    c = _common(command)
    ck = _checked
    draft = command.draft
    msh = ["MSH", "^~\\&", ck(token(settings.sending_application, "MSH-3"), "MSH-3", "MSH_3", 1),
           ck(token(settings.sending_facility, "MSH-4"), "MSH-4", "MSH_4", 1),
           ck(token(settings.receiving_application, "MSH-5"), "MSH-5", "MSH_5", 1),
           ck(token(settings.receiving_facility, "MSH-6"), "MSH-6", "MSH_6", 1),
           c.stamp, "", f"MDM^{c.event}^{c.structure}", c.control_id,
           settings.processing_id, VERSION]
    if settings.ack_mode == "enhanced":
        msh += ["", "", settings.accept_ack, settings.application_ack]
    segments = ["|".join(msh),
                f"EVN|{c.event}|{c.stamp}",
                "PID|1||" + "~".join(cx(ident, f"patient_ids[{i}]", ck, "PID_3")
                                      for i, ident in enumerate(command.patient_ids))
                + "||^^^^^^U"]
    pv1 = ["PV1", "1", settings.patient_class]
    if command.encounter_ids:
        pv1 += [""] * 16 + [cx(command.encounter_ids[0], "encounter_ids[0]", ck, "PV1_19")]
    segments.append("|".join(pv1))

    txa = ["TXA", "1", ck(token(vocab.txa2(c.note_type), "TXA-2"), "TXA-2", "TXA_2"),
           settings.value_type] + [""] * 16
    if draft is not None:
        txa[4] = txa[6] = ts(draft.created_at)
    if command.user is not None:
        txa[5] = xcn(command.user, None, "user", ck, "TXA_5")
    if command.approval is not None:
        ap = command.approval
        txa[9] = xcn(ap.approver, ap.approver_name, "approval.approver", ck, "TXA_9")
        txa[10] = xcn(ap.approver, ap.approver_name, "approval.approver", ck, "TXA_10")
    elif command.user is not None:
        txa[9] = xcn(command.user, None, "user", ck, "TXA_9")
    txa[12] = ck(escape(c.doc_number, "TXA-12"), "TXA-12", "TXA_12", 1)
    if c.parent_number:
        txa[13] = ck(token(c.parent_number, "parent_external_id"), "parent_external_id",
                     "TXA_13", 1)
    txa[17], txa[19] = c.completion, c.availability
    segments.append("|".join(txa[:20]).rstrip("|"))

    if c.event != "T11":
        result_status = "F" if c.completion in ("AU", "DO") else "P"
        limit = _limit_of_leaf(("leaf", None, settings.value_type))
        obxs = _observations(command, settings, vocab, c.note_type)
        for n, ((code, text, system), body, where) in enumerate(obxs, start=1):
            obx3 = "^".join([ck(token(code, where + ".code"), where + ".code", "OBX_3", 1),
                             ck(token(text, where + ".title"), where + ".title", "OBX_3", 2),
                             ck(token(system, where + ".system"), where + ".system",
                                "OBX_3", 3)]).rstrip("^")
            if settings.value_type == "FT":
                values = [_BR.join(escape(line, where + ".text") for line in lines(body))]
            else:
                values = [escape(line, where + ".text") for line in lines(body)]
            for value in values:
                if limit is not None and len(value) > limit:
                    raise InputError(f"the text is too long for one {settings.value_type} "
                                     "value", field=where + ".text")
            segments.append(f"OBX|{n}|{settings.value_type}|{obx3}||" + "~".join(values)
                            + f"||||||{result_status}")
    er7 = "\r".join(segments).replace(_BR, "\\.br\\")
    return Rendered(er7=er7 + "\r", control_id=c.control_id, document_number=c.doc_number,
                    parent_document_number=c.parent_number, event=c.event)


def _build_strict(command: WriteCommand, settings: MdmSettings, vocab: Vocabulary) -> Rendered:
    c = _common(command)
    event, doc_number, parent_number = c.event, c.doc_number, c.parent_number
    draft = command.draft
    control_id, stamp, note_type = c.control_id, c.stamp, c.note_type
    completion, availability = c.completion, c.availability

    structure = STRUCTURE[event]
    msg = Message(structure, version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    msh = msg.msh
    msh.msh_3 = token(settings.sending_application, "MSH-3")
    msh.msh_4 = token(settings.sending_facility, "MSH-4")
    msh.msh_5 = token(settings.receiving_application, "MSH-5")
    msh.msh_6 = token(settings.receiving_facility, "MSH-6")
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
    txa.txa_2 = token(txa2, "TXA-2")
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
        txa.txa_13 = token(parent_number, "parent_external_id")
    txa.txa_17 = completion
    txa.txa_19 = availability

    if event != "T11":
        assert draft is not None
        result_status = "F" if completion in ("AU", "DO") else "P"
        obx_list = _observations(command, settings, vocab, note_type)
        for n, ((code, text, system), body, where) in enumerate(obx_list, start=1):
            group = msg.add_group("MDM_T02_OBXNTE_SUPPGRP")
            obx = group.add_segment("OBX")
            obx.obx_1 = str(n)
            obx.obx_2 = settings.value_type
            obx.obx_3 = "^".join([token(code, where + ".code"), token(text, where + ".title"),
                                  token(system, where + ".system")])
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
