"""The worker: dramatiq actors that carry ids, never state, and a sweeper.

Retries live here, once per call kind: a TransientError re-sends the same message with a
delay (exponential backoff with jitter, never sooner than Retry-After); dramatiq's own
retries are off so nothing is stacked. The database is the truth: the sweeper finds work
announced but not finished (a lost message, a killed worker) and enqueues it again.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import timedelta

import dramatiq
from dramatiq.brokers.stub import StubBroker

from chartbridge.bootstrap import Engine
from chartbridge.core import usecases as uc
from chartbridge.core.errors import (ChartbridgeError, OutcomeUnknown, PermanentError,
                                     TransientError, WriteInProgress)
from chartbridge.core.models import (ChunkState, RecordingStatus, SessionSource,
                                     SessionStatus,
                                     VersionState, WriteKind, WriteStatus)
from chartbridge.ledger.writes import backoff_seconds

log = logging.getLogger("chartbridge.worker")

MAX_CHUNK_ATTEMPTS = 8
MAX_STEP_ATTEMPTS = 8


def _handoff(session):
    """The capabilities of the plugin that opened this session when its drafts go back to
    that EHR for review there (`hands_off_drafts`), else None: API sessions and plugins
    without it are approved here and written to the targets."""
    from chartbridge.adapters.registry import UnknownAdapter, registry

    try:
        caps = registry.get(session.source).capabilities
    except UnknownAdapter:
        return None
    return caps if caps.hands_off_drafts else None


def _hands_off(session) -> bool:
    return _handoff(session) is not None


def make_broker(url: str | None = None) -> dramatiq.Broker:
    """The embedded default is dramatiq's in-process StubBroker; production names Redis or
    RabbitMQ in CHARTBRIDGE_BROKER_URL."""
    url = url if url is not None else os.environ.get("CHARTBRIDGE_BROKER_URL", "")
    if not url or url == "memory://":
        return StubBroker()
    if url.startswith("redis://"):
        from dramatiq.brokers.redis import RedisBroker
        return RedisBroker(url=url)
    if url.startswith("amqp://"):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker
        return RabbitmqBroker(url=url)
    raise ChartbridgeError(f"CHARTBRIDGE_BROKER_URL has an unknown scheme: {url.split(':', 1)[0]}")


@dataclass
class Jobs:
    """The actors, declared on one broker for one engine (no global broker)."""

    engine: Engine
    broker: dramatiq.Broker
    queue: str = "chartbridge"

    def __post_init__(self) -> None:
        opts = dict(broker=self.broker, queue_name=self.queue, max_retries=0)
        # Work after Stop (the last chunk, drafting, the handoff; writes) has its own queue
        # and priority, so it never waits behind other visits' mid-recording chunks; a
        # worker consumes every queue declared on its broker, so both.
        self.after_stop_queue = f"{self.queue}-after-stop"
        after_stop = dict(opts, queue_name=self.after_stop_queue, priority=0)
        self.process_chunk = dramatiq.actor(self._process_chunk, actor_name="process_chunk",
                                            **dict(opts, priority=10))
        self.process_last_chunk = dramatiq.actor(self._process_chunk,
                                                 actor_name="process_last_chunk", **after_stop)
        self.finish_version = dramatiq.actor(self._finish_version, actor_name="finish_version",
                                             **after_stop)
        self.execute_write = dramatiq.actor(self._execute_write, actor_name="execute_write",
                                            **after_stop)
        # webhooks: one attempt per message, claimed under a lease (chartbridge/webhooks)
        self.deliver_webhook = dramatiq.actor(self._deliver_webhook,
                                              actor_name="deliver_webhook", **opts)
        self.engine.attach_queue(self)

    # -- enqueueing --------------------------------------------------------------------------
    def enqueue(self, job: str, *args, delay_s: float | None = None) -> None:
        actor = getattr(self, job)
        if delay_s:
            actor.send_with_options(args=args, delay=int(delay_s * 1000))
        else:
            actor.send(*args)

    # -- chunk: download, store, transcribe ---------------------------------------------------
    def _process_chunk(self, org_id: str, session_id: str, recording_id: str, sequence: int) -> None:
        e = self.engine
        session = e.store.get_session(org_id, session_id)
        chunk = e.store.get_chunk(org_id, session_id, recording_id, sequence)
        if chunk.state != ChunkState.ANNOUNCED:
            self._maybe_finish(org_id, session_id, recording_id)
            return
        attempt = e.store.chunk_attempt(org_id, session_id, recording_id, sequence)
        try:
            audio = e.store.get_audio(org_id, session_id, recording_id, sequence)
            if audio is None:
                audio = self._download(session, recording_id, sequence, chunk.content_type)
            org = e.org(org_id)
            ready = uc.transcribe_chunk(
                e.store, e.transcriber(org_id), org_id=org_id, session=session,
                recording_id=recording_id, sequence=sequence, audio=audio,
                hotwords=_hotwords(org),
                consent_required=_consent_required(org, "capture"))
        except TransientError as exc:
            if attempt >= MAX_CHUNK_ATTEMPTS:
                self._chunk_failed(session, recording_id, sequence,
                                   f"gave up after {attempt} attempts: {exc.message}")
                return
            delay = backoff_seconds(attempt, base=0.5, cap=60, retry_after=exc.retry_after)
            log.info("chunk retry scheduled", extra={"correlation_id": session.correlation_id,
                                                     "attempt": attempt, "delay_s": round(delay, 2)})
            self.enqueue("process_chunk", org_id, session_id, recording_id, sequence, delay_s=delay)
            return
        except ChartbridgeError as exc:      # permanent, a rule, or the org's config: no retry
            self._chunk_failed(session, recording_id, sequence, exc.message)
            return
        if ready is not None:
            self.enqueue("finish_version", org_id, session_id, recording_id, ready.version)

    def _chunk_failed(self, session, recording_id: str, sequence: int, reason: str) -> None:
        """Recorded with its reason (the versions that need it fail with it) and logged at
        WARNING, so a chunk that cannot progress is never silent."""
        self.engine.store.chunk_failed(session.org_id, session.id, recording_id, sequence,
                                       reason)
        log.warning("chunk failed; its reason is on the chunk (chartbridge sessions show)",
                    extra={"correlation_id": session.correlation_id, "status": "failed"})

    def _version_failed(self, session, recording, reason: str) -> None:
        uc.version_finished(self.engine.store, org_id=session.org_id, recording=recording,
                            ok=False, error=reason)
        log.warning("recording version failed; its reason is on the version "
                    "(chartbridge sessions show)",
                    extra={"correlation_id": session.correlation_id, "status": "failed"})

    def _download(self, session, recording_id: str, sequence: int, content_type: str) -> bytes:
        e = self.engine
        if session.source == SessionSource.API:
            raise PermanentError("no audio was uploaded for this chunk")
        newest = e.store.newest_version(session.org_id, session.id, recording_id)
        chunk = e.store.get_chunk(session.org_id, session.id, recording_id, sequence)
        adapter = e.adapter(session.org_id, session.source)   # the inbound plugin that opened it
        if not callable(getattr(adapter, "fetch_chunk", None)):
            raise PermanentError(f"the {session.source} plugin that opened this session serves "
                                 "no audio (core.ports.HandoffAdapter.fetch_chunk)")
        audio, got_type = adapter.fetch_chunk(session.external_id, recording_id,
                                              max(newest or 0, chunk.version), sequence,
                                              callback_url=session.callback_url,
                                              correlation_id=session.correlation_id)
        e.store.store_audio(session.org_id, session.id, recording_id, sequence, audio,
                            got_type or content_type)
        return audio

    def _maybe_finish(self, org_id: str, session_id: str, recording_id: str) -> None:
        ready = self.engine.store.claim_ready_version(org_id, session_id, recording_id)
        if ready is not None:
            self.enqueue("finish_version", org_id, session_id, recording_id, ready.version)

    # -- a complete version: notify (Paused) or draft and hand off (Stopped) -------------------
    def _finish_version(self, org_id: str, session_id: str, recording_id: str, version: int,
                        attempt: int = 1) -> None:
        e = self.engine
        session = e.store.get_session(org_id, session_id)
        recording = next((r for r in e.store.recordings(org_id, session_id)
                          if r.recording_id == recording_id and r.version == version), None)
        if recording is None or recording.state != VersionState.READY:
            return
        if session.status != SessionStatus.OPEN:     # closed: nothing more is sent for it
            self._version_failed(session, recording,
                                 "the session was closed before this version finished")
            return
        try:
            if recording.status == RecordingStatus.PAUSED:
                if _hands_off(session):
                    self._write(uc.notice_command(session, recording, target=session.source,
                                                  resource_kind=_handoff(session).notice_kind))
            else:
                uc.finalize_recording(e.store, e.transcriber(org_id), org_id=org_id,
                                      session=session, recording=recording,
                                      hotwords=_hotwords(e.org(org_id)))
                draft = self._draft_for(org_id, session, recording)
                if _hands_off(session):
                    self._hand_off(session, recording, draft)
            uc.version_finished(e.store, org_id=org_id, recording=recording, ok=True)
        except TransientError as exc:
            if attempt >= MAX_STEP_ATTEMPTS:
                self._version_failed(session, recording,
                                     f"gave up after {attempt} attempts: {exc.message}")
                return
            delay = backoff_seconds(attempt, base=0.5, cap=60, retry_after=exc.retry_after)
            self.enqueue("finish_version", org_id, session_id, recording_id, version, attempt + 1,
                         delay_s=delay)
        except WriteInProgress:
            pass        # another worker holds the write; the sweeper checks on it
        except ChartbridgeError as exc:      # permanent, a rule, unknown outcome, config
            self._version_failed(session, recording, exc.message)

    def _hand_off(self, session, recording, draft) -> None:
        """DocumentationReady for this version, never with a section a clinician edited.

        An edit can be heard after the version was drafted — while an earlier handoff of
        that draft waits for a retry, its answer lost. Its body is then never sent again
        (that would send the edited section): the version is drafted anew without it and the
        new body sent under its own key. The EHR's answer to it settles the earlier one: the
        adapter says whether a refusal means the EHR already held the earlier body
        (`earlier_handoff_delivered`; Epic: 409 for the newest version)."""
        e, org_id = self.engine, session.org_id
        protected = set(e.store.protected(org_id, session.id))
        if protected & {s.code for s in draft.sections}:
            earlier = uc.handoff_command(session, draft, recording, target=session.source,
                                         resource_kind=_handoff(session).handoff_kind,
                                         protected=())
            held = e.ledger.get(org_id, earlier.idempotency_key())
            if held is not None and held.status == WriteStatus.SUCCEEDED:
                return                               # the EHR has this version's note already
            if held is not None and held.status == WriteStatus.IN_FLIGHT:
                raise WriteInProgress("the earlier handoff of this version is in flight")
            draft = uc.draft_note(e.store, e.clock, e.generator(org_id), e.transcriber(org_id),
                                  org_id=org_id, session=session, recording=recording,
                                  settings=_drafting_settings(e.org(org_id)))
            record = e.ledger.execute(
                uc.handoff_command(session, draft, recording, target=session.source,
                                   resource_kind=_handoff(session).handoff_kind,
                                   protected=sorted(protected)),
                e.adapter(org_id, session.source))
            if held is not None and held.status != WriteStatus.FAILED:
                delivered = (record.status == WriteStatus.FAILED
                             and e.adapter(org_id, session.source).earlier_handoff_delivered(
                                 record.outcome or {})
                             and e.store.newest_version(org_id, session.id,
                                                        recording.recording_id)
                             == recording.version)
                e.ledger.settle(org_id, held.key, delivered=delivered,
                                reason="superseded: a section was edited in the EHR before this "
                                       f"handoff was confirmed; draft v{draft.version} was sent "
                                       "without it")
                if delivered:
                    return
            if record.status in (WriteStatus.FAILED, WriteStatus.STALE):
                raise PermanentError(record.last_error or "the EHR refused the note",
                                     status=(record.outcome or {}).get("status"))
            return
        self._write(uc.handoff_command(session, draft, recording, target=session.source,
                                       resource_kind=_handoff(session).handoff_kind,
                                       protected=sorted(protected)))

    def _draft_for(self, org_id: str, session, recording):
        """Reuse this version's draft on a retry, so a resend carries the same body."""
        e = self.engine
        for draft, state in e.store.drafts(org_id, session_id=session.id):
            if draft.recording_version == recording.version and state == "draft":
                return draft
        org = e.org(org_id)
        return uc.draft_note(e.store, e.clock, e.generator(org_id), e.transcriber(org_id),
                             org_id=org_id, session=session, recording=recording,
                             settings=_drafting_settings(org))

    def _write(self, command):
        record = self.engine.ledger.execute(command, self.engine.adapter(command.org_id, command.target))
        if record.status in (WriteStatus.FAILED, WriteStatus.STALE):
            raise PermanentError(record.last_error or "the EHR refused the write",
                                 status=(record.outcome or {}).get("status"))
        return record

    # -- a webhook delivery by id (sweeper) ---------------------------------------------------
    def _deliver_webhook(self, org_id: str, delivery_id: str) -> None:
        from chartbridge.webhooks.wiring import deliverer
        deliverer(self.engine).deliver(org_id, delivery_id)

    # -- a ledger write by key (approvals, sweeper) ------------------------------------------
    def _execute_write(self, org_id: str, key: str) -> None:
        e = self.engine
        record = e.ledger.get(org_id, key)
        if record is None:
            log.warning("execute_write: no such write", extra={"key": key})
            return
        if record.kind == WriteKind.HANDOFF and record.status == WriteStatus.PENDING:
            command = e.ledger.command_of(org_id, key)
            edited = set(e.store.protected(org_id, command.session_id))
            if edited & {s.code for s in (command.draft.sections if command.draft else [])}:
                rid, version = command.extra["recording_id"], command.extra["recording_version"]
                state = next((r.state for r in e.store.recordings(org_id, command.session_id)
                              if r.recording_id == rid and r.version == version), None)
                if state == VersionState.READY:     # drafted anew without the edited section
                    self.enqueue("finish_version", org_id, command.session_id, rid, version)
                else:                               # nothing will redo it: settle it, visibly
                    e.ledger.settle(org_id, key, delivered=False,
                                    reason="not sent again: a section in it was edited in the EHR "
                                           f"since, and its version is {state or 'gone'}")
                return
        try:
            record = e.ledger.execute_key(org_id, key, e.adapter(org_id, record.target))
        except (TransientError, WriteInProgress, OutcomeUnknown):
            return      # the row records it; the sweeper drives it again when due
        if record.status == WriteStatus.SUCCEEDED:
            for child in e.ledger.waiting_on(org_id, key):     # corrections that waited
                self.enqueue("execute_write", org_id, child)


def _hotwords(org) -> list[str]:
    return list(getattr(getattr(org, "transcription", None), "hotwords", None) or [])


def _consent_required(org, scope: str) -> bool:
    policy = getattr(org, "policy", None)
    consent = getattr(policy, "consent", None)
    value = getattr(consent, scope, None) if consent is not None else None
    return str(value) == "required"


def _drafting_settings(org) -> dict:
    drafting = getattr(org, "drafting", None)
    return drafting.model_dump() if drafting is not None else {}


class Sweeper:
    """Finds work the database says is unfinished and enqueues it again."""

    def __init__(self, jobs: Jobs, *, stale_after_s: float = 60.0, leases=None) -> None:
        self.jobs, self.stale_after = jobs, timedelta(seconds=stale_after_s)
        self.leases = leases            # ledger.leases.JobLeases: jobs a live worker holds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep_once(self) -> dict:
        e = self.jobs.engine
        cutoff = e.clock.now() - self.stale_after
        from chartbridge.ledger.leases import job_key
        from chartbridge.recovery import busy_jobs
        busy = busy_jobs(self.leases)
        chunks = [c for c in e.store.pending_chunks(older_than=cutoff)
                  if job_key("process_chunk", *c) not in busy]
        for org_id, session_id, recording_id, seq in chunks:
            e.store.touch_chunk(org_id, session_id, recording_id, seq)
            self.jobs.enqueue("process_chunk", org_id, session_id, recording_id, seq)
        versions = [v for v in e.store.stuck_versions(older_than=cutoff)
                    if job_key("finish_version", *v) not in busy]
        for org_id, session_id, recording_id, version in versions:
            self.jobs.enqueue("finish_version", org_id, session_id, recording_id, version)
        for org_id, session_id, recording_id in e.store.waiting_versions(older_than=cutoff):
            ready = e.store.claim_ready_version(org_id, session_id, recording_id)
            if ready is not None:
                versions.append((org_id, session_id, recording_id, ready.version))
                self.jobs.enqueue("finish_version", org_id, session_id, recording_id,
                                  ready.version)
        writes = e.ledger.due()
        for org_id, key in writes:
            self.jobs.enqueue("execute_write", org_id, key)
        # webhooks: new events become deliveries; due ones (or a dead worker's) are sent
        from chartbridge.webhooks.wiring import deliverer
        hooks = deliverer(e)
        hooks.store.fan_out(hooks.subscribers_of)
        deliveries = hooks.store.due()
        for org_id, delivery_id in deliveries:
            self.jobs.enqueue("deliver_webhook", org_id, delivery_id)
        # expired rows of every kind: cached tokens, page sessions, seen JWT ids, API keys
        purged = e.services.token_cache.purge_expired() + e.services.replay_guard.purge_expired()
        purged += self.leases.purge_expired() if self.leases is not None else 0
        from chartbridge.ledger.idempotency import IdempotencyStore    # the capture API's keys
        purged += IdempotencyStore(e.db, e.clock).purge_expired()
        counts = {"chunks": len(chunks), "versions": len(versions), "writes": len(writes),
                  "webhooks": len(deliveries), "purged": purged}
        from chartbridge.metrics import sweep_counted
        sweep_counted(counts)
        return counts

    def start(self, interval_s: float = 15.0) -> None:
        def loop():
            while not self._stop.wait(interval_s):
                try:
                    self.sweep_once()
                except ChartbridgeError as exc:
                    log.warning("sweep failed: %s", exc.code)
        self._thread = threading.Thread(target=loop, name="chartbridge-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
