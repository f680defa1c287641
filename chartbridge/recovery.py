"""Recovery in seconds: how fast a killed worker's work is picked up again.

The numbers, measured by tests/app/test_crash_recovery.py (a worker process killed with
SIGKILL at download, transcription, before and after Epic's DocumentationReady answer, on
PostgreSQL + Redis; docs/architecture.md has the table):

    LEASE_S           6 s   a job lease (ledger/leases.py) and a write-ledger lease: how long
                            a dead worker's claim outlives it
    HEARTBEAT_S       2 s   a live worker renews both every 2 s (a thread per process)
    SWEEP_INTERVAL_S  2 s   the sweeper looks for unfinished work this often
    STALE_S           4 s   work with no live lease, untouched this long, is re-enqueued
    Redis broker:     heartbeat_timeout 15 s, maintenance 10 % of commands: dramatiq itself
                      re-queues a dead worker's unacknowledged messages after ~15 s (the
                      sweeper has normally done so already; the copy is then skipped)

Worst case from a kill to the work running again: LEASE_S + SWEEP_INTERVAL_S = 8 s, plus
the queue's latency. Safe because everything a job does is idempotent or guarded: a job
whose lease is held by someone alive is skipped, and a write whose lease expired is
reconciled (for Epic: the byte-identical body resent, which Epic keeps once) before
anything is sent again.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import timedelta

import dramatiq
from dramatiq.middleware import SkipMessage

from chartbridge.ledger.leases import JobLeases, job_key

log = logging.getLogger("chartbridge.worker")

LEASE_S = 6.0
HEARTBEAT_S = 2.0
SWEEP_INTERVAL_S = 2.0
STALE_S = 4.0
REDIS_HEARTBEAT_TIMEOUT_MS = 15_000
REDIS_MAINTENANCE_CHANCE = 100_000          # per million commands

LEASED = ("process_chunk", "process_last_chunk", "finish_version")
# the after-stop copy of a chunk's job is the same job: one lease for both
SAME_JOB = {"process_last_chunk": "process_chunk"}


class JobLeaseMiddleware(dramatiq.Middleware):
    """Takes a job's lease before it runs (skipping the message if someone alive holds
    it), renews it with the write leases of the running jobs, releases it after."""

    def __init__(self, leases: JobLeases, write_lease: timedelta, *,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        self.leases, self.write_lease, self.heartbeat_s = leases, write_lease, heartbeat_s
        self.prefix = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}:"
        self._running: dict[str, tuple] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def before_process_message(self, broker, message) -> None:
        args = tuple(message.args)
        if message.actor_name in LEASED and len(args) >= 4:
            org_id, session_id = args[0], args[1]
            key = job_key(SAME_JOB.get(message.actor_name, message.actor_name), *args[:4])
            owner = self.prefix + message.message_id
            if not self.leases.acquire(org_id, key, owner):
                log.info("job skipped: a live worker holds it",
                         extra={"event": message.actor_name})
                raise SkipMessage()
            entry = (key, owner, (org_id, session_id), None)
        elif message.actor_name == "execute_write" and len(args) >= 2:
            entry = (None, None, None, (args[0], args[1]))
        else:
            return
        with self._lock:
            self._running[message.message_id] = entry
        self._ensure_heartbeat()

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        with self._lock:
            entry = self._running.pop(message.message_id, None)
        if entry and entry[0]:
            try:
                self.leases.release(entry[0], entry[1])
            except Exception as exc:  # noqa: BLE001 - it expires on its own
                log.warning("job lease not released", extra={"error_class": type(exc).__name__})

    after_skip_message = after_process_message

    def _ensure_heartbeat(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._beat, name="chartbridge-heartbeat",
                                            daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                entries = list(self._running.values())
            if not entries:
                continue
            try:
                self.leases.renew(self.prefix,
                                  sessions={e[2] for e in entries if e[2]},
                                  write_keys={e[3] for e in entries if e[3]},
                                  write_lease=self.write_lease)
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                log.warning("heartbeat failed", extra={"error_class": type(exc).__name__})

    def stop(self) -> None:
        self._stop.set()


def busy_jobs(leases: JobLeases | None) -> set[str]:
    """Job keys a live worker holds (the sweeper leaves those alone)."""
    return leases.live() if leases is not None else set()


def tune_broker(broker) -> None:
    """dramatiq's own redelivery of a dead worker's messages (Redis): seconds, not a minute."""
    if type(broker).__name__ == "RedisBroker":
        broker.heartbeat_timeout = REDIS_HEARTBEAT_TIMEOUT_MS
        broker.maintenance_chance = REDIS_MAINTENANCE_CHANCE
