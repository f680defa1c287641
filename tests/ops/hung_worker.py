"""A worker process that hangs inside a job until the test kills it with SIGKILL.

CB_DB, CB_CONFIG: the test's database and org folder; CB_JOB: process_chunk (hangs in the
transcriber) or finish_version (hangs in the note generator); CB_ARGS: the job's arguments;
CB_MARKER: written when the hang starts."""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def hang() -> None:
    Path(os.environ["CB_MARKER"]).write_text("hung\n")
    threading.Event().wait()           # until SIGKILL


class HungTranscriber:
    name, model_id = "hung", "0"

    def transcribe(self, audio, **kw):
        hang()


class HungGenerator:
    name, version = "hung", "1"

    def generate(self, segments, **kw):
        hang()


def main() -> None:
    from dramatiq.brokers.stub import StubBroker

    from chartbridge.bootstrap import bootstrap
    from chartbridge.jobs import Jobs
    from tests.fakes import EchoTranscriber

    job = os.environ["CB_JOB"]
    engine = bootstrap(database_url=os.environ["CB_DB"], config_dir=os.environ["CB_CONFIG"],
                       migrate=False,
                       transcriber_factory=lambda org: (HungTranscriber() if job == "process_chunk"
                                                        else EchoTranscriber()),
                       generator_factory=lambda org: HungGenerator())
    jobs = Jobs(engine, StubBroker())
    org, *args = os.environ["CB_ARGS"].split(" ")
    args = [int(a) if a.isdigit() else a for a in args]
    getattr(jobs, job).fn(org, *args)
    raise SystemExit("the job finished without hanging")


if __name__ == "__main__":
    main()
