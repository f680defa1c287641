"""The per-process ConfigStore: org configs by id from one folder, cached and re-read when
a file changes, and the process-wide default store."""
from __future__ import annotations

import os
import threading
from pathlib import Path

from chartbridge.config.schema import ORG_ID, OrgConfig
from chartbridge.core.errors import NotFound

from .loading import (DEFAULT_CONFIG_DIR, ENV_CONFIG_DIR, _load, current_env, org_environment,
                      org_files, overlay_path)


class ConfigStore:
    """Org configs by id from one folder, each with its environment's overlay (`env` for
    every org when given, else the org file's own `environment:`, else $CHARTBRIDGE_ENV),
    cached per process and re-read when the base's or the overlay's modification time or
    size changes (or the overlay appears or goes)."""

    def __init__(self, directory: str | Path | None = None, env: str | None = None) -> None:
        self.directory = Path(directory or os.environ.get(ENV_CONFIG_DIR) or DEFAULT_CONFIG_DIR)
        self.env = current_env(env)                  # the default for orgs that name none
        self._forced = env is not None
        self._cache: dict[str, tuple[tuple, OrgConfig]] = {}
        self._envs: dict[str, tuple[tuple, str | None]] = {}
        self._lock = threading.Lock()

    def env_of(self, org_id: str, path: Path, base_stamp: tuple) -> str | None:
        """The overlay name for one org (the base file is re-read only when it changes)."""
        if self._forced:
            return self.env
        with self._lock:
            hit = self._envs.get(org_id)
        if hit is None or hit[0] != base_stamp:
            hit = (base_stamp, org_environment(path))
            with self._lock:
                self._envs[org_id] = hit
        return hit[1] or self.env

    def get(self, org_id: str) -> OrgConfig:
        if not isinstance(org_id, str) or not ORG_ID.fullmatch(org_id) or len(org_id) > 63:
            raise NotFound("unknown org")
        path = self.directory / f"{org_id}.yaml"
        try:
            st = path.stat()
        except OSError:
            with self._lock:
                self._cache.pop(org_id, None)
            raise NotFound("unknown org") from None
        env = self.env_of(org_id, path, (st.st_mtime_ns, st.st_size))
        overlay = overlay_path(path, env) if env else None
        try:
            ost = overlay.stat() if overlay is not None else None
        except FileNotFoundError:
            ost, overlay = None, None
        stamp = (st.st_mtime_ns, st.st_size,
                 (ost.st_mtime_ns, ost.st_size) if ost is not None else None)
        with self._lock:
            hit = self._cache.get(org_id)
            if hit and hit[0] == stamp:
                return hit[1]
        org, errors = _load(path, overlay)   # a broken file raises: never serve a stale copy
        if errors or org is None:
            raise errors[0]
        with self._lock:
            self._cache[org_id] = (stamp, org)
        return org

    def org_ids(self) -> list[str]:
        return [p.stem for p in org_files(self.directory)]


_default_store: ConfigStore | None = None
_default_lock = threading.Lock()


def default_store() -> ConfigStore:
    """The process-wide store for CHARTBRIDGE_CONFIG_DIR (read on first use)."""
    global _default_store
    with _default_lock:
        if _default_store is None:
            _default_store = ConfigStore()
        return _default_store


def reset_default_store() -> None:
    """Forget the process-wide store (tests that change CHARTBRIDGE_CONFIG_DIR)."""
    global _default_store
    with _default_lock:
        _default_store = None


def get_org(org_id: str) -> OrgConfig:
    return default_store().get(org_id)
