"""The onboarding sandbox: every vendor simulator the orgs of a config folder point at, on
the host and port their URLs name, with each org's client registered.

It reads the (layered) org configs and, per target:
- epic_haiku: an Epic simulator on the token_url's port; the org's `inbound.issuer` is the
  `iss` it signs with; the org's client is registered with the public half of its key;
- fhir_docref: a FHIR simulator (the org's profile) serving the base_url's path; the client
  registered with its public key, kid and scopes;
- athenaone: an athena simulator on the base_url's port with the org's practice, department
  and client (its secret);
- hl7_mdm: an MLLP receiver on host:port (plain TCP; a TLS target is reported, not served).
Keys and secrets come from the orgs' own references. A reference that does not resolve is
generated when `generate=True`: `file:` secrets are written (mode 600) and `env:` ones
appended to `env_file` as `export NAME='...'` lines to source before `org check`.
"""
from __future__ import annotations

import os
import secrets
import shlex
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from chartbridge.config.schema import OrgConfig
from chartbridge.config.secrets import SecretRef
from chartbridge.core.errors import ConfigError, InputError
from chartbridge.onboarding.keys import new_private_key as _new_private_key
from chartbridge.onboarding.keys import public_jwk


@dataclass
class Sandbox:
    stack: ExitStack = field(default_factory=ExitStack)
    sims: dict[tuple[str, str, int], Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)       # what was started / registered
    warnings: list[str] = field(default_factory=list)
    generated: list[str] = field(default_factory=list)   # references generated (never values)

    def stop(self) -> None:
        self.stack.close()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _host_port(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname or "127.0.0.1", port, parts.path.rstrip("/")


def _loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


class _Secrets:
    def __init__(self, sandbox: Sandbox, generate: bool, env_file: Path | None) -> None:
        self.sandbox, self.generate, self.env_file = sandbox, generate, env_file

    def get(self, ref: SecretRef, kind: str, algorithm: str = "RS384") -> str | None:
        try:
            return ref.resolve()
        except ConfigError as exc:
            if not self.generate:
                self.sandbox.warnings.append(f"{exc.message} (run with --generate-secrets to create it)")
                return None
        value = _new_private_key(algorithm) if kind == "key" else secrets.token_urlsafe(24)
        if ref.scheme == "file":
            path = ref.path
            assert path is not None
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(value)
        else:
            os.environ[ref.target] = value          # this process (in-process checks, tests)
            if self.env_file is not None:
                self.env_file.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                with os.fdopen(fd, "a", encoding="utf-8") as fh:
                    fh.write(f"export {ref.target}={shlex.quote(value)}\n")
        self.sandbox.generated.append(ref.ref)
        return value


class _FhirPrefix:
    """Serve the FHIR simulator under the org's base path (e.g. /fhir/R4)."""

    def __init__(self, prefix: str, app: Any) -> None:
        self.prefix, self.app = prefix, app

    def __call__(self, environ: dict, start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if self.prefix and (path == self.prefix or path.startswith(self.prefix + "/")):
            environ = dict(environ, PATH_INFO=path[len(self.prefix):] or "/",
                           SCRIPT_NAME=environ.get("SCRIPT_NAME", "") + self.prefix)
        elif self.prefix:
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"error": "not under the FHIR base path"}']
        return self.app(environ, start_response)


def _start_fhir(sb: Sandbox, host: str, port: int, prefix: str, profile: str) -> Any:
    import threading

    from werkzeug.serving import make_server

    from contract_tests.fhir_docref.simulator import FhirSimulator, _QuietHandler

    sim = FhirSimulator(profile, host=host, port=port)
    server = make_server(host, port, _FhirPrefix(prefix, sim.wsgi_app), threaded=True,
                         request_handler=_QuietHandler)
    server.daemon_threads = True
    sim._server = server                                   # so sim.stop() shuts it down
    sim.port = server.server_port
    sim._base_url = f"http://{host}:{server.server_port}{prefix}"   # token aud, Location
    sim._thread = threading.Thread(target=lambda: server.serve_forever(poll_interval=0.05),
                                   name="fhir-sim", daemon=True)
    sim._thread.start()
    sb.stack.callback(sim.stop)
    return sim


def start_sandbox(orgs: list[OrgConfig], *, generate: bool = False,
                  env_file: str | Path | None = None) -> Sandbox:
    """Start the simulators the orgs point at and register each org. Raises InputError for a
    target that is not on loopback (the sandbox never pretends to be a real site)."""
    sb = Sandbox()
    keys = _Secrets(sb, generate, Path(env_file) if env_file else None)
    try:
        for org in orgs:
            for name, cfg in org.targets.items():
                _register(sb, keys, org, name, cfg)
            llm = org.drafting.llm
            if llm is not None and llm.api_key is not None:
                keys.get(llm.api_key, "secret")
    except BaseException:
        sb.stop()
        raise
    return sb


def _sim(sb: Sandbox, vendor: str, host: str, port: int, factory: Any) -> Any:
    key = (vendor, host, port)
    if key not in sb.sims:
        try:
            sb.sims[key] = factory()
        except OSError as exc:
            raise InputError(f"cannot start the {vendor} simulator on {host}:{port} "
                             f"({exc.strerror or type(exc).__name__}); is the port in use?",
                             field=vendor) from None
        sb.lines.append(f"{vendor} simulator on {host}:{port}")
    return sb.sims[key]


def _register(sb: Sandbox, keys: _Secrets, org: OrgConfig, name: str, cfg: Any) -> None:
    if name == "epic_haiku":
        host, port, _ = _host_port(cfg.token_url)
        _need_loopback(org, name, host)

        def make() -> Any:
            from contract_tests.epic_haiku.simulator import EpicSimulator
            sim = EpicSimulator(epic_client_id={})
            sim.start(host, port)
            sb.stack.callback(sim.stop)
            return sim
        sim = _sim(sb, "epic", host, port, make)
        sim.epic_client_id[org.org] = cfg.inbound.issuer
        pem = keys.get(cfg.private_key, "key", cfg.algorithm)
        if pem is not None:
            sim.register_client(cfg.client_id, {"keys": [public_jwk(pem, cfg.key_id, cfg.algorithm)]})
            sb.lines.append(f"  {org.org}: epic client {cfg.client_id} (kid {cfg.key_id}), iss {cfg.inbound.issuer}")
    elif name == "fhir_docref":
        host, port, prefix = _host_port(cfg.base_url)
        _need_loopback(org, name, host)
        sim = _sim(sb, "fhir", host, port, lambda: _start_fhir(sb, host, port, prefix, cfg.profile))
        if sim.profile != cfg.profile:
            sb.warnings.append(f"{org.org}: fhir simulator on {host}:{port} already runs profile "
                               f"{sim.profile}, org wants {cfg.profile}")
        pem = keys.get(cfg.private_key, "key", cfg.algorithm)
        if pem is not None:
            sim.register_client(cfg.client_id, public_jwk(pem, cfg.key_id, cfg.algorithm),
                                scopes=list(cfg.scopes))
            sb.lines.append(f"  {org.org}: fhir client {cfg.client_id} (kid {cfg.key_id}) at {cfg.base_url}")
    elif name == "athenaone":
        host, port, _ = _host_port(cfg.base_url)
        _need_loopback(org, name, host)

        def make() -> Any:
            from contract_tests.athenaone.simulator import AthenaSimulator
            sim = AthenaSimulator(host=host, port=port)
            sim.start()
            sb.stack.callback(sim.stop)
            return sim
        sim = _sim(sb, "athena", host, port, make)
        sim.add_practice(cfg.practice_id, departments=[cfg.department_id],
                         patients=[str(i) for i in range(1, 21)])
        secret = keys.get(cfg.client_secret, "secret")
        if secret is not None:
            sim.add_client(cfg.client_id, secret, cfg.practice_id, scopes=list(cfg.scopes))
            sb.lines.append(f"  {org.org}: athena client {cfg.client_id}, practice {cfg.practice_id}")
    elif name == "hl7_mdm":
        _need_loopback(org, name, cfg.host)
        if cfg.tls.enabled:
            sb.warnings.append(f"{org.org}: hl7_mdm has tls.enabled; the sandbox serves plain MLLP "
                               "only (use an overlay with tls.enabled: false against it)")

        def make() -> Any:
            from contract_tests.hl7_mdm.simulator import HL7MDMSimulator
            sim = HL7MDMSimulator(cfg.host, cfg.port)
            sim.start()
            sb.stack.callback(sim.stop)
            return sim
        _sim(sb, "mllp", cfg.host, cfg.port, make)
        sb.lines.append(f"  {org.org}: MLLP receiver {cfg.host}:{cfg.port}")
    else:
        sb.warnings.append(f"{org.org}: no simulator for target {name}")


def _need_loopback(org: OrgConfig, target: str, host: str) -> None:
    if not _loopback(host):
        raise InputError(f"org {org.org}: target {target} points at a non-loopback host; the "
                         "sandbox only serves 127.0.0.1/localhost (use a sandbox overlay)",
                         field=f"targets.{target}")
