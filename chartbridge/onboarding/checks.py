"""`chartbridge org check`: the read-only steps a go-live needs, per configured target.

Each target's checks go through that adapter's own code (Epic `BackendTokenSource` and
`InboundVerifier`, FHIR `SmartBackendTokens`/`discover_token_url`, athena `TokenSource` and
`AthenaClient.ping`, HL7 `client_ssl_context`), so a pass means the engine's own path works.
Tokens land in an in-memory TokenCache (never the engine DB). Nothing is ever written to an
EHR: token requests, discovery, JWKS and ping reads, an MLLP connect (+ TLS handshake) that
sends no byte. Messages name the reference or setting, never a secret's value.
"""
from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import httpx

from chartbridge.config.schema import OrgConfig
from chartbridge.config.secrets import SecretRef, resolve
from chartbridge.core.clock import SystemClock
from chartbridge.core.errors import (AdapterError, ChartbridgeError, ConfigError, PermanentError,
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


def _secret(target: str, field: str, ref: SecretRef) -> Check:
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


def _failed(target: str, name: str, exc: ChartbridgeError, *, where: str, refused_fix: str) -> Check:
    """A failed step, with a fix by kind: unreachable, answering errors, or refusing us."""
    if isinstance(exc, TransientError) and exc.fields.get("status") is None:
        fix = f"check {where} is right and reachable from this host (DNS, firewall, VPN, allow-list)"
    elif isinstance(exc, TransientError):
        fix = f"{where} is up but failing (HTTP {exc.fields.get('status')}); retry, or ask the site"
    else:
        fix = refused_fix
    return Check(target, name, False, exc.message, fix)


def _skipped(target: str, name: str, *needs: Check) -> Check:
    """A check that cannot run until the named ones pass: reported, never silently dropped."""
    failed = [c.name for c in needs if not c.ok]
    return Check(target, name, False, f"not checked: needs {' and '.join(failed)} (above)",
                 f"fix {' and '.join(failed)} first, then run org check again", skipped=True)


def _step(target: str, name: str, fn: Callable[[], str], *, where: str,
          refused_fix: str) -> Check:
    try:
        detail = fn()
    except (AdapterError, ConfigError) as exc:
        return _failed(target, name, exc, where=where, refused_fix=refused_fix)
    return Check(target, name, True, detail)


# --- per target ------------------------------------------------------------------------


def _epic(org: OrgConfig, cfg: Any, http: httpx.Client, clock: Any) -> Iterator[Check]:
    from chartbridge.adapters.epic_haiku.auth import InboundVerifier
    from chartbridge.adapters.epic_haiku.client import BackendTokenSource

    t = "epic_haiku"
    secret = _secret(t, "private_key", cfg.private_key)
    yield secret
    if secret.ok:
        src = BackendTokenSource(org_id=org.org, client_id=cfg.client_id, token_url=cfg.token_url,
                                 key_id=cfg.key_id, algorithm=cfg.algorithm,
                                 private_key=cfg.private_key.resolve, cache=MemoryTokenCache(clock),
                                 clock=clock, http=http, timeout_s=cfg.timeout_s, scope=cfg.scope)
        key = _step(t, "signing key", lambda: (src.assertion(), f"{cfg.algorithm} key signs an assertion")[1],
                    where="targets.epic_haiku.private_key",
                    refused_fix=f"put an {cfg.algorithm} PEM private key at {cfg.private_key.ref} "
                                f"(or set algorithm to match the key)")
        yield key
        if key.ok:
            yield _step(t, "backend token", lambda: (src.token(), f"access token from {cfg.token_url}")[1],
                        where=f"targets.epic_haiku.token_url ({cfg.token_url})",
                        refused_fix=f"ask the site to confirm client_id {cfg.client_id!r} is active and "
                                    f"that the public key with kid {cfg.key_id!r} is registered for it")
        else:
            yield _skipped(t, "backend token", key)
    else:
        yield _skipped(t, "signing key", secret)
        yield _skipped(t, "backend token", secret)
    inbound = cfg.inbound
    where = (f"targets.epic_haiku.inbound.jwks_url ({inbound.jwks_url})" if inbound.jwks_url
             else f"targets.epic_haiku.inbound.jwks_file ({inbound.jwks_file})")
    verifier = InboundVerifier(org_id=org.org, issuer=inbound.issuer, replay_guard=None,  # type: ignore[arg-type]
                               clock=clock, jwks_url=inbound.jwks_url, jwks_file=inbound.jwks_file,
                               http=http, timeout_s=cfg.timeout_s)

    def jwks() -> str:
        keys = verifier._keyset()          # the verifier's own fetch + parse
        n = len(getattr(keys, "keys", []) or [])
        if n == 0:
            raise PermanentError("inbound JWKS holds no key")
        return f"inbound JWKS parsed ({n} key(s))"

    yield _step(t, "inbound JWKS", jwks, where=where,
                refused_fix="ask the site for Epic's JWKS URL (or save it as a file and set jwks_file)")
    if cfg.fhir_base:
        yield _smart_discovery(t, "launch SMART discovery", cfg.fhir_base, http, cfg.timeout_s,
                               "targets.epic_haiku.fhir_base")


def _smart_discovery(t: str, name: str, base: str, http: httpx.Client, timeout: float,
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


def _fhir(org: OrgConfig, cfg: Any, http: httpx.Client, clock: Any) -> Iterator[Check]:
    from chartbridge.adapters.fhir_docref.auth import SmartBackendTokens, discover_token_url

    t = "fhir_docref"
    where = f"targets.fhir_docref.base_url ({cfg.base_url})"
    token_url = cfg.token_url
    if token_url is None:
        found: dict[str, str] = {}

        def discover() -> str:
            found["url"] = discover_token_url(http, cfg.base_url, cfg.timeout_s)
            return f"token endpoint {found['url']} from the SMART configuration"

        disc = _step(t, "SMART discovery", discover, where=where,
                     refused_fix="set targets.fhir_docref.token_url, or ask the site to publish "
                                 "/.well-known/smart-configuration")
        token_url = found.get("url")
    else:
        disc = Check(t, "SMART discovery", True, f"token_url set in config ({token_url})")
    yield disc
    # the key is ours: checked whether or not the site answers
    secret = _secret(t, "private_key", cfg.private_key)
    yield secret
    if not secret.ok:
        yield _skipped(t, "signing key", secret)
        yield _skipped(t, "backend token", secret, disc)
        yield _skipped(t, "granted scope", secret, disc)
        return
    tokens = SmartBackendTokens(org_id=org.org, client_id=cfg.client_id, key_id=cfg.key_id,
                                algorithm=cfg.algorithm, private_key=cfg.private_key.resolve,
                                cache=MemoryTokenCache(clock), clock=clock, http=http,
                                base_url=cfg.base_url,
                                # only the assertion's audience until discovery works; never sent
                                token_url=token_url or f"{cfg.base_url.rstrip('/')}/token",
                                scopes=list(cfg.scopes),
                                send_scope=cfg.profile != "epic", timeout_s=cfg.timeout_s)
    key = _step(t, "signing key", lambda: (tokens.assertion(), f"{cfg.algorithm} key signs an assertion")[1],
                where="targets.fhir_docref.private_key",
                refused_fix=f"put an {cfg.algorithm} PEM private key at {cfg.private_key.ref} "
                            "(or set algorithm to match the key)")
    yield key
    if not (key.ok and disc.ok):
        yield _skipped(t, "backend token", key, disc)
        yield _skipped(t, "granted scope", key, disc)
        return
    tok = _step(t, "backend token", lambda: (tokens.token(), f"access token from {token_url}")[1],
                where=f"the token endpoint ({token_url})",
                refused_fix=f"ask the site to confirm client_id {cfg.client_id!r}, the public key with kid "
                            f"{cfg.key_id!r} and the scopes {' '.join(cfg.scopes)} are registered")
    yield tok
    if not tok.ok:
        yield _skipped(t, "granted scope", tok)
        return
    can_create = tokens.grants("DocumentReference", "c")
    if can_create is False:
        yield Check(t, "granted scope", False, "the token does not grant DocumentReference create",
                    "ask the site to grant system/DocumentReference.write (or .c) to the client")
    else:
        yield Check(t, "granted scope", True, "DocumentReference create granted"
                    if can_create else "server did not list the granted scope")


def _athena(org: OrgConfig, cfg: Any, http: httpx.Client, clock: Any) -> Iterator[Check]:
    from chartbridge.adapters.athenaone.client import AthenaClient, Throttle, TokenSource

    t = "athenaone"
    secret = _secret(t, "client_secret", cfg.client_secret)
    yield secret
    if not secret.ok:
        yield _skipped(t, "token", secret)
        yield _skipped(t, "practice read", secret)
        return
    tokens = TokenSource(org_id=org.org, practice_id=cfg.practice_id, client_id=cfg.client_id,
                         token_url=cfg.token_url, scopes=list(cfg.scopes),
                         secret=cfg.client_secret.resolve, cache=MemoryTokenCache(clock),
                         clock=clock, http=http, timeout_s=cfg.timeout_s)
    tok = _step(t, "token", lambda: (tokens.token(), f"access token from {cfg.token_url}")[1],
                where=f"targets.athenaone.token_url ({cfg.token_url})",
                refused_fix=f"check client_id {cfg.client_id!r} and the secret at {cfg.client_secret.ref}, "
                            f"and that the app holds the scopes {' '.join(cfg.scopes)}")
    yield tok
    if not tok.ok:
        yield _skipped(t, "practice read", tok)
        return
    client = AthenaClient(base_url=cfg.base_url, practice_id=cfg.practice_id, tokens=tokens,
                          http=http, throttle=Throttle(cfg.requests_per_second),
                          timeout_s=cfg.timeout_s)

    def ping() -> str:
        if not client.ping():
            raise PermanentError("athena ping did not answer pong")
        return f"practice {cfg.practice_id} answers GET /v1/{cfg.practice_id}/ping"

    yield _step(t, "practice read", ping, where=f"targets.athenaone.base_url ({cfg.base_url})",
                refused_fix=f"check practice_id {cfg.practice_id!r} and that the app is enabled for "
                            "that practice")


def _mllp(org: OrgConfig, cfg: Any, http: httpx.Client, clock: Any) -> Iterator[Check]:
    from chartbridge.adapters.hl7_mdm.adapter import client_ssl_context

    t = "hl7_mdm"
    ctx: ssl.SSLContext | None = None
    files: Check | None = None
    if cfg.tls.enabled:
        try:
            ctx = client_ssl_context(cfg.tls)
            files = Check(t, "TLS files", True, "CA bundle and client certificate load")
        except ConfigError as exc:
            files = Check(t, "TLS files", False, exc.message,
                          "check targets.hl7_mdm.tls ca_file / cert_file / key_file exist and are PEM")
        yield files
    addr = f"{cfg.host}:{cfg.port}"
    try:
        sock = socket.create_connection((cfg.host, cfg.port), timeout=cfg.connect_timeout_s)
    except OSError as exc:
        connect = Check(t, "MLLP connect", False, f"cannot connect to {addr} ({type(exc).__name__})",
                        "check targets.hl7_mdm.host/port and that the interface engine's listener "
                        "is up and allows this host")
        yield connect
        if files is not None:
            yield _skipped(t, "TLS handshake", *(c for c in (files, connect) if not c.ok))
        return
    try:
        if files is not None and not files.ok:
            yield Check(t, "MLLP connect", True, f"TCP connection to {addr}")
            yield _skipped(t, "TLS handshake", files)
            return
        if ctx is None:
            yield Check(t, "MLLP connect", True, f"TCP connection to {addr} (nothing sent)")
            return
        yield Check(t, "MLLP connect", True, f"TCP connection to {addr}")
        try:
            tls = ctx.wrap_socket(sock, server_hostname=cfg.tls.server_name or cfg.host)
            tls.close()
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            yield Check(t, "TLS handshake", False, f"TLS handshake with {addr} failed ({reason})",
                        "check tls.ca_file trusts the receiver's certificate, tls.server_name matches "
                        "it, and (mutual TLS) the receiver trusts our cert_file")
            return
        yield Check(t, "TLS handshake", True, f"TLS handshake with {addr} (nothing sent)")
    finally:
        sock.close()


TARGET_CHECKS = {"epic_haiku": _epic, "fhir_docref": _fhir, "athenaone": _athena, "hl7_mdm": _mllp}


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
            fn = TARGET_CHECKS.get(name)
            if fn is None:
                results.append(Check(name, "checks", True, "no go-live checks for this target"))
                continue
            try:
                results.extend(fn(org, cfg, http, clock))
            except ChartbridgeError as exc:
                results.append(Check(name, "checks", False, exc.message, "see the message"))
        llm = org.drafting.llm
        if llm is not None and llm.api_key is not None:
            results.append(_secret("drafting", "llm.api_key", llm.api_key))
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
