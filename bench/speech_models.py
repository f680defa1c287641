"""The packaged Whisper models compared on the visit fixtures: WER, drug-name recall and
real-time factor on 2 CPU threads (the figures behind the default in models.py).

    .venv/bin/python bench/speech_models.py            # all packaged models, all visits
    .venv/bin/python bench/speech_models.py --rtf-only --groups encounters

WER and drug recall come from the pipeline's transcripts (10 s chunks, lead-in, hints on
with the hint check; bench/visits.py caches them). Drug recall = drug names of the scripts
(note_quality.DRUGS) found in the transcript. RTF = seconds of processing / seconds of
audio, timed afresh (never from the cache) on the shared fixtures with cpu_threads=2, each
model in the same run so the ratio between them holds even on a busy machine."""
from __future__ import annotations

import argparse
import sys
import time
import wave
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.note_quality import DRUGS, _words  # noqa: E402
from bench.visits import transcript, visits  # noqa: E402
from chartbridge.adapters.transcription import FasterWhisperTranscriber  # noqa: E402
from chartbridge.adapters.transcription.models import PACKAGED  # noqa: E402
from tests.transcription.helpers import transcribe_chunked, wer  # noqa: E402


def drugs_said(script: str) -> set[str]:
    return {w for w in _words(script) if w in set(DRUGS)}


def seconds_of_audio(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", default="encounters,dev,holdout")
    ap.add_argument("--rtf-only", action="store_true")
    args = ap.parse_args(argv)
    vs = visits(tuple(args.groups.split(",")))
    print("| model | WER hints | WER no hints | drug names heard | RTF (2 threads) |")
    print("|---|---|---|---|---|")
    rtf = {}
    for name in PACKAGED:
        hinted = FasterWhisperTranscriber(model=name, cpu_threads=2)
        plain = FasterWhisperTranscriber(model=name, cpu_threads=2, hint_mode="off")
        hinted.model()                                      # load outside the timing
        fixtures = [v for v in vs if v.group == "encounters"] or vs[:1]
        t0 = time.perf_counter()
        for v in fixtures:
            transcribe_chunked(hinted, v.wav.read_bytes())
        rtf[name] = (time.perf_counter() - t0) / sum(seconds_of_audio(v.wav) for v in fixtures)
        if args.rtf_only:
            print(f"| {name} | | | | {rtf[name]:.3f} |")
            continue
        w_on, w_off, heard, said = [], [], 0, 0
        for v in vs:
            on = " ".join(s.text for s in transcript(v, hinted)[0])
            off = " ".join(s.text for s in transcript(v, plain)[0])
            w_on.append(wer(v.reference(), on))
            w_off.append(wer(v.reference(), off))
            drugs = drugs_said(v.reference())
            said += len(drugs)
            heard += len(drugs & set(_words(on)))
        print(f"| {name} | {sum(w_on) / len(w_on):.3f} | {sum(w_off) / len(w_off):.3f} | "
              f"{heard}/{said} | {rtf[name]:.3f} |")
    if len(rtf) > 1:
        a, b = list(rtf)
        print(f"RTF ratio {b}/{a}: {rtf[b] / rtf[a]:.2f} (same run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
