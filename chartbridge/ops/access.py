"""Who may use the operator console, for which org, and whether they may see PHI.

Sign-in is per org: /ops/orgs/{org}/ signs in through that org's own OIDC provider (the
org file's `sign_in.oidc`, the same client the review pages use), and the page session is
stored under that org and its cookie path, so a session is bound to one org. Within it the
ID token's role claim (`sign_in.oidc.role_claim`) must name the org:

    operator:<org>        the console for <org>: sessions, writes, health, audit, repairs
    operator-phi:<org>    the same, plus the exact payload sent and the EHR's answer

The claim may hold several (a JSON list, or a space- or comma-separated string), so one
person can operate several orgs that share a provider; a role naming another org, or a
plain `operator`, grants nothing here. The development sign-in (demo-* orgs with
CHARTBRIDGE_DEV_LOGIN=1, the review pages' rule) picks one of the two roles for the org.
"""
from __future__ import annotations

import re

VIEW, PHI = "view", "phi"
ROLES = {"operator": (VIEW,), "operator-phi": (VIEW, PHI)}
_GRANT = re.compile(r"(?<![A-Za-z0-9_-])(operator-phi|operator):([a-z0-9][a-z0-9-]{0,62})"
                    r"(?![A-Za-z0-9_-])")
# oidc.finish keeps at most this many characters of the role claim: a match touching the
# end of a string that long may be a longer org name cut short, so it grants nothing
ROLE_KEPT = 64


def grants_for(role: str | None, org: str) -> tuple[str, ...]:
    """The permissions the role claim gives in `org`: (), ("view",) or ("view", "phi")."""
    if not role:
        return ()
    got: set[str] = set()
    for m in _GRANT.finditer(role):
        if len(role) >= ROLE_KEPT and m.end() >= len(role):
            continue
        if m.group(2) == org:
            got.update(ROLES[m.group(1)])
    return tuple(p for p in (VIEW, PHI) if p in got)


def dev_role(choice: str, org: str) -> str:
    if choice not in ROLES:
        from chartbridge.core.errors import InputError
        raise InputError("choose an operator role from the list", field="role")
    return f"{choice}:{org}"
