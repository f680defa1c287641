"""Epic's inbound event schemas: required fields named by their Epic spelling, identifiers
kept as sent, no PHI in errors."""
from __future__ import annotations

import copy

import pytest

from chartbridge.adapters.epic_haiku import schemas
from chartbridge.core.errors import InputError
from chartbridge.core.models import Identifier, SessionSource

BEGIN = {
    "SessionID": "AMB-2026-000123",
    "UserID": {"ID": "E1001", "Type": "EXTERNAL"},
    "PatientIDs": [{"ID": "Z4481", "Type": "MRN"}, {"ID": "eJzlzKe3KPzAV5TtkxmNivQ3", "Type": "FHIR"}],
    "EncounterIDs": [{"ID": "300012345", "Type": "CSN"}, {"ID": "eoK8nLRcEypNjtns4dgnF3Q3", "Type": "FHIR"}],
    "CallbackURL": "https://epic.site.example/interconnect/api/epic/2026/Ambient/",
    "CareContext": {"DepartmentID": "10501", "Specialty": "Family Medicine", "VisitType": "Office Visit"},
    "NoteType": {"Code": "11506-3", "System": "LOINC", "Name": "Progress note"},
    "AllowedNoteSections": ["10164-2", "10187-3", "29545-1", "51847-2"],
}
EVENTS = {
    "RecordingChunkAvailable": {"SessionID": "AMB-1", "RecordingID": "R1", "RecordingVersion": 1,
                                "ChunkSequence": 3, "ContentType": "audio/wav", "DurationMs": 30000},
    "RecordingAvailable": {"SessionID": "AMB-1", "RecordingID": "R1", "RecordingVersion": 2,
                           "ChunkCount": 7, "Status": "Paused"},
    "DocumentationUpdated": {"SessionID": "AMB-1", "Sections": [
        {"SectionID": "51847-2", "EditedBy": {"ID": "E1001", "Type": "EXTERNAL"},
         "EditedInstant": "2026-11-21T15:04:05-06:00"}]},
    "AmbientSessionComplete": {"SessionID": "AMB-1", "Reason": "Signed"},
}


def _without(body: dict, path: tuple) -> dict:
    out = copy.deepcopy(body)
    node = out
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return out


@pytest.mark.parametrize("path,field", [
    (("SessionID",), "SessionID"), (("UserID",), "UserID"), (("PatientIDs",), "PatientIDs"),
    (("EncounterIDs",), "EncounterIDs"), (("CallbackURL",), "CallbackURL"),
    (("PatientIDs", 0, "ID"), "PatientIDs[0].ID"), (("EncounterIDs", 1, "Type"), "EncounterIDs[1].Type"),
    (("UserID", "Type"), "UserID.Type")])
def test_begin_required_fields_named_by_epic_spelling(path, field):
    # Given the page's example without one required field
    body = _without(BEGIN, path)
    # When it is parsed, Then the error names that field as Epic spells it
    with pytest.raises(InputError) as err:
        schemas.parse_event("AmbientSessionBegin", body)
    assert err.value.field == field
    assert err.value.message.startswith(f"{field} is required")


def test_begin_empty_identifier_lists_and_bad_values_are_refused_without_echo():
    body = copy.deepcopy(BEGIN)
    body["PatientIDs"] = []
    with pytest.raises(InputError) as err:
        schemas.parse_event("AmbientSessionBegin", body)
    assert err.value.field == "PatientIDs"
    body = copy.deepcopy(BEGIN)
    body["PatientIDs"][1]["ID"] = 4481          # not a string
    body["CallbackURL"] = "Z4481-not-a-url"
    with pytest.raises(InputError) as err:
        schemas.parse_event("AmbientSessionBegin", body)
    assert err.value.field == "PatientIDs[1].ID"
    assert "4481" not in err.value.message and "Z4481" not in str(err.value.as_dict())


def test_begin_optional_fields_and_unknown_fields():
    # Given the example without the optional parts, plus a field Epic may add one day
    body = {k: v for k, v in BEGIN.items()
            if k not in ("CareContext", "NoteType", "AllowedNoteSections")}
    body["FutureField"] = {"x": 1}
    # When it is mapped, Then the org's default sections apply and nothing fails
    got = schemas.to_canonical_begin(schemas.parse_event("AmbientSessionBegin", body), "org-a",
                                     ["10164-2", "51847-2"])
    assert got["allowed_sections"] == ["10164-2", "51847-2"]
    assert got["care_context"] is None and got["note_type"] is None


def test_begin_identifiers_kept_as_sent_with_types():
    got = schemas.to_canonical_begin(BEGIN, "org-a", ["10164-2"])
    assert got["patient_ids"] == [Identifier(value="Z4481", type="MRN"),
                                  Identifier(value="eJzlzKe3KPzAV5TtkxmNivQ3", type="FHIR")]
    assert got["encounter_ids"] == [Identifier(value="300012345", type="CSN"),
                                    Identifier(value="eoK8nLRcEypNjtns4dgnF3Q3", type="FHIR")]
    assert got["user"] == Identifier(value="E1001", type="EXTERNAL")
    assert got["source"] == "epic_haiku" and got["external_id"] == "AMB-2026-000123"
    assert got["callback_url"] == BEGIN["CallbackURL"]
    assert got["allowed_sections"] == BEGIN["AllowedNoteSections"]
    assert got["note_type"].code == "11506-3" and got["care_context"].department_id == "10501"


@pytest.mark.parametrize("event", list(EVENTS))
def test_other_events_parse_the_page_examples(event):
    assert schemas.parse_event(event, EVENTS[event]).SessionID


@pytest.mark.parametrize("event,drop", [
    ("RecordingChunkAvailable", "RecordingID"), ("RecordingChunkAvailable", "RecordingVersion"),
    ("RecordingChunkAvailable", "ChunkSequence"), ("RecordingAvailable", "ChunkCount"),
    ("RecordingAvailable", "Status"), ("DocumentationUpdated", "Sections"),
    ("AmbientSessionComplete", "Reason"), ("AmbientSessionComplete", "SessionID")])
def test_other_events_required_fields(event, drop):
    with pytest.raises(InputError) as err:
        schemas.parse_event(event, _without(EVENTS[event], (drop,)))
    assert err.value.field == drop


@pytest.mark.parametrize("event,field,value", [
    ("RecordingAvailable", "Status", "Done"), ("AmbientSessionComplete", "Reason", "Deleted"),
    ("RecordingChunkAvailable", "ChunkSequence", 0), ("RecordingChunkAvailable", "RecordingVersion", "2"),
    ("RecordingAvailable", "RecordingVersion", True)])
def test_other_events_bad_values(event, field, value):
    body = dict(EVENTS[event], **{field: value})
    with pytest.raises(InputError) as err:
        schemas.parse_event(event, body)
    assert err.value.field == field


def test_not_json_and_not_object():
    with pytest.raises(InputError) as err:
        schemas.parse_event("RecordingAvailable", b"{not json")
    assert err.value.field == "body"
    with pytest.raises(InputError) as err:
        schemas.parse_event("RecordingAvailable", b"[1, 2]")
    assert err.value.field == "body"


def test_documentation_updated_to_protections_maps_site_section_ids():
    body = schemas.parse_event("DocumentationUpdated", EVENTS["DocumentationUpdated"])
    got = schemas.to_protections(body, {"51847-2": "51847-2"}.__getitem__)
    assert [p.section for p in got] == ["51847-2"]
    assert got[0].edited_by == Identifier(value="E1001", type="EXTERNAL")
    assert got[0].edited_at.utcoffset().total_seconds() == -6 * 3600
