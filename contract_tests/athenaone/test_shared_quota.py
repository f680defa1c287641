"""Three worker processes, one athenaOne practice, one quota: with the limiter shared in
Redis (adapters/ratelimit.py), the practice never sees more than requests_per_second."""
from __future__ import annotations

import multiprocessing
import uuid

import pytest

from chartbridge.ledger.db import make_engine
from chartbridge.ledger.migrate import upgrade

from chartbridge.adapters.ratelimit import shared_limit_url, window_for

from .quota_worker import file_notes

PRACTICE = "195900"
REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_or_skip():
    import redis
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        from conftest import _unavailable
        _unavailable("Redis", exc)


def run_workers(tmp_path, athena, *, qps: int, writes: int, shared: bool) -> list[dict]:
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    engine = make_engine(db_url)
    upgrade(engine)
    engine.dispose()
    org = f"quota-{uuid.uuid4().hex[:8]}"          # its own Redis keys
    settings = {**athena.settings, "requests_per_second": qps}
    ctx = multiprocessing.get_context("spawn")
    results, ready = ctx.Queue(), ctx.Barrier(3)
    procs = [ctx.Process(target=file_notes, args=(settings, org, str(tmp_path), db_url, writes,
                                                  REDIS_URL if shared else None, ready, results))
             for _ in range(3)]
    for p in procs:
        p.start()
    done = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return done


@pytest.mark.redis
def test_three_workers_share_the_practice_quota_through_redis(tmp_path, athena):
    _redis_or_skip()
    sim = athena.need_sim("measures the request rate per practice")
    # Given a practice quota of 6 requests/second, the same as the org's configured rate
    sim.configure(qps_per_practice=6)
    # When 3 worker processes each file 6 notes as fast as the limiter lets them
    done = run_workers(tmp_path, athena, qps=6, writes=6, shared=True)
    # Then every note was filed, the practice never saw more than 6 requests in a second,
    # and it never had to refuse one for its quota
    assert sim.upload_count() == 18
    assert sum(d["rejected"] for d in done) == 0
    assert not [c for c in sim.calls() if c.get("quota")]
    assert sim.max_requests_per_second(PRACTICE) <= 6
    # and the workers did press against the limit (so the bound is the limiter's doing)
    assert sim.max_requests_per_second(PRACTICE) >= 5


def test_the_shared_store_comes_from_the_environment():
    assert shared_limit_url({}) is None
    assert shared_limit_url({"CHARTBRIDGE_BROKER_URL": "amqp://q"}) is None
    assert shared_limit_url({"CHARTBRIDGE_BROKER_URL": "redis://r:6379/0"}) == "redis://r:6379/0"
    assert shared_limit_url({"CHARTBRIDGE_BROKER_URL": "redis://r", "CHARTBRIDGE_RATE_LIMIT_URL":
                             "redis://limits"}) == "redis://limits"


def test_a_rate_becomes_a_window_never_above_it():
    assert window_for(8.5) == (8, 1) and window_for(1) == (1, 1) and window_for(0.4) == (1, 3)
