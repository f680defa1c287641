"""The CLI side of the operator's repairs: `chartbridge ledger resolve | requeue | cancel`
and `chartbridge sessions redrive | stuck` call chartbridge/ops/repair.py — the same
functions the console (/ops/) calls, so each leaves the same audit row (who: `user:<--by>`,
why: `--reason`).

Where the work goes next: with CHARTBRIDGE_BROKER_URL set (Redis or RabbitMQ) the repaired
write, chunk or version is enqueued on the engine's queue, carrying this invocation's
correlation id; on the embedded default (no broker URL) there is no queue outside `serve`,
so the row is left due and the running engine's sweeper drives it on its next pass.
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager

import click

from chartbridge.core.errors import InputError

org_option = click.option("--org", "org_id", required=True, help="Organization id.")
by_option = click.option("--by", "actor", required=True,
                         help="Who makes the repair (kept in the audit trail).")
reason_option = click.option("--reason", required=True,
                             help="Why, and what was checked (kept in the audit trail).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
db_option = click.option("--database-url", default=None,
                         help="Default: CHARTBRIDGE_DATABASE_URL.")


@contextmanager
def repair_engine(database_url: str | None):
    """The engine a repair command works on (never migrates), with the broker's queue when
    one is configured. Yields (engine, where the next step goes)."""
    from chartbridge.bootstrap import bootstrap
    from chartbridge.settings import load_settings

    settings = load_settings()
    engine = bootstrap(database_url=database_url, migrate=False)
    broker = None
    try:
        if settings.broker_url:
            from chartbridge.jobs import Jobs, make_broker
            from chartbridge.logs import correlation_middleware
            broker = make_broker(settings.broker_url)
            broker.add_middleware(correlation_middleware())
            Jobs(engine, broker, queue=settings.queue)      # attaches itself as engine.queue
            where = f"enqueued on {settings.queue}"
        else:
            where = "due now: the running engine's sweeper drives it"
        yield engine, where
    finally:
        if broker is not None:
            broker.close()
        engine.db.dispose()


def user(actor: str) -> str:
    actor = (actor or "").strip()
    if not actor:
        raise InputError("--by: who makes the repair is required", field="--by")
    return actor if actor.startswith("user:") else f"user:{actor}"


def echo_write(record, as_json: bool, where: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps({**record.as_dict(), **({"next": where} if where else {})},
                              indent=2))
        return
    line = f"{record.key}: {record.status.value}"
    if record.external_id:
        line += f" (EHR id {record.external_id})"
    if where and record.status.value == "pending":
        line += f"; {where}"
    click.echo(line)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def seconds(text: str, option: str) -> float:
    """`900`, `900s`, `15m`, `2h`, `1d` -> seconds; anything else names the option."""
    found = _DURATION.match(text or "")
    if not found:
        raise InputError(f"{option}: a duration like 900s, 15m, 2h or 1d", field=option)
    return float(found.group(1)) * _UNIT[found.group(2)]


# -- chartbridge ledger resolve | requeue | cancel ---------------------------------------------
@click.command("resolve")
@org_option
@click.option("--key", required=True, help="The write's idempotency key (ledger show).")
@click.option("--external-id", default=None,
              help="The EHR's id: you found the write there (it becomes succeeded).")
@click.option("--resend", is_flag=True,
              help="You confirmed the EHR does not hold it: asked once more, then sent again "
                   "under the same key.")
@by_option
@click.option("--reason", "--note", "reason", required=True,
              help="What was checked (kept in the audit trail; --note is the older name).")
@json_option
@db_option
def resolve(org_id, key, external_id, resend, actor, reason, as_json, database_url) -> None:
    """Settle a needs_reconciliation write: --external-id ID or --resend."""
    from chartbridge.ops import repair

    if bool(external_id) == bool(resend):
        raise InputError("give --external-id (the EHR holds it) or --resend (it does not), "
                         "not both and not neither", field="--external-id")
    with repair_engine(database_url) as (engine, where):
        record = repair.resolve_reconciliation(engine, org_id, key, actor=user(actor),
                                               reason=reason, external_id=external_id,
                                               resend=resend)
        echo_write(record, as_json, where)


def _write_repair(name: str, repair_name: str, doc: str, *, enqueues: bool):
    """A `ledger <name> --org --key --by --reason` command calling repair.<repair_name>."""
    @click.command(name, help=doc)
    @org_option
    @click.option("--key", required=True, help="The write's idempotency key (ledger show).")
    @by_option
    @reason_option
    @json_option
    @db_option
    def command(org_id, key, actor, reason, as_json, database_url) -> None:
        from chartbridge.ops import repair

        with repair_engine(database_url) as (engine, where):
            record = getattr(repair, repair_name)(engine, org_id, key, actor=user(actor),
                                                  reason=reason)
            echo_write(record, as_json, where if enqueues else None)
    return command


requeue = _write_repair(
    "requeue", "requeue_failed", "Run a failed write again as a new attempt (same key, same "
    "stored body; reconciled first if it was ever sent).", enqueues=True)
cancel = _write_repair(
    "cancel", "cancel_write", "Stop a write that has not succeeded (pending, failed, stale, "
    "needs_reconciliation): cancelled, with the reason; nothing is sent for it again.",
    enqueues=False)


LEDGER_REPAIRS = (resolve, requeue, cancel)


# -- chartbridge sessions redrive | stuck --------------------------------------------------------
@click.command("redrive")
@org_option
@click.option("--session", "session_id", required=True, help="The engine session id.")
@click.option("--recording", "recording_id", required=True, help="The recording id.")
@click.option("--chunk", "sequence", type=int, default=None,
              help="Re-drive this chunk (its sequence number).")
@click.option("--version", "version", type=int, default=None,
              help="Re-drive this recording version's next step.")
@by_option
@reason_option
@db_option
def redrive(org_id, session_id, recording_id, sequence, version, actor, reason,
            database_url) -> None:
    """Re-drive a stuck or failed chunk (--chunk N) or recording version (--version V)."""
    from chartbridge.ops import repair

    if (sequence is None) == (version is None):
        raise InputError("give --chunk N or --version V, not both and not neither",
                         field="--chunk")
    with repair_engine(database_url) as (engine, where):
        if sequence is not None:
            repair.redrive_chunk(engine, org_id, session_id, recording_id, sequence,
                                 actor=user(actor), reason=reason)
            click.echo(f"chunk {recording_id} #{sequence} re-driven; {where}")
        else:
            repair.redrive_version(engine, org_id, session_id, recording_id, version,
                                   actor=user(actor), reason=reason)
            click.echo(f"version {recording_id} v{version} re-driven; {where}")


@click.command("stuck")
@org_option
@click.option("--older-than", default="15m", show_default=True,
              help="Not terminal for longer than this (900s, 15m, 2h, 1d).")
@json_option
@db_option
def stuck(org_id, older_than, as_json, database_url) -> None:
    """Sessions with work not terminal for longer than --older-than, with the reasons the
    engine knows (engine ids and reasons only, never PHI)."""
    from chartbridge.ops import repair

    age = seconds(older_than, "--older-than")
    with repair_engine(database_url) as (engine, _where):
        found = repair.stuck_sessions(engine, org_id, older_than_s=age)
    if as_json:
        click.echo(json.dumps(found, indent=2, default=str))
        return
    if not found:
        click.echo(f"nothing stuck in {org_id} (older than {older_than})")
        return
    for s in found:
        click.echo(f"session {s['session_id']} ({s.get('status')}, correlation "
                   f"{s.get('correlation_id')}, {round(s.get('age_s') or 0)} s)")
        for reason in s.get("reasons") or []:
            click.echo(f"  - {_reason_text(reason)}")


def _reason_text(reason) -> str:
    if isinstance(reason, dict):
        return ", ".join(f"{k}={v}" for k, v in reason.items() if v is not None)
    return str(reason)
