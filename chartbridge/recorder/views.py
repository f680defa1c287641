"""The SMART ambient recorder: a page any FHIR EHR opens with the SMART EHR launch, where
the clinician records the visit in the browser; everything else goes through the capture
API (chartbridge/api), as any capture client's would.

`GET /orgs/{org}/recorder/launch?iss=&launch=`: `iss` must be the org file's
`recorder.fhir_base`; the launch itself is the shared one (adapters/smart_launch.py, the
Haiku page's too): discovery, PKCE S256, `state`, `aud`, `launch`, a nonce. The callback
exchanges the code and checks the id_token (signature by the discovered JWKS, issuer,
audience, expiry, nonce); patient and encounter come from the token response, the
clinician from the id_token's `fhirUser`. Only then is a page session written (an
httpOnly SameSite cookie holds a random id; path `/orgs/{org}`, so the API calls carry it).

The page's API calls are authenticated by that page session plus its CSRF token in
`X-CSRF-Token` (`page_principal`, registered with the API's authenticators): scopes
capture, read and approve, as the launched clinician, and only for the launched visit — a
session it opens must name the launch's FHIR patient and encounter, and any other session
is refused. The API session is found again by its external id, a plain hash of immutable
facts (the org, the configured FHIR base without a trailing slash, the encounter and the
clinician: no key that changes with the process or a rotation, nor the launch's spelling of
`iss`), so a reload, a killed tab, a restart or a second launch of the same visit resumes it;
its id is also kept in the page session (`POST .../recorder/session`). The identifiers'
`system` is that normalized FHIR base; the clinician is `fhirUser` with the id_token's issuer
as `system`, and a session is the launch's only if system and value of patient, encounter and
clinician all match.

The browser (static/recorder.js) cuts a chunk every `recorder.chunk_seconds` by starting a
new MediaRecorder and stopping the old one (each chunk a whole WebM/Opus file, decodable on
its own), keeps each chunk in IndexedDB until the API stored it, and uploads it with
retries (the same bytes again is safe). Reopened, it asks the API which chunks are stored,
sends what IndexedDB still holds and continues at the next sequence number.
"""
from __future__ import annotations

import hashlib
import logging
import re
import secrets

from flask import (Blueprint, current_app, jsonify, make_response, redirect, render_template,
                   request, url_for)

from chartbridge.adapters.smart_launch import SmartLaunch, same_base
from chartbridge.api.auth import ApiForbidden, ApiUnauthorized, Principal, register_authenticator
from chartbridge.core.bounds import load_json
from chartbridge.core.errors import ChartbridgeError, InputError, NotFound
from chartbridge.core.models import SECTION_CODES, Identifier, SessionSource, find_identifier
from chartbridge.httperrors import external_url_for, public_origin, register_error_shape
from chartbridge.review.websession import PageSessions, security_headers

log = logging.getLogger("chartbridge.recorder")

SCOPE = "launch openid fhirUser patient/Patient.rs patient/Encounter.rs"
KIND = "recorder"
CSRF_HEADER = "X-CSRF-Token"
EXTENSION = "chartbridge.recorder"
SCOPES = frozenset({"capture", "read", "approve"})


def make_blueprint(engine, jobs) -> Blueprint:
    bp = Blueprint("recorder", __name__, template_folder="templates", static_folder="static",
                   static_url_path="/recorder/static")
    pages = PageSessions(engine, kind=KIND)
    smart = SmartLaunch(engine, cookie="cb_recorder_launch", scope=SCOPE, ehr="The EHR",
                        reopen="open the recorder again from the patient's chart",
                        require_identity=True)
    bp.record_once(lambda state: state.app.extensions.__setitem__(EXTENSION, pages))

    def settings(org: str):
        recorder = engine.org(org).recorder               # unknown org -> NotFound
        if recorder is None:
            raise NotFound("this organization has no ambient recorder (recorder: in its "
                           "org file)")
        return recorder

    def render(template: str, status: int = 200, **ctx):
        nonce = secrets.token_urlsafe(16)
        resp = make_response(render_template(template, nonce=nonce, **ctx), status)
        return security_headers(resp, nonce)

    def refused(message: str, status: int = 403, field: str | None = None):
        return render("recorder/refused.html", status, message=message, field=field)

    def error_page(exc: ChartbridgeError):
        status = exc.http_status if 400 <= exc.http_status < 600 else 500
        return refused(exc.message, status, getattr(exc, "field", None) or exc.fields.get("field"))

    # -- the launch ---------------------------------------------------------------------------
    @bp.get("/orgs/<org>/recorder/launch")
    def launch(org: str):
        try:
            cfg = settings(org)
            args = {name: request.args.get(name, "").strip() for name in ("iss", "launch")}
            for name, value in args.items():
                if not value or len(value) > 2000:
                    raise InputError(f"the launch URL needs the {name} parameter", field=name)
            if not same_base(args["iss"], cfg.fhir_base):
                log.info("recorder launch refused", extra={"reason": "iss_untrusted"})
                return refused("The recorder was opened from a server this organization does "
                               "not trust. Open it again from the patient's chart.", 400)
            url, pending = smart.begin(org=org, iss=args["iss"], launch=args["launch"],
                                       client_id=cfg.client_id,
                                       authorization_server=cfg.authorization_server,
                                       redirect_uri=external_url_for(".callback", org=org))
        except ChartbridgeError as exc:
            return error_page(exc)
        resp = redirect(url, code=302)
        smart.save(pending, resp, path=f"/orgs/{org}/recorder")
        return resp

    @bp.get("/orgs/<org>/recorder/callback")
    def callback(org: str):
        try:
            cfg = settings(org)
            pending = smart.pending(org)
            if request.args.get("error"):
                log.info("recorder launch refused", extra={"reason": "authorization_denied"})
                return refused("The EHR did not authorize the recorder. Open it again from "
                               "the patient's chart.")
            done = smart.complete(pending, client_id=cfg.client_id,
                                  redirect_uri=external_url_for(".callback", org=org),
                                  issuer=cfg.authorization_server,
                                  authorization_server=cfg.authorization_server)
            token, claims = done.token, done.id_claims or {}
            patient, encounter = token.get("patient"), token.get("encounter")
            if not _fhir_id(patient) or not _fhir_id(encounter):
                engine.store.record_audit(org, "recorder.refused", actor="smart-launch",
                                          outcome="failure", reason="no_visit_context")
                return refused("The recorder documents a visit: open it from the visit "
                               "(an encounter) in the patient's chart.")
            user, issuer = claims.get("fhirUser"), claims.get("iss")
            if (not isinstance(user, str) or not user or len(user) > 128
                    or not isinstance(issuer, str) or not issuer or len(issuer) > 256):
                engine.store.record_audit(org, "recorder.refused", actor="smart-launch",
                                          outcome="failure", reason="no_fhir_user")
                return refused("The EHR did not say which clinician opened the recorder.")
        except ChartbridgeError as exc:
            return error_page(exc)
        name = claims.get("name")
        # the issuer of the (checked) id_token is the fhirUser's assigning authority
        person = {"value": user, "type": "fhirUser", "system": issuer}
        engine.store.record_audit(org, "recorder.launched", actor="smart-launch")
        resp = redirect(url_for(".page", org=org), code=303)
        pages.save(org, {"phase": "ready", "iss": pending["iss"],
                         "fhir_base": fhir_base(cfg.fhir_base), "patient": patient,
                         "encounter": encounter, "person": person,
                         "person_name": str(name)[:100] if isinstance(name, str) else None,
                         "session_id": None,
                         "smart": {"access_token": token.get("access_token"),
                                   "scope": token.get("scope"),
                                   "expires_in": token.get("expires_in")}},
                   resp, path=f"/orgs/{org}", new_id=True)
        smart.clear(resp, path=f"/orgs/{org}/recorder")
        return resp

    # -- the page -----------------------------------------------------------------------------
    @bp.get("/orgs/<org>/recorder")
    def page(org: str):
        try:
            cfg = settings(org)
            data = pages.load(org)
            if not data or data.get("phase") != "ready":
                return refused("The recorder needs to be opened from the patient's chart in "
                               "the EHR.", 401)
            session_id = data.get("session_id")
            if session_id is not None:
                try:
                    engine.store.get_session(org, session_id)
                except NotFound:
                    session_id = None
        except ChartbridgeError as exc:
            return error_page(exc)
        config = engine.org(org)
        boot = {
            "api": f"/orgs/{org}/api/v1",
            "attach": url_for(".attach", org=org),
            "csrf": data["csrf"],
            "session_id": session_id,
            "chunk_ms": cfg.chunk_seconds * 1000,
            # how long the page waits for a draft / for writes before it says it is stuck
            # (tests shorten them through the app's config)
            **{k: int(v) for k, v in current_app.config.get("RECORDER_WAITS_MS", {}).items()
               if k in ("draft_wait_ms", "writes_wait_ms", "no_writes_ms")},
            "section_names": dict(SECTION_CODES),
            "open": {
                "external_id": external_id(org, data),
                "user": data["person"],
                "patient_ids": [{"value": data["patient"], "type": "FHIR",
                                 "system": _base_of(data)}],
                "encounter_ids": [{"value": data["encounter"], "type": "FHIR",
                                   "system": _base_of(data)}],
                **({"sections": cfg.sections} if cfg.sections else {}),
                **({"note_type": {"code": cfg.note_type}} if cfg.note_type else {}),
            },
            "consent_required": {
                "capture": config.policy.consent.capture == "required",
                "write_back": config.policy.consent.write_back == "required"},
        }
        return render("recorder/page.html", org=org, boot=boot,
                      clinician=data.get("person_name") or "the signed-in clinician",
                      patient=data["patient"], encounter=data["encounter"])

    @bp.post("/orgs/<org>/recorder/session")
    def attach(org: str):
        """The page tells its session which API session it opened (checked: that session
        is of the launched visit), so the page reopens on it."""
        data = pages.load(org)
        if not data or data.get("phase") != "ready" or not _csrf_ok(data):
            return jsonify(error="forbidden", detail="open the recorder again from the "
                                                     "patient's chart"), 403
        body = load_json(request.get_data(cache=True) or b"null")
        sid = body.get("session_id") if isinstance(body, dict) else None
        if not isinstance(sid, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", sid):
            return jsonify(error="invalid_field", detail="session_id is required",
                           field="session_id"), 422
        try:
            session = engine.store.get_session(org, sid)
        except NotFound:
            return jsonify(error="not_found", detail="no such session", field="session_id"), 404
        if not _of_launch(session, data):
            return jsonify(error="forbidden", detail="that session is not this visit's",
                           field="session_id"), 403
        resp = make_response("", 204)
        pages.save(org, dict(data, session_id=sid), resp, path=f"/orgs/{org}")
        return resp

    def page_error(answer):
        if request.path.startswith("/recorder/static") or request.method != "GET":
            resp = jsonify({"error": answer.code, "detail": answer.detail})
        else:
            resp = refused(answer.detail, answer.status, answer.field)
        resp.status_code = answer.status
        resp.headers.update(answer.headers)
        return resp

    register_error_shape(bp, page_error, paths=r"/orgs/[^/]*/recorder(/|$)")
    return bp


# -- helpers -------------------------------------------------------------------------------
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _fhir_id(value) -> bool:
    return isinstance(value, str) and bool(_FHIR_ID.fullmatch(value))


def fhir_base(url) -> str:
    """The FHIR base as one spelling (no trailing slash): the identifiers' `system`."""
    return str(url).rstrip("/")


def _base_of(data: dict) -> str:
    return data.get("fhir_base") or fhir_base(data["iss"])


def external_id(org: str, data: dict) -> str:
    """The API session's external id for this visit and clinician: the same on every launch
    of the same visit by the same person, in any process and across secret rotations (so it
    resumes), and no identifier in it. A plain hash of immutable facts: there is nothing
    secret to protect, only identifiers to keep out of the id."""
    msg = "\x00".join([org, _base_of(data), data["encounter"], data["person"]["value"]])
    return "smart-" + hashlib.sha256(msg.encode()).hexdigest()[:40]


def _same(ident, value: str, system: str | None) -> bool:
    return (ident is not None and ident.value == value
            and (ident.system or "").rstrip("/") == (system or "").rstrip("/"))


def _of_launch(session, data: dict) -> bool:
    """The session is the launched visit's: FHIR patient and encounter of the launch's FHIR
    server (system and value), opened as the launched clinician."""
    base, person = _base_of(data), data["person"]
    patient = find_identifier(session.patient_ids, "FHIR")
    encounter = find_identifier(session.encounter_ids, "FHIR")
    return (session.source == SessionSource.API
            and _same(patient, data["patient"], base)
            and _same(encounter, data["encounter"], base)
            and session.user is not None and _same(session.user, person["value"],
                                                     person.get("system")))


def _csrf_ok(data: dict) -> bool:
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent or not secrets.compare_digest(sent.encode(), str(data.get("csrf", "")).encode()):
        return False
    origin = request.headers.get("Origin")
    return not (origin and origin != "null" and origin.rstrip("/") != public_origin())


# -- the capture API's authenticator for this page ------------------------------------------
_SESSION_PATH = re.compile(r"^/orgs/[^/]+/api/v1/sessions/([^/]+)(/|$)")
_OPEN_PATH = re.compile(r"^/orgs/[^/]+/api/v1/sessions/?$")


@register_authenticator
def page_principal(req, org: str) -> Principal | None:
    """The recorder's page session as an API principal: None when the request is not the
    recorder page's (no cookie, or a bearer token); refused when the session ended, the
    CSRF token is wrong, or the request is about another visit."""
    pages = current_app.extensions.get(EXTENSION)
    if pages is None or not req.cookies.get(f"cb_{KIND}") or req.headers.get("Authorization"):
        return None
    data = pages.load(org)
    if not data or data.get("phase") != "ready":
        raise ApiUnauthorized("the recorder's sign-in has ended; open it again from the "
                              "patient's chart")
    if not _csrf_ok(data):
        raise ApiForbidden("the recorder page's CSRF token is missing or wrong",
                           field=CSRF_HEADER)
    engine = current_app.extensions["chartbridge"]
    m = _SESSION_PATH.match(req.path)
    if m:
        try:
            session = engine.store.get_session(org, m.group(1))
        except NotFound:
            session = None
        if session is not None and not _of_launch(session, data):
            raise ApiForbidden("the recorder was launched for another visit")
    elif _OPEN_PATH.match(req.path) and req.method == "POST":
        body = load_json(req.get_data(cache=True) or b"null")
        if not isinstance(body, dict):
            raise InputError("the body must be a JSON object", field="body")
        if not _body_of_launch(body, data):
            raise ApiForbidden("the recorder opens sessions only for the visit it was "
                               "launched for, as the launched clinician")
    person = data["person"]
    return Principal(org=org, scopes=SCOPES, client_id=None,
                     person=Identifier(value=person["value"], type=person["type"],
                                       system=person.get("system")),
                     person_name=data.get("person_name"), via="page")


def _ids(body: dict, name: str) -> set[tuple[str, str]]:
    """The body's FHIR identifiers under `name` as (system, value), type-checked here
    (this runs before the API's own validation): anything else is a 422 naming the field."""
    ids = body.get(name)
    if ids is None:
        return set()
    if not isinstance(ids, list):
        raise InputError(f"{name} must be a list of identifiers", field=name)
    out = set()
    for n, i in enumerate(ids):
        if not isinstance(i, dict):
            raise InputError(f"{name}[{n}] must be an object", field=f"{name}[{n}]")
        for key in ("value", "type", "system"):
            if i.get(key) is not None and not isinstance(i[key], str):
                raise InputError(f"{name}[{n}].{key} must be a string",
                                 field=f"{name}[{n}].{key}")
        if (i.get("type") or "").upper() == "FHIR":
            out.add(((i.get("system") or "").rstrip("/"), i.get("value")))
    return out


def _body_of_launch(body: dict, data: dict) -> bool:
    base, person = _base_of(data), data["person"]
    user = body.get("user")
    if user is not None and not isinstance(user, dict):
        raise InputError("user must be an identifier object", field="user")
    user = user or {}
    for key in ("value", "type", "system"):
        if user.get(key) is not None and not isinstance(user[key], str):
            raise InputError(f"user.{key} must be a string", field=f"user.{key}")
    return (_ids(body, "patient_ids") == {(base, data["patient"])}
            and _ids(body, "encounter_ids") == {(base, data["encounter"])}
            and user.get("value") == person["value"]
            and (user.get("system") or "").rstrip("/") == (person.get("system") or "").rstrip("/"))
