"""The engine's deliverer: the org file's subscribers, its secrets and HTTP client."""
from __future__ import annotations

from chartbridge.config.secrets import resolve

from .delivery import Deliverer
from .store import WebhookStore


def deliverer(engine, *, http=None) -> Deliverer:
    """Built per call from the engine's pieces (nothing at import time); the org's config is
    read through the engine's ConfigStore, so an edited org file is seen on the next pass."""
    return Deliverer(WebhookStore(engine.db, engine.clock), engine.clock,
                     subscribers_of=lambda org_id: list(engine.org(org_id).webhooks),
                     resolve=resolve, http=http or engine.services.http)
