"""WAV decoding and chunk-boundary handling, with nothing but the stdlib and numpy.

Every failure is a PermanentError whose message names the problem (never the content):
the caller records it on the chunk and does not retry, since the same bytes fail the same way.
"""
from __future__ import annotations

import io
import struct
import wave

import numpy as np

from chartbridge.core.errors import PermanentError

SAMPLE_RATE = 16_000          # what whisper wants
MIN_RATE, MAX_RATE = 8_000, 48_000


def decode_wav(data: bytes, *, what: str = "audio") -> np.ndarray:
    """WAV bytes -> mono float32 samples in [-1, 1] at 16 kHz.

    Accepts 8/16/24/32-bit integer PCM, any channel count (averaged to mono) and rates
    8-48 kHz (linearly resampled). Refuses everything else with PermanentError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PermanentError(f"{what}: expected WAV bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise PermanentError(f"{what}: empty (0 bytes)")
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise PermanentError(f"{what}: not a WAV file (no RIFF/WAVE header)")
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            channels, width, rate, nframes = (w.getnchannels(), w.getsampwidth(),
                                              w.getframerate(), w.getnframes())
            raw = w.readframes(nframes)
    except (wave.Error, EOFError, ValueError, struct.error) as exc:
        # wave.Error covers non-PCM formats ("unknown format: 3") and broken chunks.
        raise PermanentError(f"{what}: malformed or truncated WAV ({type(exc).__name__}: "
                             f"{_safe(exc)})") from None
    if channels < 1:
        raise PermanentError(f"{what}: WAV declares {channels} channels")
    if width not in (1, 2, 3, 4):
        raise PermanentError(f"{what}: unsupported sample width {width} bytes")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise PermanentError(f"{what}: unsupported sample rate {rate} Hz "
                             f"(accepted {MIN_RATE}-{MAX_RATE} Hz)")
    frame_bytes = channels * width
    if nframes == 0 or not raw:
        raise PermanentError(f"{what}: WAV holds no audio samples")
    if len(raw) < nframes * frame_bytes:
        raise PermanentError(f"{what}: truncated WAV (header declares {nframes} frames, "
                             f"data holds {len(raw) // frame_bytes})")
    samples = _pcm_to_float(raw, width)
    if channels > 1:
        usable = len(samples) - len(samples) % channels
        samples = samples[:usable].reshape(-1, channels).mean(axis=1)
    if rate != SAMPLE_RATE:
        samples = _resample(samples, rate, SAMPLE_RATE)
    return samples.astype(np.float32, copy=False)


def _safe(exc: Exception) -> str:
    # wave's messages are about structure ("file does not start with RIFF id"); keep short.
    return str(exc)[:80]


def _pcm_to_float(raw: bytes, width: int) -> np.ndarray:
    if width == 1:                                   # unsigned 8-bit
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    if width == 3:
        b = np.frombuffer(raw[: len(raw) - len(raw) % 3], np.uint8).reshape(-1, 3)
        ints = (b[:, 0].astype(np.int32) | (b[:, 1].astype(np.int32) << 8)
                | (b[:, 2].astype(np.int32) << 16))
        ints = np.where(ints & 0x800000, ints - 0x1000000, ints)
        return ints.astype(np.float32) / 8388608.0
    return np.frombuffer(raw, "<i4").astype(np.float32) / 2147483648.0


def _resample(samples: np.ndarray, src: int, dst: int) -> np.ndarray:
    n_out = int(round(len(samples) * dst / src))
    if n_out < 1:
        raise PermanentError("audio: too short to resample")
    x_out = np.arange(n_out) * (src / dst)
    return np.interp(x_out, np.arange(len(samples)), samples).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Chunk boundaries.
#
# A chunk that ends in the middle of speech is split at the last pause near its end: the
# chunk keeps the speech before that pause and hands the rest to the next chunk, which
# receives this chunk's audio as `lead_in`, recomputes the very same point from the very
# same bytes and prepends lead_in[point:]. Both sides agree without sharing state, and
# the cut lands in a pause, so no word is cut, lost or transcribed twice.
# ---------------------------------------------------------------------------------------
FRAME = 320            # 20 ms at 16 kHz
HOP = 160              # 10 ms
SEARCH_S = 3.0         # look for a pause in the chunk's last 3 s
MIN_PAUSE_FRAMES = 6   # ~70 ms of quiet counts as a pause between words
TAIL_FRAMES = 5        # the last ~60 ms: quiet here means the chunk ends in a pause


def _frame_rms(samples: np.ndarray) -> np.ndarray:
    if len(samples) < FRAME:
        return np.zeros(0, np.float32)
    n = 1 + (len(samples) - FRAME) // HOP
    idx = np.arange(FRAME)[None, :] + HOP * np.arange(n)[:, None]
    return np.sqrt(np.mean(samples[idx] ** 2, axis=1))


def handoff_point(samples: np.ndarray) -> int:
    """Sample index where this chunk's own speech ends and the next chunk's begins.

    len(samples) when the chunk ends in a pause (nothing to hand over)."""
    rms = _frame_rms(samples)
    if len(rms) <= TAIL_FRAMES:
        return len(samples)
    loud = float(np.percentile(rms, 95))
    if loud <= 1e-4:
        return len(samples)                       # silence throughout
    quiet = rms < max(2e-3, 0.06 * loud)
    if quiet[-TAIL_FRAMES:].all():
        return len(samples)
    first = max(0, len(rms) - int(SEARCH_S * SAMPLE_RATE / HOP))
    run_end = None
    run = 0
    for i in range(len(rms) - 1, first - 1, -1):  # latest pause long enough
        if quiet[i]:
            if run == 0:
                run_end = i
            run += 1
            if run >= MIN_PAUSE_FRAMES:
                # extend the run backwards to its start, cut in its middle
                j = i
                while j - 1 >= first and quiet[j - 1]:
                    j -= 1
                mid = (j + run_end) // 2
                return mid * HOP + FRAME // 2
        else:
            run = 0
    # no pause: the quietest moment in the search window
    k = first + int(np.argmin(rms[first:]))
    return k * HOP + FRAME // 2
