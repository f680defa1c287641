"""WAV cutting for recordings: a synthetic tone for demos and tests, and the cut of a PCM WAV
into the chunk WAVs Epic announces."""
from __future__ import annotations

import io
import math
import struct
import wave

from chartbridge.core.errors import InputError


def synth_wav(seconds: float, *, rate: int = 16_000, freq: float = 440.0) -> bytes:
    """A 16-bit mono PCM WAV tone of ``seconds`` (for demos and tests without a recording at hand)."""
    frames = int(seconds * rate)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        step = 2 * math.pi * freq / rate
        # One second holds a whole number of cycles for an integer freq: compute it once, then tile.
        second = b"".join(struct.pack("<h", int(3000 * math.sin(step * i))) for i in range(rate))
        whole, rest = divmod(frames, rate)
        w.writeframes(second * whole + second[: rest * 2])
    return buf.getvalue()


def cut_wav(data: bytes, chunk_seconds: float) -> tuple[tuple[int, int, int], list[tuple[bytes, int]]]:
    """Cut a PCM WAV into chunk WAVs of ``chunk_seconds`` (last one may be shorter).

    Returns ((channels, sample width, rate), [(chunk wav bytes, duration ms), ...])."""
    if not isinstance(chunk_seconds, (int, float)) or chunk_seconds <= 0:
        raise InputError("chunk_seconds must be a positive number", field="chunk_seconds")
    try:
        with wave.open(io.BytesIO(data), "rb") as src:
            channels, width, rate = src.getnchannels(), src.getsampwidth(), src.getframerate()
            total = src.getnframes()
            pcm = src.readframes(total)
    except (wave.Error, EOFError, struct.error) as exc:
        raise InputError("audio is not a readable PCM WAV file", field="wav") from exc
    if total == 0:
        raise InputError("audio holds no samples", field="wav")
    frame_bytes = channels * width
    per_chunk = max(1, int(chunk_seconds * rate))
    chunks: list[tuple[bytes, int]] = []
    for start in range(0, total, per_chunk):
        n = min(per_chunk, total - start)
        out = io.BytesIO()
        with wave.open(out, "wb") as w:
            w.setnchannels(channels)
            w.setsampwidth(width)
            w.setframerate(rate)
            w.writeframes(pcm[start * frame_bytes:(start + n) * frame_bytes])
        chunks.append((out.getvalue(), round(n * 1000 / rate)))
    return (channels, width, rate), chunks

