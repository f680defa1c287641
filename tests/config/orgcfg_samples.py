"""Sample org configs and a line finder for the config tests."""
from __future__ import annotations

EPIC_ORG = """\
org: acme
name: Acme Clinic
timezone: America/Chicago
allowed_sections:
  - "10164-2"
  - "51847-2"
note_types:
  default: "11506-3"
targets:
  epic_haiku:
    client_id: acme-backend
    token_url: https://epic.acme.example/oauth2/token
    private_key: env:ACME_EPIC_KEY
    key_id: acme-1
    inbound:
      issuer: acme-interconnect
      jwks_url: https://epic.acme.example/jwks.json
"""

MULTI_ORG = """\
org: multi
name: Multi
timezone: Europe/Berlin
allowed_sections: ["10164-2", "51848-0"]
note_types:
  default: "11506-3"
  allowed: ["11506-3", "11488-4"]
targets:
  fhir_docref:
    base_url: https://fhir.multi.example/R4
    client_id: c
    private_key: file:keys/fhir.pem
    key_id: k
    identifier_system: https://multi.example/sid/note
  athenaone:
    base_url: https://api.athena.example
    token_url: https://api.athena.example/oauth2/v1/token
    client_id: c
    client_secret: env:MULTI_ATHENA_SECRET
    practice_id: 195900
    department_id: 1
  hl7_mdm:
    host: 127.0.0.1
    port: 2575
    sending_facility: MULTI
    receiving_application: EHR
    receiving_facility: HOSP
"""


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing `needle`."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) >= nth, f"{needle!r} not in text"
    return hits[nth - 1]

