"""One engine worker process for the shared-quota test: builds the athenaOne adapter from an
org config, as `chartbridge worker` does, gets its token, waits for the others (a backlog
meeting running workers), then files `writes` notes, retrying 429s."""
from __future__ import annotations

import os
import time
from pathlib import Path


def file_notes(settings: dict, org: str, config_dir: str, db_url: str, writes: int,
               rate_limit_url: str | None, ready, results) -> None:
    if rate_limit_url:
        os.environ["CHARTBRIDGE_RATE_LIMIT_URL"] = rate_limit_url
    else:
        os.environ.pop("CHARTBRIDGE_RATE_LIMIT_URL", None)
    os.environ.pop("CHARTBRIDGE_BROKER_URL", None)
    from chartbridge.adapters.athenaone import SPEC
    from chartbridge.bootstrap import make_services
    from chartbridge.core.clock import SystemClock
    from chartbridge.core.errors import TransientError
    from chartbridge.ledger.db import Database

    from .conftest import make_command, org_config

    cfg = org_config(Path(config_dir), settings, org=org, extra_types=("11506-3",))
    db = Database.from_url(db_url)
    adapter = SPEC.factory(cfg, cfg.targets["athenaone"], make_services(db, SystemClock()))
    adapter.client.tokens.token()     # a running worker: token cached, connection open
    ready.wait(timeout=120)           # the backlog reaches every worker at once
    rejected = 0
    for i in range(writes):
        command = make_command(org=org, patient=str(1 + i % 20),
                               encounter=f"{os.getpid()}{i:03d}")
        deadline = time.monotonic() + 60
        while True:
            try:
                adapter.send(command)
                break
            except TransientError as exc:
                if exc.status != 429 or time.monotonic() > deadline:
                    raise
                rejected += 1
                time.sleep(exc.retry_after or 0.2)
    db.dispose()
    results.put({"pid": os.getpid(), "writes": writes, "rejected": rejected})
