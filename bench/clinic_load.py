"""A full clinic on two cores: N visits recording at once, their 10 s chunks arriving in real
time from the Epic simulator, two worker processes on PostgreSQL + Redis; the time from the
Stop (the last chunk's RecordingChunkAvailable + RecordingAvailable(Stopped)) to Epic's
DocumentationReady accepted, p50/p95 per N.

    .venv/bin/python bench/clinic_load.py [--levels 1,4,8,12] [--workers 2] [--threads 2]
                                          [--model base|tiny.en]

The engine is the production shape: the web app on waitress (this process, jobs left in
Redis) and `--workers` processes running what `chartbridge worker` runs (runtime.start with
the in-process dramatiq worker; real faster-whisper — the org's `transcription.model`,
the packaged default unless --model names another — and the rule-based drafter), with a
queue name of this run's own. Each visit is one of the three fixture encounters (44-48 s of
speech, 5 chunks), started at a random offset within 10 s; chunk k is announced at
start + 10 k s and the last at the visit's end, immediately followed by
RecordingAvailable(Stopped). Work after Stop has its own queue (chartbridge/jobs.py).
Reference, measured in the same run: one direct faster-whisper call on one 10 s chunk (the
work no design can avoid after the stop). Target: p95 < 3 s at N >= 8. Writes
docs/bench/clinic_load.png; prints the largest N with p95 < 3 s and, last, the ratio of the
p95 at the largest N tried to 3 s.
"""
from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import random
import sys
import tempfile
import threading
import time
import uuid
import wave
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REDIS, PgDatabases, line_plot, purge_queue  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "encounters"
CHUNK_S = 10
TARGET_MS = 3000


def _worker(db_url: str, config_dir: str, queue: str, threads: int, ready) -> None:
    """One `chartbridge worker` process (its queue name this run's own)."""
    os.environ["CHARTBRIDGE_BROKER_URL"] = REDIS
    from chartbridge import runtime
    from chartbridge.bootstrap import bootstrap
    from contract_tests.epic_haiku.stack import ORG

    engine = bootstrap(database_url=db_url, config_dir=config_dir, migrate=False)
    transcriber = engine.transcriber(ORG)                 # load the model before the clock
    transcriber.transcribe(_silence(1), offset_ms=0)
    rt = runtime.start(engine, broker_url=REDIS, in_process_worker=True,
                       worker_threads=threads, queue=queue, sweep_interval_s=3600)
    ready.set()
    threading.Event().wait()                              # until the bench terminates us
    rt.stop()


def _silence(seconds: float) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(b"\x00\x00" * int(16000 * seconds))
    return out.getvalue()


def reference_ms(model: str | None) -> float:
    """A direct faster-whisper call on one 10 s chunk, the engine's settings and model."""
    import numpy as np

    from chartbridge.adapters.transcription import FasterWhisperTranscriber
    t = FasterWhisperTranscriber(model=model)
    with wave.open(str(FIXTURES / "encounter-1.wav")) as w:
        pcm = np.frombuffer(w.readframes(w.getframerate() * CHUNK_S), np.int16)
    pcm = pcm.astype(np.float32) / 32768
    model = t.model()
    model.transcribe(pcm[:16000], **t.decode_options())
    start = time.perf_counter()
    segments, _ = model.transcribe(pcm, **t.decode_options())
    list(segments)
    return (time.perf_counter() - start) * 1000


def _default_model() -> str:
    from adapters.transcription.models import DEFAULT_MODEL
    return DEFAULT_MODEL


def set_model(org_file: Path, model: str) -> None:
    """The org file the worker processes load names `model` (transcription.model)."""
    import yaml
    doc = yaml.safe_load(org_file.read_text())
    doc.setdefault("transcription", {})["model"] = model
    org_file.write_text(yaml.safe_dump(doc, sort_keys=False))


def visit(stack, org: str, session_id: str, wav: bytes, seconds: float, delay: float,
          results: dict) -> None:
    sim = stack.sim
    time.sleep(delay)
    csn = str(int(uuid.uuid4().hex[:8], 16))          # each visit its own encounter
    sim.begin_session(org, session_id=session_id, encounter_ids=[{"ID": csn, "Type": "CSN"}])
    rec = sim.record(session_id, wav, chunk_seconds=CHUNK_S, status="Stopped",
                     announce_chunks=[], announce_available=False)
    start = time.monotonic()
    for seq in range(1, rec.chunk_count + 1):
        due = start + min(seq * CHUNK_S, seconds)             # the chunk is recorded by then
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        if seq == rec.chunk_count:
            stopped = time.perf_counter()                     # the clinician pressed Stop
        sim.announce_chunk(session_id, seq)
    sim.announce_recording(session_id, version=1)
    sim.wait_documentation(session_id, 1, timeout=float(os.environ.get("CLINIC_WAIT_S", "600")))
    results[session_id] = (time.perf_counter() - stopped) * 1000


def fixtures() -> list[tuple[bytes, float]]:
    out = []
    for i in (1, 2, 3):
        path = FIXTURES / f"encounter-{i}.wav"
        with wave.open(str(path)) as w:
            out.append((path.read_bytes(), w.getnframes() / w.getframerate()))
    return out


def level(stack, org: str, n: int, rng: random.Random) -> list[float]:
    audio, results, threads, sessions = fixtures(), {}, [], []
    for i in range(n):
        wav, seconds = audio[i % len(audio)]
        sid = f"AMB-CLINIC-{n}-{i}-{uuid.uuid4().hex[:6]}"
        sessions.append(sid)
        t = threading.Thread(target=visit, args=(stack, org, sid, wav, seconds,
                                                 rng.uniform(0, CHUNK_S), results))
        t.start()
        threads.append(t)
    for t in threads:
        t.join(timeout=900)
    if len(results) != n:
        store = stack.engine.store
        for sid in sessions:
            if sid not in results:
                session = stack.session(sid)
                print("no DocumentationReady:", sid,
                      [(c.sequence, c.state.value, c.attempts, c.error)
                       for c in store.chunks(org, session.id)],
                      [(r.version, r.state.value, getattr(r, "error", None))
                       for r in store.recordings(org, session.id)], file=sys.stderr)
        raise SystemExit(f"{n - len(results)} of {n} visits got no DocumentationReady")
    return sorted(results.values())


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levels", default="1,4,8,12")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="job threads per worker process")
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--model", default=None,
                    help="packaged whisper model for the org (default: the engine's default)")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    from contract_tests.epic_haiku.stack import ORG, EpicStack

    ref = reference_ms(args.model)
    model = args.model or _default_model()
    queue = f"bench-clinic-{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("spawn")
    rows: list[tuple[int, float, float]] = []
    workers = []
    with tempfile.TemporaryDirectory() as tmp, PgDatabases(n=1) as (url,), \
            EpicStack(Path(tmp), url, broker_url=REDIS, queue=queue, in_process_worker=False,
                      sweep_interval_s=3600) as stack:
        if args.model:
            set_model(Path(tmp) / "orgs" / f"{ORG}.yaml", args.model)
        try:
            for _ in range(args.workers):
                ready = ctx.Event()
                p = ctx.Process(target=_worker, args=(url, str(Path(tmp) / "orgs"), queue,
                                                      args.threads, ready), daemon=True)
                p.start()
                workers.append((p, ready))
            for p, ready in workers:
                assert ready.wait(300), "a worker process did not start"
            rng = random.Random(args.seed)
            for n in levels:
                lat = level(stack, ORG, n, rng)
                rows.append((n, pct(lat, 0.5), pct(lat, 0.95)))
                print(f"N={n:3d}  stop -> DocumentationReady  p50 {rows[-1][1]:7.0f} ms   "
                      f"p95 {rows[-1][2]:7.0f} ms   (max {lat[-1]:.0f} ms)", flush=True)
        finally:
            for p, _ in workers:
                p.terminate()
                p.join(timeout=10)
            purge_queue(queue)
    ok = [n for n, _, p95 in rows if p95 < TARGET_MS]
    plot = line_plot("clinic_load" if args.model is None else f"clinic_load-{args.model}", f"stop -> DocumentationReady, whisper {model}, "
                     f"{args.workers} workers x {args.threads} threads, PostgreSQL + Redis",
                     [n for n, _, _ in rows], {"p50": [r[1] for r in rows],
                                               "p95": [r[2] for r in rows]},
                     "concurrent visits (10 s chunks, real time)", "ms", hline=TARGET_MS,
                     note=f"reference: one direct faster-whisper call on a 10 s chunk = "
                          f"{ref:.0f} ms")
    print(f"reference: one faster-whisper {model} call on a 10 s chunk  {ref:.0f} ms")
    print(f"plot  {plot}")
    print(f"largest N with p95 < 3 s: {max(ok) if ok else 'none'} (target: >= 8)")
    print(f"ratio p95(N={rows[-1][0]}) / 3 s  {rows[-1][2] / TARGET_MS:.3f}")


if __name__ == "__main__":
    main()
