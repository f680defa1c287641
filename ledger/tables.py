"""Table models, kept apart from the domain model (core/models.py) and converted at the
store's edge. Every row carries its org_id, and every query the store runs filters on it."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer,
                        LargeBinary, String, Text, TypeDecorator, UniqueConstraint, false, true)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use an aware UTC time")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict: JSON, list: JSON}


class SessionRow(Base):
    __tablename__ = "sessions"
    __table_args__ = (UniqueConstraint("org_id", "source", "external_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    correlation_id: Mapped[str] = mapped_column(String(64))
    doc: Mapped[dict]                                # the canonical Session as JSON
    begin_hash: Mapped[str] = mapped_column(String(64))   # hash of the context that opened it
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class RecordingRow(Base):
    __tablename__ = "recordings"

    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    recording_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    chunk_count: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))      # Paused / Stopped
    state: Mapped[str] = mapped_column(String(16))       # VersionState
    error: Mapped[str | None] = mapped_column(Text)
    announced_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class ChunkRow(Base):
    __tablename__ = "chunks"

    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    recording_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    sequence: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    content_type: Mapped[str] = mapped_column(String(64))
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    offset_ms: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True)
    final: Mapped[bool] = mapped_column(default=False, server_default=false())
    # transcribed with the audio before it (or needing none): False means the version's
    # final pass must transcribe it again, so no words are lost at the boundary
    lead_in: Mapped[bool] = mapped_column(default=False, server_default=true())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    enqueued_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class ChunkAudioRow(Base):
    __tablename__ = "chunk_audio"

    session_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    recording_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    sequence: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(64))
    audio: Mapped[bytes] = mapped_column(LargeBinary)


class SegmentRow(Base):
    __tablename__ = "transcript_segments"
    __table_args__ = (Index("ix_segments_session", "session_id", "recording_id", "start_ms"),)

    session_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    recording_id: Mapped[str] = mapped_column(String(128))
    chunk_sequence: Mapped[int] = mapped_column(Integer)
    start_ms: Mapped[int] = mapped_column(Integer)
    end_ms: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    confidence: Mapped[float] = mapped_column(Float)


class ProtectionRow(Base):
    __tablename__ = "protected_sections"

    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    section: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    doc: Mapped[dict]
    created_at: Mapped[datetime]


class DraftRow(Base):
    __tablename__ = "note_drafts"
    __table_args__ = (UniqueConstraint("session_id", "version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    recording_version: Mapped[int | None] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(24))   # draft / approved / rejected / superseded
    doc: Mapped[dict]
    created_at: Mapped[datetime]


class ApprovalRow(Base):
    __tablename__ = "approvals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    draft_id: Mapped[str] = mapped_column(ForeignKey("note_drafts.id"), index=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    decision: Mapped[str] = mapped_column(String(16))
    doc: Mapped[dict]
    at: Mapped[datetime]


class ConsentRow(Base):
    __tablename__ = "consents"

    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    scope: Mapped[str] = mapped_column(String(24), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    granted: Mapped[bool]
    doc: Mapped[dict]
    at: Mapped[datetime]


class InboxRow(Base):
    """Every inbound event once: a redelivery finds its row and changes nothing."""

    __tablename__ = "inbox"
    __table_args__ = (UniqueConstraint("org_id", "source", "dedupe_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(32))
    event: Mapped[str] = mapped_column(String(64))
    dedupe_key: Mapped[str] = mapped_column(String(64))      # sha256 of event + body
    session_id: Mapped[str | None] = mapped_column(String(32), index=True)
    correlation_id: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime]


class ReplayRow(Base):
    """Inbound token ids (JWT jti) already presented, per org, until they expire."""

    __tablename__ = "seen_tokens"

    org_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    jti: Mapped[str] = mapped_column(String(200), primary_key=True)
    expires_at: Mapped[datetime]


class TokenRow(Base):
    """Outbound access tokens shared by every worker of the engine, per org and key."""

    __tablename__ = "access_tokens"

    org_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    token: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime]
    requested_at: Mapped[datetime]


class WriteRow(Base):
    """The idempotency-keyed write ledger: one row per logical outbound write."""

    __tablename__ = "write_ledger"
    __table_args__ = (Index("ix_ledger_org_status", "org_id", "status"),)

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[str | None] = mapped_column(String(32), index=True)
    resource_kind: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    maybe_sent: Mapped[bool] = mapped_column(default=False)
    last_error_class: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    external_id: Mapped[str | None] = mapped_column(String(200))
    external_version: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[dict | None]
    command: Mapped[dict]                    # what a retry or the sweeper needs to resend
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    correlation_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    acknowledged_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class AuditRow(Base):
    """Append-only (a trigger refuses UPDATE and DELETE on both databases)."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    session_id: Mapped[str | None] = mapped_column(String(32), index=True)
    correlation_id: Mapped[str | None] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(200))        # "system", "epic", "user:<id>"
    action: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16), default="success")
    detail: Mapped[dict]


class IdempotencyRow(Base):
    """A capture API request under its Idempotency-Key, per org (IETF
    draft-ietf-httpapi-idempotency-key-header): the request's fingerprint, whether it is still
    being answered, and the stored answer replayed for the same key and body."""

    __tablename__ = "api_idempotency"

    org_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))    # sha256 of method, path, body
    state: Mapped[str] = mapped_column(String(16))          # in_flight | done
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
