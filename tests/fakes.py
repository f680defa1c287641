"""Stand-ins shared by the tests that are about the engine's plumbing, not speech or
drafting: a transcriber that says the chunk's bytes, a drafter that puts everything in the
HPI, and a job queue the test drains in the order it chooses."""
from __future__ import annotations

from sqlalchemy import event

from chartbridge.core.models import NoteSection
from chartbridge.core.ports import GeneratedNote, SpokenSegment
from chartbridge.jobs import Jobs


class EchoTranscriber:
    """One segment per chunk: the chunk's bytes as text, at the chunk's offset."""

    name, model_id = "echo", "0"

    def transcribe(self, audio, *, offset_ms=0, hotwords=(), lead_in=None, final=False):
        return [SpokenSegment(offset_ms, offset_ms + 900, audio.decode(), -0.1)]


class OneSection:
    """Every segment's text in the history of present illness, citing every segment."""

    name, version = "one", "1"

    def generate(self, segments, *, allowed_sections, note_type=None, settings=None):
        return GeneratedNote([NoteSection(code="10164-2", text=" ".join(s.text for s in segments),
                                          segment_ids=[s.id for s in segments])], "t", "1")


class QueueJobs(Jobs):
    """The real actors; `enqueue` appends to `pending`, which the test drains (or loses)
    in the order it chooses, running each with `getattr(jobs, job).fn(*args)`."""

    def __post_init__(self) -> None:
        self.pending: list[tuple[str, tuple]] = []
        super().__post_init__()

    def enqueue(self, job: str, *args, delay_s: float | None = None) -> None:
        self.pending.append((job, args))


class WriteCommits:
    """Counts committed transactions that wrote something (each waits for the WAL flush:
    what a write through the ledger costs, next to a bare insert's one). An
    `INSERT … ON CONFLICT DO NOTHING` that met its conflict changed no row and writes
    nothing to flush, so it does not count: on SQLite the connection's change counter
    says (a RETURNING statement's rowcount is not known when it runs), elsewhere the
    statement's rowcount."""

    def __init__(self, engine) -> None:
        self.commits, self._wrote, self._changes = 0, False, None
        event.listen(engine, "begin", self._begin)
        event.listen(engine, "after_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)
        event.listen(engine, "rollback", self._rollback)

    @staticmethod
    def _total_changes(conn):
        return getattr(conn.connection.dbapi_connection, "total_changes", None)

    def _begin(self, conn) -> None:
        self._changes = self._total_changes(conn)

    def _statement(self, conn, cursor, statement, *args) -> None:
        if (statement.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE")
                and cursor.rowcount != 0):
            self._wrote = True

    def _commit(self, conn) -> None:
        total = self._total_changes(conn)
        if total is not None and self._changes is not None:
            self._wrote = total != self._changes
        self.commits += self._wrote
        self._wrote = False

    def _rollback(self, conn) -> None:
        self._wrote = False
