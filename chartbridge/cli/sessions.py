"""`chartbridge sessions show | stuck | redrive`: where each session is — its recording versions, chunks and
writes, with the reason for anything that failed or waits — so work that cannot progress
is never silent. Prints engine ids, states and engine-made reasons only, never PHI."""
import json
import sys

import click
from rich.console import Console
from rich.table import Table

from chartbridge.core.clock import SystemClock
from chartbridge.ledger.db import Database
from chartbridge.ledger.store import SqlStore
from chartbridge.ledger.writes import WriteLedger


@click.group("sessions")
def sessions() -> None:
    """Sessions: recording versions, chunks and writes, with reasons."""


def _report(store: SqlStore, ledger: WriteLedger, org_id: str, session) -> dict:
    chunks = store.chunks(org_id, session.id)
    return {
        "session_id": session.id, "source": str(session.source), "status": str(session.status),
        "correlation_id": session.correlation_id, "created_at": session.created_at.isoformat(),
        "versions": [{"recording_id": r.recording_id, "version": r.version,
                      "status": str(r.status), "chunk_count": r.chunk_count,
                      "state": str(r.state), "error": r.error}
                     for r in store.recordings(org_id, session.id)],
        "chunks": [{"recording_id": c.recording_id, "sequence": c.sequence,
                    "state": str(c.state), "attempts": c.attempts, "error": c.error}
                   for c in chunks],
        "writes": [{"key": w.key, "target": w.target, "kind": w.kind,
                    "status": w.status.value, "attempts": w.attempts,
                    "external_id": w.external_id,
                    "reason": f"{w.last_error_class}: {w.last_error}" if w.last_error_class else None}
                   for w in ledger.list(org_id, session_id=session.id)],
    }


@sessions.command("show")
@click.option("--org", "org_id", required=True, help="Organization id.")
@click.option("--session", "session_id", default=None, help="One engine session id.")
@click.option("--limit", default=20, show_default=True, help="Newest sessions to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--database-url", default=None)
def show(org_id: str, session_id: str | None, limit: int, as_json: bool,
         database_url: str | None) -> None:
    """Print sessions with their versions, chunks and writes (newest first)."""
    db = Database.from_url(database_url)
    store, ledger = SqlStore(db, SystemClock()), WriteLedger(db, SystemClock())
    found = ([store.get_session(org_id, session_id)] if session_id
             else store.list_sessions(org_id, limit=limit))
    reports = [_report(store, ledger, org_id, s) for s in found]
    if as_json:
        click.echo(json.dumps(reports, indent=2))
        return
    console = Console(width=None if sys.stdout.isatty() else 200)
    for rep in reports:
        table = Table(title=f"session {rep['session_id']} ({rep['source']}, {rep['status']})")
        for col in ("what", "id", "state", "attempts", "reason"):
            table.add_column(col, overflow="fold")
        for v in rep["versions"]:
            table.add_row("version", f"{v['recording_id']} v{v['version']} ({v['status']}, "
                          f"{v['chunk_count']} chunks)", v["state"], "", v["error"] or "")
        for c in rep["chunks"]:
            table.add_row("chunk", f"{c['recording_id']} #{c['sequence']}", c["state"],
                          str(c["attempts"]), c["error"] or "")
        for w in rep["writes"]:
            table.add_row("write", f"{w['target']} {w['kind']} {w['key']}", w["status"],
                          str(w["attempts"]), w["reason"] or (w["external_id"] or ""))
        console.print(table)
    if not reports:
        click.echo(f"no sessions in {org_id}")


# Repairs (issue 17): `sessions stuck` and `sessions redrive` (chartbridge/ops/cli.py).
from chartbridge.ops.cli import redrive, stuck  # noqa: E402

sessions.add_command(stuck)
sessions.add_command(redrive)
