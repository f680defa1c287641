"""Event types and the body every subscriber receives.

The body follows the Standard Webhooks payload shape (`type`, `timestamp`, `data`) and
carries ids and states only: the org, the engine's session id, the draft's id and version,
the target, the write's idempotency key, its status, the EHR's id for what was written and
a reason code (an error class and an HTTP status). Never transcript or note text, a name,
or a patient or encounter identifier: `Data` forbids any other field, so a caller cannot
add one by accident.
"""
from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class EventType(StrEnum):
    DRAFT_READY = "draft.ready"
    WRITE_SUCCEEDED = "write.succeeded"
    WRITE_STALE = "write.stale"
    WRITE_FAILED = "write.failed"
    WRITE_NEEDS_RECONCILIATION = "write.needs_reconciliation"
    SESSION_FAILED = "session.failed"


# a ledger write's status -> the event announcing it (other statuses are not announced)
WRITE_EVENTS = {"succeeded": EventType.WRITE_SUCCEEDED, "stale": EventType.WRITE_STALE,
                "failed": EventType.WRITE_FAILED,
                "needs_reconciliation": EventType.WRITE_NEEDS_RECONCILIATION}


class Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    org: str
    session_id: str | None = None
    draft_id: str | None = None
    draft_version: int | None = None
    recording_version: int | None = None
    target: str | None = None
    write_key: str | None = None
    write_kind: str | None = None
    status: str
    ehr_id: str | None = None              # the EHR's id of what was written (succeeded)
    reason_code: str | None = None         # an error class / rule name, never a message
    http_status: int | None = None


class WebhookEvent(BaseModel):
    """The signed body."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="the same value as the webhook-id header")
    type: EventType
    timestamp: datetime = Field(description="when the state changed (UTC)")
    data: Data

    def body(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


def event_id(org_id: str, type_: EventType, *facts: object) -> str:
    """Decided once from the transition's immutable facts (org, type, the subject's keys,
    the status reached): the same transition recorded again is the same id."""
    raw = "\x1f".join([org_id, str(type_), *(str(f) for f in facts)])
    return "evt_" + hashlib.sha256(raw.encode()).hexdigest()[:40]
