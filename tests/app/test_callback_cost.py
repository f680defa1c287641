"""What one Epic chunk acknowledgement costs the database: issue #19 needs callbacks at 200/s
(bench/callback_load.py), so its statements are counted here and a new one on the hot path
is a decision, not an accident. The checks themselves are in test_callback_transactions.py
and test_hostile_input.py."""
from __future__ import annotations

from sqlalchemy import event

from hostile_support import hostile
from test_callback_transactions import chunk_body

__all__ = ["hostile"]


class Statements:
    """The SQL statements run on an engine, as (verb, table) pairs (BEGIN and the pool's
    ping are not statements of the callback's)."""

    def __init__(self, engine) -> None:
        self.seen: list[tuple[str, str]] = []
        event.listen(engine, "before_cursor_execute", self._statement)

    def _statement(self, conn, cursor, statement, *args) -> None:
        words = statement.replace("\n", " ").split()
        verb = words[0].upper()
        if verb not in ("INSERT", "SELECT", "DELETE", "UPDATE") or words[:2] == ["SELECT", "1"]:
            return
        after = {"INSERT": "INTO", "SELECT": "FROM", "DELETE": "FROM", "UPDATE": None}[verb]
        table = words[1] if after is None else words[[w.upper() for w in words].index(after) + 1]
        self.seen.append((verb, table.strip('"')))


def test_a_chunk_acknowledgement_is_five_statements_and_one_commit(hostile):
    sid = hostile.begin()
    assert hostile.post("RecordingChunkAvailable", chunk_body(sid, 1)).status_code == 200
    statements = Statements(hostile.engine.db.engine)

    resp = hostile.post("RecordingChunkAvailable", chunk_body(sid, 2))

    assert resp.status_code == 200, resp.json
    # the jti, the session by its Epic id, the session's state (org-scoped), the inbox row
    # and the chunk row: no ORM read of the chunk before inserting it, no second flush
    assert statements.seen == [("INSERT", "seen_tokens"), ("SELECT", "sessions"),
                               ("SELECT", "sessions"), ("INSERT", "inbox"),
                               ("INSERT", "chunks")]


def test_a_chunk_announced_again_under_another_delivery_is_left_as_it_is(hostile):
    sid = hostile.begin()
    first = chunk_body(sid, 1)
    assert hostile.post("RecordingChunkAvailable", first).status_code == 200
    # the same chunk with another body is another delivery (its own inbox row), not a new chunk
    again = dict(first, DurationMs=first["DurationMs"] + 1)
    resp = hostile.post("RecordingChunkAvailable", again)
    assert resp.status_code == 200, resp.json
    session = hostile.engine.store.find_session("demo-epic", "epic_haiku", sid)
    chunks = hostile.engine.store.chunks("demo-epic", session.id)
    assert [(c.sequence, c.duration_ms) for c in chunks] == [(1, first["DurationMs"])]
