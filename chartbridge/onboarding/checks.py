"""`chartbridge org check`: the read-only steps a go-live needs, per configured target.

Each target's checks are its plugin's (`AdapterSpec.checks`, in adapters/<vendor>/checks.py)
and go through that adapter's own code, so a pass means the engine's own path works. A
configured target whose plugin declares no checks FAILS: a go-live is never waved through
unchecked. This module holds what they share: the Check record, an in-memory TokenCache
(tokens never reach the engine DB), and helpers for a secret, a step, a skipped step and
SMART discovery. Nothing is ever written to an EHR. Messages name the reference or setting,
never a secret's value.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import httpx

from chartbridge.config.schema import OrgConfig
from chartbridge.config.secrets import SecretRef, resolve
from chartbridge.core.clock import SystemClock
from chartbridge.adapters.registry import registry
from chartbridge.core.errors import (AdapterError, ChartbridgeError, ConfigError,
                                     TransientError)


@dataclass(frozen=True)
class Check:
    target: str               # adapter name, or "config" / "mappings" / "drafting"
    name: str                 # what was checked
    ok: bool
    detail: str               # what happened (the reason when it failed)
    fix: str = ""             # what to do about a failure
    skipped: bool = False     # not run because a check it needs failed (counts as failed)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class MemoryTokenCache:
    """The TokenCache port in memory: the check's tokens never reach the engine DB."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._tokens: dict[tuple[str, str], tuple[str, datetime]] = {}
        self._lock = threading.Lock()

    def get(self, org_id: str, key: str) -> str | None:
        with self._lock:
            hit = self._tokens.get((org_id, key))
        return hit[0] if hit and hit[1] > self.clock.now() else None

    def put(self, org_id: str, key: str, token: str, expires_at: datetime) -> None:
        with self._lock:
            self._tokens[(org_id, key)] = (token, expires_at)

    def invalidate(self, org_id: str, key: str) -> None:
        with self._lock:
            self._tokens.pop((org_id, key), None)


# --- helpers ---------------------------------------------------------------------------


def secret_check(target: str, field: str, ref: SecretRef) -> Check:
    try:
        resolve(ref)
    except ConfigError as exc:
        if ref.scheme == "env":
            fix = (f"set the environment variable {ref.target} for the engine (and this check), "
                   f"or point {field} at file:PATH")
        else:
            fix = f"create {ref.path} (readable by the engine, mode 600) or point {field} at env:NAME"
        return Check(target, f"secret {field}", False, exc.message, fix)
    return Check(target, f"secret {field}", True, f"{ref.ref} resolves")


def failed(target: str, name: str, exc: ChartbridgeError, *, where: str, refused_fix: str) -> Check:
    """A failed step, with a fix by kind: unreachable, answering errors, or refusing us."""
    if isinstance(exc, TransientError) and exc.fields.get("status") is None:
        fix = f"check {where} is right and reachable from this host (DNS, firewall, VPN, allow-list)"
    elif isinstance(exc, TransientError):
        fix = f"{where} is up but failing (HTTP {exc.fields.get('status')}); retry, or ask the site"
    else:
        fix = refused_fix
    return Check(target, name, False, exc.message, fix)


def skipped(target: str, name: str, *needs: Check) -> Check:
    """A check that cannot run until the named ones pass: reported, never silently dropped."""
    missing = [c.name for c in needs if not c.ok]
    return Check(target, name, False, f"not checked: needs {' and '.join(missing)} (above)",
                 f"fix {' and '.join(missing)} first, then run org check again", skipped=True)


def step(target: str, name: str, fn: Callable[[], str], *, where: str,
         refused_fix: str) -> Check:
    try:
        detail = fn()
    except (AdapterError, ConfigError) as exc:
        return failed(target, name, exc, where=where, refused_fix=refused_fix)
    return Check(target, name, True, detail)


def smart_discovery(t: str, name: str, base: str, http: httpx.Client, timeout: float,
                    field: str) -> Check:
    url = base.rstrip("/") + "/.well-known/smart-configuration"
    try:
        resp = http.get(url, headers={"Accept": "application/json"}, timeout=timeout)
    except httpx.HTTPError as exc:
        return Check(t, name, False, f"{url} unreachable ({type(exc).__name__})",
                     f"check {field} is right and reachable from this host")
    try:
        body = resp.json() if resp.status_code == 200 else None
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("token_endpoint"), str):
        return Check(t, name, False, f"{url} answered HTTP {resp.status_code} without a SMART configuration",
                     f"check {field}: the site's FHIR base, where /.well-known/smart-configuration lives")
    return Check(t, name, True, f"SMART configuration at {url}")


def _mappings(org: OrgConfig) -> list[Check]:
    from chartbridge.mappings import check_org

    problems = check_org(org)
    if not problems:
        return [Check("mappings", "sections and note types", True,
                      f"{len(org.allowed_sections)} section(s) and {len(org.note_types.codes)} note "
                      f"type(s) mapped for {', '.join(org.targets)}")]
    out = []
    for loc, message in problems:
        key = ".".join(str(p) for p in loc)
        out.append(Check("mappings", key, False, message,
                         "add the mapping under mappings.overrides in the org file, or remove the "
                         "code from the org's allowed list"))
    return out


def run_checks(org: OrgConfig, *, http: httpx.Client | None = None, clock: Any = None) -> list[Check]:
    """Every check for every configured target, then credentials outside targets, then
    mappings. Unexpected failures of one target never hide another target's results."""
    clock = clock or SystemClock()
    own = http is None
    http = http or httpx.Client(follow_redirects=False)
    results: list[Check] = []
    try:
        for name, cfg in org.targets.items():
            try:
                found = registry.get(name).go_live_checks(org, cfg, http, clock)
                if found is None:
                    results.append(Check(name, "checks", False, f"no go-live checks for target {name}",
                                         f"the {name} adapter declares no checks (its plugin's "
                                         "`checks`); a go-live needs them: add them, or remove "
                                         "the target"))
                    continue
                results.extend(found)
            except ChartbridgeError as exc:
                results.append(Check(name, "checks", False, exc.message, "see the message"))
        llm = org.drafting.llm
        if llm is not None and llm.api_key is not None:
            results.append(secret_check("drafting", "llm.api_key", llm.api_key))
        from chartbridge.webhooks.checks import subscriber_checks
        results.extend(subscriber_checks(org))
        results.extend(_mappings(org))
    finally:
        if own:
            http.close()
    return results


def render(results: list[Check]) -> str:
    lines = []
    for c in results:
        mark = "PASS" if c.ok else ("SKIP" if c.skipped else "FAIL")
        lines.append(f"[{mark}] {c.target:<12} {c.name}: {c.detail}")
        if not c.ok and c.fix:
            lines.append(f"       fix: {c.fix}")
    return "\n".join(lines)
