"""The capture API's routes, under /orgs/{org}/api/v1. Each is declared once in `ROUTES`
(method, path, scope, request model, answers) — what the blueprint registers and what the
OpenAPI document (openapi.py) describes. Every route goes through the core use cases and
the ledger exactly as Epic's path does; nothing here writes to an EHR."""
from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import flask
from pydantic import BaseModel, ValidationError

from chartbridge.core import usecases as uc
from chartbridge.core.bounds import load_json
from chartbridge.core.errors import (ChartbridgeError, InputError, NotFound, RuleViolation,
                                     StateConflict)
from chartbridge.core.models import (Approval, CareContext, Consent, ConsentScope, Decision,
                                     Identifier as CoreIdentifier, NoteType, RecordingStatus,
                                     SessionSource, WriteStatus)

from . import models as m
from .audio import normalize
from .auth import CLINICIAN_HEADER, authenticate, clinician, require
from .idempotency import idempotent

log = logging.getLogger("chartbridge.api")

PREFIX = "/orgs/<org>/api/v1"
RECORDING = "R1"              # one recording per API session; its versions are the URL's
MAX_INDEX = 10_000


class Invalid(ChartbridgeError):
    code = "invalid_field"
    http_status = 422


@dataclass(frozen=True)
class Route:
    method: str
    path: str                                # Flask rule below PREFIX
    view: Callable
    summary: str
    scope: str | None                        # None: no token needed (token, openapi.json)
    body: type[BaseModel] | None = None
    body_type: str = "application/json"
    answer: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    headers: tuple[str, ...] = ()            # extra request headers (documented)
    also: tuple[int, ...] = ()               # other success statuses (same body)
    extra: dict = field(default_factory=dict)


ROUTES: list[Route] = []


def route(method: str, path: str, *, scope: str | None, summary: str, **kw):
    def add(view):
        ROUTES.append(Route(method, path, view, summary, scope, **kw))
        return view
    return add


# -- helpers -------------------------------------------------------------------------------
def _engine():
    return flask.current_app.extensions["chartbridge"]


def _jobs():
    engine = _engine()
    return engine.queue or flask.current_app.extensions.get("chartbridge.jobs")


def parse(model: type[BaseModel]) -> Any:
    raw = flask.request.get_data(cache=True)
    if flask.request.mimetype != "application/json":
        raise InputError("the body must be application/json", field="Content-Type")
    data = load_json(raw or b"null")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise Invalid(f"{where}: {first['msg']}", field=where) from None


def _session(org: str, session_id: str):
    session = _engine().store.get_session(org, session_id)
    if session.source != SessionSource.API:
        raise StateConflict("this session was opened by another entry point; the capture "
                            "API drives only its own sessions", field="session_id")
    return session


def _index(value: int, name: str) -> int:
    if not 1 <= value <= MAX_INDEX:
        raise NotFound(f"no such {name}")
    return value


def _ident(i: CoreIdentifier) -> m.Identifier:
    return m.Identifier(value=i.value, type=i.type, system=i.system)


def _write_out(engine, org: str, r) -> m.WriteOut:
    try:
        version = engine.ledger.command_of(org, r.key).note_version
    except ChartbridgeError:
        version = None
    status = "written" if r.status == WriteStatus.SUCCEEDED else r.status.value
    reason = r.last_error if r.status in (WriteStatus.FAILED, WriteStatus.STALE,
                                          WriteStatus.NEEDS_RECONCILIATION,
                                          WriteStatus.CANCELLED) else None
    return m.WriteOut(target=r.target, resource_kind=r.resource_kind, kind=str(r.kind),
                      status=status, draft_version=version,
                      external_id=r.external_id if r.status == WriteStatus.SUCCEEDED else None,
                      reason=reason, attempts=r.attempts, updated_at=r.updated_at)


def _writes(engine, org: str, session_id: str) -> list[m.WriteOut]:
    return [_write_out(engine, org, r) for r in engine.ledger.list(org, session_id=session_id)]


def _draft(org: str, session_id: str, version: int):
    for draft, state in _engine().store.drafts(org, session_id=session_id):
        if draft.version == version:
            return draft, state
    raise NotFound("no such draft version")


def _draft_out(org: str, draft, state: str) -> m.DraftOut:
    segments = {s.id: s for s in _engine().store.segments(org, draft.session_id)}
    return m.DraftOut(
        id=draft.id, session_id=draft.session_id, version=draft.version,
        recording_version=draft.recording_version, state=state,
        content_hash=draft.content_hash(),
        sections=[m.SectionOut(code=s.code, title=s.title, text=s.text, segments=[
            m.Segment(id=i, start_ms=segments[i].start_ms, end_ms=segments[i].end_ms)
            for i in s.segment_ids if i in segments]) for s in draft.sections],
        provenance=m.DraftProvenance(**draft.provenance.model_dump()),
        created_at=draft.created_at)


def _session_out(org: str, session) -> m.SessionOut:
    engine = _engine()
    store = engine.store
    return m.SessionOut(
        id=session.id, external_id=session.external_id, status=str(session.status),
        user=_ident(session.user), patient_ids=[_ident(i) for i in session.patient_ids],
        encounter_ids=[_ident(i) for i in session.encounter_ids],
        note_type=(m.NoteType(code=session.note_type.code, system=session.note_type.system,
                              name=session.note_type.name) if session.note_type else None),
        sections=session.allowed_sections, created_at=session.created_at,
        recordings=[m.RecordingOut(version=r.version, chunk_count=r.chunk_count,
                                   status=str(r.status), state=str(r.state), error=r.error)
                    for r in store.recordings(org, session.id)],
        chunks=[m.ChunkOut(recording_version=c.version, sequence=c.sequence, state=str(c.state),
                           duration_ms=c.duration_ms, error=c.error)
                for c in store.chunks(org, session.id)],
        drafts=[m.DraftSummary(version=d.version, state=s, content_hash=d.content_hash())
                for d, s in store.drafts(org, session_id=session.id)],
        writes=_writes(engine, org, session.id))


def dump(model: BaseModel) -> dict:
    return model.model_dump(mode="json")


# -- sessions ------------------------------------------------------------------------------
@route("POST", "/sessions", scope="capture", summary="Open a capture session",
       body=m.SessionCreate, answer=m.SessionOut, status=201, errors=(409,), also=(200,))
@idempotent
def create_session(org: str):
    body: m.SessionCreate = parse(m.SessionCreate)
    engine = _engine()
    config = engine.org(org)
    note_type = (NoteType(**body.note_type.model_dump()) if body.note_type
                 else NoteType(code=config.note_types.default))
    session, created = uc.open_session(
        engine.store, engine.clock, org_id=org, source=SessionSource.API,
        external_id=body.external_id, user=CoreIdentifier(**body.user.model_dump()),
        patient_ids=[CoreIdentifier(**i.model_dump()) for i in body.patient_ids],
        encounter_ids=[CoreIdentifier(**i.model_dump()) for i in body.encounter_ids],
        allowed_sections=body.sections or config.allowed_sections,
        care_context=CareContext(**body.care_context.model_dump()) if body.care_context else None,
        note_type=note_type, event="api.session", event_body=body.model_dump(mode="json"))
    for scope in ConsentScope:
        granted = getattr(body.consent, scope.value)
        if granted is not None:
            _consent(org, session.id, scope, granted)
    return dump(_session_out(org, session)), 201 if created else 200


def _consent(org: str, session_id: str, scope: ConsentScope, granted: bool) -> None:
    """Record a consent the session has none of yet, by whichever request opens it (the
    first, or a later one carrying a consent the first did not); a consent that differs
    from the one recorded is refused, 409 naming the field: opening a session again does
    not change what the patient agreed to."""
    from sqlalchemy.exc import IntegrityError

    engine = _engine()
    current = engine.store.consents(org, session_id).get(scope)
    if current is None:
        try:
            engine.store.set_consent(org, Consent(session_id=session_id, scope=scope,
                                                  granted=granted, recorded_by="api",
                                                  at=engine.clock.now()))
        except IntegrityError:                    # a concurrent open recorded it first
            pass
        current = engine.store.consents(org, session_id).get(scope)
    if current != granted:
        raise StateConflict(f"consent.{scope.value}: this session already records "
                            f"{'granted' if current else 'refused'}; a consent is not "
                            "changed by opening the session again",
                            field=f"consent.{scope.value}")


@route("GET", "/sessions/<session_id>", scope="read", summary="A session's state",
       answer=m.SessionOut)
def get_session(org: str, session_id: str):
    return dump(_session_out(org, _session(org, session_id))), 200


# -- audio ---------------------------------------------------------------------------------
@route("PUT", "/sessions/<session_id>/recordings/<int:version>/chunks/<int:seq>",
       scope="capture", summary="Upload one audio chunk (WAV, WebM/Opus, Ogg/Opus, MP4/AAC)",
       body=None, body_type="audio/*", answer=m.ChunkAccepted, errors=(409, 413, 422))
def put_chunk(org: str, session_id: str, version: int, seq: int):
    _index(version, "recording version"), _index(seq, "chunk")
    engine = _engine()
    session = _session(org, session_id)
    chunk = normalize(flask.request.get_data(cache=False))
    store = engine.store
    store.store_audio(org, session.id, RECORDING, seq, chunk.wav, "audio/wav")
    if store.get_audio(org, session.id, RECORDING, seq) != chunk.wav:
        raise StateConflict("another audio was already stored for this chunk; a chunk "
                            "cannot change", field="seq")
    new = uc.announce_chunk(store, org_id=org, session=session, recording_id=RECORDING,
                            sequence=seq, version=version, duration_ms=chunk.duration_ms,
                            event="api.chunk",
                            event_body={"seq": seq, "version": version,
                                        "sha256": hashlib.sha256(chunk.wav).hexdigest()})
    jobs = _jobs()
    if new and jobs is not None:
        jobs.enqueue("process_chunk", org, session.id, RECORDING, seq)
    return dump(m.ChunkAccepted(recording_version=version, sequence=seq,
                                duration_ms=chunk.duration_ms, source_format=chunk.source_format,
                                sha256=hashlib.sha256(chunk.wav).hexdigest())), 200


@route("POST", "/sessions/<session_id>/recordings/<int:version>", scope="capture",
       summary="Pause or stop a recording version", body=m.RecordingStatusBody,
       answer=m.RecordingOut, status=202, errors=(409,))
@idempotent
def recording_status(org: str, session_id: str, version: int):
    _index(version, "recording version")
    body: m.RecordingStatusBody = parse(m.RecordingStatusBody)
    engine = _engine()
    session = _session(org, session_id)
    ready = uc.recording_available(engine.store, engine.clock, org_id=org, session=session,
                                   recording_id=RECORDING, version=version,
                                   chunk_count=body.chunk_count,
                                   status=RecordingStatus(body.status), event="api.recording",
                                   event_body={"version": version, **body.model_dump()})
    jobs = _jobs()
    if ready is not None and jobs is not None:
        jobs.enqueue("finish_version", org, session.id, RECORDING, ready.version)
    rec = next(r for r in engine.store.recordings(org, session.id) if r.version == version)
    return dump(m.RecordingOut(version=rec.version, chunk_count=rec.chunk_count,
                               status=str(rec.status), state=str(rec.state),
                               error=rec.error)), 202


# -- drafts --------------------------------------------------------------------------------
@route("GET", "/sessions/<session_id>/drafts/<int:version>", scope="read",
       summary="A draft version: sections, provenance, content hash", answer=m.DraftOut)
def get_draft(org: str, session_id: str, version: int):
    _session(org, session_id)
    draft, state = _draft(org, session_id, _index(version, "draft version"))
    return dump(_draft_out(org, draft, state)), 200


@route("POST", "/sessions/<session_id>/drafts/<int:version>/edits", scope="capture",
       summary="Edit one section: a new draft version", body=m.Edit, answer=m.DraftOut,
       status=201, errors=(409,))
@idempotent
def edit(org: str, session_id: str, version: int):
    body: m.Edit = parse(m.Edit)
    engine = _engine()
    _session(org, session_id)
    draft, _ = _draft(org, session_id, _index(version, "draft version"))
    principal = flask.g.api_principal
    editor = (principal.person.value if principal.person is not None
              else f"client:{principal.client_id}")
    new = uc.edit_draft(engine.store, engine.clock, org_id=org, draft_id=draft.id,
                        section_code=body.section, text=body.text.replace("\r\n", "\n"),
                        editor=editor)
    return dump(_draft_out(org, new, "draft")), 201


def _approver(engine, org: str):
    """The clinician deciding, checked before the Idempotency-Key is claimed: a refused or
    missing clinician token, or the identity provider down (503), is never stored."""
    flask.g.api_clinician = clinician(engine, org, flask.g.api_principal, flask.request)
    return flask.g.api_clinician[0]


def _check_writable(engine, org: str, session, draft, approval: Approval) -> None:
    """What submit() will check once the approval is recorded (write-back consent,
    protected sections, the approval itself), checked first, so an approval that could
    not be written is refused before it is recorded and changes nothing."""
    config = engine.org(org)
    targets = engine.approval_targets(org)
    try:
        uc.approved_write_commands(
            session, draft, approval, targets=targets,
            stage_preliminary=str(config.policy.approval) == "stage_preliminary",
            protected=list(engine.store.protected(org, session.id)),
            write_back_consent=engine.store.consents(org, session.id).get(
                ConsentScope.WRITE_BACK),
            consent_required=str(config.policy.consent.write_back) == "required",
            correction={t: str(config.correction_for(t)) for t, _ in targets})
    except RuleViolation as exc:
        field = ("consent.write_back" if exc.fields.get("rule") == "consent_missing"
                 else "decision")
        raise RuleViolation(f"not approved: {exc.message}; nothing was recorded",
                            **{**exc.fields, "field": field}) from None


@route("POST", "/sessions/<session_id>/drafts/<int:version>/approval", scope="approve",
       summary="Approve or reject the exact content (its hash), as the clinician",
       body=m.ApprovalBody, answer=m.ApprovalOut, errors=(409,), headers=(CLINICIAN_HEADER,))
@idempotent(who=_approver)
def approval(org: str, session_id: str, version: int):
    body: m.ApprovalBody = parse(m.ApprovalBody)
    engine = _engine()
    session = _session(org, session_id)
    draft, state = _draft(org, session_id, _index(version, "draft version"))
    person, name, role = flask.g.api_clinician
    if body.content_hash != draft.content_hash():
        raise StateConflict("content_hash is not this draft version's content; fetch the "
                            "draft again and review what it says now", field="content_hash")
    if body.decision == "rejected" and not (body.reason or "").strip():
        raise Invalid("reason: a rejection needs a reason", field="reason")
    decision = Decision(body.decision)
    existing = engine.store.approval(org, draft.id)
    if state == "draft" and decision == Decision.APPROVED:
        _check_writable(engine, org, session, draft, Approval(
            draft_id=draft.id, draft_version=draft.version, content_hash=body.content_hash,
            approver=person, approver_name=name, role=role, decision=decision,
            at=engine.clock.now()))
    if state == "draft":
        try:
            uc.decide(engine.store, engine.clock, org_id=org, draft_id=draft.id,
                      content_hash=body.content_hash, approver=person, approver_name=name,
                      role=role, decision=decision, reason=body.reason)
        except StateConflict:
            existing = engine.store.approval(org, draft.id)     # decided meanwhile
            if existing is None:
                raise
        else:
            existing = engine.store.approval(org, draft.id)
    if existing is None or existing.decision != decision or existing.approver != person:
        raise StateConflict(f"this draft version is already {state}", field="decision")
    keys = submit(engine, org, draft.id) if decision == Decision.APPROVED else []
    return dump(m.ApprovalOut(
        draft_version=draft.version, decision=existing.decision.value,
        content_hash=existing.content_hash,
        approver=m.Approver(id=_ident(existing.approver), name=existing.approver_name,
                            role=existing.role), writes=keys)), 200


def submit(engine, org: str, draft_id: str) -> list[str]:
    """One pending ledger write per target that needs approval (Engine.submit_approved),
    then handed to the queue, as the review page does."""
    keys = engine.submit_approved(org, draft_id)
    if engine.queue is not None:
        return keys
    jobs = flask.current_app.extensions.get("chartbridge.jobs")
    for key in keys:
        if jobs is not None:
            jobs.enqueue("execute_write", org, key)
        else:
            threading.Thread(target=_execute, args=(engine, engine.ledger.command_of(org, key)),
                             daemon=True, name="api-write").start()
    return keys


def _execute(engine, command) -> None:
    try:
        engine.ledger.execute(command, engine.adapter(command.org_id, command.target))
    except ChartbridgeError as exc:
        log.info("write deferred", extra={"error_class": type(exc).__name__})


# -- writes --------------------------------------------------------------------------------
@route("GET", "/sessions/<session_id>/writes", scope="read",
       summary="Write status per target", answer=m.WritesOut)
def writes(org: str, session_id: str):
    session = _session(org, session_id)
    return dump(m.WritesOut(session_id=session.id,
                            writes=_writes(_engine(), org, session.id))), 200


# -- the blueprint -------------------------------------------------------------------------
def make_blueprint(engine, jobs) -> flask.Blueprint:
    from chartbridge.api import openapi
    from chartbridge.api.token import token_response

    bp = flask.Blueprint("capture_api", __name__)

    def guarded(r: Route):
        def view(org: str, **kwargs):
            engine.org(org)                                   # unknown org: 404 first
            principal = authenticate(flask.request, org)
            require(principal, r.scope)
            flask.g.api_principal = principal
            result = r.view(org, **kwargs)
            if isinstance(result, flask.Response):            # idempotent views answer whole
                return result
            body, status = result
            return flask.jsonify(body), status
        view.__name__ = r.view.__name__
        return view

    for r in ROUTES:
        bp.add_url_rule(PREFIX + r.path, endpoint=r.view.__name__, view_func=guarded(r),
                        methods=[r.method])

    @bp.post(PREFIX + "/token")
    def token(org: str):
        engine.org(org)
        return token_response(engine, org)

    @bp.get(PREFIX + "/openapi.json")
    def openapi_json(org: str):
        engine.org(org)
        from chartbridge import httperrors
        return flask.jsonify(openapi.document(org, httperrors.public_base()))

    return bp
