"""The idempotency-keyed write ledger.

Semantics (after the IETF Idempotency-Key draft and Stripe's published behaviour):
- same key, same request hash, finished  -> the stored outcome; the adapter is not called;
- same key, different request hash       -> IdempotencyConflict, no call;
- same key under a live lease            -> WriteInProgress;
- an expired lease, or a retry after an attempt that may have reached the EHR
                                         -> adapter.reconcile() first; send only if the EHR
                                            certainly has no record of it;
- an outcome that cannot be known        -> status needs_reconciliation, never re-sent
                                            without a person.
The adapter is only ever called outside a database transaction, by the one claimant that
holds the lease; every later update is guarded by that lease.
"""
from __future__ import annotations

import logging
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from chartbridge.core.errors import (ChartbridgeError, IdempotencyConflict, NotFound,
                                     OutcomeUnknown, PermanentError, StateConflict,
                                     TransientError, WriteInProgress, error_class_name)
from chartbridge.core.models import WriteCommand, WriteOutcome, WriteStatus
from chartbridge.core.ports import Clock, EhrAdapter

from . import audit
from .db import Database
from .tables import WriteRow

log = logging.getLogger("chartbridge.ledger")

FINISHED = {WriteStatus.SUCCEEDED, WriteStatus.FAILED}


@dataclass(frozen=True)
class WriteRecord:
    key: str
    org_id: str
    target: str
    session_id: str | None
    resource_kind: str
    kind: str
    request_hash: str
    status: WriteStatus
    attempts: int
    last_error_class: str | None
    last_error: str | None
    external_id: str | None
    external_version: str | None
    outcome: dict | None
    correlation_id: str
    created_at: datetime
    sent_at: datetime | None
    acknowledged_at: datetime | None
    updated_at: datetime
    next_attempt_at: datetime | None

    @classmethod
    def of(cls, row: WriteRow) -> "WriteRecord":
        return cls(row.key, row.org_id, row.target, row.session_id, row.resource_kind,
                   row.kind, row.request_hash, WriteStatus(row.status), row.attempts,
                   row.last_error_class, row.last_error, row.external_id,
                   row.external_version, row.outcome, row.correlation_id, row.created_at,
                   row.sent_at, row.acknowledged_at, row.updated_at, row.next_attempt_at)

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k, v in d.items():
            if isinstance(v, datetime):
                d[k] = v.isoformat()
        d["status"] = self.status.value
        return d


class LeaseLost(ChartbridgeError):
    """Another claimant took this write over while we were calling the EHR."""

    code = "lease_lost"


def backoff_seconds(attempt: int, *, base: float = 1.0, cap: float = 300.0,
                    retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never sooner than the vendor's Retry-After."""
    delay = random.uniform(0, min(cap, base * (2 ** max(0, attempt - 1))))
    return max(delay, retry_after or 0.0)


class WriteLedger:
    def __init__(self, db: Database, clock: Clock, *, lease_seconds: float = 120.0) -> None:
        self.db = db
        self.clock = clock
        self.lease = timedelta(seconds=lease_seconds)

    # -- the one entry point -------------------------------------------------------------
    def execute(self, command: WriteCommand, adapter: EhrAdapter) -> WriteRecord:
        """Perform `command` through `adapter` at most once. Returns the finished record
        (succeeded, or failed with its permanent reason). Raises TransientError (retry
        later), WriteInProgress, IdempotencyConflict or OutcomeUnknown."""
        owner = uuid.uuid4().hex
        claim = self._claim(command, owner)
        if isinstance(claim, WriteRecord):
            return claim
        reconcile_first = claim

        outcome: WriteOutcome | None = None
        if reconcile_first:
            try:
                outcome = adapter.reconcile(command)
            except OutcomeUnknown as exc:
                return self._unknown(command, owner, exc)
            except TransientError as exc:
                # The earlier attempt is still unaccounted for: keep it marked maybe-sent.
                self._transient(command, owner, exc, maybe_delivered=True)
                raise
            except PermanentError as exc:
                return self._failed(command, owner, exc)
            if outcome is not None:
                return self._succeeded(command, owner, outcome, reconciled=True)

        self._mark_sending(command, owner)
        try:
            outcome = adapter.send(command)
        except TransientError as exc:
            self._transient(command, owner, exc, maybe_delivered=exc.maybe_delivered)
            raise
        except PermanentError as exc:
            return self._failed(command, owner, exc)
        except OutcomeUnknown as exc:
            return self._unknown(command, owner, exc)
        except BaseException as exc:
            # A bug or an interrupt mid-call: we cannot know what the EHR got. Leave the
            # row for the next claimant, who reconciles before anything is resent.
            self._transient(command, owner, exc, maybe_delivered=True)
            raise
        return self._succeeded(command, owner, outcome, reconciled=False)

    def prepare(self, command: WriteCommand) -> str:
        """Record a write as pending (durably, before anything is enqueued) and return its
        key; the queue then carries only the key. Same key and body again: no change.
        Same key, different body: IdempotencyConflict."""
        key, rhash, now = command.idempotency_key(), command.request_hash(), self.clock.now()
        with self.db.transaction() as tx:
            insert = pg_insert if tx.bind.dialect.name == "postgresql" else sqlite_insert
            got = tx.execute(insert(WriteRow.__table__).values(
                key=key, org_id=command.org_id, target=command.target,
                session_id=command.session_id, resource_kind=command.resource_kind,
                kind=str(command.kind), request_hash=rhash, status=WriteStatus.PENDING,
                attempts=0, maybe_sent=False, command=command.model_dump(mode="json"),
                next_attempt_at=now, correlation_id=command.correlation_id, created_at=now,
                updated_at=now).on_conflict_do_nothing(index_elements=["key"])
                .returning(WriteRow.__table__.c.key)).first()
            if got is None:
                row = tx.get(WriteRow, key)
                if row.request_hash != rhash:
                    raise IdempotencyConflict(
                        "this idempotency key was used with a different request", key=key)
            else:
                audit.record(tx, at=now, org_id=command.org_id, session_id=command.session_id,
                             correlation_id=command.correlation_id, action="write.prepared",
                             key=key, target=command.target, kind=str(command.kind))
        return key

    # -- reads ---------------------------------------------------------------------------
    def get(self, org_id: str, key: str) -> WriteRecord | None:
        with self.db.transaction() as tx:
            row = tx.get(WriteRow, key)
            return WriteRecord.of(row) if row and row.org_id == org_id else None

    def list(self, org_id: str, *, status: str | None = None, session_id: str | None = None,
             limit: int = 500) -> list[WriteRecord]:
        with self.db.transaction() as tx:
            q = select(WriteRow).where(WriteRow.org_id == org_id)
            if status:
                q = q.where(WriteRow.status == status)
            if session_id:
                q = q.where(WriteRow.session_id == session_id)
            return [WriteRecord.of(r) for r in tx.scalars(q.order_by(WriteRow.created_at).limit(limit))]

    def command_of(self, org_id: str, key: str) -> WriteCommand:
        with self.db.transaction() as tx:
            row = tx.get(WriteRow, key)
            if row is None or row.org_id != org_id:
                raise NotFound("no such write in this organization", key=key)
            return WriteCommand.model_validate(row.command)

    def due(self, *, limit: int = 100) -> list[tuple[str, str]]:
        """(org_id, key) of writes the sweeper should drive again: pending ones whose
        backoff has passed, and in-flight ones whose lease expired (a dead worker)."""
        now = self.clock.now()
        with self.db.transaction() as tx:
            q = select(WriteRow.org_id, WriteRow.key).where(
                ((WriteRow.status == WriteStatus.PENDING)
                 & ((WriteRow.next_attempt_at.is_(None)) | (WriteRow.next_attempt_at <= now)))
                | ((WriteRow.status == WriteStatus.IN_FLIGHT) & (WriteRow.lease_expires_at < now))
            ).limit(limit)
            return [(o, k) for o, k in tx.execute(q)]

    def resolve(self, org_id: str, key: str, *, external_id: str | None, actor: str,
                note: str) -> WriteRecord:
        """A person settles a needs_reconciliation write after checking the EHR: with the
        EHR's id it is succeeded; without, it goes back to pending and is sent again."""
        now = self.clock.now()
        with self.db.transaction() as tx:
            row = tx.get(WriteRow, key, with_for_update=True)
            if row is None or row.org_id != org_id:
                raise NotFound("no such write in this organization", key=key)
            if row.status != WriteStatus.NEEDS_RECONCILIATION:
                raise StateConflict(f"write is {row.status}, not needs_reconciliation", key=key)
            if external_id:
                row.status, row.external_id, row.acknowledged_at = WriteStatus.SUCCEEDED, external_id, now
            else:
                row.status, row.maybe_sent, row.next_attempt_at = WriteStatus.PENDING, False, now
            row.updated_at = now
            audit.record(tx, at=now, org_id=org_id, session_id=row.session_id,
                         correlation_id=row.correlation_id, actor=actor,
                         action="write.resolved", key=key, status=row.status, note=note)
            return WriteRecord.of(row)

    # -- state changes -------------------------------------------------------------------
    def _claim(self, command: WriteCommand, owner: str) -> bool | WriteRecord:
        """True/False = claimed (reconcile first or not); a WriteRecord = finished already."""
        key, rhash, now = command.idempotency_key(), command.request_hash(), self.clock.now()
        with self.db.transaction() as tx:
            values = dict(
                key=key, org_id=command.org_id, target=command.target,
                session_id=command.session_id, resource_kind=command.resource_kind,
                kind=str(command.kind), request_hash=rhash, status=WriteStatus.IN_FLIGHT,
                attempts=1, maybe_sent=False, command=command.model_dump(mode="json"),
                lease_owner=owner, lease_expires_at=now + self.lease,
                correlation_id=command.correlation_id, created_at=now, updated_at=now)
            insert = pg_insert if tx.bind.dialect.name == "postgresql" else sqlite_insert
            inserted = tx.execute(insert(WriteRow.__table__).values(**values)
                                  .on_conflict_do_nothing(index_elements=["key"])
                                  .returning(WriteRow.__table__.c.key)).first()
            if inserted is not None:
                audit.record(tx, at=now, org_id=command.org_id, session_id=command.session_id,
                             correlation_id=command.correlation_id, action="write.claimed",
                             key=key, target=command.target, kind=str(command.kind))
                return False
            row = tx.scalars(select(WriteRow).where(WriteRow.key == key).with_for_update()).one()
            if row.org_id != command.org_id:      # cannot happen: keys embed the org
                raise StateConflict("idempotency key belongs to another organization")
            if row.request_hash != rhash:
                raise IdempotencyConflict(
                    "this idempotency key was used with a different request; a changed "
                    "note is a new version with a new key", key=key)
            status = WriteStatus(row.status)
            if status in FINISHED:
                return WriteRecord.of(row)
            if status == WriteStatus.NEEDS_RECONCILIATION:
                raise OutcomeUnknown("the outcome of this write is unknown and waits for a "
                                     "person to reconcile it", key=key)
            if status == WriteStatus.IN_FLIGHT and row.lease_expires_at > now:
                raise WriteInProgress("this write is in progress", key=key)
            # A dead claimant's lease, or a retry after a transient error.
            reconcile = bool(row.maybe_sent) or status == WriteStatus.IN_FLIGHT
            row.status, row.lease_owner = WriteStatus.IN_FLIGHT, owner
            row.lease_expires_at, row.updated_at = now + self.lease, now
            row.attempts += 1
            audit.record(tx, at=now, org_id=row.org_id, session_id=row.session_id,
                         correlation_id=row.correlation_id, action="write.reclaimed",
                         key=key, attempt=row.attempts, reconcile=reconcile)
            return reconcile

    def _guarded(self, tx, command: WriteCommand, owner: str) -> WriteRow:
        row = tx.scalars(select(WriteRow).where(WriteRow.key == command.idempotency_key())
                         .with_for_update()).one()
        if row.lease_owner != owner or row.status != WriteStatus.IN_FLIGHT:
            raise LeaseLost("the lease on this write was taken over", key=row.key)
        return row

    def _mark_sending(self, command: WriteCommand, owner: str) -> None:
        now = self.clock.now()
        with self.db.transaction() as tx:
            row = self._guarded(tx, command, owner)
            row.maybe_sent, row.sent_at, row.updated_at = True, now, now

    def _finish(self, command: WriteCommand, owner: str, action: str, result: str = "success",
                **changes) -> WriteRecord:
        now = self.clock.now()
        with self.db.transaction() as tx:
            row = self._guarded(tx, command, owner)
            for k, v in changes.items():
                setattr(row, k, v)
            row.lease_owner, row.lease_expires_at, row.updated_at = None, None, now
            audit.record(tx, at=now, org_id=row.org_id, session_id=row.session_id,
                         correlation_id=row.correlation_id, action=action, outcome=result,
                         key=row.key, target=row.target, status=row.status,
                         error_class=row.last_error_class)
            record = WriteRecord.of(row)
        log.info("write %s", action, extra={"key": record.key, "status": record.status.value,
                                            "correlation_id": record.correlation_id})
        return record

    def _succeeded(self, command, owner, outcome: WriteOutcome, *, reconciled: bool) -> WriteRecord:
        detail = dict(outcome.detail)
        if reconciled:
            detail["reconciled"] = True
        return self._finish(command, owner, "write.succeeded", status=WriteStatus.SUCCEEDED,
                            external_id=outcome.external_id,
                            external_version=outcome.external_version, outcome=detail,
                            acknowledged_at=self.clock.now(), next_attempt_at=None)

    def _failed(self, command, owner, exc: PermanentError) -> WriteRecord:
        return self._finish(command, owner, "write.failed", result="failure",
                            status=WriteStatus.FAILED, last_error_class=error_class_name(exc),
                            last_error=exc.message, outcome=_error_outcome(exc),
                            next_attempt_at=None)

    def _unknown(self, command, owner, exc: OutcomeUnknown) -> WriteRecord:
        record = self._finish(command, owner, "write.needs_reconciliation", result="failure",
                              status=WriteStatus.NEEDS_RECONCILIATION,
                              last_error_class=error_class_name(exc), last_error=exc.message,
                              next_attempt_at=None)
        raise OutcomeUnknown(exc.message, key=record.key)

    def _transient(self, command, owner, exc: BaseException, *, maybe_delivered: bool) -> None:
        """Back to pending with a backoff. Earlier attempts were either reconciled away or
        never delivered, so whether a reconcile is owed next time depends on this attempt."""
        now = self.clock.now()
        with self.db.transaction() as tx:
            try:
                row = self._guarded(tx, command, owner)
            except LeaseLost:
                return
            retry_after = getattr(exc, "retry_after", None)
            row.status = WriteStatus.PENDING
            row.maybe_sent = maybe_delivered
            row.last_error_class = error_class_name(exc)
            row.last_error = getattr(exc, "message", None) or error_class_name(exc)
            row.next_attempt_at = now + timedelta(
                seconds=backoff_seconds(row.attempts, retry_after=retry_after))
            row.lease_owner, row.lease_expires_at, row.updated_at = None, None, now
            audit.record(tx, at=now, org_id=row.org_id, session_id=row.session_id,
                         correlation_id=row.correlation_id, action="write.retry_scheduled",
                         outcome="failure", key=row.key, error_class=row.last_error_class,
                         attempt=row.attempts)


def _error_outcome(exc: PermanentError) -> dict:
    return {k: v for k, v in {"status": exc.status, "vendor_code": exc.vendor_code,
                              **{k: v for k, v in exc.fields.items()
                                 if isinstance(v, (str, int, float, bool, list))}}.items()
            if v is not None}
