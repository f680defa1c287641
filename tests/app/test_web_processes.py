"""The web tier as docs/deploy.md runs it when one process is not enough for Epic's
callbacks (issue #19: one GIL does ~150 acknowledgements/s): several `chartbridge serve`
processes on one database and broker, behind one proxy. Each acknowledges callbacks, and a
token spent at one is a replay at the other (the jti guard is in the database, not in a
process)."""
from __future__ import annotations

import json
import uuid
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from contract_tests.epic_haiku.stack import ORG, EpicStack, serve_processes, stop_processes
from contract_tests.epic_haiku.test_contract import redis_url
from test_callback_transactions import chunk_body


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_two_serve_processes_acknowledge_callbacks_and_share_the_replay_guard(database_url,
                                                                              tmp_path):
    queue = f"web-{uuid.uuid4().hex[:8]}"
    broker = redis_url()
    with EpicStack(tmp_path, database_url, broker_url=broker, queue=queue,
                   in_process_worker=False, sweep_interval_s=3600) as stack, \
            open(tmp_path / "serve.log", "w") as log:
        procs, bases = serve_processes(stack, 2, log)
        try:
            sid = f"AMB-WEB-{uuid.uuid4().hex[:6]}"
            assert stack.sim.begin_session(ORG, session_id=sid).status in (200, 202)
            url = stack.sim.engine_event_url(ORG, "RecordingChunkAvailable")
            path = urlsplit(url).path
            for sequence, (here, there) in enumerate([bases, bases[::-1]], start=1):
                token = stack.sim.make_inbound_token(url, ORG)
                headers = {"Authorization": f"Bearer {token}",
                           "Content-Type": "application/json"}
                acked = httpx.post(here + path, content=json.dumps(chunk_body(sid, sequence)),
                                   headers=headers, timeout=10)
                assert acked.status_code == 200, acked.text
                replay = httpx.post(there + path, headers=headers, timeout=10,
                                    content=json.dumps(chunk_body(sid, sequence + 10)))
                assert replay.status_code == 401 and "replay" in replay.text
            session = stack.session(sid)
            assert [c.sequence for c in stack.engine.store.chunks(ORG, session.id)] == [1, 2]
            # each acknowledged chunk's job is on the shared broker, for `chartbridge worker`
            client = redis.Redis.from_url(broker)
            jobs = [json.loads(m) for m in client.hvals(f"dramatiq:{queue}.msgs")]
            assert sorted(j["args"][3] for j in jobs if j["actor_name"] == "process_chunk") \
                == [1, 2]
        finally:
            stop_processes(procs)
            client = redis.Redis.from_url(broker)
            for key in client.scan_iter(match=f"dramatiq:{queue}*"):
                client.delete(key)
