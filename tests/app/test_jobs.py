"""The worker pipeline on every broker: stub (embedded default), Redis and RabbitMQ.

Chunks are processed by queue jobs that carry ids; the last chunk, in any order, finishes
its version once; a lost message is recovered by the sweeper from the database."""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from dramatiq import Worker

from chartbridge.bootstrap import bootstrap
from chartbridge.core import usecases as uc
from chartbridge.core.models import (ChunkState, Consent, ConsentScope, Identifier, NoteSection, RecordingStatus,
                                     SessionSource, VersionState)
from chartbridge.core.ports import GeneratedNote, SpokenSegment
from chartbridge.jobs import Jobs, Sweeper, make_broker

REPO = Path(__file__).resolve().parents[2]
CI = __import__("os").environ.get("CI", "").lower() in ("1", "true", "yes")


class EchoTranscriber:
    name, model_id = "echo", "0"

    def transcribe(self, audio, *, offset_ms=0, hotwords=(), lead_in=None, final=False):
        return [SpokenSegment(offset_ms, offset_ms + 500, audio.decode(), -0.1)]


class AllInHpi:
    name, version = "all-in-hpi", "1"

    def generate(self, segments, *, allowed_sections, note_type=None, settings=None):
        return GeneratedNote([NoteSection(code="10164-2", text=" ".join(s.text for s in segments),
                                          segment_ids=[s.id for s in segments])], "t", "1")


def _broker(kind: str):
    urls = {"stub": "", "redis": "redis://127.0.0.1:6379/15", "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/"}
    try:
        broker = make_broker(urls[kind])
        if kind == "redis":
            broker.client.ping()
        return broker
    except Exception as exc:  # noqa: BLE001 - any connection failure
        if CI:
            raise
        pytest.skip(f"No connection to {kind}: {exc}")


@pytest.fixture(params=["stub", pytest.param("redis", marks=pytest.mark.redis),
                        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def pipeline(request, database_url, tmp_path):
    cfg = tmp_path / "orgs"
    cfg.mkdir()
    text = (REPO / "config/orgs/demo-multi.yaml").read_text().replace("org: demo-multi", "org: test-org")
    (cfg / "test-org.yaml").write_text(text)
    engine = bootstrap(database_url=database_url, config_dir=cfg,
                       transcriber_factory=lambda org: EchoTranscriber(),
                       generator_factory=lambda org: AllInHpi())
    broker = _broker(request.param)
    jobs = Jobs(engine, broker, queue=f"cb-test-{uuid.uuid4().hex[:8]}")
    worker = Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    yield engine, jobs
    worker.stop(timeout=5000)
    broker.close()
    engine.db.dispose()


def wait_until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.05)


def _session(engine):
    s, _ = uc.open_session(engine.store, engine.clock, org_id="test-org", source=SessionSource.API,
                           external_id=uuid.uuid4().hex, user=Identifier(value="u1", type="EXTERNAL"),
                           patient_ids=[Identifier(value="p1", type="MRN")],
                           encounter_ids=[Identifier(value="e1", type="CSN")],
                           allowed_sections=["10164-2", "51847-2"])
    # the org's policy requires a recorded capture consent before audio is processed
    engine.store.set_consent("test-org", Consent(session_id=s.id, scope=ConsentScope.CAPTURE,
                                                 granted=True, at=engine.clock.now()))
    return s


def _upload(engine, s, seq, text):
    uc.announce_chunk(engine.store, org_id="test-org", session=s, recording_id="R1", sequence=seq,
                      version=1, duration_ms=1000)
    engine.store.store_audio("test-org", s.id, "R1", seq, text.encode(), "audio/wav")


def test_chunks_in_any_order_finish_the_version_once(pipeline):
    engine, jobs = pipeline
    s = _session(engine)
    # Given three uploaded chunks and the version announced before the last one arrives
    for seq, text in ((2, "two"), (1, "one")):
        _upload(engine, s, seq, text)
        jobs.enqueue("process_chunk", "test-org", s.id, "R1", seq)
    uc.announce_version(engine.store, engine.clock, org_id="test-org", session=s, recording_id="R1",
                        version=1, chunk_count=3, status=RecordingStatus.STOPPED)
    _upload(engine, s, 3, "three")
    jobs.enqueue("process_chunk", "test-org", s.id, "R1", 3)
    # Then the version is documented once, from every chunk in recording order
    wait_until(lambda: engine.store.recordings("test-org", s.id)[0].state == VersionState.DONE)
    drafts = engine.store.drafts("test-org", session_id=s.id)
    assert len(drafts) == 1
    assert drafts[0][0].sections[0].text == "one two three"
    # And a duplicate job for a finished chunk changes nothing
    jobs.process_chunk.fn("test-org", s.id, "R1", 3)          # run inline: no timing guess
    jobs.finish_version.fn("test-org", s.id, "R1", 1)
    assert len(engine.store.drafts("test-org", session_id=s.id)) == 1


def test_sweeper_recovers_a_lost_message(pipeline):
    engine, jobs = pipeline
    s = _session(engine)
    # Given a chunk announced and stored, whose queue message was lost
    _upload(engine, s, 1, "lost")
    uc.announce_version(engine.store, engine.clock, org_id="test-org", session=s, recording_id="R1",
                        version=1, chunk_count=1, status=RecordingStatus.STOPPED)
    assert engine.store.chunks("test-org", s.id)[0].state == ChunkState.ANNOUNCED
    # When the sweeper runs
    counts = Sweeper(jobs, stale_after_s=-1).sweep_once()
    # Then the work is done from the database's record
    assert counts["chunks"] == 1
    wait_until(lambda: engine.store.recordings("test-org", s.id)[0].state == VersionState.DONE)
    assert engine.store.drafts("test-org", session_id=s.id)[0][0].sections[0].text == "lost"


def test_bad_audio_fails_the_chunk_with_a_reason_and_the_worker_lives(pipeline):
    engine, jobs = pipeline
    s = _session(engine)
    _upload(engine, s, 1, "x")
    engine.transcriber_factory = lambda org: _Broken()
    jobs.enqueue("process_chunk", "test-org", s.id, "R1", 1)
    wait_until(lambda: engine.store.chunks("test-org", s.id)[0].state == ChunkState.FAILED)
    assert engine.store.chunks("test-org", s.id)[0].error == "audio is not a WAV file"
    # the worker still processes the next session's chunk
    engine.transcriber_factory = lambda org: EchoTranscriber()
    s2 = _session(engine)
    _upload(engine, s2, 1, "fine")
    jobs.enqueue("process_chunk", "test-org", s2.id, "R1", 1)
    wait_until(lambda: engine.store.chunks("test-org", s2.id)[0].state == ChunkState.TRANSCRIBED)


class _Broken:
    name, model_id = "broken", "0"

    def transcribe(self, audio, **kw):
        from chartbridge.core.errors import PermanentError
        raise PermanentError("audio is not a WAV file")


def test_a_config_problem_fails_the_version_with_its_reason(pipeline):
    engine, jobs = pipeline
    s = _session(engine)
    _upload(engine, s, 1, "words")
    uc.announce_version(engine.store, engine.clock, org_id="test-org", session=s, recording_id="R1",
                        version=1, chunk_count=1, status=RecordingStatus.STOPPED)

    def no_generator(org):
        from chartbridge.core.errors import ConfigError
        raise ConfigError("secret env:X: environment variable is not set")
    engine.generator_factory = no_generator
    jobs.enqueue("process_chunk", "test-org", s.id, "R1", 1)
    wait_until(lambda: engine.store.recordings("test-org", s.id)[0].state == VersionState.FAILED)
    # the reason is kept on the version for the CLI and the pages
    assert engine.store.recordings("test-org", s.id)[0].error == "secret env:X: environment variable is not set"


def test_jobs_is_the_queue_port_the_engine_is_given_not_a_function_assigned_onto_it(tmp_path):
    from dramatiq.brokers.stub import StubBroker

    from chartbridge.core.ports import JobQueue

    # Given an engine built without a worker
    engine = bootstrap(database_url=f"sqlite:///{tmp_path / 'q.db'}", config_dir=tmp_path)
    assert engine.queue is None and not hasattr(engine, "enqueue")
    # When something that is not a queue is attached, Then it is refused
    with pytest.raises(TypeError):
        engine.attach_queue(lambda job, *args: None)
    # When the worker wiring is built on it, Then that Jobs is the engine's JobQueue port
    jobs = Jobs(engine, StubBroker(), queue=f"cb-port-{uuid.uuid4().hex[:8]}")
    assert engine.queue is jobs and isinstance(jobs, JobQueue)
    assert not hasattr(engine, "enqueue")
