"""Recordings: chunk announcements, their audio and transcripts, recording versions and
the exactly-once claim of a complete version; plus what the sweeper asks for."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select

from chartbridge.core.errors import NotFound, StateConflict
from chartbridge.core.models import (Chunk, ChunkState, Recording, RecordingStatus,
                                     SessionStatus, TranscriptSegment, VersionState)
from chartbridge.core.rules import version_complete

from chartbridge.webhooks import outbox

from .. import audit
from ..db import insert_for, insert_ignoring
from ..tables import ChunkAudioRow, ChunkRow, RecordingRow, SegmentRow
from .base import StoreBase


class RecordingStore(StoreBase):
    def announce_chunk(self, chunk: Chunk, *, org_id: str, event: str, key: str) -> bool:
        """Record a chunk announcement once. Returns True when the chunk is new (and so
        needs processing). A chunk's audio never changes once announced."""
        # Epic's hot path (one per callback): Core statements, no ORM rows or flush.
        now = self.clock.now()
        with self.db.transaction() as tx:
            session = self._session_facts(tx, org_id, chunk.session_id)
            if not self._first_delivery(tx, org_id, session.source, event, key, session.id,
                                        session.correlation_id):
                return False
            if session.status != SessionStatus.OPEN:
                return False
            # a chunk already announced (under another delivery) is left as it is
            stmt = insert_ignoring(tx, ChunkRow.__table__,
                                   ("session_id", "recording_id", "sequence"), "sequence")
            return tx.execute(stmt, {
                "session_id": chunk.session_id, "recording_id": chunk.recording_id,
                "sequence": chunk.sequence, "org_id": org_id, "version": chunk.version,
                "content_type": chunk.content_type, "duration_ms": chunk.duration_ms,
                "offset_ms": chunk.offset_ms, "state": ChunkState.ANNOUNCED, "attempts": 0,
                "enqueued_at": now, "updated_at": now}).first() is not None

    def store_audio(self, org_id: str, session_id: str, recording_id: str, sequence: int,
                    audio: bytes, content_type: str) -> None:
        with self.db.transaction() as tx:
            self._session_row(tx, org_id, session_id)
            stmt = insert_for(tx)(ChunkAudioRow.__table__).values(
                session_id=session_id, recording_id=recording_id, sequence=sequence,
                org_id=org_id, content_type=content_type, audio=audio)
            tx.execute(stmt.on_conflict_do_nothing(
                index_elements=["session_id", "recording_id", "sequence"]))

    def get_audio(self, org_id: str, session_id: str, recording_id: str,
                  sequence: int) -> bytes | None:
        with self.db.transaction() as tx:
            row = tx.get(ChunkAudioRow, (session_id, recording_id, sequence))
            return row.audio if row is not None and row.org_id == org_id else None

    def announce_version(self, recording: Recording, *, org_id: str, event: str,
                         key: str) -> tuple[Recording, bool]:
        now = self.clock.now()
        with self.db.transaction() as tx:
            session = self._session_row(tx, org_id, recording.session_id, lock=True)
            first = self._first_delivery(tx, org_id, session.source, event, key, session.id,
                                         session.correlation_id)
            existing = tx.get(RecordingRow, (recording.session_id, recording.recording_id,
                                             recording.version))
            if existing is not None:
                if (existing.chunk_count, existing.status) != (recording.chunk_count,
                                                               str(recording.status)):
                    raise StateConflict("this recording version was announced with other "
                                        "chunk count or status")
                return _recording(existing), False
            if not first or session.status != SessionStatus.OPEN:
                return recording, False
            newest = tx.scalar(select(func.max(RecordingRow.version)).where(
                RecordingRow.session_id == recording.session_id,
                RecordingRow.recording_id == recording.recording_id))
            state = VersionState.WAITING
            if newest is not None and newest > recording.version:
                state = VersionState.SUPERSEDED          # a late, older announcement
            tx.add(RecordingRow(session_id=recording.session_id,
                                recording_id=recording.recording_id, version=recording.version,
                                org_id=org_id, chunk_count=recording.chunk_count,
                                status=str(recording.status), state=state, announced_at=now))
            audit.record(tx, at=now, org_id=org_id, session_id=session.id,
                         correlation_id=session.correlation_id, actor=session.source,
                         action="recording.announced", recording_version=recording.version,
                         chunk_count=recording.chunk_count, status=str(recording.status))
            return recording.model_copy(update={"state": state, "announced_at": now}), True

    def newest_version(self, org_id: str, session_id: str, recording_id: str) -> int | None:
        with self.db.transaction() as tx:
            return tx.scalar(select(func.max(RecordingRow.version)).where(
                RecordingRow.org_id == org_id, RecordingRow.session_id == session_id,
                RecordingRow.recording_id == recording_id))

    def get_chunk(self, org_id: str, session_id: str, recording_id: str, sequence: int) -> Chunk:
        with self.db.transaction() as tx:
            row = tx.get(ChunkRow, (session_id, recording_id, sequence))
            if row is None or row.org_id != org_id:
                raise NotFound("no such chunk in this organization")
            return _chunk(row)

    def chunks(self, org_id: str, session_id: str) -> list[Chunk]:
        with self.db.transaction() as tx:
            rows = tx.scalars(select(ChunkRow).where(ChunkRow.org_id == org_id,
                                                     ChunkRow.session_id == session_id)
                              .order_by(ChunkRow.recording_id, ChunkRow.sequence))
            return [_chunk(r) for r in rows]

    def recordings(self, org_id: str, session_id: str) -> list[Recording]:
        with self.db.transaction() as tx:
            rows = tx.scalars(select(RecordingRow).where(RecordingRow.org_id == org_id,
                                                         RecordingRow.session_id == session_id)
                              .order_by(RecordingRow.recording_id, RecordingRow.version))
            return [_recording(r) for r in rows]

    def chunk_attempt(self, org_id: str, session_id: str, recording_id: str, sequence: int) -> int:
        with self.db.transaction() as tx:
            row = tx.get(ChunkRow, (session_id, recording_id, sequence), with_for_update=True)
            if row is None or row.org_id != org_id:
                raise NotFound("no such chunk in this organization")
            row.attempts += 1
            row.updated_at = self.clock.now()
            return row.attempts

    def chunk_transcribed(self, org_id: str, session_id: str, recording_id: str, sequence: int,
                          segments: list[TranscriptSegment], *, offset_ms: int | None,
                          final: bool = False, replace: bool = False,
                          lead_in: bool = True) -> bool:
        """Store the chunk's segments and mark it done, once (False if it was done
        already), or with `replace` swap in a final re-transcription of a done chunk."""
        now = self.clock.now()
        with self.db.transaction() as tx:
            row = tx.get(ChunkRow, (session_id, recording_id, sequence), with_for_update=True)
            if row is None or row.org_id != org_id:
                raise NotFound("no such chunk in this organization")
            if row.state == ChunkState.TRANSCRIBED and not replace:
                return False
            tx.execute(delete(SegmentRow).where(SegmentRow.session_id == session_id,
                                                SegmentRow.recording_id == recording_id,
                                                SegmentRow.chunk_sequence == sequence))
            for s in segments:
                tx.add(SegmentRow(session_id=session_id, id=s.id, org_id=org_id,
                                  recording_id=recording_id, chunk_sequence=sequence,
                                  start_ms=s.start_ms, end_ms=s.end_ms, text=s.text,
                                  confidence=s.confidence))
            row.state, row.error, row.updated_at = ChunkState.TRANSCRIBED, None, now
            row.final, row.lead_in = final, lead_in
            if offset_ms is not None:
                row.offset_ms = offset_ms
            return True

    def chunk_failed(self, org_id: str, session_id: str, recording_id: str, sequence: int,
                     reason: str) -> None:
        """A permanent failure on one chunk: recorded with a readable reason, and the
        versions that need it cannot complete."""
        now = self.clock.now()
        with self.db.transaction() as tx:
            row = tx.get(ChunkRow, (session_id, recording_id, sequence), with_for_update=True)
            if row is None or row.org_id != org_id:
                raise NotFound("no such chunk in this organization")
            row.state, row.error, row.updated_at = ChunkState.FAILED, reason, now
            for rec in tx.scalars(select(RecordingRow).where(
                    RecordingRow.session_id == session_id,
                    RecordingRow.recording_id == recording_id,
                    RecordingRow.chunk_count >= sequence,
                    RecordingRow.state == VersionState.WAITING)):
                rec.state, rec.error = VersionState.FAILED, f"chunk {sequence}: {reason}"
                outbox.session_failed(tx, org_id=org_id, session_id=session_id,
                                      recording_id=recording_id, version=rec.version,
                                      reason_code="chunk_failed", at=now)
            session = self._session_row(tx, org_id, session_id)
            audit.record(tx, at=now, org_id=org_id, session_id=session_id,
                         correlation_id=session.correlation_id, action="chunk.failed",
                         outcome="failure", recording_id=recording_id, sequence=sequence,
                         reason=reason)

    def is_last_of_stopped(self, org_id: str, session_id: str, recording_id: str,
                           sequence: int) -> bool:
        """Is this chunk the last of a version announced as Stopped?"""
        with self.db.transaction() as tx:
            return tx.scalar(select(func.count()).select_from(RecordingRow).where(
                RecordingRow.org_id == org_id, RecordingRow.session_id == session_id,
                RecordingRow.recording_id == recording_id, RecordingRow.chunk_count == sequence,
                RecordingRow.status == RecordingStatus.STOPPED.value)) > 0

    def chunk_offset(self, org_id: str, session_id: str, recording_id: str, sequence: int) -> int | None:
        """Where a chunk starts: the sum of the known durations before it, if all known."""
        with self.db.transaction() as tx:
            rows = tx.execute(select(ChunkRow.sequence, ChunkRow.duration_ms).where(
                ChunkRow.org_id == org_id, ChunkRow.session_id == session_id,
                ChunkRow.recording_id == recording_id, ChunkRow.sequence < sequence)).all()
        if len(rows) != sequence - 1 or any(d is None for _, d in rows):
            return None
        return sum(d for _, d in rows)

    def claim_ready_version(self, org_id: str, session_id: str,
                            recording_id: str) -> Recording | None:
        """If the newest announced version has every chunk 1..N transcribed and has not
        been claimed, claim it (exactly once, whoever calls) and return it. Older waiting
        versions are superseded: only the newest is documented."""
        now = self.clock.now()
        with self.db.transaction() as tx:
            session = self._session_row(tx, org_id, session_id, lock=True)   # serialises claimants
            if session.status != SessionStatus.OPEN:
                return None
            versions = list(tx.scalars(select(RecordingRow).where(
                RecordingRow.session_id == session_id, RecordingRow.recording_id == recording_id)
                .order_by(RecordingRow.version.desc())))
            if not versions:
                return None
            newest, older = versions[0], versions[1:]
            for v in older:
                if v.state == VersionState.WAITING:
                    v.state = VersionState.SUPERSEDED
            if newest.state != VersionState.WAITING:
                return None
            states = dict(tx.execute(select(ChunkRow.sequence, ChunkRow.state).where(
                ChunkRow.session_id == session_id, ChunkRow.recording_id == recording_id)).all())
            if not version_complete({k: ChunkState(v) for k, v in states.items()},
                                    newest.chunk_count):
                return None
            newest.state = VersionState.READY
            audit.record(tx, at=now, org_id=org_id, session_id=session_id,
                         correlation_id=session.correlation_id, action="recording.ready",
                         recording_version=newest.version, status=newest.status)
            return _recording(newest)

    def finish_version(self, org_id: str, session_id: str, recording_id: str, version: int,
                       *, state: VersionState, error: str | None = None) -> None:
        with self.db.transaction() as tx:
            row = tx.get(RecordingRow, (session_id, recording_id, version), with_for_update=True)
            if row is None or row.org_id != org_id:
                raise NotFound("no such recording version in this organization")
            previous = row.state
            row.state, row.error, row.finished_at = state, error, self.clock.now()
            if state == VersionState.FAILED and previous != VersionState.FAILED:
                outbox.session_failed(tx, org_id=org_id, session_id=session_id,
                                      recording_id=recording_id, version=version,
                                      reason_code="version_failed", at=row.finished_at)

    def segments(self, org_id: str, session_id: str, recording_id: str | None = None,
                 *, up_to_chunk: int | None = None) -> list[TranscriptSegment]:
        with self.db.transaction() as tx:
            q = select(SegmentRow).where(SegmentRow.org_id == org_id,
                                         SegmentRow.session_id == session_id)
            if recording_id:
                q = q.where(SegmentRow.recording_id == recording_id)
            if up_to_chunk is not None:
                q = q.where(SegmentRow.chunk_sequence <= up_to_chunk)
            rows = tx.scalars(q.order_by(SegmentRow.recording_id, SegmentRow.chunk_sequence,
                                         SegmentRow.start_ms))
            return [TranscriptSegment(id=r.id, session_id=r.session_id,
                                      recording_id=r.recording_id,
                                      chunk_sequence=r.chunk_sequence, start_ms=r.start_ms,
                                      end_ms=r.end_ms, text=r.text, confidence=r.confidence)
                    for r in rows]

    def pending_chunks(self, *, older_than: datetime, limit: int = 200) -> list[tuple[str, str, str, int]]:
        """(org, session, recording, sequence) announced but not processed since before
        `older_than`: the sweeper re-enqueues them."""
        with self.db.transaction() as tx:
            rows = tx.execute(select(ChunkRow.org_id, ChunkRow.session_id, ChunkRow.recording_id,
                                     ChunkRow.sequence).where(
                ChunkRow.state == ChunkState.ANNOUNCED, ChunkRow.updated_at < older_than)
                .limit(limit)).all()
            return [tuple(r) for r in rows]

    def stuck_versions(self, *, older_than: datetime, limit: int = 100) -> list[tuple[str, str, str, int]]:
        """Versions claimed READY but never finished (the worker died between)."""
        with self.db.transaction() as tx:
            rows = tx.execute(select(RecordingRow.org_id, RecordingRow.session_id,
                                     RecordingRow.recording_id, RecordingRow.version).where(
                RecordingRow.state == VersionState.READY,
                RecordingRow.announced_at < older_than).limit(limit)).all()
            return [tuple(r) for r in rows]

    def waiting_versions(self, *, older_than: datetime, limit: int = 100) -> list[tuple[str, str, str]]:
        """(org, session, recording) with a version still waiting since before `older_than`:
        the sweeper asks each to be claimed, so a claim that lost a race with its
        announcement never leaves a complete version waiting."""
        with self.db.transaction() as tx:
            rows = tx.execute(select(RecordingRow.org_id, RecordingRow.session_id,
                                     RecordingRow.recording_id).where(
                RecordingRow.state == VersionState.WAITING,
                RecordingRow.announced_at < older_than).distinct().limit(limit)).all()
            return [tuple(r) for r in rows]

    def touch_chunk(self, org_id: str, session_id: str, recording_id: str, sequence: int) -> None:
        with self.db.transaction() as tx:
            row = tx.get(ChunkRow, (session_id, recording_id, sequence), with_for_update=True)
            if row is not None and row.org_id == org_id:
                row.updated_at = self.clock.now()


def _chunk(row: ChunkRow) -> Chunk:
    return Chunk(session_id=row.session_id, recording_id=row.recording_id, sequence=row.sequence,
                 version=row.version, content_type=row.content_type, duration_ms=row.duration_ms,
                 offset_ms=row.offset_ms, state=ChunkState(row.state), final=bool(row.final),
                 lead_in=bool(row.lead_in), attempts=row.attempts,
                 error=row.error)


def _recording(row: RecordingRow) -> Recording:
    return Recording(session_id=row.session_id, recording_id=row.recording_id,
                     version=row.version, chunk_count=row.chunk_count,
                     status=RecordingStatus(row.status), state=VersionState(row.state),
                     error=row.error, announced_at=row.announced_at)
