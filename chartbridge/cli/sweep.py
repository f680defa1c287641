import json

import click


@click.command("sweep")
def sweep() -> None:
    """Re-enqueue work the database says is unfinished (run by cron with an external broker)."""
    from chartbridge.bootstrap import bootstrap
    from chartbridge.jobs import Jobs, Sweeper, make_broker

    engine = bootstrap()
    counts = Sweeper(Jobs(engine, make_broker())).sweep_once()
    click.echo(json.dumps(counts))
