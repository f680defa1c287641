"""`chartbridge org ...`: site onboarding for per-org config files.

    org init ORG --targets a,b       write a commented skeleton (never overwrites)
    org validate [PATHS] [--env E]   schema + mappings of every file (and every overlay)
    org show ORG [--env E] [--origin] the effective config, secrets as references
    org check ORG [--env E] [--json] read-only go-live checks, exit 1 on any failure
    org sandbox [ORGS] [--env E]     the vendor simulators the orgs point at, in the foreground

The config folder is --config-dir, else $CHARTBRIDGE_CONFIG_DIR, else ./config/orgs; the
environment overlay (ORG.ENV.yaml) is --env, else $CHARTBRIDGE_ENV.
"""
from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import click

from chartbridge.adapters.registry import registry
from chartbridge.config.loader import (DEFAULT_CONFIG_DIR, ENV_CONFIG_DIR, current_env, env_for,
                                       org_files, overlay_files, overlay_path, split_name,
                                       validate_files)


@click.group()
def org() -> None:
    """Per-organization configuration: init, validate, show, check, sandbox."""


def _config_dir(value: str | None) -> Path:
    return Path(value or os.environ.get(ENV_CONFIG_DIR) or DEFAULT_CONFIG_DIR)


config_dir_option = click.option(
    "--config-dir", "config_dir", default=None, type=click.Path(file_okay=False),
    help=f"Org config folder (default: ${ENV_CONFIG_DIR} or {DEFAULT_CONFIG_DIR}).")
env_option = click.option(
    "--env", "env", default=None, metavar="ENV",
    help="Environment overlay to apply (ORG.ENV.yaml; default: the org file's environment:, "
         "else $CHARTBRIDGE_ENV).")


def _expand(paths: tuple[str, ...], config_dir: str | None, env: str | None) -> list[Path]:
    """Files to validate: base files, plus every overlay when no env is selected (each
    overlay is validated merged over its base)."""
    dirs = [_config_dir(config_dir)] if not paths else []
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            dirs.append(p)
        else:
            out.append(p)
    for d in dirs:
        out.extend(org_files(d))
        if env is None:
            out.extend(overlay_files(d))
    return out


@org.command()
@click.argument("paths", nargs=-1, type=click.Path(dir_okay=True, file_okay=True))
@config_dir_option
@env_option
def validate(paths: tuple[str, ...], config_dir: str | None, env: str | None) -> None:
    """Check org config files (default: every file of the config folder). Overlay files
    (ORG.ENV.yaml) are checked merged over their base; with --env, each org with that
    environment's overlay. Prints every problem as FILE:LINE: KEY: message and exits 1, or
    one line per valid org (and overlay) and exits 0. Secrets are not read."""
    env = current_env(env)
    files = _expand(paths, config_dir, env)
    if not files:
        raise click.ClickException("no org config files found")
    errors = []
    for f in files:                      # one at a time: each ok line names its layer
        configs, errs = validate_files([f], env)
        errors.extend(errs)
        for err in errs:
            click.echo(str(err))
        for cfg in configs:
            file_env = split_name(f)[1] or (env if env and overlay_path(f, env).exists() else None)
            layer = f" [{file_env}]" if file_env else ""
            click.echo(f"ok {cfg.org}{layer}: {cfg.name} (targets: {', '.join(cfg.targets)})")
    if errors:
        bad = len({e.file for e in errors})
        # ClickException, not Exit: chartbridge.cli.main maps it to exit code 1
        raise click.ClickException(f"{len(errors)} problem(s) in {bad} file(s)")


@org.command()
@click.argument("org_id", metavar="ORG")
@click.option("--targets", required=True,
              help=f"Comma-separated, of: {','.join(registry.names())}.")
@click.option("--name", default=None, help="Display name (default: the org id).")
@config_dir_option
def init(org_id: str, targets: str, name: str | None, config_dir: str | None) -> None:
    """Write a commented ORG.yaml skeleton for TARGETS. Refuses an existing org."""
    from chartbridge.onboarding.templates import parse_targets, write_skeleton

    from chartbridge.core.errors import ChartbridgeError

    try:
        path = write_skeleton(_config_dir(config_dir), org_id, parse_targets(targets), name)
    except ChartbridgeError as exc:
        raise click.ClickException(str(exc)) from None      # one line, exit 1
    click.echo(f"wrote {path}: fill the CHANGE ME lines, then `chartbridge org validate` and "
               f"`chartbridge org check {org_id}`")


def org_env(org_id: str, config_dir: str | None, env: str | None) -> str | None:
    """The overlay for one org: --env, else its file's `environment:`, else $CHARTBRIDGE_ENV."""
    return env_for(_config_dir(config_dir) / f"{org_id}.yaml", env)


def _effective(org_id: str, config_dir: str | None, env: str | None, check_mappings: bool = True):
    from chartbridge.onboarding.effective import load_effective

    eff, errors = load_effective(_config_dir(config_dir), org_id, env, check_mappings=check_mappings)
    if eff is None or (errors and check_mappings):
        for err in errors:
            click.echo(str(err), err=True)
        raise click.ClickException(f"{len(errors)} problem(s) in the config of {org_id}")
    return eff


@org.command()
@click.argument("org_id", metavar="ORG")
@config_dir_option
@env_option
@click.option("--origin", is_flag=True, help="One line per value: key = value   # file:line.")
@click.option("--json", "as_json", is_flag=True, help="JSON: values with their origin.")
def show(org_id: str, config_dir: str | None, env: str | None, origin: bool, as_json: bool) -> None:
    """Print ORG's effective config (base + overlay + defaults). Secrets are shown as their
    reference (env:NAME / file:PATH), never resolved."""
    from chartbridge.onboarding.effective import render_rows, render_yaml, rows

    env = org_env(org_id, config_dir, env)
    eff = _effective(org_id, config_dir, env)
    header = f"# {org_id}" + (f" (env {env})" if env else "") + ": " + " + ".join(eff.files)
    if as_json:
        click.echo(json.dumps({"org": org_id, "env": env, "files": eff.files,
                               "values": [{"key": r.key, "value": r.value, "origin": r.origin}
                                          for r in rows(eff)]}, indent=2))
    elif origin:
        click.echo(header)
        click.echo(render_rows(rows(eff), origin=True))
    else:
        click.echo(header)
        click.echo(render_yaml(eff), nl=False)


@org.command()
@click.argument("org_id", metavar="ORG")
@config_dir_option
@env_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result (for CI).")
def check(org_id: str, config_dir: str | None, env: str | None, as_json: bool) -> None:
    """Read-only go-live checks of ORG: credential references resolve, tokens are granted,
    endpoints answer (SMART discovery, JWKS, athena practice read, MLLP connect and TLS
    handshake), mappings are complete. Never writes to an EHR. Exit 1 on any failure."""
    from chartbridge.onboarding.checks import render, run_checks
    from chartbridge.ops.health import record_org_check

    env = org_env(org_id, config_dir, env)
    eff = _effective(org_id, config_dir, env, check_mappings=False)   # mappings: a check below
    results = run_checks(eff.org)
    ok = all(c.ok for c in results)
    record_org_check(org_id, env, ok, results)      # kept for the operator console
    if as_json:
        click.echo(json.dumps({"org": org_id, "env": env, "ok": ok, "files": eff.files,
                               "checks": [c.as_dict() for c in results]}, indent=2))
    else:
        click.echo(f"# org check {org_id}" + (f" (env {env})" if env else ""))
        click.echo(render(results))
        failed = sum(not c.ok and not c.skipped for c in results)
        skipped = sum(c.skipped for c in results)
        click.echo(f"{len(results) - failed - skipped} passed, {failed} failed"
                   + (f", {skipped} not checked until those pass" if skipped else ""))
    if not ok:
        raise click.exceptions.Exit(1)


@org.command()
@click.argument("org_ids", nargs=-1, metavar="[ORG]...")
@config_dir_option
@env_option
@click.option("--generate-secrets", "generate", is_flag=True,
              help="Create keys/secrets the orgs reference but that do not resolve yet.")
@click.option("--env-file", default=None, type=click.Path(dir_okay=False),
              help="With --generate-secrets: append `export NAME=...` lines here for env: references.")
def sandbox(org_ids: tuple[str, ...], config_dir: str | None, env: str | None, generate: bool,
            env_file: str | None) -> None:
    """Run every vendor simulator the orgs (default: all in the folder) point at, on the
    hosts and ports of their URLs, with each org's clients registered. Foreground; Ctrl-C
    stops it. Then, in another shell: chartbridge org check ORG."""
    from chartbridge.onboarding.effective import load_effective
    from chartbridge.onboarding.sandbox import start_sandbox

    directory = _config_dir(config_dir)
    ids = list(org_ids) or [p.stem for p in org_files(directory)]
    orgs = []
    for org_id in ids:
        eff, errors = load_effective(directory, org_id, org_env(org_id, config_dir, env),
                                     check_mappings=False)
        if eff is None:
            for err in errors:
                click.echo(str(err), err=True)
            raise click.ClickException(f"the config of {org_id} is invalid")
        orgs.append(eff.org)
    if generate and env_file is None:
        env_file = "sandbox-secrets.env"
    stop = threading.Event()
    with start_sandbox(orgs, generate=generate, env_file=env_file) as sb:
        for line in sb.lines:
            click.echo(line)
        for w in sb.warnings:
            click.echo(f"warning: {w}", err=True)
        if sb.generated:
            click.echo(f"generated: {', '.join(sb.generated)}")
            if env_file and any(g.startswith("env:") for g in sb.generated):
                click.echo(f"in the shell that runs `org check`: source {env_file}")
        click.echo("sandbox ready; Ctrl-C stops it", err=False)
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
