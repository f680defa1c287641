"""One transcription of each fixture (whole and chunked as the pipeline does), shared by
every slow test in the session: whisper on 2 shared cores is the expensive part."""
from __future__ import annotations

import pytest

from chartbridge.core.models import TranscriptSegment

from .helpers import ENCOUNTERS, wav_bytes


@pytest.fixture(scope="session")
def transcriber():
    from chartbridge.adapters.transcription import FasterWhisperTranscriber

    return FasterWhisperTranscriber()


@pytest.fixture(scope="session")
def transcripts(transcriber):
    """{name: {"whole": [SpokenSegment], "chunked": [SpokenSegment]}}. The chunked ones
    come from bench/visits.py's on-disk cache, shared with bench/note_quality.py's check
    in the same run (the same transcriber settings make the same key)."""
    from bench.visits import transcript, visits

    by_name = {v.name: v for v in visits(("encounters",))}
    out = {}
    for name in ENCOUNTERS:
        data = wav_bytes(name)
        out[name] = {"whole": transcriber.transcribe(data, final=True),
                     "chunked": transcript(by_name[name], transcriber)[0]}
    return out


def as_transcript(spoken, recording_id="rec-1") -> list[TranscriptSegment]:
    return [TranscriptSegment(id=f"{recording_id}/{s.start_ms // 10_000 + 1}/{n}",
                              session_id="sess-1", recording_id=recording_id,
                              chunk_sequence=s.start_ms // 10_000 + 1, start_ms=s.start_ms,
                              end_ms=s.end_ms, text=s.text, confidence=s.confidence)
            for n, s in enumerate(spoken)]
