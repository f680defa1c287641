"""`chartbridge org ...`: onboarding checks for per-org config files."""
from __future__ import annotations

import os
from pathlib import Path

import click

from chartbridge.config.loader import DEFAULT_CONFIG_DIR, ENV_CONFIG_DIR, org_files, validate_files


@click.group()
def org() -> None:
    """Per-organization configuration."""


def _expand(paths: tuple[str, ...]) -> list[Path]:
    if not paths:
        return org_files(os.environ.get(ENV_CONFIG_DIR) or DEFAULT_CONFIG_DIR)
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(org_files(p) if p.is_dir() else [p])
    return out


@org.command()
@click.argument("paths", nargs=-1, type=click.Path(dir_okay=True, file_okay=True))
def validate(paths: tuple[str, ...]) -> None:
    """Check org config files (default: every config/orgs/*.yaml, or
    $CHARTBRIDGE_CONFIG_DIR). Prints every problem as FILE:LINE: KEY: message and exits 1,
    or one line per valid org and exits 0. Secrets are not read."""
    files = _expand(paths)
    if not files:
        raise click.ClickException("no org config files found")
    configs, errors = validate_files(files)
    for err in errors:
        click.echo(str(err))
    for cfg in configs:
        click.echo(f"ok {cfg.org}: {cfg.name} (targets: {', '.join(cfg.targets)})")
    if errors:
        bad = len({e.file for e in errors})
        # ClickException, not Exit: chartbridge.cli.main maps it to exit code 1
        raise click.ClickException(f"{len(errors)} problem(s) in {bad} file(s)")
