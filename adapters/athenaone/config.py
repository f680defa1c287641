"""Settings for an athenaOne practice (the `targets.athenaone` block)."""
from __future__ import annotations

from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from chartbridge.config.types import Id, Scopes, SecretRef, Settings, TimeoutS, Url
from pydantic import AfterValidator, Field, StringConstraints

# athena names the subclasses of the CLINICALDOCUMENT class CLINICALDOCUMENT_<NAME>
# (docs.athenahealth.com/api/workflows/document-classification-guide).
ClinicalSubclass = Annotated[str, StringConstraints(strip_whitespace=True,
                                                    pattern=r"^CLINICALDOCUMENT_[A-Z0-9_]+$")]


def _zone(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("not an IANA time zone (e.g. America/Chicago)") from None
    return value


class AthenaOneConfig(Settings):
    base_url: Url                      # e.g. https://api.preview.platform.athenahealth.com
    token_url: Url                     # OAuth 2.0 client-credentials token endpoint
    client_id: Id
    client_secret: SecretRef           # HTTP Basic client authentication at token_url
    practice_id: Id                    # every API path carries it: /v1/{practice_id}/...
    department_id: Id                  # used when the session carries no athena-department id
    scopes: Scopes = ["athena/service/Athenanet.MDP.*"]
    payload: Literal["text", "pdf"] = "text"     # documentdata text, or a rendered PDF attachment
    autoclose: bool = False            # true: skip the clinical inbox, file the document closed
    # athena's reference: "Priority of this result. 1 is high; 2 is normal."
    priority: Literal[1, 2] = 2
    # per org: across all processes with a Redis store (adapters/ratelimit.py), else per process
    requests_per_second: Annotated[float, Field(gt=0, le=100)] = 5.0
    timeout_s: TimeoutS = 15.0
    # the provider filed on the document when the approver carries no athena-provider id
    provider_id: Id | None = None
    # athena: "The ID of the external provider/lab/pharmacy associated the document"
    clinical_provider_id: Id | None = None
    # subclass for a note type whose mapping is not a clinicaldocument subclass (e.g. the
    # progress note maps to ENCOUNTERDOCUMENT_PROGRESSNOTE, which this endpoint cannot take)
    fallback_subclass: ClinicalSubclass | None = None
    # observationdate/observationtime zone; the org's `timezone` when omitted
    timezone: Annotated[str | None, AfterValidator(_zone)] = None
