"""An in-process athenaOne API simulator, written from athenahealth's published API reference
(docs.athenahealth.com; see README.md beside this file for each rule's source).

It models what Chartbridge's athenaOne adapter touches:

- ``POST /oauth2/v1/token``: OAuth 2.0 client credentials, HTTP Basic client auth, scopes,
  ``expires_in`` (3600 unless configured), a per-client token-request rate limit (production
  50/min, preview 5/min) answered with 429;
- ``POST /v1/{practiceid}/patients/{patientid}/documents/clinicaldocument``: the clinical
  document upload (form-encoded or multipart), with athena-style error bodies, including
  200 answers carrying ``"success": false`` and an ``errormessage``;
- ``GET /v1/{practiceid}/patients/{patientid}/documents/clinicaldocument`` (listing, with
  ``departmentid`` required and ``documentsubclass`` / ``status`` filters) and
  ``GET .../clinicaldocument/{clinicaldocumentid}``;
- one practice per client (a token on another practice's route gets 401 "Incorrect
  permissions."), a per-practice requests-per-second quota (429, with or without Retry-After);
- fault injection (5xx, 429 storms, slow answers, expired token, success=false, lost
  response after storing, dropped connection, an unexpected body) in process and under ``/_sim/...`` over HTTP.

Usage in a test::

    with AthenaSimulator() as sim:          # binds 127.0.0.1 on a free port
        base = sim.base_url
        sim.faults.add(call="upload", status=503, times=2, retry_after=1)
        ...
        assert sim.upload_count() == 1

All identifiers the simulator seeds are fake; nothing here is PHI.

Modules: ``server`` (routes, per-call faults, ``/_sim`` controls, start/stop, ``serve``),
``auth`` (clients, tokens, the token endpoint's rules), ``validation`` (upload and listing
checks, athena's error bodies), ``store`` (practices and documents), ``traffic`` (call log,
per-practice rate windows) and ``faults`` (what may be injected; queued by
contract_tests.support.faults).
"""
from .auth import (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_SCOPE, TOKEN_RATE_PER_MIN,
                   Client, Token)
from .faults import CALLS, FAULT_KINDS, Fault, Faults
from .server import AthenaSimulator, serve
from .store import DEFAULT_PRACTICE_ID, OTHER_PRACTICE_ID, Practice
from .validation import ATTACHMENT_TYPES, CLINICAL_DOCUMENT_SUBCLASSES

__all__ = ["ATTACHMENT_TYPES", "AthenaSimulator", "CALLS", "CLINICAL_DOCUMENT_SUBCLASSES",
           "Client", "DEFAULT_CLIENT_ID", "DEFAULT_CLIENT_SECRET", "DEFAULT_PRACTICE_ID",
           "DEFAULT_SCOPE", "FAULT_KINDS", "Fault", "Faults", "OTHER_PRACTICE_ID", "Practice",
           "TOKEN_RATE_PER_MIN", "Token", "serve"]
