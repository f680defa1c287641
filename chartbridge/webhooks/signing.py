"""The Standard Webhooks signature (standardwebhooks.com, spec/standard-webhooks.md).

    webhook-id:        the event id (the same on every retry, so a receiver dedupes on it)
    webhook-timestamp: integer Unix seconds of this attempt
    webhook-signature: "v1," + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))

The key is the secret after its `whsec_` prefix, base64-decoded. Ours is a few lines of
the standard library, so the engine needs no extra runtime dependency; the tests verify it
with the project's own reference library (PyPI `standardwebhooks`), an independent check.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from chartbridge.core.errors import ConfigError

PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret; ConfigError (never echoing it) otherwise."""
    secret = secret.strip()
    if not secret.startswith(PREFIX):
        raise ConfigError("webhook secret must be a Standard Webhooks secret (whsec_<base64>)")
    try:
        raw = secret[len(PREFIX):]
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("webhook secret is not base64 after its whsec_ prefix") from None
    if len(key) < 24:
        raise ConfigError("webhook secret is too short (at least 24 bytes of key)")
    return key


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(key, msg_id, timestamp, body),
            "content-type": "application/json"}
