"""Fast checks: bad audio, model dir resolution, load-once under threads, boundary split."""
from __future__ import annotations

import io
import struct
import threading
import wave

import numpy as np
import pytest

from chartbridge.adapters.transcription import audio as audio_mod
from chartbridge.adapters.transcription import whisper as whisper_mod
from chartbridge.adapters.transcription import (FasterWhisperTranscriber, decode_wav,
                                                handoff_point, hotword_string)
from chartbridge.core.errors import ConfigError, PermanentError

from .helpers import wav_bytes


def make_wav(samples: np.ndarray, rate=16_000, channels=1, width=2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


class FakeModel:
    def __init__(self):
        self.calls = []

    def transcribe(self, samples, **opts):
        self.calls.append((len(samples), opts))
        seg = type("Seg", (), {"start": 0.5, "end": 1.5, "text": " hello ", "avg_logprob": -0.2})
        return iter([seg]), None


@pytest.fixture
def fake_model(monkeypatch):
    """Swap the model factory for a counting fake; no real model is loaded."""
    loads = []
    model = FakeModel()
    gate = threading.Event()

    def factory(path, compute_type, threads):
        loads.append((path, compute_type))
        gate.wait(5)                    # hold the loader so other threads pile up
        return model

    whisper_mod.clear_model_cache()
    monkeypatch.setattr(whisper_mod, "model_factory", factory)
    yield model, loads, gate
    whisper_mod.clear_model_cache()


WAV = wav_bytes("encounter-1")


@pytest.mark.parametrize("data,problem", [
    (b"", "empty"),
    (b"not audio at all, just text", "not a WAV"),
    (WAV[:30], "malformed or truncated"),
    (WAV[:len(WAV) // 2], "truncated WAV"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt " + struct.pack("<IHHIIHH", 16, 3, 1, 16000, 64000, 4, 32)
     + b"data\x00\x00\x00\x00", "malformed"),                 # IEEE float: not PCM
    (make_wav(np.zeros(1000), rate=96_000), "sample rate 96000"),
    (make_wav(np.zeros(0)), "no audio samples"),
])
def test_bad_audio_is_a_permanent_error_naming_the_problem(data, problem, fake_model):
    # Given a transcriber (fake model: decoding fails before any model use)
    t = FasterWhisperTranscriber()
    # When / Then bad bytes are refused with PermanentError naming the problem
    with pytest.raises(PermanentError) as exc:
        t.transcribe(data)
    assert problem in str(exc.value)
    # And a bad lead_in is named as such
    with pytest.raises(PermanentError, match="lead_in"):
        t.transcribe(make_wav(np.zeros(16_000)), lead_in=data or b"x")


def test_stereo_and_8khz_are_converted_not_refused():
    # Given a 1 s stereo 8 kHz tone
    tone = np.sin(np.linspace(0, 2 * np.pi * 440, 8000 * 2)) * 0.5
    data = make_wav(tone, rate=8000, channels=2)
    # When decoded
    samples = decode_wav(data)
    # Then it is mono 16 kHz float32
    assert samples.dtype == np.float32 and len(samples) == 16_000


def test_engine_failure_is_permanent_error(fake_model, monkeypatch):
    # Given a model that blows up mid-decode
    model, _, gate = fake_model
    gate.set()
    monkeypatch.setattr(model, "transcribe", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("boom")))
    # Then the caller sees PermanentError, not RuntimeError
    with pytest.raises(PermanentError, match="RuntimeError"):
        FasterWhisperTranscriber().transcribe(make_wav(np.zeros(16_000)), final=True)


def test_model_loads_once_under_concurrent_threads(fake_model):
    # Given eight threads transcribing at once while the model is still loading
    model, loads, gate = fake_model
    t = FasterWhisperTranscriber()
    chunk = make_wav(np.zeros(16_000))
    errors, results = [], []

    def work():
        try:
            results.append(t.transcribe(chunk, offset_ms=10_000, final=True))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for th in threads:
        th.start()
    gate.set()
    for th in threads:
        th.join(10)
    # Then the model was loaded once and every call used it, offsets applied
    assert not errors and len(loads) == 1 and len(model.calls) == 8
    assert all(r[0].start_ms == 10_500 and r[0].end_ms == 11_500 for r in results)
    assert whisper_mod.model_load_count() == 1


def test_missing_model_dir_is_config_error_naming_it(tmp_path, monkeypatch):
    # Given a model dir that does not exist, by argument and by env
    missing = tmp_path / "no-such-model"
    with pytest.raises(ConfigError, match="no-such-model"):
        FasterWhisperTranscriber(missing)
    monkeypatch.setenv(whisper_mod.MODEL_DIR_ENV, str(missing))
    with pytest.raises(ConfigError, match="no-such-model"):
        FasterWhisperTranscriber()
    # And a dir without model files
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="model.bin"):
        FasterWhisperTranscriber(tmp_path / "empty")


def test_packaged_models_by_name_default_base_and_not_loaded_at_construction(fake_model):
    model, loads, _ = fake_model
    t = FasterWhisperTranscriber()
    assert (t.name, t.model_id) == ("faster-whisper", "base")
    assert (t.model_dir / "model.bin").stat().st_size > 100_000_000   # both parts joined
    assert FasterWhisperTranscriber(model="tiny.en").model_id == "tiny.en"
    with pytest.raises(ConfigError, match="unknown whisper model 'large'"):
        FasterWhisperTranscriber(model="large")
    # And an org picks one by name (transcription.model); its model_dir wins over the name
    from types import SimpleNamespace

    from chartbridge.adapters.transcription import transcriber_for
    org = SimpleNamespace(transcription=SimpleNamespace(model="tiny.en", model_dir=None))
    assert transcriber_for(org).model_id == "tiny.en"
    org.transcription.model_dir = t.model_dir
    assert transcriber_for(org).model_dir == t.model_dir
    assert loads == []


class HintCopyingModel:
    """Decodes "No chest pain at all since last week, and metformin." (0-6 s) with hints;
    without hints the same words but `plain_last` where "metformin" was, with word times
    as faster-whisper gives them."""

    WORDS = ["No", "chest", "pain", "at", "all", "since", "last", "week,", "and"]

    def __init__(self, plain_last):
        self.plain_last = plain_last
        self.calls = []

    def transcribe(self, samples, **opts):
        self.calls.append(opts)
        hinted = "initial_prompt" in opts or "hotwords" in opts
        last = "metformin." if hinted else self.plain_last
        timed = [(i * 0.55, i * 0.55 + 0.5, " " + w) for i, w in enumerate(self.WORDS)]
        timed.append((5.0, 6.0, " " + last))
        W = type("W", (), {})
        ws = []
        for a, b, w in timed:
            x = W()
            x.start, x.end, x.word = a, b, w
            ws.append(x)
        seg = type("Seg", (), {"start": 0.0, "end": 6.0, "avg_logprob": -0.2,
                               "text": "".join(w for _, _, w in timed),
                               "words": ws if opts.get("word_timestamps") else None})
        return iter([seg]), None


@pytest.mark.parametrize("plain_word, kept", [("uh-huh.", False), ("met for men.", True)])
def test_hint_term_the_unhinted_audio_does_not_support_is_dropped(monkeypatch, plain_word,
                                                                  kept):
    # Given a model that copies the hint "metformin" into what it hears, and whose
    # unhinted decoding of that stretch is `plain_word`
    model = HintCopyingModel(plain_word)
    whisper_mod.clear_model_cache()
    monkeypatch.setattr(whisper_mod, "model_factory", lambda *a: model)
    # When a chunk is transcribed with the default vocabulary as hints
    segs = FasterWhisperTranscriber().transcribe(make_wav(np.zeros(16_000 * 7)), final=True)
    whisper_mod.clear_model_cache()
    # Then the term is kept only where the unhinted audio sounds like it
    said = "No chest pain at all since last week, and"
    assert segs[0].text == (said + " metformin." if kept else said + ".")
    assert "initial_prompt" in model.calls[0] and "initial_prompt" not in model.calls[1]
    assert not model.calls[0].get("word_timestamps") and model.calls[1]["word_timestamps"]
    # And with the check off the hinted text is kept as decoded, in one decoding
    model.calls.clear()
    monkeypatch.setattr(whisper_mod, "model_factory", lambda *a: model)
    segs = FasterWhisperTranscriber(hint_check=False).transcribe(
        make_wav(np.zeros(16_000 * 7)), final=True)
    whisper_mod.clear_model_cache()
    assert segs[0].text == said + " metformin." and len(model.calls) == 1


def test_hints_org_terms_first_and_passed_to_model(fake_model):
    model, _, gate = fake_model
    gate.set()
    FasterWhisperTranscriber().transcribe(make_wav(np.zeros(16_000)), hotwords=["Zepbound"],
                                          final=True)
    opts = model.calls[0][1]
    assert opts["initial_prompt"].startswith("Zepbound, amoxicillin")
    assert len(hotword_string(["x" * 50] * 40)) <= 600
    FasterWhisperTranscriber(hint_mode="hotwords").transcribe(
        make_wav(np.zeros(16_000)), final=True)
    assert "metformin" in model.calls[1][1]["hotwords"]


def speechlike(seconds: float, rate=16_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_handoff_point_is_in_the_last_pause_when_chunk_ends_mid_speech():
    # Given speech, a 0.3 s pause at 8.0-8.3 s, then speech running to the end
    x = np.concatenate([speechlike(8.0), np.zeros(4800, np.float32), speechlike(1.7)])
    # When the handoff point is computed
    p = handoff_point(x)
    # Then it lies inside the pause
    assert 8.0 * 16_000 < p < 8.3 * 16_000


def test_handoff_point_is_the_end_when_chunk_ends_in_a_pause():
    x = np.concatenate([speechlike(9.0), np.zeros(16_000, np.float32)])
    assert handoff_point(x) == len(x)


def test_lead_in_tail_is_prepended_and_timeline_shifted(fake_model):
    # Given a previous chunk ending mid-speech (pause at 8.0-8.3 s of a 10 s chunk)
    model, _, gate = fake_model
    gate.set()
    prev = make_wav(np.concatenate([speechlike(8.0), np.zeros(4800), speechlike(1.7)]))
    cur = make_wav(np.concatenate([speechlike(1.0), np.zeros(16_000 * 9)]))
    # When the current chunk is transcribed with it as lead_in
    segs = FasterWhisperTranscriber().transcribe(cur, offset_ms=10_000, lead_in=prev)
    # Then ~1.85 s of the previous chunk was prepended and times shifted back by it
    lead_samples = model.calls[0][0] - 16_000 * 10
    assert 1.7 * 16_000 < lead_samples < 2.0 * 16_000
    assert segs[0].start_ms == 10_000 - round(lead_samples / 16) + 500
    # And the previous chunk itself keeps only what precedes its pause
    FasterWhisperTranscriber().transcribe(prev, offset_ms=0)
    assert 8.0 * 16_000 < model.calls[1][0] < 8.3 * 16_000


class LoopingWithHintsModel:
    """With hints: stuck repeating "no,"; without: the real words."""

    def __init__(self):
        self.calls = []

    def transcribe(self, samples, **opts):
        self.calls.append(opts)
        text = (" no," * 40 if "initial_prompt" in opts
                else " Your blood pressure today is 152 over 94.")
        seg = type("Seg", (), {"start": 0.0, "end": 2.0, "avg_logprob": -0.3, "text": text,
                               "words": None})
        return iter([seg]), None


def test_hinted_decoding_stuck_in_a_loop_is_decoded_again_without_hints(monkeypatch):
    model = LoopingWithHintsModel()
    whisper_mod.clear_model_cache()
    monkeypatch.setattr(whisper_mod, "model_factory", lambda *a: model)
    segs = FasterWhisperTranscriber().transcribe(make_wav(np.zeros(32_000)), final=True)
    whisper_mod.clear_model_cache()
    assert [s.text for s in segs] == ["Your blood pressure today is 152 over 94."]
    assert "initial_prompt" in model.calls[0] and "initial_prompt" not in model.calls[1]


def test_a_loop_without_hints_falls_back_to_whispers_temperature_schedule(monkeypatch):
    class Looping(LoopingWithHintsModel):
        def transcribe(self, samples, **opts):
            self.calls.append(opts)
            text = " no," * 40 if opts["temperature"] == 0.0 else " Fine."
            seg = type("Seg", (), {"start": 0.0, "end": 2.0, "avg_logprob": -0.3,
                                   "text": text, "words": None})
            return iter([seg]), None

    model = Looping()
    whisper_mod.clear_model_cache()
    monkeypatch.setattr(whisper_mod, "model_factory", lambda *a: model)
    segs = FasterWhisperTranscriber(hint_mode="off").transcribe(make_wav(np.zeros(32_000)),
                                                                final=True)
    whisper_mod.clear_model_cache()
    assert [s.text for s in segs] == ["Fine."]
    assert [c["temperature"] for c in model.calls] == [0.0, whisper_mod.FALLBACK_TEMPERATURES]


def test_encoder_memo_reuses_the_last_output_only_for_the_same_audio_in_the_same_thread():
    # Given the encoder wrapped in the memo the real model gets
    runs = []

    def encode(features):
        runs.append(1)
        return f"encoded#{len(runs)}"
    memo = whisper_mod.EncoderMemo(encode)
    a = np.random.default_rng(1).random((80, 3000), dtype=np.float32)
    b = a.copy()
    b[0, 0] += 1e-3                                  # other audio, one value apart
    # When the same features are encoded twice in a row: one run, the same output
    assert memo(a) == memo(a.copy()) == "encoded#1" and len(runs) == 1
    # Then different features run the encoder again, and so does a shape that differs
    assert memo(b) == "encoded#2"
    assert memo(a[:, :1500]) == "encoded#3"
    # And another thread never gets this thread's output
    out = []
    worker = threading.Thread(target=lambda: out.append(memo(a[:, :1500])))
    worker.start()
    worker.join(5)
    assert out == ["encoded#4"] and len(runs) == 4
