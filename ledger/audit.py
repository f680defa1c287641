"""The append-only audit trail, and its export as FHIR R4 AuditEvent."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from .tables import AuditRow


_INSERT = insert(AuditRow.__table__)


def record(tx: Session, *, at: datetime, org_id: str, action: str, actor: str = "system",
           session_id: str | None = None, correlation_id: str | None = None,
           outcome: str = "success", **detail) -> None:
    """Append one audit row inside the caller's transaction. `detail` must hold no PHI:
    ids of the engine's own records, codes, counts, error classes."""
    record_all(tx, [entry(at=at, org_id=org_id, action=action, actor=actor,
                          session_id=session_id, correlation_id=correlation_id,
                          outcome=outcome, **detail)])


def entry(*, at: datetime, org_id: str, action: str, actor: str = "system",
          session_id: str | None = None, correlation_id: str | None = None,
          outcome: str = "success", **detail) -> dict:
    """One audit row's values, for `record_all`."""
    return dict(at=at, org_id=org_id, session_id=session_id, correlation_id=correlation_id,
                actor=actor, action=action, outcome=outcome, detail=detail)


def record_all(tx: Session, rows: list[dict]) -> None:
    """Append audit rows (`entry` values) in one statement, in order. A Core insert, run
    now: the ledger's hot path writes two or three a write, and the ORM's unit of work
    cost more than the rows' own insert (bench/ledger_throughput.py)."""
    tx.execute(_INSERT, rows[0] if len(rows) == 1 else rows)   # one row: no executemany


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    org_id: str
    session_id: str | None
    correlation_id: str | None
    actor: str
    action: str
    outcome: str
    detail: dict


def entries(tx: Session, org_id: str, *, session_id: str | None = None,
            limit: int = 1000) -> list[AuditEntry]:
    q = select(AuditRow).where(AuditRow.org_id == org_id)
    if session_id:
        q = q.where(AuditRow.session_id == session_id)
    rows = tx.scalars(q.order_by(AuditRow.id).limit(limit))
    return [AuditEntry(r.id, r.at, r.org_id, r.session_id, r.correlation_id, r.actor,
                       r.action, r.outcome, dict(r.detail or {})) for r in rows]


# FHIR R4 AuditEvent.outcome: 0 success, 4 minor failure, 8 serious failure.
_OUTCOME = {"success": "0", "failure": "4", "error": "8"}


def as_fhir_audit_event(entry: AuditEntry) -> dict:
    """One audit row as an R4 AuditEvent (validated by fhir.resources' R4B model, whose
    AuditEvent matches R4's), returned as JSON-ready dict."""
    from fhir.resources.R4B.auditevent import AuditEvent

    event = AuditEvent.model_validate({
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                 "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "urn:chartbridge:audit-action", "code": entry.action}],
        "recorded": entry.at.isoformat(),
        "outcome": _OUTCOME.get(entry.outcome, "4"),
        "agent": [{"who": {"display": entry.actor}, "requestor": entry.actor.startswith("user:")}],
        "source": {"observer": {"display": f"chartbridge org {entry.org_id}"}},
        "entity": [{"what": {"identifier": {"system": "urn:chartbridge:session",
                                            "value": entry.session_id or "-"}},
                    "detail": [{"type": "correlation_id",
                                "valueString": entry.correlation_id or "-"}]}],
    })
    return event.model_dump(mode="json", exclude_none=True)
