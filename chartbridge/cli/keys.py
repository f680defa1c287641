"""`chartbridge keys ...`: the org's own signing keys.

    keys generate ORG [--target T]...   a new key pair per signing target (by file
                                        reference), then the public JWKS on stdout
    keys jwks ORG                       the public JWKS of the keys the org file references

The public JWKS is what a site registers for our backend client (Epic, a FHIR server), or
the URL it fetches: the engine serves it at /orgs/ORG/.well-known/jwks.json.
"""
from __future__ import annotations

import json

import click

from chartbridge.cli.org import _config_dir, _effective, config_dir_option, env_option, org_env


@click.group()
def keys() -> None:
    """The org's signing keys: generate a key pair, print the public JWKS."""


@keys.command()
@click.argument("org_id", metavar="ORG")
@click.option("--target", "targets", multiple=True,
              help="Only this target's key (repeatable; default: every target that signs).")
@config_dir_option
@env_option
def generate(org_id: str, targets: tuple[str, ...], config_dir: str | None, env: str | None) -> None:
    """Write a new private key (mode 600, never over an existing one) for each of ORG's
    signing targets at the file its private_key references (or keys/ORG-TARGET.pem in the
    config folder for an env: reference), and print the public JWKS to register."""
    from chartbridge.core.errors import ChartbridgeError
    from chartbridge.onboarding.keys import generate as make

    eff = _effective(org_id, config_dir, org_env(org_id, config_dir, env), check_mappings=False)
    try:
        made = make(eff.org, _config_dir(config_dir), list(targets) or None)
    except ChartbridgeError as exc:
        raise click.ClickException(exc.message) from None
    for g in made:
        click.echo(f"wrote {g.path} (mode 600): the {g.target} private key, kid {g.jwk['kid']}",
                   err=True)
        if not g.referenced:
            click.echo(f"  set targets.{g.target}.private_key: {g.ref} in the org file", err=True)
    click.echo("register this public JWKS with the site (or its URL "
               f"/orgs/{org_id}/.well-known/jwks.json on the engine):", err=True)
    click.echo(json.dumps({"keys": [g.jwk for g in made]}, indent=2))


@keys.command()
@click.argument("org_id", metavar="ORG")
@config_dir_option
@env_option
def jwks(org_id: str, config_dir: str | None, env: str | None) -> None:
    """Print the public JWKS of the signing keys ORG's file references (exit 1 if one
    does not resolve)."""
    from chartbridge.onboarding.keys import org_jwks

    eff = _effective(org_id, config_dir, org_env(org_id, config_dir, env), check_mappings=False)
    doc, problems = org_jwks(eff.org)
    click.echo(json.dumps(doc, indent=2))
    for p in problems:
        click.echo(f"error: {p}", err=True)
    if problems:
        raise click.exceptions.Exit(1)
