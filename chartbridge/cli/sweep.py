import json
import signal
import threading

import click

from chartbridge.cli.options import queue_option


@click.command("sweep")
@click.option("--every", "every", type=float, default=None, metavar="SECONDS",
              help="Keep sweeping at this interval until SIGTERM/Ctrl-C (the sweeper as its "
                   "own process); without it, sweep once and print the counts (cron).")
@click.option("--stale-after", type=float, default=None, metavar="SECONDS",
              help="Work untouched this long, with no live job lease, is re-enqueued "
                   "(default: the engine's recovery setting, 4 s).")
@queue_option
def sweep(every: float | None, stale_after: float | None, queue: str) -> None:
    """Re-enqueue work the database says is unfinished (chunks, versions, due writes)."""
    from chartbridge.bootstrap import bootstrap
    from chartbridge.core.errors import ChartbridgeError, ConfigError
    from chartbridge import recovery
    from chartbridge.jobs import Jobs, Sweeper, make_broker
    from chartbridge.ledger.leases import JobLeases
    from chartbridge.logs import configure_logging

    if every is not None and every <= 0:
        raise ConfigError("--every must be a positive number of seconds", key="--every")
    engine = bootstrap()
    jobs = Jobs(engine, make_broker(), queue=queue)
    # the same recovery rules as the embedded sweeper: skip work a live worker holds
    sweeper = Sweeper(jobs, stale_after_s=recovery.STALE_S if stale_after is None else stale_after,
                      leases=JobLeases(engine.db, engine.clock, lease_s=recovery.LEASE_S))
    if every is None:
        click.echo(json.dumps(sweeper.sweep_once()))
        return
    configure_logging()
    click.echo(f"chartbridge sweeper running (every {every:g} s, queue {queue})")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while True:
            try:
                counts = sweeper.sweep_once()
                if any(counts.values()):
                    click.echo(json.dumps(counts))
            except ChartbridgeError as exc:
                click.echo(f"sweep failed: {exc.code}", err=True)
            if stop.wait(every):
                break
    except KeyboardInterrupt:
        pass
    finally:
        jobs.broker.close()
