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

from flask import Blueprint, jsonify, request

from chartbridge.httperrors import ORG_ID, register_error_shape

from . import actions, pages, signin
from .common import MAX_TEXT, ROLES, STATUS_WORDS, USER_ID, Review, dev_login_allowed


def make_blueprint(engine, jobs) -> Blueprint:
    """The review blueprint: sign-in (signin.py), the pages (pages.py) and the actions
    (actions.py) over one shared Review state."""
    bp = Blueprint("review", __name__, template_folder="templates")
    ctx = Review(engine, jobs)

    def _error(answer):
        if request.path.endswith(".json"):
            resp = jsonify({"error": answer.code, "detail": answer.detail, **answer.fields})
        else:
            org = (request.view_args or {}).get("org")
            resp = ctx.render("review/error.html", answer.status, message=answer.detail,
                              field=answer.field,
                              org=org if org and ORG_ID.fullmatch(org) else None)
        resp.status_code = answer.status
        resp.headers.update(answer.headers)
        return resp

    register_error_shape(bp, _error, paths=r"/orgs/[^/]*/review/")
    signin.register(bp, ctx)
    pages.register(bp, ctx)
    actions.register(bp, ctx)
    return bp


__all__ = ["MAX_TEXT", "ROLES", "STATUS_WORDS", "USER_ID", "Review", "dev_login_allowed",
           "make_blueprint"]
