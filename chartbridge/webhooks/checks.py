"""`org check` for the org's webhook subscribers: each secret resolves and is a Standard
Webhooks secret (whsec_<base64>, a key of 24 bytes or more). Nothing is sent."""
from __future__ import annotations

from chartbridge.core.errors import ConfigError

from . import signing


def subscriber_checks(org) -> list:
    from chartbridge.config.secrets import resolve
    from chartbridge.onboarding.checks import Check, secret_check

    results = []
    for i, sub in enumerate(getattr(org, "webhooks", None) or []):
        field = f"webhooks[{i}].secret"
        found = secret_check("webhooks", field, sub.secret)
        results.append(found)
        if not found.ok:
            continue
        try:
            signing.secret_key(resolve(sub.secret))
        except ConfigError as exc:
            results.append(Check("webhooks", f"{sub.id} signing key", False, exc.message,
                                 "make one: python -c \"import base64,os; print('whsec_'+"
                                 "base64.b64encode(os.urandom(32)).decode())\"; give the "
                                 "subscriber the same value"))
            continue
        results.append(Check("webhooks", f"{sub.id} signing key", True,
                             f"{sub.secret} is a whsec_ key; events go to {sub.url}"))
    return results
