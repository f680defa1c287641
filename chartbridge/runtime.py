"""Running the engine: the embedded default (web + in-process worker + sweeper in one
process) and the separate worker process for Redis/RabbitMQ."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import timedelta

from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from chartbridge import recovery
from chartbridge.bootstrap import Engine
from chartbridge.jobs import Jobs, Sweeper, make_broker
from chartbridge.ledger.leases import JobLeases

log = logging.getLogger("chartbridge")


@dataclass
class Runtime:
    engine: Engine
    jobs: Jobs
    worker: Worker | None
    sweeper: Sweeper

    def stop(self) -> None:
        self.sweeper.stop()
        if self.worker is not None:
            self.worker.stop(timeout=10_000)
        self.jobs.broker.close()

    def join(self, timeout: float = 30.0) -> bool:
        """Wait until the queue is drained (embedded broker only)."""
        broker = self.jobs.broker
        if isinstance(broker, StubBroker):
            done = threading.Event()

            def _join():
                broker.join(self.jobs.queue, timeout=int(timeout * 1000))
                done.set()
            t = threading.Thread(target=_join, daemon=True)
            t.start()
            t.join(timeout)
            return done.is_set()
        return True


def start(engine: Engine, *, broker_url: str | None = None, in_process_worker: bool | None = None,
          worker_threads: int = 2, sweep_interval_s: float = recovery.SWEEP_INTERVAL_S,
          sweeper_stale_s: float = recovery.STALE_S, queue: str = "chartbridge",
          sweeper: bool = True) -> Runtime:
    """`sweeper=False` when the sweeper runs as its own process (`chartbridge sweep --every`)."""
    broker = make_broker(broker_url)
    recovery.tune_broker(broker)
    # Short leases, renewed by the heartbeat of the process doing the work (recovery.py).
    engine.ledger.lease = timedelta(seconds=recovery.LEASE_S)
    leases = JobLeases(engine.db, engine.clock, lease_s=recovery.LEASE_S)
    broker.add_middleware(recovery.JobLeaseMiddleware(leases, engine.ledger.lease))
    # a job logs with the correlation id of the code that enqueued it; its timing is a metric
    from chartbridge.logs import correlation_middleware
    from chartbridge.metrics import job_middleware
    broker.add_middleware(correlation_middleware(), before=recovery.JobLeaseMiddleware)
    broker.add_middleware(job_middleware())
    jobs = Jobs(engine, broker, queue=queue)
    if in_process_worker is None:
        in_process_worker = isinstance(broker, StubBroker)
    worker = None
    if in_process_worker:
        worker = Worker(broker, worker_threads=worker_threads, worker_timeout=100)
        worker.start()
    sweeping = Sweeper(jobs, stale_after_s=sweeper_stale_s, leases=leases)
    if sweeper:
        sweeping.start(sweep_interval_s)
    return Runtime(engine, jobs, worker, sweeping)
