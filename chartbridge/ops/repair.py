"""The repairs an operator makes, from the console (/ops/) or the CLI: one function each,
org-scoped, each leaving an audit row with who (`actor`) and why (`reason`).

Nothing here recomputes a write's identity: a requeued or resent write is the stored row
(same key, same stored command), driven through the ledger, which reconciles before it
resends anything that may have reached the EHR; the adapters' idempotency (a conditional
create, a byte-identical resend) holds underneath. Processing repairs reopen a chunk or a
version under a row lock and enqueue the same job the sweeper would (or, with no queue in
this process, leave it due for the sweeper).
"""
from __future__ import annotations

import logging

from chartbridge.core.errors import (InputError, NotFound, OutcomeUnknown, PermanentError,
                                     StateConflict, WriteInProgress)
from chartbridge.core.models import WriteStatus
from chartbridge.ledger import repairs
from chartbridge.ledger.writes import WriteRecord

log = logging.getLogger("chartbridge.ops")

MAX_REASON = 500
MAX_ACTOR = 200


def _who(actor: str, reason: str) -> tuple[str, str]:
    actor, reason = (actor or "").strip(), (reason or "").strip()
    if not actor or len(actor) > MAX_ACTOR:
        raise InputError("actor: who makes the repair is required (at most 200 characters)",
                         field="actor")
    if not reason:
        raise InputError("reason: say why (it is kept in the audit trail)", field="reason")
    if len(reason) > MAX_REASON:
        raise InputError(f"reason: at most {MAX_REASON} characters", field="reason")
    return actor, reason


def _enqueue(engine, job: str, *args) -> bool:
    """Through the engine's queue if this process has one; else the sweeper finds the
    reopened work (it is due now) on its next pass."""
    if engine.queue is None:
        return False
    engine.queue.enqueue(job, *args)
    return True


def _busy(engine, job_key: str) -> bool:
    from chartbridge.ledger.leases import JobLeases
    from chartbridge.recovery import LEASE_S
    return job_key in JobLeases(engine.db, engine.clock, lease_s=LEASE_S).live()


def _record(engine, org_id: str, key: str) -> WriteRecord:
    record = engine.ledger.get(org_id, key)
    if record is None:
        raise NotFound("no such write in this organization", key=key)
    return record


# -- writes -----------------------------------------------------------------------------------
def resolve_reconciliation(engine, org_id: str, key: str, *, actor: str, reason: str,
                           external_id: str | None = None, resend: bool = False) -> WriteRecord:
    """Settle a needs_reconciliation write. With `external_id` (the person found it in the
    EHR): succeeded with that id. With `resend`: the EHR is asked first (adapter.reconcile):
    found -> succeeded with the id it reports, nothing sent; certainly absent -> back to
    pending and sent again under the same key; the adapter cannot look (e.g. MLLP) -> the
    person's confirmation stands and it is sent again; a temporary failure of the look-up ->
    TransientError, nothing changed."""
    actor, reason = _who(actor, reason)
    if bool(external_id) == bool(resend):
        raise InputError("give either external_id (the EHR holds it) or resend (it does not)",
                         field="external_id")
    record = _record(engine, org_id, key)
    if record.status != WriteStatus.NEEDS_RECONCILIATION:
        raise StateConflict(f"write is {record.status}, not needs_reconciliation", key=key)
    if external_id:
        external_id = external_id.strip()
        if not external_id or len(external_id) > 200:
            raise InputError("external_id: the EHR's id, 1-200 characters", field="external_id")
        return engine.ledger.resolve(org_id, key, external_id=external_id, actor=actor,
                                     note=reason, reason=reason, checked="by_person")
    command = engine.ledger.resolved_command(org_id, key)
    try:
        found = engine.adapter(org_id, record.target).reconcile(command)
    except OutcomeUnknown as exc:
        # the EHR cannot answer (no look-up, or an ambiguous one): the person's check stands
        found, checked, said = None, "by_person", exc.message
    except PermanentError as exc:
        raise PermanentError(f"the EHR refused the look-up; nothing was resent: {exc.message}",
                             status=exc.status) from exc
    else:
        checked, said = "by_ehr", None
    if found is not None:
        return engine.ledger.resolve(org_id, key, external_id=found.external_id,
                                     external_version=found.external_version, actor=actor,
                                     note=reason, reason=reason, checked="by_ehr",
                                     found_in_ehr=True)
    record = engine.ledger.resolve(org_id, key, external_id=None, actor=actor, note=reason,
                                   reason=reason, checked=checked, resend=True,
                                   **({"ehr_said": said} if said else {}))
    _enqueue(engine, "execute_write", org_id, key)
    return record


def requeue_failed(engine, org_id: str, key: str, *, actor: str, reason: str) -> WriteRecord:
    """failed -> pending as a new attempt of the same stored write, enqueued. A write that
    was ever sent is reconciled before it is sent again (the ledger's rule)."""
    actor, reason = _who(actor, reason)
    record = engine.ledger.requeue(org_id, key, actor=actor, reason=reason)
    _enqueue(engine, "execute_write", org_id, key)
    return record


def cancel_write(engine, org_id: str, key: str, *, actor: str, reason: str) -> WriteRecord:
    """pending / failed / stale / needs_reconciliation (or in flight under a dead lease)
    -> cancelled, terminal, with the reason. Nothing is sent for it again."""
    actor, reason = _who(actor, reason)
    return engine.ledger.cancel(org_id, key, actor=actor, reason=reason)


# -- processing ---------------------------------------------------------------------------------
def redrive_chunk(engine, org_id: str, session_id: str, recording_id: str, sequence: int, *,
                  actor: str, reason: str) -> None:
    """A chunk announced but not progressing (a killed worker), or failed: runnable again and
    enqueued. Refused while a live worker holds its job."""
    from chartbridge.ledger.leases import job_key
    actor, reason = _who(actor, reason)
    if _busy(engine, job_key("process_chunk", org_id, session_id, recording_id, sequence)):
        raise WriteInProgress("a live worker is processing this chunk")
    repairs.reopen_chunk(engine.db, engine.clock, org_id, session_id, recording_id,
                         int(sequence), actor=actor, reason=reason)
    _enqueue(engine, "process_chunk", org_id, session_id, recording_id, int(sequence))


def redrive_version(engine, org_id: str, session_id: str, recording_id: str, version: int, *,
                    actor: str, reason: str) -> None:
    """A recording version stuck (claimed and never finished, or waiting on chunks no one
    is processing) or failed with every chunk transcribed: its next step enqueued again."""
    from chartbridge.ledger.leases import job_key
    actor, reason = _who(actor, reason)
    if _busy(engine, job_key("finish_version", org_id, session_id, recording_id, version)):
        raise WriteInProgress("a live worker is finishing this version")
    plan = repairs.reopen_version(engine.db, engine.clock, org_id, session_id, recording_id,
                                  int(version), actor=actor, reason=reason)
    if plan["finish"]:
        _enqueue(engine, "finish_version", org_id, session_id, recording_id, int(version))
    for sequence in plan["chunks"]:
        _enqueue(engine, "process_chunk", org_id, session_id, recording_id, sequence)


# -- reads --------------------------------------------------------------------------------------
def stuck_sessions(engine, org_id: str, *, older_than_s: float) -> list[dict]:
    """Sessions with anything not terminal for longer than `older_than_s`, each with the
    reasons the engine knows: [{session_id, status, correlation_id, since, age_s, reasons}]."""
    from datetime import timedelta
    if older_than_s is None or older_than_s < 0:
        raise InputError("older_than_s: a number of seconds, 0 or more", field="older_than_s")
    now = engine.clock.now()
    return repairs.stuck(engine.db, org_id, cutoff=now - timedelta(seconds=older_than_s),
                         now=now)


__all__ = ["resolve_reconciliation", "requeue_failed", "cancel_write", "redrive_chunk",
           "redrive_version", "stuck_sessions"]
