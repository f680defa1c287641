"""Sign-in: the org's OpenID Connect provider (oidc.py), or the development login for
`demo-*` orgs with CHARTBRIDGE_DEV_LOGIN=1; sign-out. Nothing is stored before sign-in: the
OIDC state and the login form's CSRF token live in a sealed cookie."""
from __future__ import annotations

import logging
import secrets

from flask import Blueprint, redirect, request, url_for

from chartbridge.core.errors import InputError, NotFound
from .common import ROLES, USER_ID, Review, dev_login_allowed
from .signin_flow import redirect_to_provider, user_from_provider
from .websession import csrf_ok

log = logging.getLogger("chartbridge.review")


def register(bp: Blueprint, ctx: Review) -> None:
    engine, pages, pending_login = ctx.engine, ctx.pages, ctx.pending_login
    path, render, signed_in, audit = ctx.path, ctx.render, ctx.signed_in, ctx.audit

    def signed_in_answer(org: str, user: dict, *, method: str):
        """The identity checked: a fresh page session (a new id, so a fixated one is never
        promoted), the pending-login cookie gone, the sign-in audited; on to the list."""
        resp = redirect(url_for(".drafts", org=org), code=303)
        pages.save(org, {"phase": "signed_in", "user": user}, resp, path=path(org), new_id=True)
        pending_login.clear(resp, path=path(org))
        audit(org, "review.signed_in", user, method=method)
        return resp

    # -- sign-in ---------------------------------------------------------------------------
    @bp.get("/orgs/<org>/review/login")
    def login(org: str):
        to_provider = redirect_to_provider(engine, org, pending_login, path(org))
        if to_provider is not None:
            return to_provider
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
        return signed_in_answer(org, user, method="dev-login")

    @bp.get("/orgs/<org>/review/oidc/callback")
    def oidc_callback(org: str):
        user = user_from_provider(engine, org, pending_login)
        return signed_in_answer(org, user, method="oidc")

    @bp.post("/orgs/<org>/review/logout")
    def logout(org: str):
        data = signed_in(org)
        if data and csrf_ok(data):
            audit(org, "review.signed_out", data["user"])
        resp = redirect(url_for(".login", org=org), code=303)
        pages.clear(org, resp, path=path(org))
        return resp
