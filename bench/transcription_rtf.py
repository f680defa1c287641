"""Real-time factor of the engine's transcription vs faster-whisper called directly.

    .venv/bin/python bench/transcription_rtf.py [--seconds 10] [--repeat 1]

Engine: FasterWhisperTranscriber over 10 s chunks as the pipeline calls it (offset_ms,
lead_in, WAV decoding, boundary handoff, vocabulary hints). Direct: the same cached
WhisperModel's `transcribe` on the same chunks' samples with the same decode options.
RTF = processing seconds / audio seconds (lower is faster). Not a test."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chartbridge.adapters.transcription import FasterWhisperTranscriber, decode_wav  # noqa: E402
from tests.transcription.helpers import ENCOUNTERS, chunk_wav, wav_bytes  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    t = FasterWhisperTranscriber()
    model = t.model()                                   # load outside the timings
    opts = t.decode_options()
    audio_s = engine_s = direct_s = 0.0
    for _ in range(args.repeat):
        for name in ENCOUNTERS:
            chunks = chunk_wav(wav_bytes(name), args.seconds)
            samples = [decode_wav(c) for _, c in chunks]
            audio_s += sum(len(s) for s in samples) / 16_000
            t0 = time.perf_counter()
            for i, (offset_ms, chunk) in enumerate(chunks):
                t.transcribe(chunk, offset_ms=offset_ms, lead_in=chunks[i - 1][1] if i else None,
                             final=i == len(chunks) - 1)
            engine_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            for s in samples:
                segments, _ = model.transcribe(s, **opts)
                list(segments)
            direct_s += time.perf_counter() - t0
    print(f"model {t.model_id} ({t.compute_type}, CPU), {len(ENCOUNTERS) * args.repeat} "
          f"recordings, {audio_s:.1f} s of audio in {args.seconds:g} s chunks")
    print(f"engine  (FasterWhisperTranscriber): {engine_s:6.2f} s   RTF {engine_s / audio_s:.3f}")
    print(f"direct  (WhisperModel.transcribe):  {direct_s:6.2f} s   RTF {direct_s / audio_s:.3f}")
    print(f"ratio engine/direct: {engine_s / direct_s:.2f}")


if __name__ == "__main__":
    main()
