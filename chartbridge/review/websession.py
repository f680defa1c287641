"""Server-side page sessions and CSRF tokens for the clinician pages.

The browser holds only a random id in an httpOnly, SameSite=Lax cookie scoped to one org's
path; what the session knows (who signed in, the SMART launch's token) stays on the server,
in the engine's database (the org-scoped token table), under an HMAC of that id with the
app's secret key — a row read from the database cannot be replayed as a cookie. Any engine
process that shares the database and the secret key can serve the page.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from datetime import timedelta
from typing import Any

from flask import Response, current_app, request

KEY_PREFIX = "web-session:"


class PageSessions:
    """One kind of page session (`kind` names the cookie: one for the Epic page, one for the
    review pages), stored through the engine's DbTokenCache."""

    def __init__(self, engine, *, kind: str, lifetime_s: int = 8 * 3600) -> None:
        self.engine, self.kind, self.lifetime = engine, kind, timedelta(seconds=lifetime_s)

    @property
    def cookie_name(self) -> str:
        return f"cb_{self.kind}"

    def _key(self, raw: str) -> str:
        secret = current_app.secret_key
        secret = secret.encode() if isinstance(secret, str) else secret
        mac = hmac.new(secret, raw.encode(), hashlib.sha256).hexdigest()
        return f"{KEY_PREFIX}{self.kind}:{mac}"

    def load(self, org: str) -> dict[str, Any] | None:
        raw = request.cookies.get(self.cookie_name)
        if not raw or len(raw) > 200:
            return None
        stored = self.engine.services.token_cache.get(org, self._key(raw))
        if stored is None:
            return None
        try:
            data = json.loads(stored)
        except ValueError:
            return None
        return data if isinstance(data, dict) and data.get("org") == org else None

    def save(self, org: str, data: dict[str, Any], response: Response, *,
             path: str, new_id: bool = False) -> None:
        """Store `data` under the request's session id (a fresh id when `new_id`, e.g. at
        sign-in, so an id planted before it cannot be ridden) and set the cookie."""
        raw = None if new_id else request.cookies.get(self.cookie_name)
        if not raw or len(raw) > 200:
            raw = secrets.token_urlsafe(32)
        data = dict(data, org=org)
        data.setdefault("csrf", secrets.token_urlsafe(32))
        expires = self.engine.clock.now() + self.lifetime
        self.engine.services.token_cache.put(org, self._key(raw), json.dumps(data), expires)
        response.set_cookie(self.cookie_name, raw, max_age=int(self.lifetime.total_seconds()),
                            path=path, httponly=True, samesite="Lax",
                            secure=request.scheme == "https")

    def clear(self, org: str, response: Response, *, path: str) -> None:
        raw = request.cookies.get(self.cookie_name)
        if raw and len(raw) <= 200:
            self.engine.services.token_cache.invalidate(org, self._key(raw))
        response.delete_cookie(self.cookie_name, path=path)


def csrf_ok(data: dict[str, Any] | None) -> bool:
    """The form's token equals the session's (constant-time), and the request did not come
    from another origin (when the browser says where it came from)."""
    if not data or not data.get("csrf"):
        return False
    sent = request.form.get("csrf_token", "")
    if not secrets.compare_digest(sent.encode(), str(data["csrf"]).encode()):
        return False
    origin = request.headers.get("Origin")
    if origin and origin != "null" and origin.rstrip("/") != request.host_url.rstrip("/"):
        return False
    return True


def security_headers(response: Response, nonce: str) -> Response:
    """No framing by others, no inline code but ours, no referrer leaking ids."""
    response.headers["Content-Security-Policy"] = (
        f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response
