"""The ports: one small Protocol per capability. Adapters implement them; use cases and
the ledger call them. Nothing here knows a vendor, a web framework or a database."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from .models import (Approval, Chunk, Consent, ConsentScope, NoteDraft, NoteSection, NoteType,
                     Protection, Recording, Session, SessionStatus, TranscriptSegment,
                     VersionState, WriteCommand, WriteOutcome)


class Clock(Protocol):
    def now(self) -> datetime:
        """An aware UTC datetime."""


@dataclass(frozen=True)
class SpokenSegment:
    """One stretch of recognised speech, times relative to the whole recording."""

    start_ms: int
    end_ms: int
    text: str
    confidence: float          # faster-whisper's avg_logprob (<= 0; closer to 0 is surer)


@runtime_checkable
class Transcriber(Protocol):
    name: str                  # "faster-whisper"
    model_id: str              # "tiny.en" or the local model directory's name

    def transcribe(self, audio: bytes, *, offset_ms: int = 0,
                   hotwords: Sequence[str] = (),
                   lead_in: bytes | None = None, final: bool = False) -> list[SpokenSegment]:
        """Transcribe one chunk (WAV bytes). `offset_ms` is where the chunk starts in the
        recording; `lead_in` is the previous chunk's audio (unless that one was final), so
        a word cut by the boundary is neither lost nor doubled; `final` marks the last
        chunk of a stopped recording (nothing follows to carry its tail). Raises
        PermanentError for audio that cannot be decoded."""


@dataclass
class GeneratedNote:
    sections: list[NoteSection]
    template_id: str
    template_version: str


@runtime_checkable
class NoteGenerator(Protocol):
    name: str
    version: str

    def generate(self, segments: Sequence[TranscriptSegment], *,
                 allowed_sections: Sequence[str],
                 note_type: NoteType | None = None,
                 settings: dict | None = None) -> GeneratedNote:
        """Assign segments to canonical sections and render each. Only `allowed_sections`
        are produced; a section with no supporting speech is omitted."""


@dataclass
class AdapterCapabilities:
    reconcile_by_lookup: bool = True      # the EHR can be searched for a write's identifier
    kinds: tuple[str, ...] = ("create",)
    extra: dict = field(default_factory=dict)


@runtime_checkable
class EhrAdapter(Protocol):
    """One EHR target, built per (org, target) from that org's validated config."""

    name: str

    def send(self, command: WriteCommand) -> WriteOutcome:
        """Render the vendor payload from the canonical command and write it once.
        Raises TransientError (retry later) or PermanentError (never retry)."""

    def reconcile(self, command: WriteCommand) -> WriteOutcome | None:
        """After a lost outcome: look the write up at the EHR by its deterministic
        identifier. Return its outcome if the EHR has it, None if it certainly does not,
        and raise OutcomeUnknown if the vendor gives no way to tell."""


@runtime_checkable
class HandoffAdapter(EhrAdapter, Protocol):
    """The adapter of an inbound plugin whose sessions hand drafts back to its EHR for
    review there (capability `hands_off_drafts`): the worker fetches a session's audio from
    it and asks it how to read the EHR's answers about an earlier handoff."""

    def fetch_chunk(self, external_session_id: str, recording_id: str, version: int,
                    sequence: int, *, callback_url: str | None = None,
                    correlation_id: str | None = None) -> tuple[bytes, str | None]:
        """One chunk's audio and its Content-Type."""

    def earlier_handoff_delivered(self, outcome: dict) -> bool:
        """Whether the EHR refusing a newer body of a version (`outcome` as stored in the
        ledger) means it already holds that version's earlier, unconfirmed body."""


class TokenCache(Protocol):
    """Outbound access tokens shared by every worker process (one per org and key), so a
    busy site does not hammer a rate-limited token endpoint."""

    def get(self, org_id: str, key: str) -> str | None:
        """A token still valid for at least a safety margin, or None."""

    def put(self, org_id: str, key: str, token: str, expires_at: datetime) -> None: ...

    def invalidate(self, org_id: str, key: str) -> None: ...


class ReplayGuard(Protocol):
    """Inbound token ids (JWT `jti`) seen per org."""

    def first_use(self, org_id: str, jti: str, expires_at: datetime) -> bool:
        """True the first time (and records it), False for a replay. Atomic across workers."""


# -- the canonical state store, one Protocol per aggregate ---------------------------------
# ledger.store.SqlStore implements all of them (tests/core/test_store_port.py checks every
# signature); use cases take the narrowest one they need or the whole `Store`. Every method
# is one transaction and is scoped to an org; the `event`/`key` pairs are the inbox: the
# same inbound delivery recorded twice is recorded once.

@runtime_checkable
class SessionStore(Protocol):
    def open_session(self, session: Session, *, begin_hash: str, event: str,
                     key: str) -> tuple[Session, bool]:
        """(the stored session, whether it is new). The same begin again returns the stored
        session; another context under the same external id is a StateConflict."""

    def get_session(self, org_id: str, session_id: str) -> Session: ...

    def find_session(self, org_id: str, source: str, external_id: str) -> Session | None: ...

    def list_sessions(self, org_id: str, *, limit: int = 100) -> list[Session]: ...

    def close_session(self, org_id: str, session_id: str, status: SessionStatus, *,
                      event: str, key: str, actor: str) -> bool:
        """False for a duplicate delivery or an already-closed session."""

    def record_event(self, org_id: str, session: Session, *, event: str, key: str) -> bool:
        """Inbox only: True the first time this delivery is seen."""


@runtime_checkable
class RecordingStore(Protocol):
    def announce_chunk(self, chunk: Chunk, *, org_id: str, event: str, key: str) -> bool:
        """True when the chunk is new (and so needs processing)."""

    def store_audio(self, org_id: str, session_id: str, recording_id: str, sequence: int,
                    audio: bytes, content_type: str) -> None: ...

    def get_audio(self, org_id: str, session_id: str, recording_id: str,
                  sequence: int) -> bytes | None: ...

    def announce_version(self, recording: Recording, *, org_id: str, event: str,
                         key: str) -> tuple[Recording, bool]: ...

    def newest_version(self, org_id: str, session_id: str, recording_id: str) -> int | None: ...

    def get_chunk(self, org_id: str, session_id: str, recording_id: str,
                  sequence: int) -> Chunk: ...

    def chunks(self, org_id: str, session_id: str) -> list[Chunk]: ...

    def recordings(self, org_id: str, session_id: str) -> list[Recording]: ...

    def chunk_attempt(self, org_id: str, session_id: str, recording_id: str,
                      sequence: int) -> int: ...

    def chunk_transcribed(self, org_id: str, session_id: str, recording_id: str, sequence: int,
                          segments: list[TranscriptSegment], *, offset_ms: int | None,
                          final: bool = False, replace: bool = False,
                          lead_in: bool = True) -> bool: ...

    def chunk_failed(self, org_id: str, session_id: str, recording_id: str, sequence: int,
                     reason: str) -> None: ...

    def is_last_of_stopped(self, org_id: str, session_id: str, recording_id: str,
                           sequence: int) -> bool: ...

    def chunk_offset(self, org_id: str, session_id: str, recording_id: str,
                     sequence: int) -> int | None: ...

    def claim_ready_version(self, org_id: str, session_id: str,
                            recording_id: str) -> Recording | None:
        """The newest version if it is complete and unclaimed: claimed exactly once."""

    def finish_version(self, org_id: str, session_id: str, recording_id: str, version: int,
                       *, state: VersionState, error: str | None = None) -> None: ...

    def segments(self, org_id: str, session_id: str, recording_id: str | None = None,
                 *, up_to_chunk: int | None = None) -> list[TranscriptSegment]: ...

    def pending_chunks(self, *, older_than: datetime,
                       limit: int = 200) -> list[tuple[str, str, str, int]]: ...

    def stuck_versions(self, *, older_than: datetime,
                       limit: int = 100) -> list[tuple[str, str, str, int]]: ...

    def waiting_versions(self, *, older_than: datetime,
                         limit: int = 100) -> list[tuple[str, str, str]]: ...

    def touch_chunk(self, org_id: str, session_id: str, recording_id: str,
                    sequence: int) -> None: ...


@runtime_checkable
class DraftStore(Protocol):
    def save_draft(self, org_id: str, draft: NoteDraft) -> NoteDraft:
        """Stored as the session's next version (the version is assigned here)."""

    def get_draft(self, org_id: str, draft_id: str) -> tuple[NoteDraft, str]:
        """(the draft, its state: draft, superseded, approved or rejected)."""

    def drafts(self, org_id: str, *, session_id: str | None = None,
               state: str | None = None) -> list[tuple[NoteDraft, str]]: ...

    def decide(self, org_id: str, approval: Approval) -> None:
        """StateConflict unless the draft is open and still has the approved content."""

    def approval(self, org_id: str, draft_id: str) -> Approval | None: ...


@runtime_checkable
class SafeguardStore(Protocol):
    def protect(self, org_id: str, session_id: str, protections: list[Protection], *,
                event: str, key: str) -> list[str]:
        """The sections newly protected (never sent again this session)."""

    def protected(self, org_id: str, session_id: str) -> dict[str, Protection]: ...

    def set_consent(self, org_id: str, consent: Consent) -> None: ...

    def consents(self, org_id: str, session_id: str) -> dict[ConsentScope, bool]: ...


@runtime_checkable
class AuditLog(Protocol):
    def audit_trail(self, org_id: str, session_id: str | None = None) -> list[Any]: ...

    def record_audit(self, org_id: str, action: str, *, session: Session | None = None,
                     actor: str = "system", outcome: str = "success", **detail) -> None: ...


@runtime_checkable
class Store(SessionStore, RecordingStore, DraftStore, SafeguardStore, AuditLog, Protocol):
    """The whole canonical state store."""


# -- writes and work -------------------------------------------------------------------------

@runtime_checkable
class WriteRecorder(Protocol):
    """The write ledger's front door (ledger.writes.WriteLedger)."""

    def prepare(self, command: WriteCommand) -> str:
        """Record the write as pending, durably, before anything is enqueued; return its
        key. The same command again returns the same key and records nothing new."""


@runtime_checkable
class JobQueue(Protocol):
    """Where use cases hand work on, by name and ids (chartbridge.jobs.Jobs)."""

    def enqueue(self, job: str, *args: Any, delay_s: float | None = None) -> None: ...
