"""Rule-based drafting on hand-written transcripts (fast; no audio)."""
from __future__ import annotations

import pytest

from chartbridge.adapters.notegen import RuleBasedGenerator
from chartbridge.core.errors import ConfigError, InputError
from chartbridge.adapters.notegen.rules import FIRST_PERSON
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
    # Then each statement lands in its section, as note prose, with its segments
    assert by["10164-2"].text == ("Reports a cough and a fever for about four days. "
                                  "Reports feeling very tired.")
    assert by["10164-2"].segment_ids == ["rec/1/1", "rec/1/3"]
    assert by["10187-3"].text == "Denies chest pain." and \
        by["10187-3"].segment_ids == ["rec/1/3"]
    assert by["29545-1"].text == "Temperature is 101.2.\nCrackles in the right lower lung."
    assert by["29545-1"].segment_ids == ["rec/1/4"]
    assert by["51847-2"].text == ("Community acquired pneumonia.\n"
                                  "Amoxicillin one gram three times a day for five days.")
    assert by["51847-2"].segment_ids == ["rec/1/5", "rec/1/6"]
    # And questions and greetings are not note text
    assert all("?" not in s.text for s in note.sections)
    assert [s.code for s in note.sections] == ["10164-2", "10187-3", "29545-1", "51847-2"]
    assert (note.template_id, note.template_version) == ("default", "2")


def test_only_allowed_sections_and_split_assessment_plan():
    # Given a target that takes assessment and plan separately, and no ROS/exam
    note, by = draft(["10164-2", "51848-0", "18776-5"])
    # Then A and P are split, nothing else is produced
    assert set(by) == {"10164-2", "51848-0", "18776-5"}
    assert "pneumonia" in by["51848-0"].text and "amoxicillin" not in by["51848-0"].text
    assert by["18776-5"].text.startswith("Amoxicillin") and by["18776-5"].segment_ids == ["rec/1/6"]


def test_section_without_supporting_speech_is_omitted():
    # Given a transcript with no exam and no plan
    note, by = draft(["10164-2", "29545-1", "51847-2"], lines=LINES[:4])
    # Then only HPI is produced; nothing is invented
    assert set(by) == {"10164-2"}
    assert draft(["51847-2"], lines=[])[0].sections == []


def test_progress_note_template_labels_assessment_and_plan():
    note, by = draft(["51847-2"], note_type=NoteType(code="11506-3"))
    assert by["51847-2"].text == ("Assessment: Community acquired pneumonia.\n"
                                  "Plan: Amoxicillin one gram three times a day for five days.")
    assert (note.template_id, note.template_version) == ("11506-3", "2")


def test_org_template_dir_overrides_and_needs_a_version(tmp_path):
    # Given an org template dir with its own progress note template
    (tmp_path / "11506-3.j2").write_text("{# version: 7 #}{{ title | upper }}: "
                                         "{{ items | map(attribute='text') | join(' / ') }}")
    note, by = draft(["51847-2"], note_type=NoteType(code="11506-3"),
                     settings={"template_dir": str(tmp_path)})
    assert (note.template_id, note.template_version) == ("11506-3", "7")
    assert by["51847-2"].text.startswith("ASSESSMENT AND PLAN: Community acquired pneumonia. / ")
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


# -- prose a clinician would sign (issue 18) ----------------------------------------------
ALL5 = ["10164-2", "10187-3", "29545-1", "30954-2", "51847-2"]


def test_patient_speech_becomes_third_person_and_questions_give_context():
    note, by = draft(ALL5, lines=[
        "Are you bringing anything up when you cough?", "Yes, some yellow phlegm.",
        "Are you taking the metformin twice a day?", "Yes, but I sometimes forget the "
        "evening dose.",
        "How often are you using your albuterol inhaler?", "About four times a day.",
        "I twisted my left ankle playing basketball yesterday."])
    hpi = by["10164-2"].text
    assert hpi == ("Bringing anything up when coughing: some yellow phlegm. "
                   "Taking the metformin twice a day. Sometimes forgets the evening dose. "
                   "Using the albuterol inhaler: about four times a day. "
                   "Twisted the left ankle playing basketball yesterday.")
    assert not FIRST_PERSON.search(hpi)


def test_denials_are_pertinent_negatives_from_the_question():
    note, by = draft(ALL5, lines=[
        "Any chest pain or shortness of breath?", "No, none of that.",
        "Have you had any thoughts of harming yourself?", "No, never.",
        "Do you have a fever?", "No.", "No blood, and no back pain."])
    assert by["10187-3"].text == ("Denies chest pain or shortness of breath. Denies thoughts "
                                  "of harming self. Denies fever. Denies blood. "
                                  "Denies back pain.")
    assert "10164-2" not in by


def test_speaker_roles_are_inferred_and_kept_in_provenance():
    note, by = draft(ALL5)
    roles = {src.text: src.speaker.value for s in note.sections for src in s.sources}
    assert roles["Reports a cough and a fever for about four days."] == "patient"
    assert roles["Denies chest pain."] == "patient"
    assert roles["Temperature is 101.2."] == "clinician"
    assert roles["Community acquired pneumonia."] == "clinician"
    for s in note.sections:
        assert [i for src in s.sources for i in src.segment_ids if i not in s.segment_ids] == []


def test_fused_question_keeps_its_statement_and_unmatched_findings_are_kept():
    # Given a statement fused with a question (no punctuation between) and a score
    note, by = draft(ALL5, lines=[
        "My right ear has been hurting for three days and I have a sore throat any fever "
        "at home?", "Yes, up to 102 last night.",
        "Your PHQ 9 score today is 16.", "You seem tired, your mood is low.",
        "This is acute otitis media of the right ear.",
        "I am prescribing amoxicillin 500 milligrams three times a day for ten days, and "
        "come back if the pain gets worse or you are not better in three days."])
    assert by["10164-2"].text == ("Right ear has been hurting for three days. Reports a sore "
                                  "throat. Reports fever at home: up to 102 last night.")
    assert by["30954-2"].text == "PHQ 9 score today is 16."
    assert by["29545-1"].text == "Appears tired.\nMood is low."
    assert by["51847-2"].text == (
        "Acute otitis media of the right ear.\nPrescribing amoxicillin 500 milligrams three "
        "times a day for ten days. Come back if the pain gets worse or the patient is not "
        "better in three days.")


def test_plan_lists_become_items_and_drafts_trace_to_their_segments():
    from chartbridge.core.trace import check_sections
    lines = ["Assessment is type 2 diabetes, not at goal.",
             "Plan is to add empagliflozin 10 milligrams daily, continue metformin, refer to "
             "podiatry, and recheck the A1C in three months."]
    note, by = draft(["51848-0", "18776-5"], lines=lines)
    assert by["18776-5"].text == ("Add empagliflozin 10 milligrams daily. Continue metformin. "
                                  "Refer to podiatry. Recheck the A1C in three months.")
    assert all(s.untraced == [] for s in check_sections(note.sections, segs(lines)))
