"""`chartbridge demo`: one whole Haiku visit, in-process, on the embedded defaults.

Starts the Epic simulator and the engine on free loopback ports, plays a visit as 10 s
chunks, waits for DocumentationReady, then simulates a clinician edit in Epic and a second
recording to show the edit survives. A second organization (a non-Epic site) then opens a
session through the core use cases with the same audio, is approved by a named demo
clinician and written to every target it has configured (FHIR, athenaOne, HL7 MDM). Every step goes over HTTP between the two, exactly as
with a real site; transcription is the real faster-whisper (packaged base) on the CPU.
"""
from __future__ import annotations

import io
import shutil
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from chartbridge.core.errors import ChartbridgeError, InputError
from chartbridge.core.models import ChunkState, WriteStatus

REPO = Path(__file__).resolve().parents[1]
DEFAULT_AUDIO = REPO / "tests" / "fixtures" / "encounters" / "encounter-1.wav"
EDITED_SECTION = "51847-2"          # the clinician edits assessment and plan in Epic


@dataclass
class DemoResult:
    ok: bool
    session_id: str
    recording_version: int
    sections: dict[str, str]
    second_sections: dict[str, str]
    edit_survived: bool
    ledger: list[dict]
    targets: dict[str, dict]
    timings_ms: dict[str, int]
    pages: dict[str, str] = field(default_factory=dict)
    second_site: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _wav_slice(data: bytes, seconds: float) -> bytes:
    """The first `seconds` of a WAV, same format."""
    with wave.open(io.BytesIO(data)) as src:
        params = src.getparams()
        frames = src.readframes(int(params.framerate * seconds))
    out = io.BytesIO()
    with wave.open(out, "wb") as dst:
        dst.setparams(params)
        dst.writeframes(frames)
    return out.getvalue()


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ChartbridgeError(f"demo: timed out waiting for {what}")
        time.sleep(0.05)


def run_demo(*, workdir: Path, audio: Path | None = None, chunk_seconds: float = 10.0,
             progress: Callable[[str], None] = lambda msg: None,
             on_chunks: Callable[[int, int], None] = lambda done, total: None,
             timeout: float = 300.0, hold: bool = False) -> DemoResult:
    from contract_tests.epic_haiku.stack import ORG, EpicStack

    audio = Path(audio or DEFAULT_AUDIO)
    try:
        wav = audio.read_bytes()
        with wave.open(io.BytesIO(wav)) as w:
            if w.getnchannels() < 1 or w.getframerate() <= 0:
                raise wave.Error("no audio")
    except FileNotFoundError:
        raise InputError(f"audio file not found: {audio}", field="--audio") from None
    except (wave.Error, EOFError):
        raise InputError(f"not a WAV file: {audio}", field="--audio") from None

    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    timings: dict[str, int] = {}
    problems: list[str] = []
    started = time.monotonic()
    progress("starting the Epic simulator and the engine (SQLite, in-process worker)")
    with EpicStack(workdir, f"sqlite:///{workdir / 'chartbridge.db'}") as stack:
        sim, store = stack.sim, stack.engine.store
        session_id = "AMB-DEMO-0001"
        progress(f"Epic begins ambient session {session_id}")
        sim.begin_session(ORG, session_id=session_id)
        session = stack.session(session_id)
        launch = (f"{stack.engine_url}/orgs/{ORG}/epic/haiku/launch?session={session_id}"
                  f"&iss={sim.base_url}/api/FHIR/R4&launch=<from Epic>")
        progress(f"embedded Haiku page (opened by Haiku with a launch token): {launch}")

        # -- recording 1: chunks arrive while the clinician talks ---------------------------
        rec = sim.record(session_id, wav, chunk_seconds=chunk_seconds, status="Stopped",
                         announce_available=False)
        total = rec.chunk_count
        progress(f"Haiku uploads {total} chunks of {chunk_seconds:g} s; transcribing as they arrive")

        def transcribed() -> int:
            return sum(c.state == ChunkState.TRANSCRIBED for c in store.chunks(ORG, session.id))

        def chunk_progress() -> bool:
            done = transcribed()
            on_chunks(done, total)
            failed = [c for c in store.chunks(ORG, session.id) if c.state == ChunkState.FAILED]
            if failed:
                raise ChartbridgeError(f"demo: chunk {failed[0].sequence} failed: {failed[0].error}")
            return done == total
        _wait(chunk_progress, timeout, "the chunks to be transcribed")
        timings["transcribe_all_chunks"] = int((time.monotonic() - started) * 1000)

        progress("the clinician stops the recording: Epic sends RecordingAvailable(Stopped)")
        stop = time.monotonic()
        sim.announce_recording(session_id, version=1)
        first = sim.wait_documentation(session_id, 1, timeout=timeout)
        timings["stop_to_documentation_ready"] = int((time.monotonic() - stop) * 1000)
        sections = {s["SectionID"]: s["Text"] for s in first["Sections"]}
        progress(f"DocumentationReady accepted by Epic: sections {', '.join(sections)}")

        # -- a clinician edit in Epic, then a second recording -------------------------------
        progress(f"the clinician edits section {EDITED_SECTION} in Epic (DocumentationUpdated)")
        sim.edit_sections(session_id, [EDITED_SECTION])
        progress("the clinician records a little more and stops again (version 2)")
        sim.record(session_id, _wav_slice(wav, min(2 * chunk_seconds, 20.0)),
                   chunk_seconds=chunk_seconds, status="Stopped")
        second = sim.wait_documentation(session_id, 2, timeout=timeout)
        second_sections = {s["SectionID"]: s["Text"] for s in second["Sections"]}
        edit_survived = EDITED_SECTION not in second_sections
        if not edit_survived:
            problems.append(f"section {EDITED_SECTION} was sent after the clinician edited it")
        progress("version 2 documented without the edited section" if edit_survived
                 else "EDITED SECTION WAS SENT AGAIN")

        def settled() -> bool:
            rows = stack.ledger_rows(session_id)
            return len(rows) == 2 and all(r.status in (WriteStatus.SUCCEEDED, WriteStatus.FAILED)
                                          for r in rows)
        _wait(settled, 30, "the ledger to record both writes")
        sim.complete(session_id, "Signed")
        rows = stack.ledger_rows(session_id)
        ledger = [{"key": r.key, "target": r.target, "kind": r.kind, "status": r.status.value,
                   "external_id": r.external_id, "attempts": r.attempts} for r in rows]
        last = rows[-1]
        targets = {"epic_haiku": {"status": "accepted" if last.status == WriteStatus.SUCCEEDED
                                  else last.status.value, "external_id": last.external_id}}
        failed = [r for r in rows if r.status != WriteStatus.SUCCEEDED]
        problems += [f"{r.target} write {r.kind} ended {r.status.value}: {r.last_error}" for r in failed]
        pages = {"epic_haiku_launch": launch}

        # -- the second organization: a non-Epic site ----------------------------------------
        from chartbridge.demo_sites import ORG as SITE, run_multi_site
        progress(f"review page for the second site (dev login: CHARTBRIDGE_DEV_LOGIN=1): "
                 f"{stack.engine_url}/orgs/{SITE}/review/")
        site = run_multi_site(stack, wav, chunk_seconds=chunk_seconds, progress=progress,
                              timeout=timeout)
        targets.update(site["targets"])
        ledger += site["ledger"]
        for name, t in site["targets"].items():
            if t["status"] != "written":
                problems.append(f"{name} write ended {t['status']}: {t.get('error')}")
        pages["review"] = f"{stack.engine_url}/orgs/{SITE}/review/"
        second_site = {"org": SITE, "session_id": site["session_id"],
                       "draft_version": site["draft_version"], "sections": site["sections"]}
        if hold:
            progress("done; the engine and simulators stay up for the pages above until Ctrl-C")
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                pass
    timings["total"] = int((time.monotonic() - started) * 1000)
    return DemoResult(ok=not problems, session_id=session_id, recording_version=2,
                      sections=sections, second_sections=second_sections,
                      edit_survived=edit_survived, ledger=ledger, targets=targets,
                      timings_ms=timings, pages=pages, problems=problems,
                      second_site=second_site)
