"""Prometheus metrics: `/metrics` on the web app, in the text exposition format.

Two kinds of metric, so the numbers an operator sees are the ones the database holds:

- **read from the database at scrape time** (a custom collector, computed in the web
  process): `chartbridge_writes` — ledger rows by org, target, kind and status, so the
  count always equals the ledger, whichever process wrote the rows — and
  `chartbridge_queue_depth` per queue, from the broker the web app enqueues on;
- **observed where the work happens** (counters and histograms): write and ASR durations,
  Stopped → DocumentationReady latency, jobs, sweeper actions, token fetches and refreshes,
  inbound events, webhook deliveries. Web, worker and sweeper processes each observe their
  own; with `PROMETHEUS_MULTIPROC_DIR` set in every process's environment (prometheus-client's
  multiprocess mode) the web process's `/metrics` adds up the files every process writes.

No PHI in any label or value: labels are only org ids, target and adapter names, write
kinds and statuses, event and job names, queue names, sweeper actions, results and error
classes. An org id from a request path is only used when it is a configured org, an event
name only when the engine accepted it, so a caller cannot mint labels.
"""
from __future__ import annotations

import contextvars
import hmac
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter,
                               Histogram, generate_latest)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("chartbridge.metrics")

_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_LATENCY = (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800)

WRITE_SECONDS = Histogram(
    "chartbridge_write_duration_seconds",
    "One call to the EHR for a ledger write (send or reconcile), by result",
    ["org", "target", "kind", "call", "result"], buckets=_SECONDS)
ASR_SECONDS = Histogram(
    "chartbridge_asr_duration_seconds",
    "One transcription call (a chunk, or a version's final pass), by result",
    ["org", "final", "result"], buckets=_SECONDS)
STOP_TO_HANDOFF = Histogram(
    "chartbridge_stop_to_handoff_seconds",
    "From the Stopped recording event to the handoff (DocumentationReady) succeeding",
    ["org", "target"], buckets=_LATENCY)
JOB_SECONDS = Histogram(
    "chartbridge_job_duration_seconds", "One worker job, by job name and result",
    ["job", "result"], buckets=_SECONDS)
SWEEPER_ACTIONS = Counter(
    "chartbridge_sweeper_actions", "Work the sweeper re-enqueued or purged, by action",
    ["action"])
TOKEN_REQUESTS = Counter(
    "chartbridge_token_requests",
    "Outbound access-token requests: a fetch (none cached) or a refresh (after a 401)",
    ["org", "target", "reason", "result"])
INBOUND_EVENTS = Counter(
    "chartbridge_inbound_events", "Events an EHR sent the engine, by event and HTTP status",
    ["org", "event", "status"])
WEBHOOK_DELIVERIES = Counter(
    "chartbridge_webhook_deliveries",
    "Webhook delivery attempts, by org, event type and outcome (delivered, retry, failed)",
    ["org", "event", "outcome"])

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def _result(exc_type) -> str:
    """A result label: ok, or the error's class name (never its message)."""
    return "ok" if exc_type is None else exc_type.__name__


# -- observations (each a no-op on failure: metrics never break the work) ---------------
@contextmanager
def timed_write(org_id: str, target: str, kind: str, call: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    except BaseException as exc:
        WRITE_SECONDS.labels(org_id, target, str(kind), call, _result(type(exc))).observe(
            time.perf_counter() - start)
        raise
    WRITE_SECONDS.labels(org_id, target, str(kind), call, "ok").observe(
        time.perf_counter() - start)


class TimedTranscriber:
    """A transcriber that records how long each call took; everything else is the one
    it wraps."""

    def __init__(self, inner, org_id: str) -> None:
        self._inner, self._org_id = inner, org_id

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def transcribe(self, audio, **kwargs):
        start, result = time.perf_counter(), "ok"
        try:
            return self._inner.transcribe(audio, **kwargs)
        except BaseException as exc:
            result = _result(type(exc))
            raise
        finally:
            ASR_SECONDS.labels(self._org_id, str(bool(kwargs.get("final"))).lower(),
                               result).observe(time.perf_counter() - start)


def timed_transcriber(inner, org_id: str):
    return inner if isinstance(inner, TimedTranscriber) else TimedTranscriber(inner, org_id)


def write_finished(db, record) -> None:
    """After a ledger write settled: a succeeded handoff observes Stopped → handoff."""
    try:
        if str(record.kind) != "handoff" or str(record.status.value) != "succeeded":
            return
        from chartbridge.ledger.tables import RecordingRow, WriteRow

        with db.transaction() as tx:
            row = tx.get(WriteRow, record.key)
            extra = ((row.command or {}).get("extra") or {}) if row is not None else {}
            rid, version = extra.get("recording_id"), extra.get("recording_version")
            recording = (tx.get(RecordingRow, (record.session_id, rid, version))
                         if rid is not None and version is not None else None)
            if recording is None or recording.status != "Stopped":
                return
            stopped = recording.announced_at
        done = record.acknowledged_at or record.updated_at
        STOP_TO_HANDOFF.labels(record.org_id, record.target).observe(
            max(0.0, (done - stopped).total_seconds()))
    except Exception as exc:  # noqa: BLE001 - a metric must never fail a settled write
        log.warning("stop-to-handoff metric not recorded: %s", type(exc).__name__)


def webhook_delivery(org_id: str, event: str, outcome: str) -> None:
    """One webhook attempt's outcome (labels: a configured org, an event type, an outcome)."""
    WEBHOOK_DELIVERIES.labels(org_id, event, outcome).inc()


def sweep_counted(counts: dict) -> None:
    for action, n in counts.items():
        if n:
            SWEEPER_ACTIONS.labels(action).inc(n)


def token_request(org_id: str, target: str, reason: str, result: str = "ok") -> None:
    TOKEN_REQUESTS.labels(org_id, target, reason, result).inc()


@contextmanager
def counted_token_request(org_id: str, target: str, reason: str) -> Iterator[None]:
    try:
        yield
    except BaseException as exc:
        token_request(org_id, target, reason, _result(type(exc)))
        raise
    token_request(org_id, target, reason)


# -- job timings: a dramatiq middleware ---------------------------------------------------
def job_middleware():
    from dramatiq.middleware import Middleware

    started: contextvars.ContextVar[float | None] = contextvars.ContextVar("job_t0",
                                                                           default=None)

    class JobMetrics(Middleware):
        """How long each job took and how it ended (a job's own retries are new jobs)."""

        def before_process_message(self, broker, message):
            started.set(time.perf_counter())

        def after_process_message(self, broker, message, *, result=None, exception=None):
            t0 = started.get()
            started.set(None)
            if t0 is not None:
                JOB_SECONDS.labels(message.actor_name,
                                   _result(type(exception) if exception else None)
                                   ).observe(time.perf_counter() - t0)

        after_skip_message = after_process_message

    return JobMetrics()


# -- scrape time: the ledger and the queues -----------------------------------------------
class LedgerCollector(Collector):
    """`chartbridge_writes`: ledger rows by org, target, kind and status, counted by the
    database when scraped (so it equals the ledger, whichever process wrote them)."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def collect(self):
        from sqlalchemy import func, select

        from chartbridge.ledger.tables import WriteRow

        family = GaugeMetricFamily("chartbridge_writes",
                                   "Rows of the write ledger by org, target, kind and status",
                                   labels=["org", "target", "kind", "status"])
        try:
            with self.engine.db.transaction() as tx:
                rows = tx.execute(select(WriteRow.org_id, WriteRow.target, WriteRow.kind,
                                         WriteRow.status, func.count())
                                  .group_by(WriteRow.org_id, WriteRow.target, WriteRow.kind,
                                            WriteRow.status)).all()
        except Exception as exc:  # noqa: BLE001 - an unreachable database: report no rows
            log.warning("ledger metrics unavailable: %s", type(exc).__name__)
            rows = []
        for org, target, kind, status, n in rows:
            family.add_metric([org, target, kind, status], n)
        yield family


def queue_depths(broker) -> dict[str, int]:
    """Messages waiting per declared queue (delay queues included, as `<queue>.DQ`): the
    in-process broker's pending count, Redis's message hash, RabbitMQ's message count."""
    out: dict[str, int] = {}
    names = sorted(set(broker.get_declared_queues()) | set(broker.get_declared_delay_queues()))
    kind = type(broker).__name__
    for name in names:
        try:
            if kind == "StubBroker":
                out[name] = broker.queues[name].qsize()
            elif kind == "RedisBroker":
                out[name] = int(broker.client.hlen(f"{broker.namespace}:{name}.msgs"))
            elif kind == "RabbitmqBroker":
                out[name] = broker.channel.queue_declare(
                    queue=name, durable=True, passive=True).method.message_count
        except Exception as exc:  # noqa: BLE001 - a broker that cannot answer: no sample
            log.warning("queue depth unavailable: %s", type(exc).__name__)
    return out


class QueueCollector(Collector):
    def __init__(self, jobs) -> None:
        self.jobs = jobs

    def collect(self):
        family = GaugeMetricFamily("chartbridge_queue_depth", "Messages waiting per queue",
                                   labels=["queue"])
        if self.jobs is not None:
            for name, n in queue_depths(self.jobs.broker).items():
                family.add_metric([name], n)
        yield family


class _Default(Collector):
    """This process's own counters and histograms (the single-process mode)."""

    def collect(self):
        yield from REGISTRY.collect()


def make_registry(engine, jobs) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Default())
    registry.register(LedgerCollector(engine))
    registry.register(QueueCollector(jobs))
    return registry


# -- the web app ---------------------------------------------------------------------------
def install(app, engine, jobs) -> None:
    """`GET /metrics`, and the inbound-event counter over every adapter's `<event>` route.

    With CHARTBRIDGE_METRICS_TOKEN (an env:/file: reference) set, `/metrics` answers only a
    request with `Authorization: Bearer <that token>` (401 otherwise); unset, it is open —
    keep it off the public listener then (docs/operations.md)."""
    from flask import Response, request

    registry = make_registry(engine, jobs)
    token = _metrics_token()

    @app.get("/metrics")
    def metrics():
        if token is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return Response("unauthorized\n", status=401, mimetype="text/plain",
                                headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    @app.after_request
    def count_inbound(response):
        args = request.view_args or {}
        if "event" in args and "org" in args and request.method == "POST":
            try:
                known = args["org"] in set(engine.configs.org_ids())
            except Exception:  # noqa: BLE001 - config trouble: the org is not known
                known = False
            event = args["event"]
            accepted = response.status_code != 404 and _NAME.match(str(event) or "")
            org, event = (args["org"] if known else "unknown",
                          event if known and accepted else "unknown")
            INBOUND_EVENTS.labels(org, event, str(response.status_code)).inc()
            log.info("inbound event", extra={"org_id": org, "event": event,
                                             "http_status": response.status_code})
        return response


def _metrics_token() -> str | None:
    from chartbridge.settings import load_settings

    ref = load_settings().metrics_token
    if not ref:
        return None
    from chartbridge.config.secrets import resolve
    return resolve(ref)
