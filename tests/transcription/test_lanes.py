"""Work after Stop is not slowed by mid-recording chunks competing for the same cores: a
mid-recording chunk's job runs in the background lane (core/scheduling.py), which the
whisper transcriber serves from a replica of its own whose threads run at a lower
operating-system priority (nice +10), while the foreground replica keeps the job's."""
from __future__ import annotations

import glob
import os
import threading

import numpy as np
import pytest

from chartbridge.adapters.transcription import whisper as whisper_mod
from chartbridge.core import scheduling

from tests.app.test_jobs import _session, _upload, pipeline  # noqa: F401 - the fixture

pytestmark = pytest.mark.skipif(not hasattr(os, "setpriority"), reason="needs setpriority")


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


class _Model:
    def transcribe(self, samples, **opts):
        return iter(()), None


@pytest.fixture
def loads(monkeypatch):
    """The model factory swapped for one that records each load and the nice value of the
    thread that built it."""
    got = []

    def factory(path, compute_type, threads):
        got.append((scheduling.lane(), _nice()))
        return _Model()

    whisper_mod.clear_model_cache()
    monkeypatch.setattr(whisper_mod, "model_factory", factory)
    yield got
    whisper_mod.clear_model_cache()


def test_each_lane_has_its_own_replica_the_background_one_built_at_lower_priority(loads):
    t = whisper_mod.FasterWhisperTranscriber(whisper_mod.resolve_model_dir())
    # When the foreground asks twice and the background twice
    fg = t.model(), t.model()
    with scheduling.background():
        bg = t.model(), t.model()
    # Then there are two replicas, each loaded once
    assert fg[0] is fg[1] and bg[0] is bg[1] and fg[0] is not bg[0]
    assert len(loads) == 2 and whisper_mod.model_load_count() == 2
    # And the background one was built on a thread 10 nice steps lower (capped at 19),
    # the foreground one at the caller's own priority, which is left as it was
    mine = _nice()
    assert loads[0] == (scheduling.FOREGROUND, mine)
    assert loads[1][1] == min(19, mine + whisper_mod.BACKGROUND_NICE)
    assert _nice() == mine and scheduling.lane() == scheduling.FOREGROUND


def _thread_nices() -> dict[int, int]:
    out = {}
    for stat in glob.glob("/proc/self/task/*/stat"):
        try:
            fields = open(stat).read().rsplit(")", 1)[1].split()
        except OSError:                              # the thread ended meanwhile
            continue
        out[int(stat.split("/")[4])] = int(fields[16])      # field 19: nice
    return out


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc")
def test_the_background_replicas_compute_threads_run_at_the_lower_priority():
    # Given the real packaged tiny.en model in the background lane
    whisper_mod.clear_model_cache()
    before = set(_thread_nices())
    t = whisper_mod.FasterWhisperTranscriber(model="tiny.en")
    mine = _nice()
    try:
        with scheduling.background():
            t.transcribe_samples(np.zeros(16000 * 2, np.float32))
        # Then CTranslate2's own threads for it (the replica's worker and its OpenMP team)
        # were started at the lower priority
        new = {tid: n for tid, n in _thread_nices().items() if tid not in before}
        assert [n for n in new.values() if n == min(19, mine + whisper_mod.BACKGROUND_NICE)]
        assert _nice() == mine
    finally:
        whisper_mod.clear_model_cache()


class _LaneRecorder:
    name, model_id = "lane-recorder", "0"

    def __init__(self, lanes):
        self.lanes = lanes

    def transcribe(self, audio, *, offset_ms=0, hotwords=(), lead_in=None, final=False):
        from chartbridge.core.ports import SpokenSegment
        self.lanes.append((audio.decode(), scheduling.lane()))
        return [SpokenSegment(offset_ms, offset_ms + 500, audio.decode(), -0.1)]


def test_mid_recording_chunks_run_in_the_background_and_after_stop_work_in_the_foreground(
        pipeline):  # noqa: F811
    engine, jobs = pipeline
    lanes = []
    engine.transcriber_factory = lambda org: _LaneRecorder(lanes)
    s = _session(engine)
    from chartbridge.core import usecases as uc
    from chartbridge.core.models import RecordingStatus
    # Given a chunk processed while the clinician is still recording
    _upload(engine, s, 1, "during")
    jobs.process_chunk.fn("test-org", s.id, "R1", 1)       # run inline: no timing guess
    # And, after the Stop, the last chunk on the after-stop queue
    uc.announce_version(engine.store, engine.clock, org_id="test-org", session=s,
                        recording_id="R1", version=1, chunk_count=2,
                        status=RecordingStatus.STOPPED)
    _upload(engine, s, 2, "after")
    jobs.process_last_chunk.fn("test-org", s.id, "R1", 2)
    # Then the first was heard in the background lane, the last in the foreground
    assert ("during", scheduling.BACKGROUND) in lanes
    assert ("after", scheduling.FOREGROUND) in lanes
    # And nothing after the Stop ran in the background (the final pass hears chunks again)
    heard = len(lanes)
    jobs.finish_version.fn("test-org", s.id, "R1", 1)
    assert all(lane == scheduling.FOREGROUND for _, lane in lanes[heard:])
    assert all(lane == scheduling.FOREGROUND for text, lane in lanes if text == "after")
    assert scheduling.lane() == scheduling.FOREGROUND
