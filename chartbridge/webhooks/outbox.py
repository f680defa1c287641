"""Emission: the event row is written in the transaction that makes the state change, so
the change and its announcement commit together or not at all (a crash before the commit
loses both; after it, the sweeper fans the row out and delivers it). The row's id comes
from the transition's immutable facts and the insert does nothing on a conflict, so the
same transition recorded twice is one event.

Called from ledger/writes.py (every terminal status of a write), ledger/store/drafts.py
(a draft version stored: draft.ready) and ledger/store/recordings.py (a recording version
failed: session.failed).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from chartbridge.ledger.db import insert_ignoring
from chartbridge.ledger.tables import WebhookEventRow

from .events import WRITE_EVENTS, Data, EventType, WebhookEvent, event_id


def emit(tx, *, at: datetime, type_: EventType, data: Data, facts: tuple,
         subject: str | None = None) -> str:
    """Record one event in `tx` (idempotent by id); returns the id."""
    return _insert(tx, at=at, type_=type_, data=data, facts=facts, subject=subject)[0]


def _insert(tx, *, at: datetime, type_: EventType, data: Data, facts: tuple,
            subject: str | None) -> tuple[str, bool]:
    """The event's id, and whether this call added it (False: it was there already)."""
    eid = event_id(data.org, type_, *facts)
    event = WebhookEvent(id=eid, type=type_, timestamp=at, data=data)
    added = tx.execute(insert_ignoring(tx, WebhookEventRow.__table__, ("id",), "id"), dict(
        id=eid, org_id=data.org, type=str(type_), session_id=data.session_id, subject=subject,
        body=event.model_dump(mode="json", exclude_none=True), fanned_out=False,
        created_at=at)).first()
    return eid, added is not None


def write_settled(tx, row, at: datetime) -> str | None:
    """A ledger write (a WriteRow in `tx`) reached a status worth announcing: succeeded,
    stale, failed or needs_reconciliation. Other statuses announce nothing."""
    type_ = WRITE_EVENTS.get(str(row.status))
    if type_ is None:
        return None
    outcome = row.outcome if isinstance(row.outcome, dict) else {}
    status = outcome.get("status")
    draft = (row.command or {}).get("draft") or {}       # none for a notice
    data = Data(org=row.org_id, session_id=row.session_id, target=row.target,
                write_key=row.key, write_kind=row.kind, status=str(row.status),
                draft_id=draft.get("id"), draft_version=draft.get("version"),
                ehr_id=row.external_id if type_ == EventType.WRITE_SUCCEEDED else None,
                reason_code=row.last_error_class if type_ != EventType.WRITE_SUCCEEDED else None,
                http_status=status if isinstance(status, int) and type_ != EventType.WRITE_SUCCEEDED
                else None)
    # The ledger makes each transition once (row lock, status and lease guards), so a
    # write reaching a status it had reached before is a new transition (a person requeued
    # a failed write, or resolved one to be sent again): its occurrence number, counted
    # under the row lock, is part of its facts. The first keeps the plain facts, so it is
    # tried first: the count is only paid for a repeat.
    facts = (row.session_id, row.key, str(row.status))
    eid, added = _insert(tx, at=at, type_=type_, data=data, facts=facts, subject=row.key)
    if added:
        return eid
    before = tx.scalar(select(func.count()).select_from(WebhookEventRow).where(
        WebhookEventRow.org_id == row.org_id, WebhookEventRow.subject == row.key,
        WebhookEventRow.type == str(type_)))
    return emit(tx, at=at, type_=type_, data=data, facts=facts + (before + 1,),
                subject=row.key)


def draft_ready(tx, *, org_id: str, session_id: str, draft_id: str, version: int,
                recording_version: int | None, at: datetime) -> str:
    data = Data(org=org_id, session_id=session_id, draft_id=draft_id, draft_version=version,
                recording_version=recording_version, status="draft")
    return emit(tx, at=at, type_=EventType.DRAFT_READY, data=data,
                facts=(session_id, version))


def session_failed(tx, *, org_id: str, session_id: str, recording_id: str, version: int,
                   reason_code: str, at: datetime) -> str:
    """A recording version of the session failed: no note will come from it."""
    data = Data(org=org_id, session_id=session_id, recording_version=version,
                status="failed", reason_code=reason_code)
    return emit(tx, at=at, type_=EventType.SESSION_FAILED, data=data,
                facts=(session_id, recording_id, version))
