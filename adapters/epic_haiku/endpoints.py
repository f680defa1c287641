"""Epic's calls to the engine: `POST /orgs/{org}/epic/ambient/{Event}`.

Each call: the org must exist with an Epic target (404), the bearer JWT must verify (401),
the body must validate (400 naming the field), the session must have been begun (404) and
the event must not contradict stored state (409). The event is stored durably (state and
inbox row in one transaction) before the answer; work is enqueued only after that.
Duplicates get the same answer and change nothing. Error bodies never echo PHI.
"""
from __future__ import annotations

import json
import logging

from flask import Blueprint, jsonify, request

from chartbridge.core import usecases as uc
from chartbridge.core.errors import ChartbridgeError, NotFound, TransientError
from chartbridge.core.models import ChunkState, RecordingStatus, SessionSource

from . import schemas

log = logging.getLogger("chartbridge.epic")


def make_blueprint(engine, jobs) -> Blueprint:
    bp = Blueprint("epic_haiku_ambient", __name__)

    def enqueue(job: str, *args) -> None:
        if jobs is not None:
            jobs.enqueue(job, *args)

    def session_of(org: str, external_id: str):
        session = engine.store.find_session(org, SessionSource.EPIC_HAIKU, external_id)
        if session is None:
            raise NotFound("no session with this SessionID was begun")
        return session

    def begin(org, adapter, body: schemas.AmbientSessionBegin, raw: dict) -> None:
        fields = schemas.to_canonical_begin(body, org, engine.org(org).allowed_sections)
        fields["callback_url"] = str(fields["callback_url"])
        uc.open_session(engine.store, engine.clock, event="AmbientSessionBegin",
                        event_body=raw, **fields)

    def chunk(org, adapter, body: schemas.RecordingChunkAvailable, raw: dict) -> None:
        session = session_of(org, body.SessionID)
        if uc.announce_chunk(engine.store, org_id=org, session=session,
                             recording_id=body.RecordingID, sequence=body.ChunkSequence,
                             version=body.RecordingVersion, content_type=body.ContentType,
                             duration_ms=body.DurationMs, event="RecordingChunkAvailable",
                             event_body=raw):
            enqueue("process_chunk", org, session.id, body.RecordingID, body.ChunkSequence)

    def recording(org, adapter, body: schemas.RecordingAvailable, raw: dict) -> None:
        session = session_of(org, body.SessionID)
        uc.announce_version(engine.store, engine.clock, org_id=org, session=session,
                            recording_id=body.RecordingID, version=body.RecordingVersion,
                            chunk_count=body.ChunkCount, status=RecordingStatus(body.Status),
                            event="RecordingAvailable", event_body=raw)
        # Every chunk may already be done (this event can come last, or overtake one).
        ready = engine.store.claim_ready_version(org, session.id, body.RecordingID)
        if ready is not None:
            enqueue("finish_version", org, session.id, ready.recording_id, ready.version)
        elif body.Status == RecordingStatus.STOPPED.value:
            # the clinician is waiting: this version's chunks no job has started go again on
            # the after-stop queue (the copy left in the chunk queue finds them done; one a
            # job is working on is left to it, so nothing is downloaded twice)
            for c in engine.store.chunks(org, session.id):
                if (c.recording_id == body.RecordingID and c.state == ChunkState.ANNOUNCED
                        and c.attempts == 0 and c.version <= body.RecordingVersion):
                    enqueue("process_last_chunk", org, session.id, c.recording_id, c.sequence)

    def updated(org, adapter, body: schemas.DocumentationUpdated, raw: dict) -> None:
        session = session_of(org, body.SessionID)
        uc.protect_sections(engine.store, org_id=org, session=session,
                            protections=schemas.to_protections(body, adapter.section_code),
                            event="DocumentationUpdated", event_body=raw)

    def complete(org, adapter, body: schemas.AmbientSessionComplete, raw: dict) -> None:
        session = session_of(org, body.SessionID)
        uc.complete_session(engine.store, org_id=org, session=session,
                            signed=body.Reason == "Signed", event="AmbientSessionComplete",
                            event_body=raw, actor="epic")

    handlers = {"AmbientSessionBegin": begin, "RecordingChunkAvailable": chunk,
                "RecordingAvailable": recording, "DocumentationUpdated": updated,
                "AmbientSessionComplete": complete}

    @bp.post("/orgs/<org>/epic/ambient/<event>")
    def receive(org: str, event: str):
        try:
            handler = handlers.get(event)
            if handler is None:
                raise NotFound("unknown Ambient event")
            adapter = engine.adapter(org, "epic_haiku")           # unknown org -> 404
            adapter.verify_inbound(request.headers.get("Authorization"), request.url)
            raw_bytes = request.get_data(cache=False)
            body = schemas.parse_event(event, raw_bytes)
            handler(org, adapter, body, json.loads(raw_bytes))
        except ChartbridgeError as exc:
            status = exc.http_status if 400 <= exc.http_status < 500 else (
                503 if isinstance(exc, TransientError) else 500)
            log.info("epic event refused", extra={"event": event, "http_status": status,
                                                  "error_class": type(exc).__name__})
            return jsonify(schemas.error_body(exc.code, exc.message)), status
        return jsonify(schemas.ACCEPTED), 200

    return bp
