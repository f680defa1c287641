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

from sqlalchemy import bindparam, select

from chartbridge.core.errors import (ChartbridgeError, IdempotencyConflict, NotFound,
                                     OutcomeUnknown, PermanentError, StateConflict,
                                     TransientError, WriteInProgress, error_class_name)
from chartbridge.core.models import (ApprovalState, WriteCommand, WriteKind, WriteOutcome,
                                     WriteStatus)
from chartbridge.core.ports import Clock, EhrAdapter
from chartbridge.core.rules import correction_kind
from chartbridge import metrics
from chartbridge.webhooks import outbox

from . import audit
from .db import Database, insert_ignoring
from .tables import SessionRow, WriteRow

log = logging.getLogger("chartbridge.ledger")

FINISHED = {WriteStatus.SUCCEEDED, WriteStatus.FAILED, WriteStatus.STALE, WriteStatus.CANCELLED}
# settled without reaching the EHR as far as the ledger knows: never a correction's parent
NOT_WRITTEN = (WriteStatus.FAILED, WriteStatus.STALE, WriteStatus.CANCELLED)


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


_W = WriteRow.__table__
# Settling a write: the SET columns are the execution's parameters (its status and
# outcome), guarded by the lease and the in-flight status; built once.
_SETTLE = (_W.update().where(_W.c.key == bindparam("w_key"),
                             _W.c.lease_owner == bindparam("w_owner"),
                             _W.c.status == bindparam("w_status"))
           .returning(*_W.c))


class LeaseLost(ChartbridgeError):
    """Another claimant took this write over while we were calling the EHR."""

    code = "lease_lost"


def backoff_seconds(attempt: int, *, base: float = 1.0, cap: float = 300.0,
                    retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never sooner than the vendor's Retry-After."""
    delay = random.uniform(0, min(cap, base * (2 ** max(0, attempt - 1))))
    return max(delay, retry_after or 0.0)


class WaitingForParent(WriteInProgress):
    """A correction whose parent write has not settled yet: it waits, visibly."""

    code = "waiting_for_parent"


MAX_WRITE_ATTEMPTS = 12


class WriteLedger:
    def __init__(self, db: Database, clock: Clock, *, lease_seconds: float = 120.0,
                 max_attempts: int = MAX_WRITE_ATTEMPTS, parent_wait_s: float = 2.0) -> None:
        self.db = db
        self.clock = clock
        self.lease = timedelta(seconds=lease_seconds)
        self.max_attempts = max_attempts
        self.parent_wait_s = parent_wait_s

    # -- the one entry point -------------------------------------------------------------
    def execute(self, command: WriteCommand, adapter: EhrAdapter) -> WriteRecord:
        """Record `command` (once: `prepare`) and perform it through `adapter` at most once.
        Returns the finished record (succeeded, stale, or failed with its permanent reason).
        Raises TransientError (retry later), WriteInProgress (incl. WaitingForParent),
        IdempotencyConflict or OutcomeUnknown.

        A write recorded here for the first time (and correcting nothing) is inserted
        already claimed: one transaction records it and takes its lease, one settles it."""
        owner = uuid.uuid4().hex
        key, found = self._prepare(command, claim_for=owner)
        if isinstance(found, WriteRecord):
            return found                            # finished already: the stored outcome
        if found is None:
            return self.execute_key(command.org_id, key, adapter)
        return self._perform(found, owner, adapter, reconcile_first=False)

    def execute_key(self, org_id: str, key: str, adapter: EhrAdapter) -> WriteRecord:
        """Perform the write recorded under `key` — exactly as it was recorded (kind, parent,
        body): nothing about its identity is recomputed here."""
        command = self._resolved(org_id, key)
        owner = uuid.uuid4().hex
        claim = self._claim(command, owner)
        if isinstance(claim, WriteRecord):
            return claim
        return self._perform(command, owner, adapter, reconcile_first=claim)

    def _perform(self, command: WriteCommand, owner: str, adapter: EhrAdapter, *,
                 reconcile_first: bool) -> WriteRecord:
        """The claimant's part, outside any transaction. The claim already recorded the write
        as maybe sent, so a crash from here on is reconciled, never blindly resent."""
        org_id = command.org_id
        outcome: WriteOutcome | None = None
        if reconcile_first:
            try:
                with metrics.timed_write(org_id, command.target, command.kind, "reconcile"):
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

        try:
            with metrics.timed_write(org_id, command.target, command.kind, "send"):
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
        Same key, different body: IdempotencyConflict.

        This is where a lineage write's identity is decided, once: the first time its key is
        recorded, it becomes the original (create) or a correction (edit / replace / append)
        of the newest write of the same session at the same target, and that kind and parent
        are stored with it. Recording it again — a double-click, 50 threads, a retried job —
        finds the stored row and changes nothing."""
        return self._prepare(command)[0]

    def _prepare(self, command: WriteCommand, *, claim_for: str | None = None
                 ) -> tuple[str, WriteCommand | WriteRecord | None]:
        """`prepare`; with `claim_for`, a write recorded now for the first time that corrects
        nothing (no parent to wait for) is inserted already claimed by that owner and marked
        maybe sent — the claimant calls the adapter next, so a crash before the call costs
        one reconcile, never a blind resend. Returns the key and: the command as stored if
        claimed; with `claim_for`, the record of a write found finished already (a replay:
        nothing more to do); else None (the caller goes through `execute_key`)."""
        key, rhash, now = command.idempotency_key(), command.request_hash(), self.clock.now()
        with self.db.transaction() as tx:
            # A write that corrects nothing goes straight to the insert (its conflict is the
            # look-up); a lineage write is looked up first, its place decided under a lock.
            row = None
            if command.correction_policy:
                row = tx.get(WriteRow, key)
                if row is None:
                    # serialise lineage decisions per session (SQLite: BEGIN IMMEDIATE already)
                    tx.execute(select(SessionRow.id).where(SessionRow.id == command.session_id)
                               .with_for_update())
                    row = tx.get(WriteRow, key, populate_existing=True)
                    if row is None:
                        command = self._place_in_lineage(tx, command)
            if row is None:
                stored = command.model_dump(mode="json")
                claim = claim_for is not None and not command.parent_key
                state = (dict(status=WriteStatus.IN_FLIGHT, attempts=1, maybe_sent=True,
                              sent_at=now, lease_owner=claim_for,
                              lease_expires_at=now + self.lease)
                         if claim else dict(status=WriteStatus.PENDING, attempts=0,
                                            maybe_sent=False, sent_at=None, lease_owner=None,
                                            lease_expires_at=None))
                got = tx.execute(insert_ignoring(tx, WriteRow.__table__, ("key",), "key"), dict(
                    key=key, org_id=command.org_id, target=command.target,
                    session_id=command.session_id, resource_kind=command.resource_kind,
                    kind=str(command.kind), request_hash=rhash, command=stored,
                    next_attempt_at=now, correlation_id=command.correlation_id, created_at=now,
                    updated_at=now, **state)).first()
                if got is not None:
                    ids = dict(at=now, org_id=command.org_id, session_id=command.session_id,
                               correlation_id=command.correlation_id, key=key,
                               target=command.target, kind=str(command.kind))
                    entries = [audit.entry(action="write.prepared", parent=command.parent_key,
                                           **ids)]
                    if claim:
                        entries.append(audit.entry(action="write.claimed", attempt=1,
                                                   reconcile=False, **ids))
                    audit.record_all(tx, entries)
                    # exactly the command as recorded, as `_resolved` would read it back
                    return key, WriteCommand.model_validate(stored) if claim else None
                row = tx.get(WriteRow, key, populate_existing=True)   # recorded before: a repeat
            if row.request_hash != rhash:
                raise IdempotencyConflict(
                    "this idempotency key was used with a different request; a changed "
                    "note is a new version with a new key", key=key)
            finished = claim_for is not None and WriteStatus(row.status) in FINISHED
            return key, WriteRecord.of(row) if finished else None

    def _place_in_lineage(self, tx, command: WriteCommand) -> WriteCommand:
        """Kind and parent of a new lineage write: a correction of the newest write of this
        session at this target that may have reached the EHR (a write that failed or went
        stale never did, or holds the EHR's own change: its own parent is the one)."""
        rows = {r.key: r for r in tx.scalars(select(WriteRow).where(
            WriteRow.org_id == command.org_id, WriteRow.session_id == command.session_id,
            WriteRow.target == command.target))
            if (r.command or {}).get("correction_policy")}
        named = {(r.command or {}).get("parent_key") for r in rows.values()}
        tails = sorted((r for k, r in rows.items() if k not in named),
                       key=lambda r: r.created_at)
        parent = tails[-1] if tails else None
        while parent is not None and parent.status in NOT_WRITTEN:
            parent = rows.get((parent.command or {}).get("parent_key"))
        if parent is None:
            return command.model_copy(update={"kind": WriteKind.CREATE, "parent_key": None})
        parent_state = ApprovalState(parent.command["approval_state"])
        extra = dict(command.extra, parent_available=parent_state == ApprovalState.APPROVED)
        return command.model_copy(update={
            "kind": correction_kind(parent_state, policy=command.correction_policy),
            "parent_key": parent.key, "extra": extra})

    def _resolved(self, org_id: str, key: str) -> WriteCommand:
        """The stored command, with the EHR id and version its parent write got (facts the
        ledger recorded when the parent succeeded). A parent not yet settled makes this one
        wait (WaitingForParent, retried when due); a parent that never reached the EHR, or
        went stale, settles this one with that reason."""
        now = self.clock.now()
        with self.db.transaction() as tx:
            row = tx.get(WriteRow, key)
            if row is None or row.org_id != org_id:
                raise NotFound("no such write in this organization", key=key)
            command = WriteCommand.model_validate(row.command)
            if not command.parent_key or WriteStatus(row.status) in FINISHED:
                return command
            parent = tx.get(WriteRow, command.parent_key)
            status = WriteStatus(parent.status) if parent is not None else WriteStatus.FAILED
            if status == WriteStatus.SUCCEEDED:
                return command.model_copy(update={"parent_external_id": parent.external_id,
                                                  "parent_version": parent.external_version})
            row = tx.get(WriteRow, key, with_for_update=True)
            if WriteStatus(row.status) != WriteStatus.PENDING:
                return command
            if status in NOT_WRITTEN:
                row.status = (WriteStatus.STALE if status == WriteStatus.STALE
                              else WriteStatus.FAILED)
                row.last_error_class = "ParentNotWritten"
                row.last_error = (f"the earlier write this one corrects is {status.value}; "
                                  "nothing was sent")
                row.next_attempt_at, row.updated_at = None, now
                outbox.write_settled(tx, row, now)
                audit.record(tx, at=now, org_id=row.org_id, session_id=row.session_id,
                             correlation_id=row.correlation_id,
                             action=f"write.{WriteStatus(row.status).value}",
                             outcome="failure", key=key, parent=command.parent_key)
                return command
            row.last_error_class = "WaitingForParent"
            row.last_error = (f"waiting for the earlier write it corrects ({status.value}) "
                              "to settle")
            row.next_attempt_at = now + timedelta(seconds=self.parent_wait_s)
            row.updated_at = now
        raise WaitingForParent(row.last_error, key=key)

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

    def waiting_on(self, org_id: str, key: str) -> list[str]:
        """Keys of pending writes whose parent is `key` (to drive them once it settles)."""
        with self.db.transaction() as tx:
            parent = tx.get(WriteRow, key)
            if parent is None or parent.org_id != org_id:
                return []
            rows = tx.scalars(select(WriteRow).where(
                WriteRow.org_id == org_id, WriteRow.session_id == parent.session_id,
                WriteRow.status == WriteStatus.PENDING))
            return [r.key for r in rows if (r.command or {}).get("parent_key") == key]

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

    def settle(self, org_id: str, key: str, *, delivered: bool, reason: str) -> WriteRecord | None:
        """Settle a write no one holds from what a later write learned of it: `delivered`
        (the EHR holds it) -> succeeded, else failed; `reason` is recorded either way.
        Returns None if it is finished already or held by a live lease."""
        now = self.clock.now()
        with self.db.transaction() as tx:
            row = tx.get(WriteRow, key, with_for_update=True)
            if row is None or row.org_id != org_id:
                raise NotFound("no such write in this organization", key=key)
            status = WriteStatus(row.status)
            if status in FINISHED or (status == WriteStatus.IN_FLIGHT
                                      and row.lease_expires_at > now):
                return None
            row.status = WriteStatus.SUCCEEDED if delivered else WriteStatus.FAILED
            row.last_error_class, row.last_error = "Superseded", reason
            row.next_attempt_at, row.lease_owner, row.lease_expires_at = None, None, None
            row.updated_at = now
            if delivered:
                row.acknowledged_at = now
            outbox.write_settled(tx, row, now)
            audit.record(tx, at=now, org_id=org_id, session_id=row.session_id,
                         correlation_id=row.correlation_id, action="write.settled",
                         key=key, status=row.status, delivered=delivered)
            return WriteRecord.of(row)

    def resolve(self, org_id: str, key: str, *, external_id: str | None, actor: str,
                note: str, external_version: str | None = None,
                **detail) -> WriteRecord:
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
                row.external_version = external_version or row.external_version
                row.next_attempt_at = None
            else:
                row.status, row.maybe_sent, row.next_attempt_at = WriteStatus.PENDING, False, now
            row.updated_at = now
            outbox.write_settled(tx, row, now)      # succeeded: announced; pending: not
            audit.record(tx, at=now, org_id=org_id, session_id=row.session_id,
                         correlation_id=row.correlation_id, actor=actor,
                         action="write.resolved", key=key, status=row.status, note=note,
                         **detail)
            return WriteRecord.of(row)

    def requeue(self, org_id: str, key: str, *, actor: str, reason: str) -> WriteRecord:
        """A person drives a failed write again, as a new attempt: the same key and the
        same stored command (nothing about its identity is recomputed), back to pending and
        due now with a fresh attempt budget. Whether it may have reached the EHR is kept, so
        a write that was ever sent is reconciled before anything is sent again."""
        now = self.clock.now()
        with self.db.transaction() as tx:
            row = _locked_row(tx, org_id, key)
            if row.status != WriteStatus.FAILED:
                raise StateConflict(f"write is {row.status}, not failed; only a failed write "
                                    "is requeued", key=key)
            previous = {"previous_attempts": row.attempts,
                        "previous_error_class": row.last_error_class}
            row.status, row.attempts, row.next_attempt_at = WriteStatus.PENDING, 0, now
            row.last_error_class, row.last_error, row.updated_at = None, None, now
            audit.record(tx, at=now, org_id=org_id, session_id=row.session_id,
                         correlation_id=row.correlation_id, actor=actor,
                         action="write.requeued", key=key, reason=reason,
                         reconcile_first=bool(row.maybe_sent), **previous)
            return WriteRecord.of(row)

    CANCELLABLE = (WriteStatus.PENDING, WriteStatus.FAILED, WriteStatus.STALE,
                   WriteStatus.NEEDS_RECONCILIATION, WriteStatus.IN_FLIGHT)

    def cancel(self, org_id: str, key: str, *, actor: str, reason: str) -> WriteRecord:
        """A person stops a write that has not succeeded: cancelled (terminal), with the
        reason. Never one a live claimant holds (it may be talking to the EHR right now)."""
        now = self.clock.now()
        with self.db.transaction() as tx:
            row = _locked_row(tx, org_id, key)
            status = WriteStatus(row.status)
            if status == WriteStatus.IN_FLIGHT and row.lease_expires_at > now:
                raise WriteInProgress("this write is in progress; cancel it once it settles",
                                      key=key)
            if status not in self.CANCELLABLE:
                raise StateConflict(f"write is {status}; only a write that has not succeeded "
                                    "is cancelled", key=key)
            row.status, row.next_attempt_at = WriteStatus.CANCELLED, None
            row.lease_owner, row.lease_expires_at, row.updated_at = None, None, now
            row.last_error_class, row.last_error = "Cancelled", f"cancelled: {reason}"
            audit.record(tx, at=now, org_id=org_id, session_id=row.session_id,
                         correlation_id=row.correlation_id, actor=actor,
                         action="write.cancelled", key=key, previous_status=status.value,
                         reason=reason, maybe_delivered=bool(row.maybe_sent))
            return WriteRecord.of(row)

    def resolved_command(self, org_id: str, key: str) -> WriteCommand:
        """The stored command as a send or a reconcile look-up sees it (its parent's EHR id
        filled in): what a person's reconcile check asks the EHR about."""
        return self._resolved(org_id, key)

    # -- state changes -------------------------------------------------------------------
    def _claim(self, command: WriteCommand, owner: str) -> bool | WriteRecord:
        """Take the lease on a recorded write. True/False = claimed (reconcile first or
        not); a WriteRecord = finished already."""
        key, rhash, now = command.idempotency_key(), command.request_hash(), self.clock.now()
        with self.db.transaction() as tx:
            row = tx.scalars(select(WriteRow).where(WriteRow.key == key).with_for_update()).first()
            if row is None or row.org_id != command.org_id:
                raise NotFound("no such write in this organization", key=key)
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
            # First claim, a dead claimant's lease, or a retry after a transient error.
            reconcile = bool(row.maybe_sent) or status == WriteStatus.IN_FLIGHT
            # Marked maybe sent in the claim itself: the adapter is called right after it,
            # so a crash in between costs one reconcile (the safe direction), not a commit.
            row.status, row.lease_owner = WriteStatus.IN_FLIGHT, owner
            row.lease_expires_at, row.updated_at = now + self.lease, now
            row.maybe_sent, row.sent_at = True, now
            row.attempts += 1
            audit.record(tx, at=now, org_id=row.org_id, session_id=row.session_id,
                         correlation_id=row.correlation_id,
                         action="write.claimed" if row.attempts == 1 else "write.reclaimed",
                         key=key, target=row.target, kind=row.kind, attempt=row.attempts,
                         reconcile=reconcile)
            return reconcile

    def _guarded(self, tx, command: WriteCommand, owner: str) -> WriteRow:
        row = tx.scalars(select(WriteRow).where(WriteRow.key == command.idempotency_key())
                         .with_for_update()).one()
        if row.lease_owner != owner or row.status != WriteStatus.IN_FLIGHT:
            raise LeaseLost("the lease on this write was taken over", key=row.key)
        return row

    def _finish(self, command: WriteCommand, owner: str, action: str, result: str = "success",
                **changes) -> WriteRecord:
        """Settle the write: one guarded UPDATE … RETURNING (the lease is still ours and it
        is in flight, or nothing changes and LeaseLost is raised), its webhook event and
        audit row, one commit."""
        now = self.clock.now()
        with self.db.transaction() as tx:
            row = tx.execute(_SETTLE, dict(
                changes, lease_owner=None, lease_expires_at=None, updated_at=now,
                w_key=command.idempotency_key(), w_owner=owner,
                w_status=WriteStatus.IN_FLIGHT)).first()
            if row is None:
                raise LeaseLost("the lease on this write was taken over",
                                key=command.idempotency_key())
            outbox.write_settled(tx, row, now)
            audit.record(tx, at=now, org_id=row.org_id, session_id=row.session_id,
                         correlation_id=row.correlation_id, action=action, outcome=result,
                         key=row.key, target=row.target, status=row.status,
                         error_class=row.last_error_class)
            record = WriteRecord.of(row)
        log.info("write %s", action, extra={"key": record.key, "status": record.status.value,
                                            "correlation_id": record.correlation_id})
        metrics.write_finished(self.db, record)          # Stopped -> handoff latency
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
        """A permanent refusal. The EHR's copy having changed since the engine wrote it (an
        If-Match precondition failed) is `stale`: nothing was overwritten, a person decides."""
        stale = getattr(exc, "vendor_code", None) == "stale"
        return self._finish(command, owner, "write.stale" if stale else "write.failed",
                            result="failure",
                            status=WriteStatus.STALE if stale else WriteStatus.FAILED,
                            last_error_class=error_class_name(exc),
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
        never delivered, so whether a reconcile is owed next time depends on this attempt.
        Attempts are bounded: the last one settles the write — needs_reconciliation if the
        EHR may hold it, failed (with the reason) if it certainly does not."""
        now = self.clock.now()
        with self.db.transaction() as tx:
            try:
                row = self._guarded(tx, command, owner)
            except LeaseLost:
                return
            retry_after = getattr(exc, "retry_after", None)
            row.last_error_class = error_class_name(exc)
            message = getattr(exc, "message", None) or error_class_name(exc)
            row.lease_owner, row.lease_expires_at, row.updated_at = None, None, now
            if row.attempts >= self.max_attempts:
                row.status = (WriteStatus.NEEDS_RECONCILIATION if maybe_delivered
                              else WriteStatus.FAILED)
                row.last_error = f"gave up after {row.attempts} attempts: {message}"
                row.next_attempt_at = None
                action = f"write.{row.status}"
                outbox.write_settled(tx, row, now)
            else:
                row.status = WriteStatus.PENDING
                row.maybe_sent = maybe_delivered
                row.last_error = message
                row.next_attempt_at = now + timedelta(
                    seconds=backoff_seconds(row.attempts, retry_after=retry_after))
                action = "write.retry_scheduled"
            audit.record(tx, at=now, org_id=row.org_id, session_id=row.session_id,
                         correlation_id=row.correlation_id, action=action,
                         outcome="failure", key=row.key, error_class=row.last_error_class,
                         attempt=row.attempts)
        if action != "write.retry_scheduled":
            log.warning("write %s", action, extra={"key": command.idempotency_key(),
                                                   "correlation_id": command.correlation_id})


def _locked_row(tx, org_id: str, key: str) -> WriteRow:
    """The org's write under a row lock, or NotFound (another org's key is not found)."""
    row = tx.get(WriteRow, key, with_for_update=True)
    if row is None or row.org_id != org_id:
        raise NotFound("no such write in this organization", key=key)
    return row


def _error_outcome(exc: PermanentError) -> dict:
    return {k: v for k, v in {"status": exc.status, "vendor_code": exc.vendor_code,
                              **{k: v for k, v in exc.fields.items()
                                 if isinstance(v, (str, int, float, bool, list))}}.items()
            if v is not None}
