"""The `chartbridge` command. Each subcommand lives in its own module here and is added
below; a command module that is not part of this build yet is simply not listed."""
from __future__ import annotations

import importlib
import os
import sys

import click
from sqlalchemy.exc import SQLAlchemyError

from chartbridge.core.errors import ChartbridgeError

# module name -> attribute holding the click command or group
COMMANDS = {
    "org": "org",
    "db": "db",
    "ledger": "ledger",
    "serve": "serve",
    "worker": "worker",
    "demo": "demo",
    "simulate": "simulate",
    "contract_test": "contract_test",
    "sweep": "sweep",
    "keys": "keys",
    "settings": "settings",
    "sessions": "sessions",
    "api": "api",
}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="chartbridge")
def cli() -> None:
    """Chartbridge: AI-drafted clinical notes into the EHR a site already runs."""


def _attach() -> None:
    for module, attr in COMMANDS.items():
        name = f"chartbridge.cli.{module}"
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        cli.add_command(getattr(mod, attr))


def _log_context() -> None:
    """One correlation id per invocation and the one JSON log configuration (WARNING: the
    command's own output is its stdout; `serve`, `worker` and `sweep` raise it to INFO)."""
    import logging

    from chartbridge.logs import bind_correlation_id, configure_logging
    bind_correlation_id()
    configure_logging(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ChartbridgeErrors become one readable line and exit 1, never a traceback."""
    _attach()
    _log_context()
    try:
        rv = cli.main(args=argv, prog_name="chartbridge", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except ChartbridgeError as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    except SQLAlchemyError as exc:
        click.echo(f"error: the database is unreachable or not migrated ({type(exc).__name__}); "
                   "check CHARTBRIDGE_DATABASE_URL and run `chartbridge db upgrade`", err=True)
        return 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        if os.environ.get("CHARTBRIDGE_DEBUG"):
            raise
        click.echo(f"error: unexpected {type(exc).__name__}; run again with CHARTBRIDGE_DEBUG=1 "
                   "to see where", err=True)
        return 2
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def console() -> None:
    sys.exit(main())
