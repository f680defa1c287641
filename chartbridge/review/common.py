"""What the review pages, sign-in and actions share: the engine, the page session and
the pending-login cookie, rendering with a CSP nonce, the signed-in user and the audit."""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from flask import make_response, render_template

from chartbridge.core.models import WriteStatus

from .websession import PageSessions, SealedCookie, security_headers

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


@dataclass
class Review:
    """One review blueprint's shared state (built once per app by make_blueprint)."""

    engine: object
    jobs: object = None
    pages: PageSessions = field(init=False)
    pending_login: SealedCookie = field(init=False)

    def __post_init__(self) -> None:
        self.pages = PageSessions(self.engine, kind="review", lifetime_s=8 * 3600)
        self.pending_login = SealedCookie("cb_review_login", lifetime_s=600)

    @staticmethod
    def path(org: str) -> str:
        return f"/orgs/{org}/review"

    @staticmethod
    def render(template: str, status: int = 200, **ctx):
        nonce = secrets.token_urlsafe(16)
        resp = make_response(render_template(template, nonce=nonce, **ctx), status)
        return security_headers(resp, nonce)

    def approval_targets(self, org: str) -> list[str]:
        """The org's targets that need an approval (an unknown org is NotFound)."""
        return [name for name, _kind in self.engine.approval_targets(org)]

    def signed_in(self, org: str):
        data = self.pages.load(org)
        return data if data and data.get("phase") == "signed_in" else None

    def need_user(self, org: str):
        self.engine.org(org)
        return self.signed_in(org)

    @staticmethod
    def actor(user: dict) -> str:
        return f"user:{user['id']}"

    def audit(self, org: str, action: str, user: dict | None, *, session=None,
              outcome="success", **detail) -> None:
        self.engine.store.record_audit(org, action, session=session,
                                       actor=self.actor(user) if user else "anonymous",
                                       outcome=outcome, **detail)
