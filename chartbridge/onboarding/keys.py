"""The org's own signing keys: the private keys the engine signs SMART Backend Services
assertions with (Epic, FHIR), and their public halves as the JWKS a site registers.

`generate` writes a new key pair for each target that signs, by file reference only (mode
600, never over an existing key); `org_jwks` derives the public JWKS from the keys the org
file references, for `chartbridge keys generate` to print and for the engine to serve at
`GET /orgs/{org}/.well-known/jwks.json`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chartbridge.config.schema import OrgConfig
from chartbridge.core.errors import ConfigError, InputError

log = logging.getLogger("chartbridge.keys")


def new_private_key(algorithm: str) -> str:
    """A new PEM (PKCS#8) private key for RS384 (RSA 2048) or ES384 (P-384)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = (ec.generate_private_key(ec.SECP384R1()) if algorithm == "ES384"
           else rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def public_jwk(pem: str, kid: str, algorithm: str) -> dict[str, Any]:
    """The public JWK (with kid, alg, use) of a PEM private key."""
    from joserfc.jwk import ECKey, RSAKey

    cls = ECKey if algorithm == "ES384" else RSAKey
    try:
        key = cls.import_key(pem)
    except Exception:  # noqa: BLE001 - joserfc raises several types; the key is just unusable
        raise InputError(f"private key is not an {algorithm} PEM key", field="private_key") from None
    jwk = key.as_dict(private=False)
    jwk.update({"kid": kid, "alg": algorithm, "use": "sig"})
    return jwk


def signing_targets(org: OrgConfig) -> dict[str, Any]:
    """Targets whose config holds one of our signing keys (private_key + key_id + algorithm)."""
    return {name: cfg for name, cfg in org.targets.items()
            if all(hasattr(cfg, a) for a in ("private_key", "key_id", "algorithm"))}


def org_jwks(org: OrgConfig) -> tuple[dict, list[str]]:
    """({"keys": [...]}, problems): the public half of every signing key the org references.
    A key that does not resolve is left out and named in `problems` (never its value)."""
    keys: dict[str, dict] = {}
    problems: list[str] = []
    for name, cfg in signing_targets(org).items():
        try:
            jwk = public_jwk(cfg.private_key.resolve(), cfg.key_id, cfg.algorithm)
        except (ConfigError, InputError) as exc:
            problems.append(f"targets.{name}.private_key: {exc.message}")
            continue
        keys.setdefault(jwk["kid"], jwk)            # one key may serve two targets
    return {"keys": list(keys.values())}, problems


@dataclass
class Generated:
    target: str
    path: Path
    ref: str                 # the file: reference the org file should hold
    jwk: dict
    referenced: bool         # True when the org file already names this file


def generate(org: OrgConfig, config_dir: Path, targets: list[str] | None = None) -> list[Generated]:
    """A new key pair per signing target (default: all of them). A `file:` reference whose
    file is missing gets the key there; an `env:` reference gets `keys/ORG-TARGET.pem` in
    the config folder (the org file must then point at it). Never overwrites a key."""
    available = signing_targets(org)
    chosen = targets or list(available)
    unknown = [t for t in chosen if t not in available]
    if unknown:
        raise InputError(f"{', '.join(unknown)} has no signing key in {org.org} "
                         f"(targets that sign: {', '.join(available) or 'none'})", field="--target")
    if not chosen:
        raise InputError(f"no target of {org.org} signs with a key of ours", field="--target")
    plan = []
    for name in chosen:
        cfg = available[name]
        ref = cfg.private_key
        if ref.scheme == "file":
            path, referenced = ref.path, True
        else:
            path, referenced = config_dir / "keys" / f"{org.org}-{name}.pem", False
        if path.exists():
            raise InputError(f"{path} already exists; a new key needs the site to register it "
                             "again, so move the old one away first", field="--target")
        plan.append((name, cfg, Path(path), referenced))
    out = []
    for name, cfg, path, referenced in plan:
        pem = new_private_key(cfg.algorithm)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(pem)
        try:
            rel = path.resolve().relative_to(config_dir.resolve())
            ref = f"file:{rel}"
        except ValueError:
            ref = f"file:{path.resolve()}"
        log.info("signing key generated", extra={"org_id": org.org, "target": name})
        out.append(Generated(name, path, ref, public_jwk(pem, cfg.key_id, cfg.algorithm), referenced))
    return out
