"""Review and approve: for org targets that need a clinician's approval (FHIR, athenaOne,
HL7 MDM). A list of the org's drafts awaiting review; a draft with each section, its
supporting transcript excerpts and their audio times; edit a section (a new draft version,
core.usecases.edit_draft); approve or reject with a reason (core.usecases.decide, bound to
the exact content hash the clinician saw); after approval, one write per target through the
ledger and the jobs, and the write status per target, updating live.

Who the clinician is comes from the org's identity provider (the org file's sign_in.oidc,
OpenID Connect, see oidc.py);
a local development login exists only for `demo-*` orgs with CHARTBRIDGE_DEV_LOGIN=1.
Every view and action is scoped to the URL's org (the session is stored under that org and
its cookie path) and audited; every form carries a per-session CSRF token.

Before sign-in nothing is stored: the OIDC state and the login form's CSRF token live in a
sealed cookie (websession.SealedCookie); the page session row is written only once the
identity provider's code exchange (or the dev login's form) passed its checks.
"""
from __future__ import annotations

import logging
import re
import secrets
import threading

from flask import (Blueprint, jsonify, make_response, redirect, render_template, request,
                   url_for)

from chartbridge.adapters.registry import registry
from chartbridge.core import usecases as uc
from chartbridge.core.errors import ChartbridgeError, InputError, NotFound
from chartbridge.core.models import SECTION_CODES, Decision, Identifier, WriteStatus

from . import oidc
from chartbridge.httperrors import ORG_ID, external_url_for, register_error_shape
from .websession import PageSessions, SealedCookie, csrf_ok, security_headers

log = logging.getLogger("chartbridge.review")

USER_ID = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
ROLES = ("physician", "nurse practitioner", "physician assistant", "resident")
MAX_TEXT = 20_000
STATUS_WORDS = {WriteStatus.PENDING: "pending", WriteStatus.IN_FLIGHT: "pending",
                WriteStatus.SUCCEEDED: "written", WriteStatus.FAILED: "failed",
                WriteStatus.NEEDS_RECONCILIATION: "needs reconciliation",
                WriteStatus.STALE: "not written: changed in the EHR since (nothing overwritten)"}


def dev_login_allowed(org: str) -> bool:
    from chartbridge.settings import load_settings
    return org.startswith("demo-") and load_settings().dev_login


def make_blueprint(engine, jobs) -> Blueprint:
    bp = Blueprint("review", __name__, template_folder="templates")
    pages = PageSessions(engine, kind="review", lifetime_s=8 * 3600)
    pending_login = SealedCookie("cb_review_login", lifetime_s=600)

    def path(org: str) -> str:
        return f"/orgs/{org}/review"

    def render(template: str, status: int = 200, **ctx):
        nonce = secrets.token_urlsafe(16)
        resp = make_response(render_template(template, nonce=nonce, **ctx), status)
        return security_headers(resp, nonce)

    def approval_targets(org: str) -> list[str]:
        conf = engine.org(org)                       # unknown org -> NotFound
        return [name for name in conf.targets if registry.get(name).needs_approval]

    def signed_in(org: str):
        data = pages.load(org)
        return data if data and data.get("phase") == "signed_in" else None

    def actor(user: dict) -> str:
        return f"user:{user['id']}"

    def audit(org: str, action: str, user: dict | None, *, session=None, outcome="success",
              **detail) -> None:
        engine.store.record_audit(org, action, session=session,
                                  actor=actor(user) if user else "anonymous",
                                  outcome=outcome, **detail)

    def _error(answer):
        if request.path.endswith(".json"):
            resp = jsonify({"error": answer.code, "detail": answer.detail, **answer.fields})
        else:
            org = (request.view_args or {}).get("org")
            resp = render("review/error.html", answer.status, message=answer.detail,
                          field=answer.field,
                          org=org if org and ORG_ID.fullmatch(org) else None)
        resp.status_code = answer.status
        resp.headers.update(answer.headers)
        return resp

    register_error_shape(bp, _error, paths=r"/orgs/[^/]*/review/")

    # -- sign-in ---------------------------------------------------------------------------
    @bp.get("/orgs/<org>/review/login")
    def login(org: str):
        engine.org(org)
        provider = oidc.provider_for(org, engine.org(org))
        if provider is not None:
            url, pending = oidc.start(engine, provider,
                                      external_url_for(".oidc_callback", org=org))
            resp = redirect(url, code=302)
            pending_login.save({"org": org, "phase": "oidc", **pending}, resp, path=path(org))
            return resp
        if not dev_login_allowed(org):
            raise NotFound("no sign-in is configured for this organization")
        if signed_in(org):
            return redirect(url_for(".drafts", org=org), code=303)
        csrf = secrets.token_urlsafe(32)
        resp = render("review/login.html", org=org, csrf=csrf, roles=ROLES,
                      name=engine.org(org).name)
        pending_login.save({"org": org, "phase": "dev", "csrf": csrf}, resp, path=path(org))
        return resp

    @bp.post("/orgs/<org>/review/login")
    def dev_login(org: str):
        engine.org(org)
        if not dev_login_allowed(org):
            raise NotFound("no sign-in is configured for this organization")
        pending = pending_login.load()
        if not pending or pending.get("org") != org or not csrf_ok(pending):
            log.info("review login refused", extra={"error_class": "csrf"})
            raise InputError("the form expired; reload the page and try again",
                             field="csrf_token")
        user_id = request.form.get("user_id", "").strip()
        name = request.form.get("name", "").strip()[:100]
        role = request.form.get("role", "")
        if not USER_ID.match(user_id):
            raise InputError("a user id of letters, digits, '.', '_', '@' or '-' is required",
                             field="user_id")
        if role not in ROLES:
            raise InputError("choose a role from the list", field="role")
        user = {"id": user_id, "name": name or user_id, "role": role, "issuer": "dev-login"}
        resp = redirect(url_for(".drafts", org=org), code=303)
        pages.save(org, {"phase": "signed_in", "user": user}, resp, path=path(org), new_id=True)
        pending_login.clear(resp, path=path(org))
        audit(org, "review.signed_in", user, method="dev-login")
        return resp

    @bp.get("/orgs/<org>/review/oidc/callback")
    def oidc_callback(org: str):
        provider = oidc.provider_for(org, engine.org(org))
        pending = pending_login.load()
        if (provider is None or not pending or pending.get("org") != org
                or pending.get("phase") != "oidc"):
            raise InputError("this sign-in answer is not from a sign-in in this browser",
                             field="state")
        user = oidc.finish(engine, provider, pending, request.args,
                           external_url_for(".oidc_callback", org=org))
        resp = redirect(url_for(".drafts", org=org), code=303)
        pages.save(org, {"phase": "signed_in", "user": user}, resp, path=path(org), new_id=True)
        pending_login.clear(resp, path=path(org))
        audit(org, "review.signed_in", user, method="oidc")
        return resp

    @bp.post("/orgs/<org>/review/logout")
    def logout(org: str):
        data = signed_in(org)
        if data and csrf_ok(data):
            audit(org, "review.signed_out", data["user"])
        resp = redirect(url_for(".login", org=org), code=303)
        pages.clear(org, resp, path=path(org))
        return resp

    def need_user(org: str):
        engine.org(org)
        data = signed_in(org)
        return data

    # -- the list ----------------------------------------------------------------------------
    @bp.get("/orgs/<org>/review/")
    def drafts(org: str):
        data = need_user(org)
        if data is None:
            return redirect(url_for(".login", org=org), code=303)
        targets = approval_targets(org)
        items = []
        if targets:
            for draft, _state in engine.store.drafts(org, state="draft"):
                session = engine.store.get_session(org, draft.session_id)
                items.append({"draft": draft, "session": session,
                              "patient": session.patient_ids[0],
                              "sections": [SECTION_CODES.get(s.code, s.code) for s in draft.sections]})
        audit(org, "review.list_viewed", data["user"], count=len(items))
        return render("review/list.html", org=org, user=data["user"], csrf=data["csrf"],
                      items=items, targets=targets)

    # -- one draft ---------------------------------------------------------------------------
    @bp.get("/orgs/<org>/review/drafts/<draft_id>")
    def draft(org: str, draft_id: str):
        data = need_user(org)
        if data is None:
            return redirect(url_for(".login", org=org), code=303)
        draft, state = engine.store.get_draft(org, draft_id)
        session = engine.store.get_session(org, draft.session_id)
        segments = {s.id: s for s in engine.store.segments(org, session.id)}
        sections = [{"code": s.code, "name": SECTION_CODES.get(s.code, s.title or s.code),
                     "text": s.text, "untraced": [t.replace("_", " ") for t in s.untraced],
                     "excerpts": [{"text": segments[i].text, "at": _clock(segments[i].start_ms),
                                   "end": _clock(segments[i].end_ms),
                                   "recording": segments[i].recording_id}
                                  for i in s.segment_ids if i in segments]}
                    for s in draft.sections]
        newest = None
        if state == "superseded":
            newest = next((d for d, st in engine.store.drafts(org, session_id=session.id)
                           if st != "superseded"), None)
        approval = engine.store.approval(org, draft.id)
        audit(org, "review.draft_viewed", data["user"], session=session, draft_id=draft.id,
              version=draft.version)
        return render("review/draft.html", org=org, user=data["user"], csrf=data["csrf"],
                      draft=draft, state=state, session=session, sections=sections,
                      content_hash=draft.content_hash(), approval=approval, newest=newest,
                      writes=write_rows(org, draft), notice=request.args.get("notice"),
                      writes_url=url_for(".writes", org=org, draft_id=draft.id))

    def write_rows(org: str, draft) -> list[dict]:
        targets = set(approval_targets(org))
        rows = []
        for w in engine.ledger.list(org, session_id=draft.session_id):
            if w.target not in targets:
                continue
            try:
                command = engine.ledger.command_of(org, w.key)
            except ChartbridgeError:
                continue
            if command.draft is None or command.draft.id != draft.id:
                continue
            rows.append({"target": w.target, "status": w.status.value,
                         "words": STATUS_WORDS.get(w.status, w.status.value),
                         "external_id": w.external_id if w.status == WriteStatus.SUCCEEDED else None,
                         "reason": _reason(w), "attempts": w.attempts})
        return rows

    @bp.get("/orgs/<org>/review/drafts/<draft_id>/writes.json")
    def writes(org: str, draft_id: str):
        data = need_user(org)
        if data is None:
            return jsonify(error="unauthorized", detail="sign in again"), 401
        draft, _state = engine.store.get_draft(org, draft_id)
        rows = write_rows(org, draft)
        resp = jsonify(writes=rows, html=render_template("review/_writes.html", writes=rows),
                       settled=bool(rows) and all(r["status"] in ("succeeded", "failed",
                                                                   "needs_reconciliation")
                                                  for r in rows))
        resp.headers["Cache-Control"] = "no-store"
        return resp

    # -- actions -----------------------------------------------------------------------------
    def checked(org: str, form: str) -> dict:
        data = need_user(org)
        if data is None:
            raise InputError("sign in again to continue", field="session")
        if not csrf_ok(data):
            audit(org, "review.csrf_refused", data["user"], outcome="failure", form=form)
            raise InputError("the form expired; reload the page and try again",
                             field="csrf_token")
        return data

    @bp.post("/orgs/<org>/review/drafts/<draft_id>/sections/<code>")
    def edit(org: str, draft_id: str, code: str):
        data = checked(org, "edit")
        text = request.form.get("text", "")
        if not text.strip():
            raise InputError("the section text cannot be empty", field="text")
        if len(text) > MAX_TEXT:
            raise InputError(f"the section text is longer than {MAX_TEXT} characters",
                             field="text")
        text = text.replace("\r\n", "\n")
        new = uc.edit_draft(engine.store, engine.clock, org_id=org, draft_id=draft_id,
                            section_code=code, text=text, editor=data["user"]["id"])
        audit(org, "review.section_edited", data["user"],
              session=engine.store.get_session(org, new.session_id), draft_id=new.id,
              previous=draft_id, section=code, version=new.version)
        return redirect(url_for(".draft", org=org, draft_id=new.id, notice="edited")
                        + f"#section-{code}", code=303)

    @bp.post("/orgs/<org>/review/drafts/<draft_id>/decision")
    def decision(org: str, draft_id: str):
        data = checked(org, "decision")
        user = data["user"]
        choice = request.form.get("decision", "")
        if choice not in (Decision.APPROVED.value, Decision.REJECTED.value):
            raise InputError("choose approve or reject", field="decision")
        content_hash = request.form.get("content_hash", "")
        if not re.fullmatch(r"[0-9a-f]{64}", content_hash):
            raise InputError("the form lost the draft's content hash; reload the page",
                             field="content_hash")
        reason = request.form.get("reason", "").strip()[:2000] or None
        if choice == Decision.REJECTED.value and not reason:
            raise InputError("give a reason for the rejection", field="reason")
        if not approval_targets(org):
            raise InputError("no target of this organization needs an approval", field="decision")
        uc.decide(engine.store, engine.clock, org_id=org, draft_id=draft_id,
                  content_hash=content_hash,
                  approver=Identifier(value=user["id"], type="USER", system=user.get("issuer")),
                  approver_name=user.get("name"), role=user["role"], decision=Decision(choice),
                  reason=reason)
        notice = choice
        if choice == Decision.APPROVED.value:
            try:
                trigger_writes(org, draft_id)
            except ChartbridgeError as exc:
                log.warning("approved but not written", extra={"error_class": type(exc).__name__})
                audit(org, "review.writes_refused", user, outcome="failure",
                      draft_id=draft_id, error=exc.code)
                notice = "approved_not_written:" + exc.message
        return redirect(url_for(".draft", org=org, draft_id=draft_id, notice=notice), code=303)

    def trigger_writes(org: str, draft_id: str) -> list[str]:
        keys = engine.submit_approved(org, draft_id)        # prepared (pending) first
        if engine.queue is not None:
            return keys                                     # enqueued on the engine's queue
        if jobs is not None:
            for key in keys:
                jobs.enqueue("execute_write", org, key)
            return keys
        for key in keys:                                    # no queue at all: run it here
            command = engine.ledger.command_of(org, key)
            threading.Thread(target=_execute, args=(engine, command), daemon=True,
                             name="review-write").start()
        return keys

    return bp


def _execute(engine, command) -> None:
    try:
        engine.ledger.execute(command, engine.adapter(command.org_id, command.target))
    except ChartbridgeError as exc:     # recorded in the ledger; the sweeper drives it on
        log.info("write deferred", extra={"error_class": type(exc).__name__})


def _clock(ms: int) -> str:
    seconds = max(0, ms) // 1000
    return f"{seconds // 60}:{seconds % 60:02d}"


def _reason(w) -> str | None:
    if w.status == WriteStatus.FAILED:
        return w.last_error or "the EHR refused the write"
    if w.status == WriteStatus.STALE:
        return ("the note was changed in the EHR after Chartbridge wrote it; nothing was "
                "overwritten — review it in the EHR")
    if w.status == WriteStatus.PENDING and w.last_error_class == "WaitingForParent":
        return "waiting for the earlier version of this note to be written first"
    if w.status == WriteStatus.NEEDS_RECONCILIATION:
        return "the EHR may or may not hold this note; a person must check before it is sent again"
    if w.status == WriteStatus.PENDING and w.last_error_class:
        return "retrying after a temporary failure"
    return None
