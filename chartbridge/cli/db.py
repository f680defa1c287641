import click

from chartbridge.ledger.db import Database
from chartbridge.ledger.migrate import current, upgrade


@click.group("db")
def db() -> None:
    """The engine's database (SQLite by default, CHARTBRIDGE_DATABASE_URL for PostgreSQL)."""


@db.command("upgrade")
@click.option("--database-url", default=None, help="Overrides CHARTBRIDGE_DATABASE_URL.")
def upgrade_cmd(database_url: str | None) -> None:
    """Run the migrations up to the newest."""
    database = Database.from_url(database_url)
    upgrade(database.engine)
    click.echo(f"database at revision {current(database.engine)} ({database.engine.dialect.name})")


@db.command("current")
@click.option("--database-url", default=None)
def current_cmd(database_url: str | None) -> None:
    """Print the migration revision the database is at."""
    database = Database.from_url(database_url)
    click.echo(current(database.engine) or "empty (run `chartbridge db upgrade`)")


__all__ = ["db"]
