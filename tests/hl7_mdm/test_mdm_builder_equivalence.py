"""The fast MDM builder refuses exactly what hl7apy's STRICT build refuses, and writes the
same bytes for everything else (adapters/hl7_mdm/builder.py, module doc).

`_build_fast` is compared on its own (without `build()`'s once-per-shape hl7apy check), on
the contract suite's bad-message cases and on a generated corpus that walks every value the
builder writes across its element's length limit, with delimiters, escapes and line breaks.
"""
from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chartbridge.adapters.hl7_mdm import builder
from chartbridge.adapters.hl7_mdm.builder import MdmSettings, Vocabulary, build, build_strict
from chartbridge.core.errors import InputError, PermanentError
from chartbridge.core.models import (Approval, ApprovalState, Identifier, NoteDraft,
                                     NoteSection, Provenance, WriteCommand, WriteKind)

T0 = datetime(2026, 11, 21, 15, 0, tzinfo=timezone.utc)
PROV = Provenance(transcriber="t", transcriber_model="m", generator="g", generator_version="1",
                  template_id="p", template_version="1")


def vocab(txa2: str = "PR", code: str | None = None, title: str = "Assessment and plan",
          system: str = "LN") -> Vocabulary:
    return Vocabulary(txa2=lambda c: txa2, obx3=lambda c: (code or c, title, system),
                      title=lambda c: title, note_type=lambda c: (c or "11506-3", title))


def make(*, texts=("Cough.", "Plan."), patient_ids=None, approver=None, approver_name="Jane Doe",
         user=None, kind=WriteKind.CREATE, parent=None, available=None, approved=True,
         encounter=True, titles=None) -> WriteCommand:
    titles = titles or [None] * len(texts)
    draft = NoteDraft(id="d1", session_id="s", version=1, provenance=PROV, created_at=T0,
                      sections=[NoteSection(code=f"1000{i}-1", title=titles[i], text=t)
                                for i, t in enumerate(texts)])
    approval = None
    if approved:
        approval = Approval(draft_id="d1", draft_version=1, content_hash=draft.content_hash(),
                            approver=approver or Identifier(value="123", type="NPI",
                                                            system="2.16.840.1.113883.4.6"),
                            approver_name=approver_name, role="physician",
                            decision="approved", at=T0)
    extra = {} if available is None else {"parent_available": available}
    return WriteCommand(
        org_id="o", target="hl7_mdm", session_id="s", encounter_key="E1", note_version=1,
        resource_kind="MDM", correlation_id="c", kind=kind, parent_external_id=parent,
        approval_state=ApprovalState.APPROVED if approved else ApprovalState.PRELIMINARY,
        patient_ids=patient_ids if patient_ids is not None else
        [Identifier(value="MRN1", type="MRN", system="urn:oid:1.2.3")],
        encounter_ids=[Identifier(value="CSN1", type="CSN")] if encounter else [],
        user=user, draft=draft, approval=approval, extra=extra)


def verdict(fn, command, mdm_settings, voc):
    """("ok", er7) or ("refused", error class)."""
    try:
        return "ok", fn(command, mdm_settings, voc).er7
    except (InputError, PermanentError) as exc:
        return "refused", type(exc).__name__


def assert_same(command, mdm_settings=MdmSettings(), voc=None):
    voc = voc or vocab()
    strict = verdict(build_strict, command, mdm_settings, voc)
    fast = verdict(builder._build_fast, command, mdm_settings, voc)
    assert fast == strict
    return strict[0]


# -- the contract suite's bad messages, and the limits around them ----------------------------
BAD = {
    "control character in text": dict(texts=("bad \x07 bell",)),
    "identifier over CX.1 (ST 199)": dict(patient_ids=[Identifier(value="Z" * 300, type="MRN")]),
    "identifier over CX.1 once escaped": dict(
        patient_ids=[Identifier(value="|" * 67, type="MRN")]),
    "namespace over HD.1 (IS 20)": dict(
        patient_ids=[Identifier(value="1", type="MRN", system="N" * 21)]),
    "identifier type over CX.5": dict(patient_ids=[Identifier(value="1", type="T" * 300)]),
    "approver surname over FN.1": dict(approver_name="Given " + "F" * 200),
    "text over FT 65536": dict(texts=("x" * 65537,)),
    "no patient identifier": dict(patient_ids=[]),
    "edit of an available document": dict(kind=WriteKind.EDIT, parent="CB1", available=True),
    "replace without availability": dict(kind=WriteKind.REPLACE, parent="CB1"),
    "create naming a parent": dict(parent="CB1"),
    "parent over EI.1": dict(kind=WriteKind.APPEND, parent="P" * 200, available=True),
    "empty draft": dict(texts=("  ",)),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_messages_are_refused_by_both_paths(case):
    assert assert_same(make(**BAD[case])) == "refused"
    with pytest.raises((InputError, PermanentError)):
        build(make(**BAD[case]), MdmSettings(), vocab())


@pytest.mark.parametrize("name,value", [("sending_application", "A" * 21),
                                        ("receiving_facility", "F|" * 7)])
def test_header_values_over_their_limit_are_refused_by_both_paths(name, value):
    s = dataclasses.replace(MdmSettings(), **{name: value})
    assert assert_same(make(), s) == "refused"


@pytest.mark.parametrize("voc", [vocab(txa2="T" * 21), vocab(code="C" * 200),
                                 vocab(title="T" * 200)])
def test_vocabulary_values_over_their_limit_are_refused_by_both_paths(voc):
    assert assert_same(make(), voc=voc) == "refused"


def test_values_at_their_limit_are_accepted_by_both_paths():
    # ID (e.g. OBX-3.3, the coding system) has no length of its own in hl7apy
    assert assert_same(make(), voc=vocab(system="S" * 300)) == "ok"
    cmd = make(patient_ids=[Identifier(value="Z" * 199, type="MRN", system="N" * 20)],
               texts=("x" * 65536,), approver_name="Given " + "F" * 199)
    assert assert_same(cmd, voc=vocab(txa2="T" * 20, code="C" * 199)) == "ok"


# -- a generated corpus --------------------------------------------------------------------
CLEAN = list("abcXYZ019 .,:-") + ["|", "^", "&", "~", "\\", "é", "\\F\\", "\\.br\\"]
DIRTY = st.sampled_from(["\n", "\r\n", "\x07"])
CHARS = st.one_of(*[st.sampled_from(CLEAN)] * 12, DIRTY)


def text(min_size=0, max_size=30, chars=CHARS):
    return st.lists(chars, min_size=min_size, max_size=max_size).map("".join)


def mostly(likely, unlikely, odds=9):
    """`likely` about `odds` times in `odds + 1` (hypothesis draws 0 first: 0 = likely)."""
    return st.integers(0, odds).flatmap(lambda i: unlikely if i == odds else likely)


def near(limit: int, char: str = "a"):
    """A value of about `limit` characters (either side), sometimes with a delimiter that
    escaping turns into three."""
    return st.tuples(st.integers(limit - 3, limit + 3), st.sampled_from([char, "|"])).map(
        lambda t: (t[1] if t[1] == char else "") + char * (t[0] - (3 if t[1] == "|" else 0)))


value = mostly(text(1, 12, st.sampled_from(CLEAN)),
               st.one_of(text(1, 12), near(20, "N"), near(199, "V")), odds=4)
nonempty = value.filter(lambda v: v.strip() != "")
identifier = st.builds(
    Identifier, value=nonempty,
    type=st.one_of(st.sampled_from(["MRN", "CSN", "NPI", "EXTERNAL", "FHIR", "epi"]), nonempty),
    system=st.one_of(st.none(), st.just("urn:oid:1.2.840.1"), st.just("2.16.840.1.113883.4.6"),
                     st.just("https://ids.example.org/p"), value))
section_text = mostly(text(0, 40), near(65536, "t"), odds=4)


LEGAL = {WriteKind.CREATE: (False, None), WriteKind.EDIT: (True, False),
         WriteKind.CANCEL: (True, False), WriteKind.REPLACE: (True, True),
         WriteKind.APPEND: (True, True)}


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(list(builder.EVENTS)))
    parent = draw(st.one_of(st.just("CB00000000000000000000000000001"), value))
    has_parent, available = LEGAL[kind]
    if draw(mostly(st.just(False), st.just(True))):    # now and then an illegal transition
        has_parent, available = draw(st.booleans()), draw(st.one_of(st.none(), st.booleans()))
    cmd = make(texts=draw(st.lists(section_text, min_size=1, max_size=3)),
               patient_ids=draw(mostly(st.lists(identifier, min_size=1, max_size=3),
                                       st.just([]))),
               approver=draw(st.one_of(st.none(), identifier)),
               approver_name=draw(st.one_of(st.none(), value)),
               user=draw(st.one_of(st.none(), identifier)), kind=kind,
               parent=parent if has_parent else None, available=available,
               approved=draw(st.booleans()), encounter=draw(st.booleans()))
    cmd.draft.sections[0].title = draw(st.one_of(st.none(), value))
    s = MdmSettings(sending_application=draw(st.one_of(st.just("CHARTBRIDGE"), near(20, "S"))),
                    receiving_facility=draw(mostly(st.just("EHR"), text(1, 25), odds=3)),
                    processing_id=draw(st.sampled_from("PTD")),
                    obx_mode=draw(st.sampled_from(["per_section", "per_note"])),
                    value_type=draw(st.sampled_from(["FT", "TX"])),
                    ack_mode=draw(st.sampled_from(["original", "enhanced"])),
                    accept_ack=draw(st.sampled_from(["AL", "NE"])),
                    application_ack=draw(st.sampled_from(["AL", "NE"])))
    voc = vocab(txa2=draw(st.one_of(st.just("PR"), near(20, "T"))),
                code=draw(st.one_of(st.none(), value)), title=draw(nonempty),
                system=draw(st.one_of(st.just("LN"), value)))
    return cmd, s, voc


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(cases())
def test_generated_messages_get_the_same_verdict_and_bytes_from_both_paths(case):
    cmd, s, voc = case
    assert_same(cmd, s, voc)


# -- build(): hl7apy once per shape ------------------------------------------------------------
def test_build_asks_hl7apy_once_per_message_shape(monkeypatch):
    calls = []
    real = builder.build_strict
    monkeypatch.setattr(builder, "_verified_shapes", set())
    monkeypatch.setattr(builder, "build_strict", lambda *a: calls.append(1) or real(*a))
    for i in range(5):      # same shape: values differ, skeleton does not
        build(make(texts=(f"Cough {i}.", "Plan " * i + ".")), MdmSettings(), vocab())
    assert len(calls) == 1
    build(make(texts=("One section only.",)), MdmSettings(), vocab())    # a new shape
    assert len(calls) == 2


def test_build_sends_hl7apys_rendering_when_the_fast_path_disagrees(monkeypatch):
    monkeypatch.setattr(builder, "_verified_shapes", set())
    real = builder._build_fast
    monkeypatch.setattr(builder, "_build_fast", lambda *a: dataclasses.replace(
        real(*a), er7=real(*a).er7.replace("PV1|1|U", "PV1|1|X")))
    cmd = make()
    assert build(cmd, MdmSettings(), vocab()).er7 == build_strict(cmd, MdmSettings(),
                                                                  vocab()).er7
    assert not builder._verified_shapes
