"""The visit fixtures the quality benchmarks read, and their transcripts (cached).

A visit is `NAME.txt` (the script: `Clinician: ...` / `Patient: ...` lines), `NAME.wav`
(espeak-ng from the script, tests/fixtures/encounters/make-audio.sh) and `NAME.facts.yaml`
(the facts its note must hold, per section) in one of three groups:

    tests/fixtures/encounters/   the shared fixtures (the figures the README reports)
    tests/fixtures/dev/          visits of our own that the drafter's rules were tuned on
    tests/fixtures/holdout/      visits of our own never used for tuning (generalisation)

Transcripts are cached as JSON under var/cache/transcripts/ (git-ignored), keyed by the
WAV's hash and everything that changes the transcriber's output, so iterating on the
drafter never re-runs speech recognition; `--no-cache` or deleting the folder re-runs it."""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chartbridge.core.models import TranscriptSegment  # noqa: E402
from chartbridge.core.ports import SpokenSegment  # noqa: E402
from tests.transcription.helpers import transcribe_chunked  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
GROUPS = ("encounters", "dev", "holdout")
CACHE = ROOT / "var" / "cache" / "transcripts"
CHUNK_SECONDS = 10.0
# Bump when the transcriber's post-processing changes what a cached transcript would be.
PIPELINE_VERSION = "9"


@dataclass(frozen=True)
class Visit:
    name: str
    group: str
    dir: Path

    @property
    def wav(self) -> Path:
        return self.dir / f"{self.name}.wav"

    def script(self) -> list[tuple[str, str]]:
        out = []
        for line in (self.dir / f"{self.name}.txt").read_text().splitlines():
            if line.strip():
                who, _, text = line.partition(":")
                out.append((who.strip(), text.strip()))
        return out

    def reference(self) -> str:
        return " ".join(t for _, t in self.script())

    def facts(self) -> dict[str, list[list[str]]]:
        """{section code: [[alternative, ...] per fact]}."""
        raw = yaml.safe_load((self.dir / f"{self.name}.facts.yaml").read_text()) or {}
        return {str(code): [[a.strip() for a in str(f).split("|") if a.strip()]
                            for f in facts] for code, facts in raw.items()}


def visits(groups=GROUPS) -> list[Visit]:
    out = []
    for group in groups:
        d = FIXTURES / group
        for txt in sorted(d.glob("*.txt")):
            if (d / f"{txt.stem}.wav").is_file() and (d / f"{txt.stem}.facts.yaml").is_file():
                out.append(Visit(txt.stem, group, d))
    return out


def _key(visit: Visit, transcriber, label: str) -> str:
    h = hashlib.sha256(visit.wav.read_bytes()).hexdigest()[:16]
    model_bin = Path(transcriber.model_dir) / "model.bin"
    conf = json.dumps({"model": [transcriber.model_id, model_bin.stat().st_size],
                       "compute": transcriber.compute_type,
                       "beam": transcriber.beam_size, "hint_mode": transcriber.hint_mode,
                       "vocab": transcriber.default_vocabulary,
                       "check": (getattr(transcriber, "hint_check", None)
                                 if transcriber.hint_mode != "off" else None),
                       "boundary": transcriber.boundary, "chunk": CHUNK_SECONDS,
                       "v": PIPELINE_VERSION if transcriber.hint_mode != "off" else "off-t0b"},
                      sort_keys=True)
    return f"{visit.name}-{h}-{label}-{hashlib.sha256(conf.encode()).hexdigest()[:12]}"


def transcript(visit: Visit, transcriber, *, label: str = "raw",
               use_cache: bool = True) -> tuple[list[SpokenSegment], float]:
    """The visit transcribed as the chunk pipeline does (10 s chunks, lead_in, final),
    and the seconds it took (0.0 when it came from the cache)."""
    import time

    path = CACHE / f"{_key(visit, transcriber, label)}.json"
    if use_cache and path.is_file():
        data = json.loads(path.read_text())
        return [SpokenSegment(**s) for s in data["segments"]], 0.0
    t0 = time.perf_counter()
    spoken = transcribe_chunked(transcriber, visit.wav.read_bytes(), CHUNK_SECONDS)
    took = time.perf_counter() - t0
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"segments": [s.__dict__ for s in spoken], "seconds": took}))
    return spoken, took


def as_segments(spoken, recording_id: str = "rec-1") -> list[TranscriptSegment]:
    """Spoken segments as stored transcript segments (ids "<recording>/<chunk>/<n>")."""
    per = int(CHUNK_SECONDS * 1000)
    return [TranscriptSegment(id=f"{recording_id}/{s.start_ms // per + 1}/{n}",
                              session_id="sess-1", recording_id=recording_id,
                              chunk_sequence=s.start_ms // per + 1, start_ms=s.start_ms,
                              end_ms=s.end_ms, text=s.text, confidence=s.confidence)
            for n, s in enumerate(spoken)]
