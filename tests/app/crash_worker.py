"""A worker process for the crash test: the engine's runtime on the test's PostgreSQL and
Redis queue, with the contract suite's stand-in transcriber and a fixed three-section
generator. With CRASH_AT set, the first time the worker reaches that point it writes
CRASH_MARKER and hangs there (still heartbeating, as a stuck worker would) until the test
kills it with SIGKILL.

    CRASH_AT = download | transcription | before_answer | after_answer
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path


def hang(point: str) -> None:
    marker = Path(os.environ["CRASH_MARKER"])
    if os.environ.get("CRASH_AT") != point or marker.exists():
        return
    marker.write_text(f"{point} {time.time()}\n")
    threading.Event().wait()           # until SIGKILL


def main() -> None:
    from chartbridge import runtime
    from chartbridge.adapters.epic_haiku.adapter import EpicHaikuAdapter
    from chartbridge.adapters.epic_haiku.client import EpicClient
    from chartbridge.bootstrap import bootstrap
    from chartbridge.core.models import NoteSection
    from chartbridge.core.ports import GeneratedNote
    from chartbridge.logs import configure_logging
    from contract_tests.epic_haiku.stack import ChunkTranscriber

    class Transcriber(ChunkTranscriber):
        def transcribe(self, audio, **kw):
            hang("transcription")
            return super().transcribe(audio, **kw)

    class Sections:
        name, version = "fake-sections", "1"

        def generate(self, segments, *, allowed_sections, note_type=None, settings=None):
            ids = [s.id for s in segments]
            return GeneratedNote([NoteSection(code=c, text=f"{c}: {len(ids)} segments",
                                              segment_ids=ids)
                                  for c in ("10164-2", "51847-2") if c in allowed_sections],
                                 "fake", "1")

    fetch = EpicHaikuAdapter.fetch_chunk

    def fetch_chunk(self, *args, **kw):
        hang("download")
        return fetch(self, *args, **kw)

    ready = EpicClient.documentation_ready

    def documentation_ready(self, *args, **kw):
        hang("before_answer")
        answer = ready(self, *args, **kw)
        hang("after_answer")
        return answer

    EpicHaikuAdapter.fetch_chunk = fetch_chunk
    EpicClient.documentation_ready = documentation_ready

    configure_logging()
    engine = bootstrap(database_url=os.environ["CHARTBRIDGE_DATABASE_URL"],
                       config_dir=os.environ["CHARTBRIDGE_CONFIG_DIR"], migrate=False,
                       transcriber_factory=lambda org: Transcriber(),
                       generator_factory=lambda org: Sections())
    rt = runtime.start(engine, broker_url=os.environ["CHARTBRIDGE_BROKER_URL"],
                       in_process_worker=True, worker_threads=2, queue=os.environ["QUEUE"])
    Path(os.environ["READY_MARKER"]).write_text("ready\n")
    try:
        threading.Event().wait()
    finally:
        rt.stop()


if __name__ == "__main__":
    sys.exit(main())
