"""An Epic callback acknowledgement is one database transaction (jti, session read, state
and inbox row): one commit, not three. Its job is enqueued only after that commit, and a
request refused after its token verified still spends the token's jti."""
from __future__ import annotations

import json
import uuid

from sqlalchemy import select

from chartbridge.ledger.tables import ChunkRow
from chartbridge.web import create_app
from hostile_support import ORG, hostile
from tests.fakes import WriteCommits

__all__ = ["hostile"]


class CheckingJobs:
    """Records each enqueue and whether its chunk was visible to another transaction by
    then (a worker must never be told about a row that is not committed)."""

    def __init__(self, engine) -> None:
        self.engine, self.sent = engine, []

    def enqueue(self, job: str, *args) -> None:
        org, session_id, recording_id, sequence = args
        with self.engine.db.engine.connect() as conn:       # a separate connection
            visible = conn.execute(select(ChunkRow.sequence).where(
                ChunkRow.org_id == org, ChunkRow.session_id == session_id,
                ChunkRow.recording_id == recording_id,
                ChunkRow.sequence == sequence)).first() is not None
        self.sent.append((job, sequence, visible))


def chunk_body(sid: str, sequence: int) -> dict:
    return {"SessionID": sid, "RecordingID": "R1", "RecordingVersion": 1,
            "ChunkSequence": sequence, "ContentType": "audio/wav", "DurationMs": 10000}


def test_a_chunk_acknowledgement_is_one_commit_and_enqueues_after_it(hostile):
    jobs = CheckingJobs(hostile.engine)
    client = create_app(hostile.engine, jobs=jobs).test_client()
    sid = hostile.begin()
    commits = WriteCommits(hostile.engine.db.engine)
    for sequence in (1, 2):
        token = hostile.token("RecordingChunkAvailable")
        resp = client.post(hostile.url("RecordingChunkAvailable"),
                           data=json.dumps(chunk_body(sid, sequence)),
                           headers={"Authorization": f"Bearer {token}"},
                           content_type="application/json")
        assert resp.status_code == 200, resp.json
    # one commit each (jti + inbox + chunk), and each job sent once its chunk was committed
    assert commits.commits == 2
    assert jobs.sent == [("process_chunk", 1, True), ("process_chunk", 2, True)]


def test_a_token_spent_on_a_refused_request_cannot_be_used_again(hostile):
    # Given a verified token sent with a body that is refused (no such session: 404)
    token = hostile.token("RecordingChunkAvailable")
    missing = hostile.post("RecordingChunkAvailable", chunk_body(f"AMB-{uuid.uuid4().hex[:8]}", 1),
                           token=token)
    assert missing.status_code == 404
    # When the same token comes again with a good body
    sid = hostile.begin()
    again = hostile.post("RecordingChunkAvailable", chunk_body(sid, 1), token=token)
    # Then it is a replay, and nothing was stored
    assert again.status_code == 401 and "replay" in json.dumps(again.json)
    assert hostile.engine.store.chunks(ORG, hostile.engine.store.find_session(
        ORG, "epic_haiku", sid).id) == []
