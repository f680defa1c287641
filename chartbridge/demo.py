"""`chartbridge demo`: one whole Haiku visit, in-process, on the embedded defaults.

Starts the Epic simulator and the engine on free loopback ports, plays a visit as 10 s
chunks, waits for DocumentationReady, then simulates a clinician edit in Epic and a second
recording to show the edit survives. A second organization (a non-Epic site) then plays
the same audio through the capture API over HTTP (token, session, chunks, stop, draft,
approval with a named demo clinician's own ID token, writes) and is written to every target
it has configured (FHIR, athenaOne, HL7 MDM). Every
step goes over HTTP between the two, exactly as with a real site; transcription is the real
faster-whisper on the CPU (the packaged base model).

With `hold`, everything stays up: the printed Haiku link is the Epic simulator opening the
web view (a fresh SMART EHR launch), and unless `auto_approve` the second site's draft is
left staged for a person on its review page (signed in through the demo's identity
provider, chartbridge/demo_idp.py); each write that approval sends is printed.
"""
from __future__ import annotations

import io
import os
import shutil
import signal
import threading
import time
import wave
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from chartbridge.core.errors import ChartbridgeError, InputError
from chartbridge.core.models import ChunkState, WriteStatus

from chartbridge.demo_audio import DEMO_VISIT as DEFAULT_AUDIO     # shipped in the wheel
EDITED_SECTION = "51847-2"          # the clinician edits assessment and plan in Epic
DEMO_REVIEWER = "DEMO-DR-2"         # the id a person signs in with on the review page


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
    held: bool = False

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


def _hold(stack, org: str, session_id: str, progress: Callable[[str], None]) -> list:
    """Keep everything up until Ctrl-C or SIGTERM, printing each write of `org`'s session
    as a person's approval on the review page sends it. Returns the session's rows."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) \
        if threading.current_thread() is threading.main_thread() else None
    seen: dict[str, str] = {}
    rows: list = []
    try:
        while not stop.wait(0.5):
            rows = stack.engine.ledger.list(org, session_id=session_id)
            for r in rows:
                if seen.get(r.key) != r.status.value:
                    seen[r.key] = r.status.value
                    progress(f"write {r.target} {_value(r.kind)}: {r.status.value}"
                             + (f" ({r.external_id})" if r.external_id else ""))
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return stack.engine.ledger.list(org, session_id=session_id)


def _value(x) -> str:
    return str(getattr(x, "value", x))


def run_demo(*, workdir: Path, audio: Path | None = None, chunk_seconds: float = 10.0,
             progress: Callable[[str], None] = lambda msg: None,
             on_chunks: Callable[[int, int], None] = lambda done, total: None,
             timeout: float = 300.0, hold: bool = False,
             auto_approve: bool = True) -> DemoResult:
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

    # Absolute before anything is written: the org files it writes name their keys as
    # `file:` references, and a relative one would resolve against the org file's folder.
    workdir = Path(workdir).expanduser().resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    # the review page's development login, for the demo's own `demo-*` orgs in this process
    os.environ["CHARTBRIDGE_DEV_LOGIN"] = "1"
    timings: dict[str, int] = {}
    problems: list[str] = []
    started = time.monotonic()
    progress("starting the Epic simulator and the engine (SQLite, in-process worker)")
    with EpicStack(workdir, f"sqlite:///{workdir / 'chartbridge.db'}") as stack:
        sim, store = stack.sim, stack.engine.store
        progress(f"engine on {stack.engine_url}, Epic simulator on {sim.base_url}")
        progress("loading the speech model (faster-whisper on the CPU; the first load takes a few seconds)")
        loaded = time.monotonic()
        transcriber = stack.engine.transcriber(ORG)
        if callable(getattr(transcriber, "model", None)):
            transcriber.model()                     # the worker's threads share this one load
        timings["model_load"] = int((time.monotonic() - loaded) * 1000)
        progress(f"speech model {getattr(transcriber, 'model_id', '')} loaded "
                 f"in {timings['model_load'] / 1000:.1f} s")
        session_id = "AMB-DEMO-0001"
        progress(f"Epic begins ambient session {session_id}")
        sim.begin_session(ORG, session_id=session_id)
        session = stack.session(session_id)
        # Haiku's web view is a registered SMART app; the link below plays Haiku opening it
        # (a fresh EHR launch each time, then the engine's page through authorization).
        epic = stack.engine.target_config(ORG, "epic_haiku")[1]
        if epic.launch_client_id:
            sim.smart.register_app(epic.launch_client_id,
                                   [f"{stack.engine_url}/orgs/{ORG}/epic/haiku/callback"])
        launch = sim.haiku_open_url(session_id)
        progress(f"embedded Haiku page (Haiku opens it with a SMART EHR launch): {launch}")

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
        for r in rows:
            progress(f"write {r.target} {_value(r.kind)}: {r.status.value}"
                     + (f" ({r.external_id})" if r.external_id else ""))
        ledger = [{"key": r.key, "target": r.target, "kind": r.kind, "status": r.status.value,
                   "external_id": r.external_id, "attempts": r.attempts} for r in rows]
        last = rows[-1]
        targets = {"epic_haiku": {"status": "accepted" if last.status == WriteStatus.SUCCEEDED
                                  else last.status.value, "external_id": last.external_id}}
        failed = [r for r in rows if r.status != WriteStatus.SUCCEEDED]
        problems += [f"{r.target} write {r.kind} ended {r.status.value}: {r.last_error}" for r in failed]
        pages = {"epic_haiku_launch": launch}

        # -- the second organization: a non-Epic site ----------------------------------------
        from chartbridge.demo_sites import AWAITING, ORG as SITE, run_multi_site, written
        review = f"{stack.engine_url}/orgs/{SITE}/review/"
        progress(f"review page for the second site: {review}")
        progress(f"  sign in there through the demo's identity provider (it signs you in as "
                 f"{DEMO_REVIEWER}, physician, at once)")
        with ExitStack() as site_sims:
            site = run_multi_site(stack, wav, chunk_seconds=chunk_seconds, progress=progress,
                                  timeout=timeout, auto_approve=auto_approve, keep_up=site_sims)
            pages["review"] = review
            timings["total"] = int((time.monotonic() - started) * 1000)
            if hold:
                progress("ready: the engine and the simulators stay up until Ctrl-C; open")
                progress(f"  the embedded Haiku page: {launch}")
                progress(f"  the review page:         {review}")
                rows = _hold(stack, SITE, site["session_id"], progress)
                if rows:
                    site.update(written(rows))
        targets.update(site["targets"])
        ledger += site["ledger"]
        for name, t in site["targets"].items():
            if t["status"] not in ("written", AWAITING):
                problems.append(f"{name} write ended {t['status']}: {t.get('error')}")
        second_site = {"org": SITE, "session_id": site["session_id"],
                       "draft_version": site["draft_version"], "sections": site["sections"]}
    return DemoResult(ok=not problems, session_id=session_id, recording_version=2,
                      sections=sections, second_sections=second_sections,
                      edit_survived=edit_survived, ledger=ledger, targets=targets,
                      timings_ms=timings, pages=pages, problems=problems,
                      second_site=second_site, held=hold)
