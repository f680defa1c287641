"""Shared helpers for the transcription tests, the measurement script and the benchmark:
fixture loading, cutting a WAV into pipeline-sized chunks, and WER normalisation."""
from __future__ import annotations

import io
import wave
from pathlib import Path

# One normalisation for WER, the note-quality facts and the traceability checker.
from chartbridge.core.trace import normalise  # noqa: F401

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "encounters"
ENCOUNTERS = ("encounter-1", "encounter-2", "encounter-3")


def wav_bytes(name: str) -> bytes:
    return (FIXTURES / f"{name}.wav").read_bytes()


def script_lines(name: str) -> list[tuple[str, str]]:
    """[(speaker, text)] from the fixture's script."""
    out = []
    for line in (FIXTURES / f"{name}.txt").read_text().splitlines():
        if line.strip():
            who, _, text = line.partition(":")
            out.append((who.strip(), text.strip()))
    return out


def reference_text(name: str) -> str:
    return " ".join(text for _, text in script_lines(name))


def chunk_wav(data: bytes, seconds: float = 10.0) -> list[tuple[int, bytes]]:
    """Cut a WAV on sample boundaries into `seconds`-long WAVs: [(offset_ms, bytes)]."""
    with wave.open(io.BytesIO(data), "rb") as w:
        params = w.getparams()
        frames = w.readframes(w.getnframes())
    rate, frame_bytes = params.framerate, params.sampwidth * params.nchannels
    per = int(rate * seconds)
    out = []
    for start in range(0, len(frames) // frame_bytes, per):
        buf = io.BytesIO()
        with wave.open(buf, "wb") as o:
            o.setnchannels(params.nchannels)
            o.setsampwidth(params.sampwidth)
            o.setframerate(rate)
            o.writeframes(frames[start * frame_bytes:(start + per) * frame_bytes])
        out.append((start * 1000 // rate, buf.getvalue()))
    return out


def transcribe_chunked(transcriber, data: bytes, seconds: float = 10.0, hotwords=()):
    """As the chunk pipeline does: one call per chunk with offset_ms and lead_in."""
    chunks = chunk_wav(data, seconds)
    segments = []
    for i, (offset_ms, chunk) in enumerate(chunks):
        segments += transcriber.transcribe(
            chunk, offset_ms=offset_ms, hotwords=hotwords,
            lead_in=chunks[i - 1][1] if i else None, final=i == len(chunks) - 1)
    return segments


def wer(reference: str, hypothesis: str) -> float:
    import jiwer

    return jiwer.wer(normalise(reference), normalise(hypothesis))


def joined(segments) -> str:
    return " ".join(s.text for s in segments)
