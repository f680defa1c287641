"""Job leases: one live holder per job, expiry frees a dead holder's job, and the worker
middleware skips a message whose job a live worker holds."""
from __future__ import annotations

from datetime import timedelta

import dramatiq
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from chartbridge.ledger.leases import JobLeases, job_key
from chartbridge.recovery import JobLeaseMiddleware


def test_one_live_holder_and_expiry_frees_the_job(db, clock):
    leases = JobLeases(db, clock, lease_s=6)
    key = job_key("process_chunk", "org-a", "s1", "R1", 1)
    assert leases.acquire("org-a", key, "host:1:a")
    assert not leases.acquire("org-a", key, "host:2:b")          # someone alive holds it
    assert leases.acquire("org-a", key, "host:1:a")              # its holder may re-take it
    clock.advance(4)
    leases.renew("host:1:", sessions=set(), write_keys=set(), write_lease=timedelta(seconds=6))
    clock.advance(4)
    assert not leases.acquire("org-a", key, "host:2:b")          # the heartbeat kept it
    assert leases.live() == {key}
    clock.advance(7)                                             # the holder died: no beats
    assert leases.live() == set()
    assert leases.acquire("org-a", key, "host:2:b")
    leases.release(key, "host:2:b")
    assert leases.purge_expired() == 0 and leases.live() == set()


def test_a_message_for_a_job_held_by_a_live_worker_is_skipped(db, clock):
    leases = JobLeases(db, clock, lease_s=6)
    broker = StubBroker()
    broker.add_middleware(JobLeaseMiddleware(leases, timedelta(seconds=6), heartbeat_s=0.05))
    ran = []

    def finish_version(org_id, session_id, recording_id, version):
        ran.append(version)

    actor = dramatiq.actor(finish_version, broker=broker, actor_name="finish_version",
                           max_retries=0)
    key = job_key("finish_version", "org-a", "s1", "R1", 2)
    assert leases.acquire("org-a", key, "elsewhere:9:x")
    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        actor.send("org-a", "s1", "R1", 2)
        broker.join(actor.queue_name, timeout=10_000)
        worker.join()
        assert ran == []                                         # skipped, not run twice
        clock.advance(7)                                         # that worker died
        actor.send("org-a", "s1", "R1", 2)
        broker.join(actor.queue_name, timeout=10_000)
        worker.join()
        assert ran == [2]
        assert leases.live() == set()                            # released after the run
    finally:
        worker.stop()
