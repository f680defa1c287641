import json
import sys

import click
from rich.console import Console
from rich.table import Table

from chartbridge.core.clock import SystemClock
from chartbridge.ledger.db import Database
from chartbridge.ledger.writes import WriteLedger


def _ledger(database_url: str | None) -> WriteLedger:
    return WriteLedger(Database.from_url(database_url), SystemClock())


@click.group("ledger")
def ledger() -> None:
    """The write ledger: every outbound write, its key and outcome."""


@ledger.command("show")
@click.option("--org", "org_id", required=True, help="Organization id (rows are per org).")
@click.option("--status", default=None, help="Only rows in this status (e.g. needs_reconciliation).")
@click.option("--session", "session_id", default=None, help="Only rows of this engine session id.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--database-url", default=None)
def show(org_id: str, status: str | None, session_id: str | None, as_json: bool,
         database_url: str | None) -> None:
    """Print the org's ledger rows."""
    rows = _ledger(database_url).list(org_id, status=status, session_id=session_id)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    table = Table(title=f"write ledger: {org_id} ({len(rows)} rows)")
    for col in ("key", "target", "kind", "status", "attempts", "external id", "last error", "created"):
        table.add_column(col, overflow="fold")
    for r in rows:
        error = f"{r.last_error_class}: {r.last_error}" if r.last_error_class else ""
        table.add_row(r.key, r.target, r.kind, r.status.value, str(r.attempts), r.external_id or "",
                      error, r.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    Console(width=None if sys.stdout.isatty() else 200).print(table)


# Repairs (issue 17): resolve (--external-id or --resend), requeue, cancel — the console's
# own functions (chartbridge/ops/repair.py), with the same audit rows.
from chartbridge.ops.cli import LEDGER_REPAIRS  # noqa: E402

for _command in LEDGER_REPAIRS:
    ledger.add_command(_command)
