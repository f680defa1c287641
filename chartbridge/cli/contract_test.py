"""`chartbridge contract-test --vendor V`: run a vendor's contract suite against its
simulator (default) or a real sandbox named on the command line."""
import os
from pathlib import Path

import click

import contract_tests

VENDORS = ("epic_haiku", "fhir_docref", "athenaone", "hl7_mdm")


@click.command("contract-test")
@click.option("--vendor", type=click.Choice(VENDORS), required=True)
@click.option("--base-url", default=None, help="A real sandbox instead of the simulator.")
@click.option("--host", default=None, help="hl7_mdm: the receiver's host.")
@click.option("--port", default=None, type=int, help="hl7_mdm: the receiver's port.")
@click.option("--client-id", default=None, help="Sandbox client id.")
@click.option("--key", default=None, help="Sandbox key or secret reference (env:NAME or file:PATH).")
@click.option("--junit-xml", "junit", default=None, type=click.Path(dir_okay=False),
              help="Write a JUnit XML report a CI system can show.")
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def contract_test(vendor, base_url, host, port, client_id, key, junit, pytest_args) -> None:
    """Run VENDOR's contract suite."""
    import pytest

    suite = Path(contract_tests.__file__).parent / vendor
    if not suite.is_dir():
        raise click.ClickException(f"no contract suite for {vendor} in this build")
    for name, value in (("BASE_URL", base_url), ("HOST", host), ("PORT", port),
                        ("CLIENT_ID", client_id), ("KEY", key)):
        if value is not None:
            os.environ[f"CHARTBRIDGE_CONTRACT_{name}"] = str(value)
    args = [str(suite), "-q", "-rs", *pytest_args]
    if junit:
        args.append(f"--junit-xml={junit}")
    code = pytest.main(args)
    raise SystemExit(int(code))
