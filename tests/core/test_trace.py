"""Traceability (core/trace.py): every clinical term of a draft comes from the segments
it cites; draft_note marks what does not, before the draft is stored."""
from __future__ import annotations

import pytest

from chartbridge.core import usecases as uc
from chartbridge.core.models import NoteSection, TranscriptSegment
from chartbridge.core.ports import GeneratedNote
from chartbridge.core.trace import check_sections, normalise, untraced_terms
from chartbridge.ledger.store import SqlStore

from test_usecases import ORG, WordsTranscriber, _announce_and_transcribe, begin


def seg(i, text):
    return TranscriptSegment(id=f"R1/1/{i}", session_id="s", recording_id="R1",
                             chunk_sequence=1, start_ms=i, end_ms=i + 1, text=text,
                             confidence=-0.1)


SEGS = [seg(0, "I have had a cough for about four days."),
        seg(1, "The plan is amoxicillin 1 gram three times a day for 5 days.")]


def test_numbers_inflections_and_framing_words_trace():
    assert normalise("101.2 and 94%") == "one hundred one point two and ninety four percent"
    # "Reports", "coughing", "4" are the transcript's "have had", "cough", "four"
    assert untraced_terms("Reports coughing for 4 days.", [SEGS[0].text]) == []
    assert untraced_terms("Amoxicillin one gram 3 times a day for five days.",
                          [SEGS[1].text]) == []


def test_invented_drug_dose_and_diagnosis_are_marked():
    sections = [NoteSection(code="10164-2", text="Reports cough for 4 days.",
                            segment_ids=["R1/1/0"]),
                NoteSection(code="51847-2", text="Pneumonia. Amoxicillin 500 mg and metformin.",
                            segment_ids=["R1/1/1"]),
                NoteSection(code="29545-1", text="Crackles.", segment_ids=[])]
    out = {s.code: s.untraced for s in check_sections(sections, SEGS)}
    assert out["10164-2"] == []
    # the dose, the drug and the diagnosis are not in the cited segment
    assert out["51847-2"] == ["pneumonia", "five_hundred", "mg", "metformin"]
    assert out["29545-1"] == ["crackles"]                       # cites nothing
    # a term said in another segment than the one cited is not traced either
    wrong = NoteSection(code="10164-2", text="Cough.", segment_ids=["R1/1/1"])
    assert check_sections([wrong], SEGS)[0].untraced == ["cough"]


class InventingGenerator:
    name, version = "inventing", "1"

    def generate(self, segments, *, allowed_sections, note_type=None, settings=None):
        ids = [s.id for s in segments]
        return GeneratedNote([NoteSection(code="10164-2", text="Words. Metformin 500 mg.",
                                          segment_ids=ids[:1]),
                              NoteSection(code="51847-2", text="Words.", segment_ids=ids)],
                             "t", "1")


@pytest.fixture
def store(db, clock):
    return SqlStore(db, clock)


def test_draft_note_marks_untraced_sections_before_storing(store, clock):
    s, _ = begin(store, clock)
    (rec,) = _announce_and_transcribe(store, clock, s, WordsTranscriber(), 1, order=[1])
    draft = uc.draft_note(store, clock, InventingGenerator(), WordsTranscriber(), org_id=ORG,
                          session=s, recording=rec)
    stored, _ = store.get_draft(ORG, draft.id)
    assert [(x.code, x.untraced) for x in stored.sections] == [
        ("10164-2", ["metformin", "five_hundred", "mg"]), ("51847-2", [])]


def test_a_clinicians_edit_drops_the_machine_provenance_of_that_section(store, clock):
    s, _ = begin(store, clock)
    (rec,) = _announce_and_transcribe(store, clock, s, WordsTranscriber(), 1, order=[1])
    draft = uc.draft_note(store, clock, InventingGenerator(), WordsTranscriber(), org_id=ORG,
                          session=s, recording=rec)
    edited = uc.edit_draft(store, clock, org_id=ORG, draft_id=draft.id, section_code="10164-2",
                           text="Cough for four days, as I examined.", editor="dr-a")
    # the clinician's text is theirs: no stale "untraced" marker from the machine draft
    assert edited.section("10164-2").untraced == [] and edited.section("10164-2").sources == []
