import json

import click


@click.command("settings")
@click.option("--json", "as_json", is_flag=True, help="The same as JSON.")
def settings(as_json: bool) -> None:
    """Every CHARTBRIDGE_* environment variable the engine reads, its value here (passwords
    masked) and what it means (chartbridge/settings.py; per-org settings are in org files)."""
    from chartbridge.settings import load_settings

    rows = load_settings().shown()
    if as_json:
        click.echo(json.dumps([{"variable": v, "value": val, "meaning": d} for v, val, d in rows],
                              indent=2))
        return
    width = max(len(v) for v, _, _ in rows)
    for variable, value, meaning in rows:
        click.echo(f"{variable:<{width}}  {value or '(unset)'}")
        click.echo(f"{'':<{width}}  {meaning}")
