"""Names, limits and examples from /work/shared/vendors/epic-haiku-ambient.md: the paths Epic
serves, its outbound calls and inbound events, the LOINC sections, the page's examples."""
from __future__ import annotations

CALLBACK_PATH = "/interconnect/api/epic/2026/Ambient/"
TOKEN_PATH = "/oauth2/token"
JWKS_PATH = "/.well-known/jwks.json"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SIGNING_ALGS = ("RS384", "ES384")
OUTBOUND_CALLS = ("GetAmbientRecordingChunk", "AmbientRecordingsProcessed", "DocumentationReady")
FAULTABLE_CALLS = OUTBOUND_CALLS + ("token",)
EVENTS = ("AmbientSessionBegin", "RecordingChunkAvailable", "RecordingAvailable",
          "DocumentationUpdated", "AmbientSessionComplete")
# LOINC section codes named on the page; the set Epic enforces when AmbientNoteSections is absent.
ALL_SECTIONS = ("10164-2", "10187-3", "29545-1", "30954-2", "51847-2", "51848-0", "18776-5")
MAX_ASSERTION_LIFETIME_S = 300
CLOCK_SKEW_S = 5
MAX_SESSIONS = 10_000
MAX_LOG = 10_000
MAX_TOKENS = 10_000

EXAMPLE_USER = {"ID": "E1001", "Type": "EXTERNAL"}
EXAMPLE_PATIENT_IDS = [{"ID": "Z4481", "Type": "MRN"}, {"ID": "eJzlzKe3KPzAV5TtkxmNivQ3", "Type": "FHIR"}]
EXAMPLE_ENCOUNTER_IDS = [{"ID": "300012345", "Type": "CSN"}, {"ID": "eoK8nLRcEypNjtns4dgnF3Q3", "Type": "FHIR"}]
EXAMPLE_CARE_CONTEXT = {"DepartmentID": "10501", "Specialty": "Family Medicine", "VisitType": "Office Visit"}
EXAMPLE_NOTE_TYPE = {"Code": "11506-3", "System": "LOINC", "Name": "Progress note"}
EXAMPLE_SECTIONS = ["10164-2", "10187-3", "29545-1", "51847-2"]
