"""`chartbridge api ...`: what a capture client of the HTTP API needs by hand (the README's
curl walk-through).

    api client-key --client-id ID --out DIR     a key pair: DIR/ID.key.json (private JWK,
                                                mode 600) and DIR/ID.jwks.json (the public
                                                JWKS the org file's api.clients references)
    api assertion --key FILE --client-id ID --token-url URL
                                                a fresh private_key_jwt client assertion for
                                                POST /orgs/ORG/api/v1/token (2 minutes, one use)
"""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def api() -> None:
    """The capture API's client side: a client key pair, a client assertion."""


@api.command("client-key")
@click.option("--client-id", required=True, help="The client's id in the org file.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder for ID.key.json (private) and ID.jwks.json (public).")
def client_key(client_id: str, out: str) -> None:
    """Write a new ES256 key pair for a capture client (never over an existing one) and
    print the org file's `api.clients` entry for it."""
    from chartbridge.api.client import new_client_key
    from chartbridge.core.errors import InputError

    folder = Path(out)
    private, public = folder / f"{client_id}.key.json", folder / f"{client_id}.jwks.json"
    if private.exists():
        raise InputError(f"{private} exists; a key is never overwritten", field="--out")
    folder.mkdir(parents=True, exist_ok=True)
    key, jwks = new_client_key()
    private.touch(mode=0o600)
    private.write_text(json.dumps(key.as_dict(private=True)))
    public.write_text(json.dumps(jwks, indent=2))
    click.echo(f"api:\n  clients:\n    - client_id: {client_id}\n      jwks: file:{public}\n"
               f"      scopes: [capture, read, approve]")


@api.command()
@click.option("--key", "key_file", required=True, type=click.Path(dir_okay=False),
              help="The client's private JWK (from `api client-key`).")
@click.option("--client-id", required=True)
@click.option("--token-url", required=True, help="https://HOST/orgs/ORG/api/v1/token")
def assertion(key_file: str, client_id: str, token_url: str) -> None:
    """Print a client assertion (a JWT signed with the client's key) for the token endpoint."""
    from joserfc.jwk import ECKey

    from chartbridge.api.client import client_assertion
    from chartbridge.core.errors import InputError

    try:
        key = ECKey.import_key(json.loads(Path(key_file).read_text()))
    except (OSError, ValueError) as exc:
        raise InputError(f"{key_file}: not a private EC JWK ({type(exc).__name__})",
                         field="--key") from None
    click.echo(client_assertion(key, client_id, token_url))
