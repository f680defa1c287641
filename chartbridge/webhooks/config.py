"""`webhooks:` in the org file: one entry per subscriber.

    webhooks:
      - id: ehr-ops                       # stable name: deliveries are per (event, id)
        url: https://hooks.example.org/chartbridge
        secret: env:ACME_WEBHOOK_SECRET   # a Standard Webhooks secret, whsec_<base64>
        events: [write.failed, write.needs_reconciliation]

The URL is https; plain http only to a loopback host (127.0.0.1, ::1, localhost), for a
receiver on the same machine and the tests: event bodies are not PHI, but the signature is
replayable within its tolerance and the ids are a site's own. The secret is a reference
(env:/file:), resolved when a delivery is signed, never stored in the database.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints

from chartbridge.config.types import SecretRef, Settings, Url

from .events import EventType

SubscriberId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]


def _unique(values: list) -> list:
    if len(set(values)) != len(values):
        raise ValueError("each event is listed once")
    return values


class WebhookSubscriber(Settings):
    id: SubscriberId
    url: Url                                      # https; http only for a loopback host
    secret: SecretRef                             # env:NAME or file:PATH holding whsec_...
    events: Annotated[list[EventType], Field(min_length=1), AfterValidator(_unique)]
    timeout_s: Annotated[float, Field(gt=0, le=30)] = 5.0
    max_attempts: Annotated[int, Field(ge=1, le=30)] = 10


def _unique_ids(subs: list[WebhookSubscriber]) -> list[WebhookSubscriber]:
    ids = [s.id for s in subs]
    if len(set(ids)) != len(ids):
        raise ValueError("each subscriber id is used once")
    return subs


Webhooks = Annotated[list[WebhookSubscriber], AfterValidator(_unique_ids)]
