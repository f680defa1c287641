"""Rule-based drafting on hand-written transcripts (fast; no audio)."""
from __future__ import annotations

import pytest

from chartbridge.adapters.notegen import RuleBasedGenerator
from chartbridge.core.errors import ConfigError, InputError
from chartbridge.core.models import NoteType, TranscriptSegment

LINES = [
    "Good morning, what brings you in today?",
    "I have had a cough and a fever for about four days.",
    "Any chest pain?",
    "No chest pain, but I feel very tired.",
    "Your temperature is 101.2 and I hear crackles in the right lower lung.",
    "My assessment is community acquired pneumonia.",
    "The plan is amoxicillin one gram three times a day for five days.",
]


def segs(lines=LINES):
    return [TranscriptSegment(id=f"rec/1/{i}", session_id="s", recording_id="rec",
                              chunk_sequence=1, start_ms=i * 1000, end_ms=i * 1000 + 900,
                              text=t, confidence=-0.2) for i, t in enumerate(lines)]


def draft(allowed, lines=LINES, **kw):
    note = RuleBasedGenerator().generate(segs(lines), allowed_sections=allowed, **kw)
    return note, {s.code: s for s in note.sections}


def test_sections_assigned_with_provenance():
    # Given a short visit, all four sections allowed
    note, by = draft(["10164-2", "10187-3", "29545-1", "51847-2"])
    # Then each statement lands in its section, with the segment it came from
    assert "cough and a fever" in by["10164-2"].text and by["10164-2"].segment_ids == ["rec/1/1"]
    assert by["10187-3"].text.startswith("No chest pain") and by["10187-3"].segment_ids == ["rec/1/3"]
    assert "crackles" in by["29545-1"].text and by["29545-1"].segment_ids == ["rec/1/4"]
    assert "pneumonia" in by["51847-2"].text and "amoxicillin" in by["51847-2"].text
    assert by["51847-2"].segment_ids == ["rec/1/5", "rec/1/6"]
    # And questions and greetings are not note text
    assert all("?" not in s.text for s in note.sections)
    assert [s.code for s in note.sections] == ["10164-2", "10187-3", "29545-1", "51847-2"]
    assert (note.template_id, note.template_version) == ("default", "1")


def test_only_allowed_sections_and_split_assessment_plan():
    # Given a target that takes assessment and plan separately, and no ROS/exam
    note, by = draft(["10164-2", "51848-0", "18776-5"])
    # Then A and P are split, nothing else is produced
    assert set(by) == {"10164-2", "51848-0", "18776-5"}
    assert "pneumonia" in by["51848-0"].text and "amoxicillin" not in by["51848-0"].text
    assert "amoxicillin" in by["18776-5"].text and by["18776-5"].segment_ids == ["rec/1/6"]


def test_section_without_supporting_speech_is_omitted():
    # Given a transcript with no exam and no plan
    note, by = draft(["10164-2", "29545-1", "51847-2"], lines=LINES[:4])
    # Then only HPI is produced; nothing is invented
    assert set(by) == {"10164-2"}
    assert draft(["51847-2"], lines=[])[0].sections == []


def test_progress_note_template_labels_assessment_and_plan():
    note, by = draft(["51847-2"], note_type=NoteType(code="11506-3"))
    assert by["51847-2"].text.startswith("Assessment: My assessment is")
    assert "\nPlan: The plan is" in by["51847-2"].text
    assert (note.template_id, note.template_version) == ("11506-3", "1")


def test_org_template_dir_overrides_and_needs_a_version(tmp_path):
    # Given an org template dir with its own progress note template
    (tmp_path / "11506-3.j2").write_text("{# version: 7 #}{{ title | upper }}: "
                                         "{{ items | map(attribute='text') | join(' / ') }}")
    note, by = draft(["51847-2"], note_type=NoteType(code="11506-3"),
                     settings={"template_dir": str(tmp_path)})
    assert (note.template_id, note.template_version) == ("11506-3", "7")
    assert by["51847-2"].text.startswith("ASSESSMENT AND PLAN: My assessment")
    # And a named template without a version header is refused
    (tmp_path / "bare.j2").write_text("{{ code }}")
    with pytest.raises(ConfigError, match="version"):
        draft(["51847-2"], settings={"template_dir": str(tmp_path), "template": "bare"})
    with pytest.raises(ConfigError, match="template"):
        draft(["51847-2"], settings={"template": "../../etc/passwd"})


def test_unknown_allowed_section_is_input_error_naming_field():
    with pytest.raises(InputError) as exc:
        draft(["99999-9"])
    assert exc.value.field == "allowed_sections"
