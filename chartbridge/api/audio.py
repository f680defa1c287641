"""One uploaded chunk: WAV as it is, or the browser's own format (WebM/Opus or Ogg/Opus
from MediaRecorder, MP4/AAC from Safari), each chunk decodable on its own. Anything else is
refused before anything is stored, with the reason (never the content).

A non-WAV chunk is decoded with PyAV (FFmpeg, already there for faster-whisper) to 16 kHz
mono 16-bit PCM and stored as WAV, so the worker hears every chunk the same way. Decoding is
deterministic, so the same bytes uploaded again store the same WAV.
"""
from __future__ import annotations

import io
import wave
from dataclasses import dataclass

from chartbridge.core.errors import ChartbridgeError

RATE = 16_000
MAX_SECONDS = 600


class NotAudio(ChartbridgeError):
    code = "not_audio"
    http_status = 422

    def __init__(self, message: str) -> None:
        super().__init__(message, field="body")


@dataclass(frozen=True)
class Chunk:
    wav: bytes
    duration_ms: int
    source_format: str           # "wav", "webm", "ogg", "mp4"...


def normalize(data: bytes) -> Chunk:
    if not data:
        raise NotAudio("the chunk is empty (0 bytes)")
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return _wav(data)
    return _decoded(data)


def _wav(data: bytes) -> Chunk:
    from chartbridge.adapters.transcription.audio import decode_wav
    from chartbridge.core.errors import PermanentError

    try:
        samples = decode_wav(data, what="chunk")
    except PermanentError as exc:
        raise NotAudio(exc.message) from None
    return Chunk(data, int(len(samples) * 1000 / RATE), "wav")


def _decoded(data: bytes) -> Chunk:
    import av
    import numpy as np

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            streams = container.streams.audio
            if not streams:
                raise NotAudio("the chunk holds no audio stream")
            fmt = (container.format.name or "audio").split(",")[0]
            fmt = {"matroska": "webm"}.get(fmt, fmt)
            resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
            parts = []
            total = 0
            for frame in container.decode(streams[0]):
                for out in resampler.resample(frame):
                    pcm = out.to_ndarray().reshape(-1)
                    parts.append(pcm)
                    total += len(pcm)
                if total > MAX_SECONDS * RATE:
                    raise NotAudio(f"the chunk is longer than {MAX_SECONDS} s")
            for out in resampler.resample(None):
                parts.append(out.to_ndarray().reshape(-1))
    except NotAudio:
        raise
    except (av.error.FFmpegError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise NotAudio("the chunk is neither WAV nor audio the engine can decode "
                       f"({type(exc).__name__})") from None
    pcm = np.concatenate(parts).astype("<i2") if parts else np.zeros(0, "<i2")
    if len(pcm) == 0:
        raise NotAudio("the chunk decodes to no audio samples")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    return Chunk(out.getvalue(), int(len(pcm) * 1000 / RATE), fmt)
