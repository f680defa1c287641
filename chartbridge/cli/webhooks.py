"""`chartbridge webhooks list | events | replay`: every delivery of the org's webhook
events, its status, attempts and last reason (an HTTP status or an error class), and a way
to send a failed one again. Prints ids, event types and states only, never a body's PHI
(the bodies hold none) or a secret."""
import json
import sys

import click
from rich.console import Console
from rich.table import Table

from chartbridge.core.clock import SystemClock
from chartbridge.core.errors import InputError
from chartbridge.ledger.db import Database
from chartbridge.webhooks.store import STATUSES, WebhookStore


def _store(database_url: str | None) -> WebhookStore:
    return WebhookStore(Database.from_url(database_url), SystemClock())


org_option = click.option("--org", "org_id", required=True,
                          help="Organization id (deliveries are per org).")
url_option = click.option("--database-url", default=None)
limit_option = click.option("--limit", type=click.IntRange(1, 100_000), default=500,
                            show_default=True, help="At most this many rows, newest first.")


@click.group("webhooks")
def webhooks() -> None:
    """Webhook deliveries: status, attempts, last reason; replay."""


@webhooks.command("list")
@org_option
@click.option("--status", type=click.Choice(STATUSES), default=None,
              help="Only deliveries in this status.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@limit_option
@url_option
def list_(org_id: str, status: str | None, as_json: bool, limit: int,
          database_url: str | None) -> None:
    """Print the org's webhook deliveries, newest first."""
    rows = _store(database_url).list(org_id, status=status, limit=limit)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    table = Table(title=f"webhook deliveries: {org_id} ({len(rows)} rows)")
    for col in ("id", "event", "event id", "subscriber", "status", "attempts", "last reason",
                "next attempt", "created"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r.id, r.event_type, r.event_id, r.subscriber, r.status, str(r.attempts),
                      r.last_error or "",
                      r.next_attempt_at.strftime("%H:%M:%S") if r.next_attempt_at else "",
                      r.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@webhooks.command("events")
@org_option
@limit_option
@url_option
def events(org_id: str, limit: int, database_url: str | None) -> None:
    """Print the org's recorded events (the bodies subscribers receive), newest first, as
    JSON."""
    click.echo(json.dumps(_store(database_url).events(org_id, limit=limit), indent=2))


@webhooks.command("replay")
@org_option
@click.argument("delivery_id", required=False)
@click.option("--all-failed", is_flag=True, help="Every failed delivery of the org.")
@click.option("--by", "by", default="cli", show_default=True,
              help="Who replays it (audited as user:<by>).")
@click.option("--reason", default=None, help="Why (audited).")
@url_option
def replay(org_id: str, delivery_id: str | None, all_failed: bool, by: str,
           reason: str | None, database_url: str | None) -> None:
    """Send a failed (or delivered) delivery again: pending, due now, a fresh attempt
    budget, the same event id. The worker (or the sweeper) sends it."""
    if bool(delivery_id) == all_failed:
        raise InputError("give one delivery id, or --all-failed")
    store = _store(database_url)
    actor = f"user:{by}"
    rows = (store.replay_failed(org_id, actor=actor, reason=reason) if all_failed
            else [store.replay(org_id, delivery_id, actor=actor, reason=reason)])
    for r in rows:
        click.echo(f"{r.id} {r.event_type} -> {r.subscriber}: pending")
    if all_failed and not rows:
        click.echo("no failed deliveries")
