"""The onboarding sandbox: every vendor simulator the orgs of a config folder point at, on
the host and port their URLs name, with each org's client registered.

It reads the (layered) org configs and, per target, calls that target's plugin's sandbox
(`AdapterSpec.sandbox`, e.g. contract_tests/<vendor>/sandbox.py:register): it starts its
simulator once per host:port (`shared_sim`) on the host and port the org's URLs name
(loopback only) and registers the org's client there. This module is the vendor-neutral
part: the running set, secrets, and the helpers those functions use.
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
from chartbridge.onboarding.keys import public_jwk  # noqa: F401 - kept importable from here


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


def host_port(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname or "127.0.0.1", port, parts.path.rstrip("/")


def _loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


class Secrets:
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
            self._append(ref.target, value)
        self.sandbox.generated.append(ref.ref)
        return value

    def export(self, name: str, value: str) -> None:
        """A variable a simulator's setup decided (e.g. the id of the test patient it
        seeded) that the contract suites read: set here and appended to the env file."""
        os.environ[name] = value
        self._append(name, value)

    def _append(self, name: str, value: str) -> None:
        if self.env_file is None:
            return
        self.env_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(f"export {name}={shlex.quote(value)}\n")


def start_sandbox(orgs: list[OrgConfig], *, generate: bool = False,
                  env_file: str | Path | None = None) -> Sandbox:
    """Start the simulators the orgs point at and register each org. Raises InputError for a
    target that is not on loopback (the sandbox never pretends to be a real site)."""
    sb = Sandbox()
    keys = Secrets(sb, generate, Path(env_file) if env_file else None)
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


def shared_sim(sb: Sandbox, vendor: str, host: str, port: int, factory: Any) -> Any:
    """The simulator `vendor` runs on host:port: started by `factory()` the first time
    (which registers its stop on `sb.stack`), the same one for every later org."""
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


def _register(sb: Sandbox, keys: Secrets, org: OrgConfig, name: str, cfg: Any) -> None:
    from chartbridge.adapters.registry import load_ref, registry

    spec = registry.get(name)
    if spec.sandbox is None:
        sb.warnings.append(f"{org.org}: no simulator for target {name}")
        return
    try:
        register = load_ref(spec.sandbox)
    except ModuleNotFoundError:
        sb.warnings.append(f"{org.org}: the {name} simulator is not part of this build")
        return
    register(sb, keys, org, cfg)


def need_loopback(org: OrgConfig, target: str, host: str) -> None:
    if not _loopback(host):
        raise InputError(f"org {org.org}: target {target} points at a non-loopback host; the "
                         "sandbox only serves 127.0.0.1/localhost (use a sandbox overlay)",
                         field=f"targets.{target}")
