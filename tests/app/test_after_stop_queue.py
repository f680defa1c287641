"""Work after Stop has its own queue and priority (chartbridge/jobs.py): when Epic says a
recording is Stopped, its chunks not yet transcribed go again on the after-stop queue, so the
clinician's note never waits behind other visits' mid-recording chunks; drafting and the
handoff are on that queue too, and one worker consumes both."""
from __future__ import annotations

import io
import time
import wave
from pathlib import Path

from dramatiq import Worker

from contract_tests.epic_haiku.stack import ORG, ChunkTranscriber, EpicStack
from contract_tests.epic_haiku.test_contract import ThreeSections


def tone_wav(seconds: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(b"\x01\x00" * 8000 * seconds)
    return out.getvalue()


def queued(broker, queue: str) -> list[str]:
    return [m.actor_name for m in _messages(broker, queue)]


def _messages(broker, queue):
    from dramatiq import Message
    q = broker.queues[queue]
    return [Message.decode(data) for data in list(q.queue)]


def test_stopped_recording_sends_its_pending_chunks_to_the_after_stop_queue(tmp_path: Path):
    with EpicStack(tmp_path, f"sqlite:///{tmp_path / 'e.db'}", in_process_worker=False,
                   transcriber_factory=lambda org: ChunkTranscriber(),
                   generator_factory=lambda org: ThreeSections(),
                   sweep_interval_s=3600) as stack:
        broker, jobs = stack.rt.jobs.broker, stack.rt.jobs
        sim = stack.sim
        sim.begin_session(ORG, session_id="AMB-STOP-1")
        # Given a recording of 3 chunks announced while nothing was transcribed yet
        sim.record("AMB-STOP-1", tone_wav(3), chunk_seconds=1, status="Paused")
        assert queued(broker, jobs.queue) == ["process_chunk"] * 3
        assert queued(broker, jobs.after_stop_queue) == []
        # When a new version is Stopped (one more chunk)
        sim.record("AMB-STOP-1", tone_wav(1), chunk_seconds=1, status="Stopped")
        # Then every chunk still waiting is on the after-stop queue as well
        assert sorted(m.args[3] for m in _messages(broker, jobs.after_stop_queue)
                      if m.actor_name == "process_last_chunk") == [1, 2, 3, 4]
        # and the after-stop actors outrank the chunk queue for a worker's threads
        assert jobs.process_last_chunk.priority < jobs.process_chunk.priority
        assert jobs.finish_version.queue_name == jobs.execute_write.queue_name == \
            jobs.after_stop_queue
        # When one worker runs: it consumes both queues, the copies left behind are no-ops,
        # and DocumentationReady reaches Epic once
        worker = Worker(broker, worker_threads=2, worker_timeout=100)
        worker.start()
        try:
            sim.wait_documentation("AMB-STOP-1", 2, timeout=30)
            broker.join(jobs.queue, timeout=30_000)
            broker.join(jobs.after_stop_queue, timeout=30_000)
        finally:
            worker.stop()
        assert [d.event for d in sim.deliveries].count("RecordingAvailable") == 2
        assert len([c for c in sim.call_log("DocumentationReady") if c[1] < 300]) == 1
