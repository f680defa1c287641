"""The embedded Haiku page: a SMART on FHIR EHR launch, then the session as the engine
stores it.

`GET /orgs/{org}/epic/haiku/launch?session=&iss=&launch=` checks `iss` against the org's
Epic site, discovers `{iss}/.well-known/smart-configuration`, and sends the web view to the
authorization endpoint (authlib as the client: PKCE S256, `state`, `aud`, `launch`). The
redirect back exchanges the code; the token response's `patient` and `encounter` must equal
the session's FHIR identifiers, or the page refuses (and the refusal is audited).

Nothing critical lives in the page: every view is rendered from the engine's stored state
(recordings, chunks, drafts, protections, the write ledger), and a JSON endpoint gives the
same fragment for progressive updates. The user's SMART token stays in the server-side page
session (an httpOnly SameSite cookie holds only a random id) and is never used for the
engine's own calls to Epic, which use the backend client's token.

An anonymous launch writes nothing and calls out at most once per discovery TTL: the launch
state (state, PKCE verifier) travels in a sealed cookie, the SMART discovery document is
cached per `iss`, and the page session row is written only after the code exchange
succeeded. The redirect_uri is built from the engine's public URL, never the Host header.
"""
from __future__ import annotations

import logging
import secrets
from urllib.parse import urlsplit

from flask import (Blueprint, jsonify, make_response, redirect, render_template, request,
                   url_for)

from chartbridge.adapters.smart_launch import LaunchRefused, SmartLaunch, same_base
from chartbridge.core.errors import ChartbridgeError, InputError, NotFound
from chartbridge.core.models import (SECTION_CODES, ChunkState, RecordingStatus, VersionState,
                                     WriteStatus, find_identifier)
from chartbridge.httperrors import external_url_for, register_error_shape
from chartbridge.review.websession import PageSessions, security_headers

from .schemas import SOURCE

log = logging.getLogger("chartbridge.epic.page")

TARGET = "epic_haiku"
SCOPE = "launch openid fhirUser"


def make_blueprint(engine, jobs) -> Blueprint:
    bp = Blueprint("epic_haiku_page", __name__, template_folder="templates")
    pages = PageSessions(engine, kind="haiku")
    smart = SmartLaunch(engine, cookie="cb_haiku_launch", scope=SCOPE, ehr="Epic",
                        reopen="open the page again from Haiku")

    def cookie_path(org: str) -> str:
        return f"/orgs/{org}/epic/haiku"

    def settings(org: str):
        _org, epic = engine.target_config(org, TARGET)      # unknown org/target -> NotFound
        return epic

    def render(template: str, status: int = 200, **ctx):
        nonce = secrets.token_urlsafe(16)
        resp = make_response(render_template(template, nonce=nonce, **ctx), status)
        return security_headers(resp, nonce)

    def refuse(org: str, message: str, *, reason: str, session=None, status: int = 403,
               audited: bool = True):
        # Refusals before any check that costs the caller (an untrusted iss, a denied
        # authorization) are logged, not audited: an anonymous request writes nothing.
        if audited:
            engine.store.record_audit(org, "haiku_page.refused", session=session,
                                      actor="smart-launch", outcome="failure", reason=reason)
        log.info("haiku page refused", extra={"reason": reason})
        return render("epic_haiku/refused.html", status, message=message, org=org)

    # -- launch -----------------------------------------------------------------------------
    @bp.get("/orgs/<org>/epic/haiku/launch")
    def launch(org: str):
        try:
            epic = settings(org)
            args = {name: request.args.get(name, "").strip() for name in ("session", "iss", "launch")}
            for name, value in args.items():
                if not value or len(value) > 2000:
                    raise InputError(f"the launch URL needs the {name} parameter", field=name)
            if not epic.launch_client_id:
                raise InputError("this organization has no SMART client id for the page",
                                 field="targets.epic_haiku.launch_client_id")
            if not _trusted_iss(args["iss"], epic):
                return refuse(org, "This page was opened from a server this organization does "
                                   "not trust. Open it again from Haiku.", reason="iss_untrusted",
                              status=400, audited=False)
            url, pending = smart.begin(org=org, iss=args["iss"], launch=args["launch"],
                                       client_id=epic.launch_client_id,
                                       redirect_uri=external_url_for(".callback", org=org),
                                       remember={"external_session": args["session"]})
        except ChartbridgeError as exc:
            return _error_page(render, exc)
        resp = redirect(url, code=302)
        smart.save(pending, resp, path=cookie_path(org))
        return resp

    @bp.get("/orgs/<org>/epic/haiku/callback")
    def callback(org: str):
        try:
            epic = settings(org)
            pending = smart.pending(org)
            if request.args.get("error"):
                return refuse(org, "Epic did not authorize this page. Open it again from Haiku.",
                              reason="authorization_denied", audited=False)
            token = smart.complete(pending, client_id=epic.launch_client_id,
                                   redirect_uri=external_url_for(".callback", org=org)).token
            session = engine.store.find_session(org, SOURCE,
                                                pending["external_session"])
            if session is None:
                return refuse(org, "This ambient session is not known to the engine yet. "
                                   "Start recording in Haiku, then open this page again.",
                              reason="unknown_session", status=404)
            patient = find_identifier(session.patient_ids, "FHIR")
            encounter = find_identifier(session.encounter_ids, "FHIR")
            if patient is None or token.get("patient") != patient.value:
                return refuse(org, "This page was opened for a different patient than the one "
                                   "being recorded. Nothing is shown. Close it and open it again "
                                   "from the patient's chart.", reason="patient_mismatch",
                              session=session)
            if encounter is None or token.get("encounter") != encounter.value:
                return refuse(org, "This page was opened for a different visit than the one "
                                   "being recorded. Nothing is shown. Close it and open it again "
                                   "from this visit.", reason="encounter_mismatch",
                              session=session)
        except ChartbridgeError as exc:
            return _error_page(render, exc)
        engine.store.record_audit(org, "haiku_page.launched", session=session,
                                  actor="smart-launch")
        resp = redirect(url_for(".page", org=org, session_id=session.id), code=303)
        pages.save(org, {"phase": "ready", "session_id": session.id,
                         "smart": {"access_token": token.get("access_token"),
                                   "scope": token.get("scope"),
                                   "expires_in": token.get("expires_in")}},
                   resp, path=cookie_path(org), new_id=True)
        smart.clear(resp, path=cookie_path(org))
        return resp

    # -- the page ---------------------------------------------------------------------------
    def authorized(org: str, session_id: str):
        data = pages.load(org)
        if not data or data.get("phase") != "ready" or data.get("session_id") != session_id:
            return None
        return engine.store.get_session(org, session_id)

    @bp.get("/orgs/<org>/epic/haiku/sessions/<session_id>")
    def page(org: str, session_id: str):
        try:
            session = authorized(org, session_id)
            if session is None:
                return render("epic_haiku/refused.html", 401, org=org,
                              message="This page needs to be opened from Haiku. Open it again "
                                      "from the patient's chart.")
            view = session_view(engine, org, session)
        except ChartbridgeError as exc:
            return _error_page(render, exc)
        return render("epic_haiku/page.html", org=org, v=view,
                      state_url=url_for(".state", org=org, session_id=session_id))

    @bp.get("/orgs/<org>/epic/haiku/sessions/<session_id>/state.json")
    def state(org: str, session_id: str):
        try:
            session = authorized(org, session_id)
            if session is None:
                return jsonify(error="unauthorized",
                               detail="open this page again from Haiku"), 401
            view = session_view(engine, org, session)
        except ChartbridgeError as exc:
            return jsonify(exc.as_dict()), exc.http_status if 400 <= exc.http_status < 600 else 500
        resp = jsonify(summary=view["summary"], fingerprint=view["fingerprint"],
                       html=render_template("epic_haiku/_state.html", v=view))
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def page_error(answer):
        if request.path.endswith(".json"):
            resp = jsonify({"error": answer.code, "detail": answer.detail})
        else:
            resp = render("epic_haiku/refused.html", answer.status, message=answer.detail,
                          field=answer.field)
        resp.status_code = answer.status
        resp.headers.update(answer.headers)
        return resp

    register_error_shape(bp, page_error, paths=r"/orgs/[^/]*/epic/haiku/")
    return bp


# -- SMART client pieces --------------------------------------------------------------------
def _trusted_iss(iss: str, epic) -> bool:
    """The launch's `iss` must be the org's configured FHIR base; without one, it must be on
    the same origin as the org's Epic site (its token URL or callback base)."""
    got = iss.rstrip("/")
    if epic.fhir_base:
        return same_base(got, epic.fhir_base)
    parts = urlsplit(got)
    if parts.scheme not in ("https", "http"):
        return False
    origin = (parts.scheme, parts.netloc)
    known = [str(u) for u in (epic.token_url, epic.callback_url) if u]
    return any((urlsplit(u).scheme, urlsplit(u).netloc) == origin for u in known)


def _error_page(render, exc: ChartbridgeError):
    status = exc.http_status if 400 <= exc.http_status < 600 else 500
    field = getattr(exc, "field", None) or exc.fields.get("field")
    return render("epic_haiku/refused.html", status, message=exc.message, field=field)


# -- the view model: only what the engine stored ---------------------------------------------
VERSION_WORDS = {
    VersionState.WAITING: "receiving and transcribing",
    VersionState.READY: "transcribed; drafting the note",
    VersionState.DONE: "done",
    VersionState.SUPERSEDED: "replaced by a newer recording",
    VersionState.FAILED: "could not be processed",
}
RECORDING_WORDS = {RecordingStatus.PAUSED: "Paused", RecordingStatus.STOPPED: "Stopped"}
WRITE_ERROR_WORDS = {
    "PermanentError": "Epic refused the note",
    "TransientError": "Epic could not be reached; retrying",
    "OutcomeUnknown": "it is not known whether Epic received the note; a person will check",
}


def session_view(engine, org: str, session) -> dict:
    store = engine.store
    recordings = store.recordings(org, session.id)
    chunks = store.chunks(org, session.id)
    drafts = store.drafts(org, session_id=session.id)
    protected = store.protected(org, session.id)
    writes = [w for w in engine.ledger.list(org, session_id=session.id) if w.target == TARGET]

    versions = []
    for r in recordings:
        mine = [c for c in chunks if c.recording_id == r.recording_id and c.sequence <= r.chunk_count]
        versions.append({
            "recording_id": r.recording_id, "version": r.version,
            "status": RECORDING_WORDS.get(r.status, str(r.status)), "state": r.state.value,
            "state_words": VERSION_WORDS.get(r.state, r.state.value),
            "chunk_count": r.chunk_count, "received": len(mine),
            "transcribed": sum(c.state == ChunkState.TRANSCRIBED for c in mine)})

    errors = []
    for c in chunks:
        if c.state == ChunkState.FAILED:
            errors.append(f"Part {c.sequence} of the recording could not be transcribed.")
    for r in recordings:
        if r.state == VersionState.FAILED:
            errors.append(f"Recording version {r.version} could not be turned into a note.")

    sent: dict[str, int] = {}
    sending: set[str] = set()
    for w in writes:
        if w.resource_kind != "DocumentationReady":
            if w.status == WriteStatus.FAILED:
                errors.append("Epic could not be told that the recording was processed.")
            continue
        try:
            command = engine.ledger.command_of(org, w.key)
        except ChartbridgeError:
            continue
        codes = [s.code for s in (command.draft.sections if command.draft else [])]
        if w.status == WriteStatus.SUCCEEDED:
            for code in codes:
                sent[code] = max(sent.get(code, 0), command.note_version)
        elif w.status in (WriteStatus.PENDING, WriteStatus.IN_FLIGHT):
            sending.update(codes)
        if w.status == WriteStatus.FAILED:
            errors.append(WRITE_ERROR_WORDS.get(w.last_error_class or "", "Epic refused the note")
                          + ".")
        elif w.status == WriteStatus.NEEDS_RECONCILIATION:
            errors.append(WRITE_ERROR_WORDS["OutcomeUnknown"].capitalize() + ".")

    newest = next((d for d, _state in drafts), None)
    drafted = [{"code": s.code, "name": SECTION_CODES.get(s.code, s.title or s.code),
                "sent_version": sent.get(s.code), "sending": s.code in sending}
               for s in (newest.sections if newest else [])]
    protected_list = [{"code": code, "name": SECTION_CODES.get(code, code),
                       "edited_at": p.edited_at.isoformat(timespec="minutes") if p.edited_at else None}
                      for code, p in sorted(protected.items())]

    received = len(chunks)
    transcribed = sum(c.state == ChunkState.TRANSCRIBED for c in chunks)
    if session.status != "open":
        summary = f"The session is {session.status.value}."
    elif not recordings and not chunks:
        summary = "Waiting for the recording."
    elif versions and versions[-1]["state"] == VersionState.DONE.value and drafted:
        summary = "The note sections are ready in Epic."
    else:
        summary = f"Transcribed {transcribed} of {received} recording parts."
    view = {"session_status": session.status.value, "versions": versions,
            "chunks": {"received": received, "transcribed": transcribed,
                       "failed": sum(c.state == ChunkState.FAILED for c in chunks)},
            "drafted": drafted, "protected": protected_list, "errors": errors,
            "summary": summary, "draft_version": newest.version if newest else None}
    view["fingerprint"] = _fingerprint(view)
    return view


def _fingerprint(view: dict) -> str:
    import hashlib
    import json
    return hashlib.sha256(json.dumps(view, sort_keys=True, default=str).encode()).hexdigest()[:16]


__all__ = ["LaunchRefused", "make_blueprint", "session_view", "NotFound"]
