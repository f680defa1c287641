"""Real audio through the default model: chunked vs whole accuracy, offsets, notes drafted
from it (the full per-fact measure is bench/note_quality.py, test_note_quality.py)."""
from __future__ import annotations

import pytest

from chartbridge.adapters.notegen import RuleBasedGenerator
from chartbridge.core.models import NoteType

from .conftest import as_transcript
from .helpers import ENCOUNTERS, chunk_wav, joined, reference_text, wav_bytes, wer

pytestmark = pytest.mark.slow

ALL = ["10164-2", "10187-3", "29545-1", "51847-2"]
# From the scripts: diagnosis + plan words in A&P, the patient's complaint in HPI.
EXPECTED = {
    "encounter-1": {"ap": ["pneumonia", "amoxicillin"], "hpi": ["short of breath", "stairs"]},
    "encounter-2": {"ap": ["diabetes", "metformin", "podiatry"],
                    "hpi": ["metformin twice a day"]},
    "encounter-3": {"ap": ["lateral ankle", "ibuprofen", "brace"], "hpi": ["twisted", "ankle"]},
}


@pytest.mark.parametrize("name", ENCOUNTERS)
def test_chunked_wer_within_005_of_whole_file(transcripts, name):
    # Given one fixture transcribed whole and in 10 s chunks with lead_in
    ref = reference_text(name)
    # When both are scored against the script
    whole = wer(ref, joined(transcripts[name]["whole"]))
    chunked = wer(ref, joined(transcripts[name]["chunked"]))
    print(f"{name}: WER whole={whole:.3f} chunked={chunked:.3f}")
    # Then chunking costs at most 0.05 WER (no boundary word lost or doubled)
    assert chunked <= whole + 0.05
    assert whole < 0.35                       # and the engine really transcribed it


@pytest.mark.parametrize("name", ENCOUNTERS)
def test_chunked_segments_are_on_the_recording_timeline(transcripts, name):
    # Given the chunked transcription
    segs = transcripts[name]["chunked"]
    duration_ms = chunk_wav(wav_bytes(name))[-1][0] + 10_000
    # Then times are recording-relative, ordered, within the recording
    assert segs and segs[0].start_ms < 10_000
    assert max(s.start_ms for s in segs) >= 30_000        # later chunks were offset
    assert all(0 <= s.start_ms <= s.end_ms <= duration_ms for s in segs)
    assert [s.start_ms for s in segs] == sorted(s.start_ms for s in segs)
    assert all(s.confidence <= 0 for s in segs)


@pytest.mark.parametrize("name", ENCOUNTERS)
def test_note_from_chunked_transcript_names_diagnosis_plan_and_complaint(transcripts, name):
    # Given the pipeline's transcript of the encounter
    segments = as_transcript(transcripts[name]["chunked"])
    # When a progress note is drafted
    note = RuleBasedGenerator().generate(segments, allowed_sections=ALL,
                                         note_type=NoteType(code="11506-3"))
    by_code = {s.code: s for s in note.sections}
    # Then A&P names the diagnosis and plan, HPI the complaint
    ap, hpi = by_code["51847-2"].text.lower(), by_code["10164-2"].text.lower()
    for word in EXPECTED[name]["ap"]:
        assert word in ap, f"A&P lacks {word!r}"
    for word in EXPECTED[name]["hpi"]:
        assert word in hpi, f"HPI lacks {word!r}"
    assert "29545-1" in by_code                              # exam/vitals were spoken
    # And every section's provenance points at real segments
    ids = {s.id for s in segments}
    for section in note.sections:
        assert section.segment_ids and set(section.segment_ids) <= ids
    assert (note.template_id, note.template_version) == ("11506-3", "2")


def test_model_loaded_once_across_many_calls():
    # Given an empty per-process model cache
    from chartbridge.adapters.transcription import (FasterWhisperTranscriber,
                                                    clear_model_cache, model_load_count)
    clear_model_cache()
    chunks = chunk_wav(wav_bytes("encounter-3"), 2.0)[:3]
    # When two transcriber instances transcribe several chunks
    for t in (FasterWhisperTranscriber(), FasterWhisperTranscriber()):
        for offset_ms, chunk in chunks:
            t.transcribe(chunk, offset_ms=offset_ms, final=True)
    # Then the model was loaded exactly once
    assert model_load_count() == 1


def test_a_chunk_decoded_again_for_the_hint_check_runs_the_encoder_once(monkeypatch):
    # Given the default model, and a chunk whose hinted transcript names a hint term
    # (encounter-1's third chunk: its oxygen saturation), so the check decodes it again
    from chartbridge.adapters.transcription import FasterWhisperTranscriber
    from chartbridge.adapters.transcription import whisper as whisper_mod

    chunks = chunk_wav(wav_bytes("encounter-1"), 10.0)
    (offset_ms, chunk), (_, lead_in) = chunks[2], chunks[1]
    t = FasterWhisperTranscriber()
    memo = t.model().encode
    assert isinstance(memo, whisper_mod.EncoderMemo)
    decodes, runs = [], []
    real_decode, real_encode = t._decode, memo._encode
    monkeypatch.setattr(t, "_decode", lambda *a, **k: decodes.append(1) or real_decode(*a, **k))
    monkeypatch.setattr(memo, "_encode", lambda f: runs.append(1) or real_encode(f))
    # When it is transcribed
    segments = t.transcribe(chunk, offset_ms=offset_ms, lead_in=lead_in)
    # Then it was decoded twice but its audio encoded once
    assert len(decodes) == 2
    assert len(runs) == 1
    # And the transcript is the one an encoder run per decoding gives
    monkeypatch.setattr(whisper_mod.EncoderMemo, "__call__",
                        lambda self, features: self._encode(features))
    assert t.transcribe(chunk, offset_ms=offset_ms, lead_in=lead_in) == segments
