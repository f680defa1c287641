"""Measurements behind docs/transcription.md (not a test; takes a few minutes on 2 cores):

    .venv/bin/python -m tests.transcription.measure
"""
from __future__ import annotations

import sys
import time

from chartbridge.adapters.transcription import FasterWhisperTranscriber

from .helpers import ENCOUNTERS, joined, reference_text, transcribe_chunked, wav_bytes, wer


def main(which: list[str]) -> None:
    configs = {
        "whole/off": (dict(hint_mode="off"), False),
        "whole/hotwords": (dict(hint_mode="hotwords"), False),
        "whole/initial_prompt": (dict(hint_mode="initial_prompt"), False),
        "chunked10s/boundary=none/hotwords": (dict(boundary="none"), True),
        "chunked10s/boundary=pause/hotwords": (dict(boundary="pause"), True),
        "chunked10s/boundary=pause/initial_prompt": (dict(hint_mode="initial_prompt"), True),
        "chunked10s/boundary=pause/off": (dict(hint_mode="off"), True),
    }
    for label, (kwargs, chunked) in configs.items():
        if which and not any(w in label for w in which):
            continue
        t = FasterWhisperTranscriber(**kwargs)
        scores = []
        for name in ENCOUNTERS:
            data = wav_bytes(name)
            t0 = time.perf_counter()
            segs = (transcribe_chunked(t, data) if chunked
                    else t.transcribe(data, final=True))
            w = wer(reference_text(name), joined(segs))
            scores.append(w)
            print(f"{label:40s} {name}  WER={w:.3f}  ({time.perf_counter() - t0:.1f}s)",
                  flush=True)
            if "-v" in sys.argv:
                print("   ", joined(segs))
        print(f"{label:40s} mean      WER={sum(scores) / len(scores):.3f}", flush=True)


if __name__ == "__main__":
    main([a for a in sys.argv[1:] if a != "-v"])
