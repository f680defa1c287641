"""`chartbridge simulate NAME --port P`: run a vendor simulator standalone so an
implementation team can point an org (or a real engine) at it. One subcommand per
registered plugin with a simulator (`AdapterSpec.simulator`); its module is imported only
when that subcommand runs."""
import importlib

import click

from chartbridge.adapters.registry import Simulator, registry


@click.group("simulate")
def simulate() -> None:
    """Run a vendor simulator in the foreground (Ctrl-C stops it)."""


def _command(sim: Simulator) -> click.Command:
    def run(host: str, port: int, **options: object) -> None:
        serve = importlib.import_module(sim.module).serve
        given = {k: v for k, v in options.items() if v is not None}
        try:
            serve(host=host, port=port, **given)
        except KeyboardInterrupt:
            pass

    for opt in reversed(sim.options):
        run = click.option(f"--{opt.name.replace('_', '-')}", opt.name, default=None,
                           help=opt.help or None)(run)
    run = click.option("--port", default=sim.default_port, show_default=True, type=int)(run)
    run = click.option("--host", default="127.0.0.1", show_default=True)(run)
    return click.command(sim.cli_name, help=f"Run the {sim.summary} simulator.")(run)


for _spec in registry.plugins():
    if _spec.simulator is not None:
        simulate.add_command(_command(_spec.simulator))
