"""Per-target health for the console, from what the engine already records (the ledger and
the audit trail), and the last `org check` result (stored as an `org.checked` audit row
when `chartbridge org check` runs with a reachable database)."""
from __future__ import annotations

import logging
import re
from collections import Counter
from datetime import timedelta
from pathlib import Path

from chartbridge.core.models import WriteStatus
from chartbridge.ledger import repairs

log = logging.getLogger("chartbridge.ops")

TOKEN_ERRORS = re.compile(r"Auth|Token|Unauthori[sz]ed|KeysUnavailable")
WINDOW = timedelta(hours=24)


def target_health(engine, org_id: str) -> list[dict]:
    org = engine.org(org_id)
    now = engine.clock.now()
    rows = engine.ledger.list(org_id, limit=5000)
    target_of = {r.key: r.target for r in rows}
    events = repairs.audit_search(engine.db, org_id, action="write.", since=now - WINDOW,
                                  limit=5000)
    out = []
    for name in (org.targets or {}):
        mine = [r for r in rows if r.target == name]
        done = [r.acknowledged_at for r in mine
                if r.status == WriteStatus.SUCCEEDED and r.acknowledged_at]
        errors: Counter = Counter()
        for e in events:
            cls = e.detail.get("error_class")
            if cls and e.outcome != "success" and target_of.get(e.detail.get("key")) == name:
                errors[cls] += 1
        out.append({
            "target": name,
            "last_success": max(done) if done else None,
            "statuses": Counter(r.status.value for r in mine),
            "errors": sorted(errors.items(), key=lambda kv: (-kv[1], kv[0])),
            "token_failures": sum(n for cls, n in errors.items() if TOKEN_ERRORS.search(cls)),
            "throttle": throttle_state(engine, org_id, name),
        })
    return out


def throttle_state(engine, org_id: str, target: str) -> str:
    """What the adapter instance of this process says about its throttle, if it has one
    (an adapter not built yet in this process has nothing to say)."""
    cached = [a for (o, t, _), a in list(engine._adapters.items()) if (o, t) == (org_id, target)]
    if not cached:
        return "no calls from this process yet"
    adapter = cached[-1]
    for holder in (adapter, getattr(adapter, "client", None)):
        throttle = getattr(holder, "throttle", None) or getattr(holder, "_throttle", None)
        rate = getattr(throttle, "rate", None)
        if isinstance(rate, (int, float)):
            shared = type(throttle).__name__ == "SharedThrottle"
            kind = "shared (Redis)" if shared else "this process"
            return f"at most {rate:g} calls/s, {kind}"
    return "not throttled"


def last_check(engine, org_id: str) -> dict | None:
    found = repairs.audit_search(engine.db, org_id, action="org.checked", limit=1)
    if not found:
        return None
    e = found[0]
    return {"at": e.at, "ok": e.outcome == "success", "actor": e.actor, **e.detail}


def record_org_check(org_id: str, env: str | None, ok: bool, results) -> None:
    """Called by `chartbridge org check`: keep its result (check names and pass/fail only)
    for the console. The check itself never depends on the database: if it cannot be
    reached, the result is simply not kept."""
    try:
        from chartbridge.ledger import audit
        from chartbridge.ledger.db import Database
        from chartbridge.settings import load_settings

        checks = []
        for c in results:
            d = c.as_dict() if hasattr(c, "as_dict") else {}
            checks.append({"target": str(d.get("target") or "")[:64],
                           "name": str(d.get("name") or getattr(c, "name", "?"))[:100],
                           "ok": bool(getattr(c, "ok", False)),
                           "skipped": bool(getattr(c, "skipped", False))})
        url = load_settings().database_url
        if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
            return                       # no engine database here: nothing to keep it in
        db = Database.from_url(url)
        try:
            from chartbridge.core.clock import SystemClock
            with db.transaction() as tx:
                audit.record(tx, at=SystemClock().now(), org_id=org_id, action="org.checked",
                             actor="cli:org-check", outcome="success" if ok else "failure",
                             env=env, passed=sum(c["ok"] for c in checks),
                             failed=sum(not c["ok"] and not c["skipped"] for c in checks),
                             skipped=sum(c["skipped"] for c in checks), checks=checks)
        finally:
            db.dispose()
    except Exception as exc:  # noqa: BLE001 - keeping the result is best effort
        log.warning("org check result not stored", extra={"error_class": type(exc).__name__})
