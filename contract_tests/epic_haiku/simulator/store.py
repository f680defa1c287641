"""Epic's side of the data: ambient sessions, their recordings (chunk WAVs by version),
clinician edits and accepted documentation, with the page's rules for the three outbound
calls; plus what the simulator saw (calls, deliveries). All under one lock, whose condition
wakes anyone waiting for a state."""
from __future__ import annotations

import copy
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from chartbridge.core.errors import InputError, NotFound, StateConflict

from .spec import MAX_LOG, MAX_SESSIONS
from .validation import _CallError, _canonical, _is_int


@dataclass
class Delivery:
    """One inbound event the simulator sent to the engine and what the engine answered."""

    event: str
    url: str
    body: dict[str, Any]
    token: str | None
    jti: str | None
    status: int | None = None
    response: Any = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("token")
        return d


@dataclass
class CallRecord:
    """One request the engine made to the simulator and the status it got."""

    call: str
    status: int
    session_id: str | None = None
    body: Any = None
    at: float = 0.0


@dataclass
class RecordResult:
    recording_id: str
    version: int
    new_sequences: list[int]
    chunk_count: int
    deliveries: list[Delivery]


@dataclass
class _Chunk:
    seq: int
    version: int  # version in which the chunk was first announced
    wav: bytes
    duration_ms: int


@dataclass
class _Recording:
    recording_id: str
    params: tuple[int, int, int]  # channels, sample width, frame rate
    chunks: list[_Chunk] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)  # {"version","chunk_count","status"}


@dataclass
class _Session:
    org: str
    session_id: str
    begin_body: dict[str, Any]
    allowed: tuple[str, ...]
    recordings: dict[str, _Recording] = field(default_factory=dict)
    edited: dict[str, dict[str, Any]] = field(default_factory=dict)
    newest_announced: int = 0
    documented_max: int = 0
    accepted: dict[int, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    processed_reported: int = 0
    processed_reports: list[int] = field(default_factory=list)
    closed: str | None = None


class EpicStore:
    def __init__(self, lock: threading.RLock) -> None:
        self.lock = lock
        self.cond = threading.Condition(lock)
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.sessions: dict[str, _Session] = {}
            self._calls: deque[CallRecord] = deque(maxlen=MAX_LOG)
            self.counts: Counter[str] = Counter()
            self._deliveries: deque[Delivery] = deque(maxlen=MAX_LOG)
            self._accepted: deque[dict[str, Any]] = deque(maxlen=MAX_LOG)
            self.cond.notify_all()

    # ----------------------------------------------------------------- sessions
    def session(self, session_id: str) -> _Session:
        with self.lock:
            session = self.sessions.get(session_id)
            if session is None:
                raise NotFound("unknown session", field="session_id")
            return session

    def begin(self, session: _Session) -> None:
        with self.lock:
            if session.session_id in self.sessions:
                raise StateConflict("session already begun; use redeliver() to resend its events")
            if len(self.sessions) >= MAX_SESSIONS:
                raise StateConflict("simulator holds too many sessions; reset() it")
            self.sessions[session.session_id] = session
            self.cond.notify_all()

    def org_of(self, session_id: Any) -> str | None:
        with self.lock:
            return next((s.org for s in self.sessions.values() if s.session_id == session_id), None)

    def add_version(self, session_id: str, recording_id: str, params: tuple[int, int, int],
                    pieces: list[tuple[bytes, int]], status: str) -> tuple[str, int, list[int], int]:
        """A new recording version holding the earlier chunks plus ``pieces``; returns
        (org, version, new chunk sequences, chunk count)."""
        with self.lock:
            session = self.session(session_id)
            if session.closed:
                raise StateConflict("session is complete; no more recordings")
            rec = session.recordings.get(recording_id)
            if rec is None:
                rec = session.recordings[recording_id] = _Recording(recording_id=recording_id, params=params)
            elif rec.params != params:
                raise InputError("audio format differs from the recording's earlier versions", field="wav")
            version = len(rec.versions) + 1
            first = len(rec.chunks) + 1
            for i, (chunk_wav, ms) in enumerate(pieces):
                rec.chunks.append(_Chunk(seq=first + i, version=version, wav=chunk_wav, duration_ms=ms))
            count = len(rec.chunks)
            rec.versions.append({"version": version, "chunk_count": count, "status": status})
            self.cond.notify_all()
            return session.org, version, list(range(first, count + 1)), count

    def chunk_event(self, session_id: str, recording_id: str, seq: int) -> dict[str, Any]:
        with self.lock:
            rec = self.session(session_id).recordings[recording_id]
            chunk = rec.chunks[seq - 1]
            return {"SessionID": session_id, "RecordingID": recording_id, "RecordingVersion": chunk.version,
                    "ChunkSequence": seq, "ContentType": "audio/wav", "DurationMs": chunk.duration_ms}

    def available_event(self, session_id: str, recording_id: str, version: int) -> dict[str, Any]:
        with self.lock:
            rec = self.session(session_id).recordings[recording_id]
            v = rec.versions[version - 1]
            return {"SessionID": session_id, "RecordingID": recording_id, "RecordingVersion": version,
                    "ChunkCount": v["chunk_count"], "Status": v["status"]}

    def chunk_org(self, session_id: str, recording_id: str, seq: int) -> str:
        with self.lock:
            session = self.session(session_id)
            rec = session.recordings.get(recording_id)
            if rec is None or not 1 <= seq <= len(rec.chunks):
                raise NotFound("unknown recording or chunk", field="seq")
            return session.org

    def version_org(self, session_id: str, recording_id: str, version: int | None) -> tuple[str, int]:
        """(org, version) of a recording version (default: the newest)."""
        with self.lock:
            session = self.session(session_id)
            rec = session.recordings.get(recording_id)
            if rec is None or not rec.versions:
                raise NotFound("unknown recording", field="recording_id")
            version = version or len(rec.versions)
            if not 1 <= version <= len(rec.versions):
                raise NotFound("unknown recording version", field="version")
            return session.org, version

    def edit(self, session_id: str, entries: list[dict[str, Any]]) -> str:
        """A clinician edited these sections: protected from now on. Returns the org."""
        with self.lock:
            session = self.session(session_id)
            for entry in entries:
                session.edited[entry["SectionID"]] = entry
            self.cond.notify_all()
            return session.org

    def close(self, session_id: str, reason: str) -> str:
        with self.lock:
            session = self.session(session_id)
            session.closed = session.closed or reason
            self.cond.notify_all()
            return session.org

    def mark_announced(self, body: dict[str, Any]) -> None:
        version = body.get("RecordingVersion")
        with self.lock:
            session = self.sessions.get(str(body.get("SessionID")))
            if session is not None and _is_int(version):
                session.newest_announced = max(session.newest_announced, version)
                self.cond.notify_all()

    # ----------------------------------------------------------------- the outbound calls' rules
    def chunk_wav(self, sid: str, rid: str, version: int, seq: int) -> bytes:
        """GetAmbientRecordingChunk: the chunk's WAV, or Epic's 404 / 410."""
        with self.lock:
            session = self.sessions.get(sid)
            if session is None:
                raise _CallError(404, "UnknownSession", "no ambient session with this SessionID")
            rec = session.recordings.get(rid)
            if rec is None:
                raise _CallError(404, "UnknownRecording", "no recording with this RecordingID in the session")
            if version > len(rec.versions):
                raise _CallError(404, "NotAvailable", "this recording version does not exist yet")
            if seq > rec.versions[version - 1]["chunk_count"]:
                raise _CallError(404, "NotAvailable", "this chunk is not part of the requested version")
            chunk = rec.chunks[seq - 1]
            if chunk.version <= session.documented_max:
                raise _CallError(410, "Gone", "a version holding this chunk has already been documented")
            return chunk.wav

    def report_processed(self, sid: str, version: int) -> None:
        """AmbientRecordingsProcessed: versions only ever move forward."""
        with self.lock:
            session = self.sessions.get(sid)
            if session is None:
                raise _CallError(404, "UnknownSession", "no ambient session with this SessionID")
            if version > session.newest_announced:
                raise _CallError(409, "UnknownVersion", "this RecordingVersion was never announced")
            if version < session.processed_reported:
                raise _CallError(409, "StaleVersion",
                                 "RecordingVersion is older than one already reported as processed")
            session.processed_reported = version
            session.processed_reports.append(version)
            self.cond.notify_all()

    def accept_documentation(self, sid: str, version: int, codes: list[str], body: dict[str, Any]) -> None:
        """DocumentationReady: accepted once per version (the same body again is a no-op), only
        for the newest announced version of an open session, never over an edited section or
        outside the allowed ones."""
        canon = _canonical(body)
        with self.lock:
            session = self.sessions.get(sid)
            if session is None:
                raise _CallError(404, "UnknownSession", "no ambient session with this SessionID")
            previous = session.accepted.get(version)
            if previous is not None:
                if previous[0] == canon:
                    return  # same body again: accepted once, one copy kept
                raise _CallError(409, "AlreadyDocumented",
                                 "a different body was already accepted for this RecordingVersion")
            if session.closed:
                raise _CallError(409, "SessionClosed", "the ambient session is complete")
            if version != session.newest_announced:
                raise _CallError(409, "StaleVersion",
                                 "RecordingVersion is not the newest version announced by RecordingAvailable",
                                 NewestVersion=session.newest_announced)
            not_allowed = [c for c in codes if c not in session.allowed]
            edited = [c for c in codes if c in session.edited]
            if not_allowed or edited:
                detail = []
                if not_allowed:
                    detail.append(f"not in the session's allowed sections: {', '.join(not_allowed)}")
                if edited:
                    detail.append(f"edited by a clinician: {', '.join(edited)}")
                raise _CallError(422, "SectionRejected", "; ".join(detail),
                                 SectionIDs=not_allowed + edited, NotAllowed=not_allowed, Edited=edited)
            session.accepted[version] = (canon, copy.deepcopy(body))
            session.documented_max = max(session.documented_max, version)
            self._accepted.append(copy.deepcopy(body))
            self.cond.notify_all()

    # ----------------------------------------------------------------- what the simulator saw
    def overview(self) -> tuple[dict[str, int], list[str]]:
        """(calls per name, session ids)."""
        with self.lock:
            return dict(self.counts), sorted(self.sessions)

    def log_call(self, record: CallRecord) -> None:
        with self.lock:
            self.counts[record.call] += 1
            self._calls.append(record)
            self.cond.notify_all()

    def add_delivery(self, delivery: Delivery) -> None:
        with self.lock:
            self._deliveries.append(delivery)
            self.cond.notify_all()

    @property
    def deliveries(self) -> list[Delivery]:
        with self.lock:
            return list(self._deliveries)

    @property
    def calls(self) -> list[CallRecord]:
        with self.lock:
            return list(self._calls)

    def call_log(self, call: str | None = None) -> list[tuple[str, int]]:
        """(call, status) pairs in arrival order, optionally for one call name."""
        with self.lock:
            return [(c.call, c.status) for c in self._calls if call is None or c.call == call]

    def call_count(self, call: str) -> int:
        with self.lock:
            return self.counts[call]

    def documentation(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """Every accepted DocumentationReady body, in acceptance order (one copy each)."""
        with self.lock:
            return [copy.deepcopy(b) for b in self._accepted if session_id is None or b["SessionID"] == session_id]

    def session_state(self, session_id: str) -> dict[str, Any]:
        with self.lock:
            s = self.session(session_id)
            return {
                "org": s.org, "SessionID": s.session_id, "begin": copy.deepcopy(s.begin_body),
                "allowed_sections": list(s.allowed), "edited_sections": sorted(s.edited),
                "newest_announced_version": s.newest_announced, "documented_version": s.documented_max,
                "processed_reports": list(s.processed_reports), "closed": s.closed,
                "accepted_versions": sorted(s.accepted),
                "recordings": {rid: {"chunks": len(r.chunks), "versions": copy.deepcopy(r.versions),
                                     "format": {"channels": r.params[0], "sample_width": r.params[1],
                                                "rate": r.params[2]}}
                               for rid, r in s.recordings.items()},
            }

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Block until ``predicate()`` (evaluated under the simulator's lock) is true; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("condition not met before the deadline")
                self.cond.wait(remaining)

    def wait_documentation(self, session_id: str, version: int, timeout: float = 10.0) -> dict[str, Any]:
        """Wait for an accepted DocumentationReady of ``version``; returns its body."""
        def found() -> bool:
            s = self.sessions.get(session_id)
            return s is not None and version in s.accepted
        self.wait_for(found, timeout)
        with self.lock:
            return copy.deepcopy(self.sessions[session_id].accepted[version][1])

    def wait_calls(self, call: str, count: int, timeout: float = 10.0) -> None:
        self.wait_for(lambda: self.counts[call] >= count, timeout)
