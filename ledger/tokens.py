"""Shared token cache and inbound replay guard, on the engine's database.

Every cached value (Epic's backend bearer token, the page sessions with the clinician's
SMART token) is sealed at rest with Fernet (AES-128-CBC + HMAC-SHA256, from
`cryptography`): the `access_tokens.token` column holds only ciphertext. Keys, by reference:

    CHARTBRIDGE_TOKEN_KEYS   env:NAME or file:PATH holding one or more Fernet keys
                             (`Fernet.generate_key()`), separated by commas or newlines.
                             The first encrypts; all decrypt (MultiFernet).

Rotation: put a new key first and keep the old one after it; rows written under the old
key stay readable, every new or refreshed row uses the new key, and once the longest
lifetime (8 h for page sessions) has passed the old key can be dropped. Without the
setting the key is derived from CHARTBRIDGE_SECRET_KEY, and without that a random key
per process (cached tokens are then refetched after a restart: they are a cache). A
value that does not decrypt (an unknown key, a plaintext row from before) is a miss.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import threading
from datetime import datetime, timedelta

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from sqlalchemy import delete, select

from chartbridge.core.ports import Clock

from .db import Database, insert_for, insert_ignoring
from .tables import ReplayRow, TokenRow


KEYS_ENV = "CHARTBRIDGE_TOKEN_KEYS"
_process_key: bytes | None = None
_process_lock = threading.Lock()


def token_sealer(environ=None) -> MultiFernet:
    """The MultiFernet for values at rest, from the environment (see the module doc)."""
    global _process_key
    from chartbridge.config.secrets import resolve

    environ = os.environ if environ is None else environ
    ref = environ.get(KEYS_ENV)
    if ref:
        keys = [k for k in re.split(r"[\s,]+", resolve(ref)) if k]
        try:
            return MultiFernet([Fernet(k) for k in keys])
        except (ValueError, TypeError):
            from chartbridge.core.errors import ConfigError
            raise ConfigError("holds no valid Fernet key (use Fernet.generate_key())",
                              key=KEYS_ENV) from None
    secret_ref = environ.get("CHARTBRIDGE_SECRET_KEY")
    if secret_ref:
        digest = hashlib.sha256(b"chartbridge token key\x00" + resolve(secret_ref).encode())
        return MultiFernet([Fernet(base64.urlsafe_b64encode(digest.digest()))])
    with _process_lock:
        if _process_key is None:
            _process_key = Fernet.generate_key()
            logging.getLogger("chartbridge.tokens").warning(
                "no CHARTBRIDGE_TOKEN_KEYS or CHARTBRIDGE_SECRET_KEY: cached tokens are sealed "
                "with a key of this process only (set one when several processes share the "
                "database, or each refetches its tokens)")
    return MultiFernet([Fernet(_process_key)])


class DbTokenCache:
    def __init__(self, db: Database, clock: Clock, *, margin_seconds: float = 30,
                 sealer: MultiFernet | None = None) -> None:
        self.db, self.clock, self.margin = db, clock, timedelta(seconds=margin_seconds)
        self.sealer = sealer or token_sealer()

    def get(self, org_id: str, key: str) -> str | None:
        with self.db.transaction() as tx:
            row = tx.get(TokenRow, (org_id, key))
            if row and row.expires_at - self.margin > self.clock.now():
                try:
                    return self.sealer.decrypt(row.token.encode()).decode()
                except (InvalidToken, UnicodeError):
                    return None      # another key, or a plaintext row from before: a miss
            return None

    def put(self, org_id: str, key: str, token: str, expires_at: datetime) -> None:
        now = self.clock.now()
        sealed = self.sealer.encrypt(token.encode()).decode()
        with self.db.transaction() as tx:
            stmt = insert_for(tx)(TokenRow.__table__).values(
                org_id=org_id, key=key, token=sealed, expires_at=expires_at, requested_at=now)
            tx.execute(stmt.on_conflict_do_update(
                index_elements=["org_id", "key"],
                set_={"token": sealed, "expires_at": expires_at, "requested_at": now}))

    def purge_expired(self) -> int:
        """Delete every expired row (tokens and page sessions alike); the sweeper calls it."""
        with self.db.transaction() as tx:
            return tx.execute(delete(TokenRow).where(TokenRow.expires_at < self.clock.now())
                              ).rowcount or 0

    def invalidate(self, org_id: str, key: str) -> None:
        with self.db.transaction() as tx:
            tx.execute(delete(TokenRow).where(TokenRow.org_id == org_id, TokenRow.key == key))


class DbReplayGuard:
    # Expired jtis are pruned at most this often per process, not on every inbound call
    # (a DELETE per callback was a third of the acknowledgement's database work). An
    # expired row left a while longer only refuses a reuse of that jti, which exp refuses too.
    PRUNE_EVERY = timedelta(seconds=30)

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db, self.clock = db, clock
        self._pruned_at: datetime | None = None

    def purge_expired(self) -> int:
        with self.db.transaction() as tx:
            return tx.execute(delete(ReplayRow).where(ReplayRow.expires_at < self.clock.now())
                              ).rowcount or 0

    def first_use(self, org_id: str, jti: str, expires_at: datetime) -> bool:
        now = self.clock.now()
        prune = self._pruned_at is None or now - self._pruned_at >= self.PRUNE_EVERY
        with self.db.transaction() as tx:
            if prune:
                tx.execute(delete(ReplayRow).where(ReplayRow.expires_at < now))
                self._pruned_at = now
            stmt = insert_ignoring(tx, ReplayRow.__table__, ("org_id", "jti"), "jti")
            return tx.execute(stmt, {"org_id": org_id, "jti": jti,
                                     "expires_at": expires_at}).first() is not None

    def seen(self, org_id: str, jti: str) -> bool:
        with self.db.transaction() as tx:
            return tx.scalar(select(ReplayRow.jti).where(ReplayRow.org_id == org_id,
                                                         ReplayRow.jti == jti)) is not None
