"""Options the process commands (`serve`, `worker`, `sweep`) share."""
from __future__ import annotations

import click

queue_option = click.option(
    "--queue", envvar="CHARTBRIDGE_QUEUE", default="chartbridge", show_default=True,
    help="Queue name on the broker (env CHARTBRIDGE_QUEUE); every process of one engine "
         "uses the same one.")
sweeper_option = click.option(
    "--sweeper/--no-sweeper", default=True, show_default=True,
    help="Run the sweeper inside this process; --no-sweeper when `chartbridge sweep --every` "
         "runs as its own process (the production pairing, docs/deploy.md).")
