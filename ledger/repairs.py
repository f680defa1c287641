"""The database side of an operator's repairs of processing (chunks, recording versions)
and the read that finds what is stuck. Writes are repaired in ledger/writes.py; the
orchestration (org scope, enqueueing, audit of who and why) is chartbridge/ops/repair.py.

Every change here is guarded by the row's current state under a row lock and appends an
audit row with the operator and the reason, in the same transaction.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from chartbridge.core.errors import NotFound, StateConflict
from chartbridge.core.models import ChunkState, SessionStatus, VersionState, WriteStatus
from chartbridge.core.ports import Clock
from chartbridge.core.rules import version_complete

from . import audit
from .db import Database
from .tables import ChunkRow, RecordingRow, SessionRow, WriteRow


def _session(tx, org_id: str, session_id: str) -> SessionRow:
    row = tx.get(SessionRow, session_id)
    if row is None or row.org_id != org_id:
        raise NotFound("no such session in this organization")
    return row


def reopen_chunk(db: Database, clock: Clock, org_id: str, session_id: str, recording_id: str,
                 sequence: int, *, actor: str, reason: str) -> str:
    """Make a chunk runnable again and return the state it was in. An announced chunk (a
    killed worker left it) is left as it is; a failed one goes back to announced with a
    fresh attempt budget, and the waiting-on-it versions it failed go back to waiting. A
    transcribed chunk has nothing to re-drive."""
    now = clock.now()
    with db.transaction() as tx:
        session = _session(tx, org_id, session_id)
        row = tx.get(ChunkRow, (session_id, recording_id, sequence), with_for_update=True)
        if row is None or row.org_id != org_id:
            raise NotFound("no such chunk in this organization")
        was = ChunkState(row.state)
        if was == ChunkState.TRANSCRIBED:
            raise StateConflict("the chunk is transcribed already; nothing to re-drive")
        if session.status != SessionStatus.OPEN:
            raise StateConflict(f"the session is {session.status}; nothing more is processed")
        reopened = []
        if was == ChunkState.FAILED:
            row.state, row.error, row.attempts = ChunkState.ANNOUNCED, None, 0
            for rec in tx.scalars(select(RecordingRow).where(
                    RecordingRow.session_id == session_id,
                    RecordingRow.recording_id == recording_id,
                    RecordingRow.chunk_count >= sequence,
                    RecordingRow.state == VersionState.FAILED).with_for_update()):
                if (rec.error or "").startswith(f"chunk {sequence}:"):
                    rec.state, rec.error, rec.finished_at = VersionState.WAITING, None, None
                    reopened.append(rec.version)
        row.updated_at = now
        audit.record(tx, at=now, org_id=org_id, session_id=session_id,
                     correlation_id=session.correlation_id, actor=actor,
                     action="chunk.redriven", recording_id=recording_id, sequence=sequence,
                     previous_state=was.value, versions_reopened=reopened, reason=reason)
        return was.value


def reopen_version(db: Database, clock: Clock, org_id: str, session_id: str,
                   recording_id: str, version: int, *, actor: str, reason: str) -> dict:
    """Make a recording version's next step runnable again. Returns what to enqueue:
    {"finish": bool, "chunks": [sequence, ...], "previous_state": str}.

    ready (claimed, its worker died)       -> finish it again;
    waiting, every chunk transcribed       -> claimed now, finished;
    waiting, chunks still announced        -> those chunks re-driven;
    failed, newest, every chunk transcribed -> ready again, finished (its writes are keyed:
                                              nothing the EHR holds is sent twice);
    a failed chunk, done, superseded       -> StateConflict naming what to do instead."""
    now = clock.now()
    with db.transaction() as tx:
        session = tx.get(SessionRow, session_id, with_for_update=True)   # serialises claims
        if session is None or session.org_id != org_id:
            raise NotFound("no such session in this organization")
        if session.status != SessionStatus.OPEN:
            raise StateConflict(f"the session is {session.status}; nothing more is processed")
        rec = tx.get(RecordingRow, (session_id, recording_id, version), with_for_update=True)
        if rec is None or rec.org_id != org_id:
            raise NotFound("no such recording version in this organization")
        was = VersionState(rec.state)
        if was in (VersionState.DONE, VersionState.SUPERSEDED):
            raise StateConflict(f"the version is {was.value}; nothing to re-drive")
        newest = max(tx.scalars(select(RecordingRow.version).where(
            RecordingRow.session_id == session_id, RecordingRow.recording_id == recording_id)))
        if newest != version:
            raise StateConflict(f"version {newest} is newer; only the newest is documented")
        states = {seq: ChunkState(st) for seq, st in tx.execute(
            select(ChunkRow.sequence, ChunkRow.state).where(
                ChunkRow.session_id == session_id, ChunkRow.recording_id == recording_id))}
        failed = sorted(s for s, st in states.items()
                        if st == ChunkState.FAILED and s <= rec.chunk_count)
        plan = {"finish": False, "chunks": [], "previous_state": was.value}
        if failed:
            raise StateConflict(f"chunk {failed[0]} failed; re-drive the chunk first")
        if version_complete(states, rec.chunk_count):
            if was != VersionState.READY:
                rec.state, rec.error, rec.finished_at = VersionState.READY, None, None
            plan["finish"] = True
        elif was == VersionState.WAITING:
            plan["chunks"] = sorted(s for s, st in states.items()
                                    if st == ChunkState.ANNOUNCED and s <= rec.chunk_count)
            for chunk in tx.scalars(select(ChunkRow).where(
                    ChunkRow.session_id == session_id, ChunkRow.recording_id == recording_id,
                    ChunkRow.sequence.in_(plan["chunks"]))):
                chunk.updated_at = now
        else:
            raise StateConflict("the version's chunks are not all announced yet; nothing "
                                "to re-drive")
        audit.record(tx, at=now, org_id=org_id, session_id=session_id,
                     correlation_id=session.correlation_id, actor=actor,
                     action="recording.redriven", recording_id=recording_id,
                     recording_version=version, previous_state=was.value,
                     finish=plan["finish"], chunks=plan["chunks"], reason=reason)
        return plan


NOT_TERMINAL_WRITES = (WriteStatus.PENDING, WriteStatus.IN_FLIGHT,
                       WriteStatus.NEEDS_RECONCILIATION)


def stuck(db: Database, org_id: str, *, cutoff: datetime, now: datetime) -> list[dict]:
    """Open sessions with something not terminal since before `cutoff`, each with the
    reasons the engine knows (ids, states and ages only: no PHI)."""
    def age(at: datetime) -> int:
        return int((now - at).total_seconds())

    found: dict[str, list[tuple[datetime, str]]] = {}
    with db.transaction() as tx:
        for c in tx.scalars(select(ChunkRow).where(
                ChunkRow.org_id == org_id, ChunkRow.state == ChunkState.ANNOUNCED,
                ChunkRow.updated_at < cutoff)):
            found.setdefault(c.session_id, []).append((c.updated_at, (
                f"chunk {c.recording_id}#{c.sequence} announced, not transcribed for "
                f"{age(c.updated_at)} s ({c.attempts} attempts"
                + (f"; last error: {c.error}" if c.error else "") + ")")))
        for r in tx.scalars(select(RecordingRow).where(
                RecordingRow.org_id == org_id,
                RecordingRow.state.in_([VersionState.WAITING, VersionState.READY]),
                RecordingRow.announced_at < cutoff)):
            what = ("claimed but never finished (its worker may have died)"
                    if r.state == VersionState.READY else "waiting for its chunks")
            found.setdefault(r.session_id, []).append((r.announced_at, (
                f"version {r.recording_id} v{r.version} {what} for {age(r.announced_at)} s")))
        for w in tx.scalars(select(WriteRow).where(
                WriteRow.org_id == org_id, WriteRow.status.in_(NOT_TERMINAL_WRITES),
                WriteRow.updated_at < cutoff)):
            if w.status == WriteStatus.NEEDS_RECONCILIATION:
                why = "needs reconciliation: the EHR may or may not hold it"
            elif w.status == WriteStatus.IN_FLIGHT:
                why = "in flight (lease " + ("expired" if w.lease_expires_at < now
                                              else "live") + ")"
            else:
                why = "pending" + (f" after {w.last_error_class}" if w.last_error_class else "")
            found.setdefault(w.session_id or "-", []).append((w.updated_at, (
                f"{w.target} {w.kind} write {why}, {w.attempts} attempts, "
                f"unchanged for {age(w.updated_at)} s")))
        sessions = {s.id: s for s in tx.scalars(select(SessionRow).where(
            SessionRow.org_id == org_id, SessionRow.id.in_(list(found))))}
    out = []
    for session_id, reasons in found.items():
        s = sessions.get(session_id)
        if s is not None and s.status != SessionStatus.OPEN and not any(
                "write" in why for _, why in reasons):
            continue            # a closed session's leftover processing is not stuck work
        reasons.sort()
        out.append({"session_id": session_id, "status": s.status if s else None,
                    "correlation_id": s.correlation_id if s else None,
                    "since": reasons[0][0], "age_s": age(reasons[0][0]),
                    "reasons": [why for _, why in reasons]})
    out.sort(key=lambda d: d["since"])
    return out
