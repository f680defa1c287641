"""The OIDC leg of a per-org sign-in, shared by the clinicians' review pages and the
operators' console: send the browser to the org's provider with the state kept in the
pending-login cookie, and read the provider's answer back against that state. Each surface
keeps its own pages, roles and landing page."""
from __future__ import annotations

from flask import redirect, request

from chartbridge.core.errors import InputError
from chartbridge.httperrors import external_url_for

from . import oidc
from .websession import SealedCookie


def redirect_to_provider(engine, org: str, pending_login: SealedCookie, cookie_path: str):
    """The redirect to the org's OIDC provider, or None when the org has none configured."""
    provider = oidc.provider_for(org, engine.org(org))
    if provider is None:
        return None
    url, pending = oidc.start(engine, provider, external_url_for(".oidc_callback", org=org))
    resp = redirect(url, code=302)
    pending_login.save({"org": org, "phase": "oidc", **pending}, resp, path=cookie_path)
    return resp


def user_from_provider(engine, org: str, pending_login: SealedCookie) -> dict:
    """The signed-in user the provider's answer names, checked against the state this
    browser's sign-in started with (InputError when it is not that sign-in's answer)."""
    provider = oidc.provider_for(org, engine.org(org))
    pending = pending_login.load()
    if (provider is None or not pending or pending.get("org") != org
            or pending.get("phase") != "oidc"):
        raise InputError("this sign-in answer is not from a sign-in in this browser",
                         field="state")
    return oidc.finish(engine, provider, pending, request.args,
                       external_url_for(".oidc_callback", org=org))
