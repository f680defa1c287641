"""The ports: one small Protocol per capability. Adapters implement them; use cases and
the ledger call them. Nothing here knows a vendor, a web framework or a database."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from .models import NoteSection, NoteType, TranscriptSegment, WriteCommand, WriteOutcome


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
