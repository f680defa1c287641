"""The one composition root: wires ports to adapters. Nothing is built at import time;
tests pass their own pieces to `bootstrap()`."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from chartbridge.adapters.registry import registry
from chartbridge.core import usecases as uc
from chartbridge.core.clock import SystemClock
from chartbridge.core.errors import ConfigError, NotFound
from chartbridge.core.ports import Clock, JobQueue, NoteGenerator, Store, Transcriber
from chartbridge.ledger.db import Database
from chartbridge.ledger.migrate import upgrade
from chartbridge.ledger.store import SqlStore
from chartbridge.ledger.tokens import DbReplayGuard, DbTokenCache
from chartbridge.ledger.writes import WriteLedger

log = logging.getLogger("chartbridge")


@dataclass
class Services:
    """What an adapter factory may use: shared, per-process pieces (never per-org state)."""

    clock: Clock
    token_cache: DbTokenCache
    replay_guard: DbReplayGuard
    http: Callable[..., httpx.Client]
    secrets: Callable[[str, Path | None], str]


@dataclass
class Engine:
    db: Database
    clock: Clock
    store: Store
    ledger: WriteLedger
    services: Services
    config_dir: Path
    transcriber_factory: Callable[[Any], Transcriber] | None = None
    generator_factory: Callable[[Any], NoteGenerator] | None = None
    queue: JobQueue | None = None                   # attach_queue(); the worker's Jobs
    _adapters: dict = field(default_factory=dict)
    _configs: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- organizations -------------------------------------------------------------------
    @property
    def configs(self):
        with self._lock:
            if self._configs is None:
                from chartbridge.config.loader import ConfigStore
                self._configs = ConfigStore(self.config_dir)
            return self._configs

    def org(self, org_id: str):
        """The org's validated config (re-read when its file changes); NotFound if none."""
        return self.configs.get(org_id)

    def target_config(self, org_id: str, target: str):
        org = self.org(org_id)
        settings = (org.targets or {}).get(target)
        if settings is None:
            raise NotFound(f"organization has no {target} target configured")
        return org, settings

    def adapter(self, org_id: str, target: str):
        """One adapter instance per (org, target, config version): never a shared object
        whose configuration is swapped per request."""
        org, settings = self.target_config(org_id, target)
        cache_key = (org_id, target, id(org))
        with self._lock:
            found = self._adapters.get(cache_key)
            if found is None:
                spec = registry.get(target)
                if spec.factory is None:
                    raise ConfigError(f"the {target} adapter is not available in this build",
                                      key=f"targets.{target}")
                found = spec.factory(org, settings, self.services)
                self._adapters = {k: v for k, v in self._adapters.items()
                                  if k[:2] != (org_id, target)}
                self._adapters[cache_key] = found
            return found

    # -- the job queue port ------------------------------------------------------------------
    def attach_queue(self, queue: JobQueue) -> None:
        """Name the queue use cases hand work to (the worker wiring, chartbridge.jobs.Jobs,
        attaches itself when built on this engine). Without one, callers run or enqueue the
        work themselves."""
        if not isinstance(queue, JobQueue):
            raise TypeError("attach_queue needs a JobQueue (an object with enqueue(job, *args))")
        self.queue = queue

    # -- writes after approval ----------------------------------------------------------------
    def approval_targets(self, org_id: str) -> list[tuple[str, str]]:
        """(target, resource kind) of the org's targets whose adapter needs an approval."""
        return [(name, registry.get(name).resource_kind) for name in self.org(org_id).targets
                if registry.get(name).needs_approval]

    def submit_approved(self, org_id: str, draft_id: str) -> list[str]:
        """core.usecases.submit_approved with this engine's ports and the org's policy:
        one pending ledger write per target that needs approval, then enqueued (when a
        queue is attached). Returns the keys; calling it again returns the same keys."""
        org = self.org(org_id)
        targets = self.approval_targets(org_id)
        return uc.submit_approved(
            self.store, self.ledger, self.queue, org_id=org_id, draft_id=draft_id,
            targets=targets, stage_preliminary=str(org.policy.approval) == "stage_preliminary",
            consent_required=str(org.policy.consent.write_back) == "required",
            correction={t: str(org.correction_for(t)) for t, _ in targets})

    # -- processing ports ------------------------------------------------------------------
    def transcriber(self, org_id: str) -> Transcriber:
        from chartbridge.metrics import timed_transcriber    # ASR durations (issue 17)
        org = self.org(org_id)
        if self.transcriber_factory is not None:
            return timed_transcriber(self.transcriber_factory(org), org_id)
        from chartbridge.adapters.transcription import transcriber_for
        return timed_transcriber(transcriber_for(org), org_id)

    def generator(self, org_id: str) -> NoteGenerator:
        org = self.org(org_id)
        if self.generator_factory is not None:
            return self.generator_factory(org)
        from chartbridge.adapters.notegen import generator_for
        return generator_for(org, secrets=self.services.secrets)


def _resolve_secret(ref: str, base: Path | None = None) -> str:
    from chartbridge.config.secrets import resolve
    return resolve(ref, base_dir=base) if base is not None else resolve(ref)


def make_services(db: Database, clock: Clock, *,
                  http: Callable[..., httpx.Client] | None = None) -> Services:
    """The shared pieces adapter factories get (also what tests hand them)."""
    return Services(clock=clock, token_cache=DbTokenCache(db, clock),
                    replay_guard=DbReplayGuard(db, clock),
                    http=http or (lambda **kw: httpx.Client(**kw)), secrets=_resolve_secret)


def default_config_dir() -> Path:
    from chartbridge.settings import load_settings
    return load_settings().config_dir


def bootstrap(*, database_url: str | None = None, db: Database | None = None,
              clock: Clock | None = None, config_dir: Path | str | None = None,
              migrate: bool = True, http: Callable[..., httpx.Client] | None = None,
              transcriber_factory=None, generator_factory=None) -> Engine:
    clock = clock or SystemClock()
    db = db or Database.from_url(database_url)
    if migrate:
        upgrade(db.engine)
    services = make_services(db, clock, http=http)
    return Engine(db=db, clock=clock, store=SqlStore(db, clock), ledger=WriteLedger(db, clock),
                  services=services,
                  config_dir=Path(config_dir) if config_dir else default_config_dir(),
                  transcriber_factory=transcriber_factory, generator_factory=generator_factory)
