"""Run by test_delivery: drive a session to written notes in this process, then die at
once (os._exit: no cleanup, no flush, nothing after the ledger's last commit), before any
webhook could be delivered. argv: database URL, config folder."""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dramatiq.brokers.stub import StubBroker  # noqa: E402

from chartbridge.bootstrap import bootstrap  # noqa: E402
from chartbridge.jobs import Jobs  # noqa: E402
from tests.fakes import EchoTranscriber, OneSection  # noqa: E402
from tests.webhooks.test_delivery import _approve_and_write, _drafted  # noqa: E402

engine = bootstrap(database_url=sys.argv[1], config_dir=sys.argv[2],
                   transcriber_factory=lambda org: EchoTranscriber(),
                   generator_factory=lambda org: OneSection())
jobs = Jobs(engine, StubBroker())
_, draft = _drafted(engine, jobs)
rows = _approve_and_write(engine, jobs, draft)
print(",".join(r.status.value for r in rows), flush=True)
os._exit(137)
