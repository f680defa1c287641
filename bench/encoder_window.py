"""Could a chunk cost less CPU by encoding only its own length? Whisper pads every window
to 30 s of mel frames (faster-whisper's `pad_or_trim`), so a 10 s chunk (13 s with its
lead-in) pays the encoder for 30 s. CTranslate2 accepts shorter inputs; this measures what
that would buy and what it costs, on the visit fixtures, as the chunk pipeline transcribes
them (10 s chunks, lead-in, hints with the hint check):

    .venv/bin/python bench/encoder_window.py [--model tiny.en] [--pad 100,500,1000]

For each padding P (mel frames, 100 a second) past the window's own length, the seconds
taken and each fixture's WER, beside the padded 30 s in the same run. Not used by the
engine: the measurement behind docs/bench/README.md's clinic section. Writes
docs/bench/encoder_window.png; prints, last, the time ratio and the WER change of the
fastest padding against 30 s.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faster_whisper.transcribe as fw_transcribe  # noqa: E402
from faster_whisper.audio import pad_or_trim  # noqa: E402

from bench._common import bar_plot  # noqa: E402
from bench.visits import visits  # noqa: E402
from chartbridge.adapters.transcription import FasterWhisperTranscriber  # noqa: E402
from tests.transcription.helpers import joined, transcribe_chunked, wer  # noqa: E402

_pad: dict[str, int | None] = {"frames": None}


def _window(features, length: int = 3000, *, axis: int = -1):
    """faster-whisper's pad_or_trim, padding only `frames` past the features' own length."""
    if _pad["frames"] is not None:
        length = min(length, features.shape[axis] + _pad["frames"])
        length += length % 2                     # the encoder's conv stride is 2
    return pad_or_trim(features, length, axis=axis)


def run(transcriber, fixtures) -> tuple[float, list[float]]:
    start, wers = time.perf_counter(), []
    for v in fixtures:
        reference = " ".join(text for _, text in v.script())
        wers.append(wer(reference, joined(transcribe_chunked(transcriber, v.wav.read_bytes()))))
    return time.perf_counter() - start, wers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="packaged model (default: the default)")
    ap.add_argument("--pad", default="100,500,1000", help="mel frames past the length")
    ap.add_argument("--groups", default="encounters")
    args = ap.parse_args()
    fw_transcribe.pad_or_trim = _window          # the one call that pads each window
    fixtures = visits(tuple(args.groups.split(",")))
    transcriber = FasterWhisperTranscriber(model=args.model, cpu_threads=2)
    transcriber.model()                           # loaded outside the timing
    results = {}
    for pad in [None] + [int(p) for p in args.pad.split(",")]:
        _pad["frames"] = pad
        results[pad] = run(transcriber, fixtures)
        secs, wers = results[pad]
        label = "padded to 30 s" if pad is None else f"length + {pad} frames"
        print(f"{label:22} {secs:6.1f} s   WER " + " ".join(f"{w:.3f}" for w in wers)
              + f"   mean {sum(wers) / len(wers):.3f}", flush=True)
    base_secs, base_wers = results[None]
    fastest = min((p for p in results if p is not None), key=lambda p: results[p][0])
    secs, wers = results[fastest]
    bars = {}
    for pad, (t, w) in results.items():
        label = "30 s" if pad is None else f"+{pad} frames"
        bars[f"{label}: mean WER, %"] = 100 * sum(w) / len(w)
        bars[f"{label}: time, % of 30 s"] = 100 * t / base_secs
    plot = bar_plot("encoder_window", f"Encoder window vs Whisper's padded 30 s "
                    f"({transcriber.model_id}, {len(fixtures)} visits)", bars, "percent",
                    "shorter windows: less time, more word errors")
    print(f"plot  {plot}")
    print(f"model {transcriber.model_id}: length + {fastest} frames takes "
          f"{secs / base_secs:.2f} x the time of 30 s windows; mean WER "
          f"{sum(base_wers) / len(base_wers):.3f} -> {sum(wers) / len(wers):.3f}")


if __name__ == "__main__":
    main()
