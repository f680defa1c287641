"""Epic's calls to the engine: `POST /orgs/{org}/epic/ambient/{Event}`.

Each call: the org must exist with an Epic target (404), the bearer JWT must verify (401),
the body must validate (400 naming the field), the session must have been begun (404) and
the event must not contradict stored state (409). The whole acknowledgement is one database
transaction (`Database.unit_of_work`: the token's jti, the session read, the state and
inbox row), committed before the answer; work is enqueued only after that commit. A
request that fails after its token verified still spends the jti (in its own transaction).
Duplicates get the same answer and change nothing. Error bodies never echo PHI.
"""
from __future__ import annotations

import json
import logging

from flask import Blueprint, g, jsonify, request

from chartbridge.core import usecases as uc
from chartbridge.core.errors import NotFound, TooLarge
from chartbridge.httperrors import public_url, register_error_shape
from chartbridge.core.models import ChunkState, RecordingStatus
from chartbridge.logs import bind_correlation_id

from . import schemas

log = logging.getLogger("chartbridge.epic")


def make_blueprint(engine, jobs) -> Blueprint:
    bp = Blueprint("epic_haiku_ambient", __name__)

    def enqueue(job: str, *args) -> None:
        g.epic_after_commit.append((job, *args))      # sent once the transaction committed

    def session_of(org: str, external_id: str):
        session = engine.store.find_session(org, schemas.SOURCE, external_id)
        if session is None:
            raise NotFound("no session with this SessionID was begun")
        bind_correlation_id(session.correlation_id)     # this request's lines and jobs
        return session

    def begin(org, adapter, body: schemas.AmbientSessionBegin, raw: dict) -> None:
        fields = schemas.to_canonical_begin(body, org, engine.org(org).allowed_sections)
        fields["callback_url"] = str(fields["callback_url"])
        session, _ = uc.open_session(engine.store, engine.clock, event="AmbientSessionBegin",
                                     event_body=raw, **fields)
        bind_correlation_id(session.correlation_id)

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
        ready = uc.recording_available(
            engine.store, engine.clock, org_id=org, session=session,
            recording_id=body.RecordingID, version=body.RecordingVersion,
            chunk_count=body.ChunkCount, status=RecordingStatus(body.Status),
            event="RecordingAvailable", event_body=raw)
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
        # Order matters: path ids (checked by the app before any view), then the event
        # name, the org, the token's size and signature, the body's size, and only then
        # the body; nothing touches the database before the token verified.
        handler = handlers.get(event)
        if handler is None:
            raise NotFound("unknown Ambient event")
        adapter = engine.adapter(org, "epic_haiku")           # unknown org -> 404
        limits = adapter.config.limits
        g.epic_after_commit, claims = [], None
        try:
            with engine.db.unit_of_work():                     # one commit per callback
                claims = adapter.verify_inbound(request.headers.get("Authorization"),
                                                public_url(request.path))
                if (request.content_length or 0) > limits.max_body_bytes:
                    raise TooLarge(f"the body is larger than {limits.max_body_bytes} bytes",
                                   field="body", limit=limits.max_body_bytes)
                raw_bytes = request.stream.read(limits.max_body_bytes + 1)
                body = schemas.parse_event(event, raw_bytes, limits)
                handler(org, adapter, body, json.loads(raw_bytes))
        except BaseException:
            if claims is not None:       # verified, then refused: the token stays spent
                adapter.verifier.spend(claims)
            raise
        if jobs is not None:
            for job, *args in g.epic_after_commit:
                jobs.enqueue(job, *args)
        return jsonify(schemas.ACCEPTED), 200

    def epic_error(answer):
        log.info("epic event refused", extra={"event": (request.view_args or {}).get("event"),
                                              "http_status": answer.status,
                                              "error_class": answer.code})
        resp = jsonify(schemas.error_body(answer.code, answer.detail))
        resp.status_code = answer.status
        resp.headers.update(answer.headers)
        return resp

    # Every answer on Epic's routes is in Epic's error shape, whatever failed.
    register_error_shape(bp, epic_error, paths=r"/orgs/[^/]*/epic/ambient/")
    return bp
