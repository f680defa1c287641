"""The operator console: /ops/ and one org's pages under /ops/orgs/{org}/ (Flask + Jinja2,
server-rendered, no script). Same discipline as the clinician review pages, using their
pieces: a server-side page session (review.websession.PageSessions, its own cookie kind
scoped to the org's path), a sealed pre-sign-in cookie, a CSRF token on every form, the
strict CSP with a per-response nonce, sign-in through the org's OIDC provider
(review.oidc) — see access.py for the role claim — or the development login for demo-*
orgs. Repairs are POST forms calling chartbridge/ops/repair.py; the payload and the EHR's
answer are shown only with the PHI-view role, on request, and every such view is audited.
"""
from __future__ import annotations

import functools
import json
import logging
import re
import secrets
from datetime import timedelta

from flask import Blueprint, jsonify, make_response, redirect, render_template, request, url_for

from chartbridge.core.errors import ChartbridgeError, InputError, NotFound
from chartbridge.core.models import WriteStatus
from chartbridge.httperrors import ORG_ID, register_error_shape
from chartbridge.ledger import audit as audit_log
from chartbridge.ledger import repairs as reads
from chartbridge.review import oidc
from chartbridge.review.signin_flow import redirect_to_provider, user_from_provider
from chartbridge.review.websession import PageSessions, SealedCookie, csrf_ok, security_headers

from . import access, health, repair

log = logging.getLogger("chartbridge.ops")

USER_ID = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
STUCK_AFTER_S = 300            # the default threshold; each page takes ?stuck_after_s=
SESSION_STATES = ("open", "signed", "cancelled", "stuck")
NOTICES = {"requeued": "The write was requeued as a new attempt.",
           "cancelled": "The write was cancelled.",
           "resolved": "The write was resolved.",
           "redriven": "The work was re-driven; it runs again shortly."}


class Forbidden(ChartbridgeError):
    """Signed in, but this needs a permission (or a session and form token) you lack."""

    code, http_status = "forbidden", 403


ACTIONS = ("requeue", "cancel", "resolve", "redrive_chunk", "redrive_version")


def _dev_login_allowed(org: str) -> bool:
    """The review pages' rule (review.views.dev_login_allowed): demo-* orgs, and only with
    CHARTBRIDGE_DEV_LOGIN=1."""
    from chartbridge.settings import load_settings
    return org.startswith("demo-") and load_settings().dev_login


def _number(name: str, default: float, *, most: float = 10 ** 8) -> float:
    raw = request.args.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InputError(f"{name} must be a number", field=name) from None
    if not 0 <= value <= most:
        raise InputError(f"{name} must be between 0 and {most:g}", field=name)
    return value


def make_blueprint(engine, jobs) -> Blueprint:
    bp = Blueprint("ops", __name__, template_folder="templates")
    pages = PageSessions(engine, kind="ops", lifetime_s=8 * 3600)
    pending_login = SealedCookie("cb_ops_login", lifetime_s=600)

    def path(org: str) -> str:
        return f"/ops/orgs/{org}/"

    def render(template: str, status: int = 200, **ctx):
        nonce = secrets.token_urlsafe(16)
        resp = make_response(render_template(template, nonce=nonce, **ctx), status)
        return security_headers(resp, nonce)

    def audit(org: str, action: str, user: dict | None, *, outcome="success",
              session_id: str | None = None, **detail) -> None:
        session = None
        if session_id:
            try:
                session = engine.store.get_session(org, session_id)
            except NotFound:
                session = None
        engine.store.record_audit(org, action, session=session,
                                  actor=f"user:{user['id']}" if user else "anonymous",
                                  outcome=outcome, **detail)

    def signed_in(org: str):
        data = pages.load(org)
        if not data or data.get("phase") != "signed_in":
            return None
        return data if access.VIEW in data.get("grants", ()) else None

    def _error(answer):
        org = (request.view_args or {}).get("org")
        org = org if org and ORG_ID.fullmatch(org) else None
        if request.path.endswith(".json"):
            resp = jsonify({"error": answer.code, "detail": answer.detail, **answer.fields})
        else:
            data = pages.load(org) if org else None
            resp = render("ops/error.html", answer.status, message=answer.detail,
                          field=answer.field, org=org if data else None,
                          user=(data or {}).get("user"), csrf=(data or {}).get("csrf"))
        resp.status_code = answer.status
        resp.headers.update(answer.headers)
        return resp

    register_error_shape(bp, _error, paths=r"/ops/")

    def page(org: str, template: str, data: dict, **ctx):
        return render(template, org=org, org_name=engine.org(org).name, user=data["user"],
                      csrf=data["csrf"], phi=access.PHI in data.get("grants", ()),
                      notice=NOTICES.get(request.args.get("notice", "")), **ctx)

    def operator_page(view):
        """A GET page of one org: its signed-in operator's session data as `data`, or a
        redirect to the org's sign-in (an unknown org is a 404 first)."""
        @functools.wraps(view)
        def wrapped(org: str, **kwargs):
            engine.org(org)
            data = signed_in(org)
            if data is None:
                return redirect(url_for(".login", org=org), code=303)
            return view(org, data, **kwargs)
        return wrapped

    # -- the index and sign-in -------------------------------------------------------------
    @bp.get("/ops/")
    def index():
        org = request.args.get("org", "").strip()
        if org:
            if not ORG_ID.fullmatch(org):
                raise InputError("an organization id: lower-case letters, digits and '-'",
                                 field="org")
            return redirect(url_for(".sessions", org=org), code=303)
        return render("ops/index.html", user=None)

    @bp.get("/ops/orgs/<org>/login")
    def login(org: str):
        conf = engine.org(org)
        to_provider = redirect_to_provider(engine, org, pending_login, path(org))
        if to_provider is not None:
            return to_provider
        if not _dev_login_allowed(org):
            raise NotFound("no sign-in is configured for this organization")
        if signed_in(org):
            return redirect(url_for(".sessions", org=org), code=303)
        csrf = secrets.token_urlsafe(32)
        resp = render("ops/login.html", org=org, org_name=conf.name, csrf=csrf, user=None,
                      roles=list(access.ROLES))
        pending_login.save({"org": org, "phase": "dev", "csrf": csrf}, resp, path=path(org))
        return resp

    def _signed_in(org: str, user: dict, method: str):
        grants = access.grants_for(user.get("role"), org)
        if access.VIEW not in grants:
            audit(org, "ops.sign_in_refused", user, outcome="failure", method=method)
            raise oidc.SignInRefused("your role does not name this organization: the "
                                     f"console needs operator:{org}")
        resp = redirect(url_for(".sessions", org=org), code=303)
        pages.save(org, {"phase": "signed_in", "user": user, "grants": list(grants)}, resp,
                   path=path(org), new_id=True)
        pending_login.clear(resp, path=path(org))
        audit(org, "ops.signed_in", user, method=method, grants=list(grants))
        return resp

    @bp.post("/ops/orgs/<org>/login")
    def dev_login(org: str):
        engine.org(org)
        if not _dev_login_allowed(org):
            raise NotFound("no sign-in is configured for this organization")
        pending = pending_login.load()
        if not pending or pending.get("org") != org or not csrf_ok(pending):
            raise InputError("the form expired; reload the page and try again",
                             field="csrf_token")
        user_id = request.form.get("user_id", "").strip()
        if not USER_ID.match(user_id):
            raise InputError("a user id of letters, digits, '.', '_', '@' or '-' is required",
                             field="user_id")
        role = access.dev_role(request.form.get("role", ""), org)
        user = {"id": user_id, "name": user_id, "role": role, "issuer": "dev-login"}
        return _signed_in(org, user, "dev-login")

    @bp.get("/ops/orgs/<org>/oidc/callback")
    def oidc_callback(org: str):
        user = user_from_provider(engine, org, pending_login)
        return _signed_in(org, user, "oidc")

    @bp.post("/ops/orgs/<org>/logout")
    def logout(org: str):
        data = signed_in(org)
        if data and csrf_ok(data):
            audit(org, "ops.signed_out", data["user"])
        resp = redirect(url_for(".login", org=org), code=303)
        pages.clear(org, resp, path=path(org))
        return resp

    # -- sessions ----------------------------------------------------------------------------
    @bp.get("/ops/orgs/<org>/")
    def home(org: str):
        return redirect(url_for(".sessions", org=org), code=303)

    @bp.get("/ops/orgs/<org>/sessions")
    @operator_page
    def sessions(org: str, data: dict):
        state = request.args.get("state", "")
        if state and state not in SESSION_STATES:
            raise InputError(f"state: one of {', '.join(SESSION_STATES)}", field="state")
        stuck_after = _number("stuck_after_s", STUCK_AFTER_S)
        max_age_h = _number("max_age_h", 0, most=24 * 3650)
        now = engine.clock.now()
        stuck = {s["session_id"]: s for s in
                 repair.stuck_sessions(engine, org, older_than_s=stuck_after)}
        since = now - timedelta(hours=max_age_h) if max_age_h else None
        rows = reads.sessions(engine.db, org, status=state if state in
                              ("open", "signed", "cancelled") else None, since=since)
        for r in rows:
            r["stuck"] = stuck.get(r["id"])
            r["age_s"] = int((now - r["created_at"]).total_seconds())
        if state == "stuck":
            rows = [r for r in rows if r["stuck"]]
        return page(org, "ops/sessions.html", data, rows=rows, state=state,
                    states=SESSION_STATES, stuck_after_s=stuck_after, max_age_h=max_age_h,
                    stuck_count=len(stuck))

    @bp.get("/ops/orgs/<org>/sessions/<session_id>")
    @operator_page
    def session(org: str, data: dict, session_id: str):
        s = engine.store.get_session(org, session_id)          # another org's -> 404
        stuck_after = _number("stuck_after_s", STUCK_AFTER_S)
        stuck = next((x for x in repair.stuck_sessions(engine, org, older_than_s=stuck_after)
                      if x["session_id"] == s.id), None)
        drafts = [{"id": d.id, "version": d.version, "state": st, "created_at": d.created_at,
                   "sections": len(d.sections), "recording_version": d.recording_version}
                  for d, st in engine.store.drafts(org, session_id=s.id)]
        return page(org, "ops/session.html", data, s=s, stuck=stuck,
                    versions=reads.version_rows(engine.db, org, s.id),
                    chunks=reads.chunk_rows(engine.db, org, s.id), drafts=drafts,
                    writes=[_write_row(w) for w in engine.ledger.list(org, session_id=s.id)],
                    stuck_after_s=stuck_after,
                    back=url_for(".session", org=org, session_id=s.id))

    # -- writes ------------------------------------------------------------------------------
    @bp.get("/ops/orgs/<org>/writes")
    @operator_page
    def writes(org: str, data: dict):
        status = request.args.get("status", "")
        statuses = [s.value for s in WriteStatus]
        if status and status not in statuses:
            raise InputError(f"status: one of {', '.join(statuses)}", field="status")
        rows = [_write_row(w) for w in engine.ledger.list(org, status=status or None,
                                                          limit=1000)]
        rows.reverse()                                          # newest first
        return page(org, "ops/writes.html", data, rows=rows, status_filter=status,
                    statuses=statuses)

    @bp.get("/ops/orgs/<org>/write")
    @operator_page
    def write(org: str, data: dict):
        key = request.args.get("key", "")
        record = engine.ledger.get(org, key) if key and len(key) <= 200 else None
        if record is None:
            raise NotFound("no such write in this organization", field="key")
        payload = None
        if request.args.get("show") == "payload":
            if access.PHI not in data.get("grants", ()):
                audit(org, "ops.payload_refused", data["user"], outcome="failure",
                      session_id=record.session_id, key=key)
                raise Forbidden("showing the payload needs the operator-phi role")
            payload = _payload(org, record)
            audit(org, "ops.payload_viewed", data["user"], session_id=record.session_id,
                  key=key, target=record.target)
        return page(org, "ops/write.html", data, w=_write_row(record), payload=payload,
                    back=url_for(".write", org=org, key=key))

    def _payload(org: str, record) -> dict:
        command = engine.ledger.command_of(org, record.key)
        rendered = None
        try:
            made = engine.adapter(org, record.target).render(command)
            body = getattr(made, "document", None) or getattr(made, "message", None) or made
            rendered = body if isinstance(body, str) else json.dumps(body, indent=2,
                                                                    default=str)
        except Exception as exc:  # noqa: BLE001 - an adapter without render(): the command
            log.info("payload not rendered", extra={"error_class": type(exc).__name__})
        return {"command": json.dumps(command.model_dump(mode="json"), indent=2),
                "rendered": rendered,
                "answer": json.dumps({"external_id": record.external_id,
                                      "external_version": record.external_version,
                                      "outcome": record.outcome}, indent=2, default=str)}

    # -- repairs -----------------------------------------------------------------------------
    @bp.post("/ops/orgs/<org>/repair")
    def do_repair(org: str):
        engine.org(org)
        data = signed_in(org)
        if data is None or not csrf_ok(data):
            log.info("ops repair refused", extra={"error_class": "csrf_or_session"})
            raise Forbidden("sign in to this organization's console (and reload the page) "
                            "to repair anything")
        f = request.form
        action = f.get("action", "")
        if action not in ACTIONS:
            raise InputError(f"action: one of {', '.join(ACTIONS)}", field="action")
        who, why = f"user:{data['user']['id']}", f.get("reason", "")
        if action == "requeue":
            repair.requeue_failed(engine, org, f.get("key", ""), actor=who, reason=why)
            notice = "requeued"
        elif action == "cancel":
            repair.cancel_write(engine, org, f.get("key", ""), actor=who, reason=why)
            notice = "cancelled"
        elif action == "resolve":
            how = f.get("how", "")
            if how not in ("delivered", "resend"):
                raise InputError("how: delivered (with the EHR id) or resend", field="how")
            external_id = f.get("external_id", "").strip() if how == "delivered" else ""
            if how == "delivered" and not external_id:
                raise InputError("external_id: the id the EHR gave the note", field="external_id")
            repair.resolve_reconciliation(engine, org, f.get("key", ""), actor=who, reason=why,
                                          external_id=external_id or None,
                                          resend=how == "resend")
            notice = "resolved"
        else:
            sequence_or_version = f.get("sequence" if action == "redrive_chunk" else "version", "")
            if not sequence_or_version.isdigit():
                name = "sequence" if action == "redrive_chunk" else "version"
                raise InputError(f"{name} must be a whole number", field=name)
            fn = repair.redrive_chunk if action == "redrive_chunk" else repair.redrive_version
            fn(engine, org, f.get("session_id", ""), f.get("recording_id", ""),
               int(sequence_or_version), actor=who, reason=why)
            notice = "redriven"
        back = f.get("next", "")
        if not back.startswith(path(org)) or "//" in back or "\\" in back:
            back = url_for(".writes", org=org)
        sep = "&" if "?" in back else "?"
        return redirect(f"{back}{sep}notice={notice}", code=303)

    # -- health and audit ----------------------------------------------------------------------
    @bp.get("/ops/orgs/<org>/health")
    @operator_page
    def health_page(org: str, data: dict):
        return page(org, "ops/health.html", data, targets=health.target_health(engine, org),
                    check=health.last_check(engine, org))

    def _audit_filters() -> dict:
        f = {k: request.args.get(k, "").strip() or None
             for k in ("action", "actor", "session_id", "correlation_id")}
        for k, v in f.items():
            if v is not None and len(v) > 200:
                raise InputError(f"{k}: at most 200 characters", field=k)
        return f

    @bp.get("/ops/orgs/<org>/audit")
    @operator_page
    def audit_page(org: str, data: dict):
        filters = _audit_filters()
        entries = reads.audit_search(engine.db, org, **filters, limit=500)
        return page(org, "ops/audit.html", data, entries=entries, filters=filters,
                    export=url_for(".audit_export", org=org,
                                   **{k: v for k, v in filters.items() if v}))

    @bp.get("/ops/orgs/<org>/audit/export.json")
    @operator_page
    def audit_export(org: str, data: dict):
        filters = _audit_filters()
        entries = reads.audit_search(engine.db, org, **filters, limit=5000)
        bundle = {"resourceType": "Bundle", "type": "collection", "total": len(entries),
                  "entry": [{"resource": audit_log.as_fhir_audit_event(e)} for e in entries]}
        audit(org, "ops.audit_exported", data["user"], count=len(entries),
              filters={k: v for k, v in filters.items() if v})
        resp = make_response(json.dumps(bundle), 200)
        resp.headers["Content-Type"] = "application/fhir+json"
        resp.headers["Content-Disposition"] = f'attachment; filename="audit-{org}.json"'
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp

    return bp


def _write_row(w) -> dict:
    d = w.as_dict()
    d["key_hash"] = w.key.rsplit(":", 1)[-1][:16]
    d["status"] = w.status.value
    d["repairs"] = [a for a, ok in (
        ("requeue", w.status == WriteStatus.FAILED),
        ("resolve", w.status == WriteStatus.NEEDS_RECONCILIATION),
        ("cancel", w.status in (WriteStatus.PENDING, WriteStatus.FAILED, WriteStatus.STALE,
                                WriteStatus.NEEDS_RECONCILIATION))) if ok]
    return d


__all__ = ["make_blueprint"]
