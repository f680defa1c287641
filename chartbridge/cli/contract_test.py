"""`chartbridge contract-test --vendor V`: run a vendor's contract suite against its
simulator (default) or a real sandbox named on the command line.

`chartbridge contract-test --org ORG --env sandbox`: run the contract suite of each target
ORG has configured (or just --vendor) against that org's endpoints in that environment (the
ORG.sandbox.yaml overlay merged over ORG.yaml). The org's target settings become the
suites' environment variables (`suite_env`); each suite runs in its own pytest process, so
one vendor's settings never leak into another's. The suites WRITE test documents, so a
production environment is refused.
"""
import os
import subprocess
import sys
from pathlib import Path

import click

import contract_tests

VENDORS = ("epic_haiku", "fhir_docref", "athenaone", "hl7_mdm")
REFUSED_ENVS = ("production", "prod", "live")


def suite_env(target: str, cfg) -> tuple[dict[str, str], str | None]:
    """The environment variables that point `target`'s suite at this target config, and a
    note for the operator (or None). Secrets travel by reference where the suite takes one;
    athena's suite takes the secret value, resolved here and given to its process only."""
    env: dict[str, str] = {}
    if target == "fhir_docref":
        key = cfg.private_key
        env.update({"CHARTBRIDGE_CONTRACT_BASE_URL": cfg.base_url,
                    "CHARTBRIDGE_CONTRACT_CLIENT_ID": cfg.client_id,
                    "CHARTBRIDGE_CONTRACT_KEY": key.ref if key.scheme == "env" else f"file:{key.path}",
                    "CHARTBRIDGE_FHIR_PROFILE": cfg.profile,
                    "CHARTBRIDGE_FHIR_CLIENT_ID": cfg.client_id,
                    "CHARTBRIDGE_FHIR_KEY_REF": key.ref if key.scheme == "env" else f"file:{key.path}",
                    "CHARTBRIDGE_FHIR_KEY_ID": cfg.key_id,
                    "CHARTBRIDGE_FHIR_ALGORITHM": cfg.algorithm})
        if cfg.token_url:
            env["CHARTBRIDGE_FHIR_TOKEN_URL"] = cfg.token_url
        return env, "set CHARTBRIDGE_FHIR_PATIENT_ID / _ENCOUNTER_ID to a test patient of the sandbox"
    if target == "athenaone":
        env.update({"CHARTBRIDGE_CONTRACT_BASE_URL": cfg.base_url,
                    "CHARTBRIDGE_CONTRACT_CLIENT_ID": cfg.client_id,
                    "CHARTBRIDGE_CONTRACT_KEY": cfg.client_secret.ref,
                    "CHARTBRIDGE_ATHENA_TOKEN_URL": cfg.token_url,
                    "CHARTBRIDGE_ATHENA_CLIENT_ID": cfg.client_id,
                    "CHARTBRIDGE_ATHENA_CLIENT_SECRET": cfg.client_secret.resolve(),
                    "CHARTBRIDGE_ATHENA_PRACTICE_ID": cfg.practice_id,
                    "CHARTBRIDGE_ATHENA_DEPARTMENT_ID": cfg.department_id})
        return env, "set CHARTBRIDGE_ATHENA_PATIENT_ID to a test patient of the practice"
    if target == "hl7_mdm":
        scheme = "mllps" if cfg.tls.enabled else "mllp"
        env.update({"CHARTBRIDGE_CONTRACT_BASE_URL": f"{scheme}://{cfg.host}:{cfg.port}",
                    "CHARTBRIDGE_CONTRACT_HOST": cfg.host,
                    "CHARTBRIDGE_CONTRACT_PORT": str(cfg.port),
                    "CHARTBRIDGE_HL7_RECEIVING_APPLICATION": cfg.receiving_application,
                    "CHARTBRIDGE_HL7_RECEIVING_FACILITY": cfg.receiving_facility,
                    "CHARTBRIDGE_HL7_SENDING_FACILITY": cfg.sending_facility})
        if cfg.tls.enabled and cfg.tls.ca_file:
            env["CHARTBRIDGE_HL7_CA_FILE"] = str(cfg.tls.ca_file)
        return env, None
    if target == "epic_haiku":
        # the Epic suite plays Epic's side against our engine: it always runs on the
        # simulator; the site's endpoints are covered by `chartbridge org check`
        return {}, "the Epic suite runs against the Epic simulator; the site is checked by `org check`"
    return {}, f"no settings mapping for {target}"


def _junit_for(junit: str | None, vendor: str, many: bool) -> str | None:
    if not junit:
        return None
    if not many:
        return junit
    p = Path(junit)
    return str(p.with_name(f"{p.stem}.{vendor}{p.suffix or '.xml'}"))


def _run_org(org_id: str, env_name: str | None, config_dir: str | None, only: str | None,
             junit: str | None, pytest_args: tuple[str, ...]) -> int:
    from chartbridge.config.loader import DEFAULT_CONFIG_DIR, ENV_CONFIG_DIR, current_env
    from chartbridge.onboarding.effective import load_effective

    env_name = current_env(env_name)
    if env_name in REFUSED_ENVS:
        raise click.ClickException(f"contract suites write test documents; refusing env {env_name!r} "
                                   "(use the site's sandbox/test environment)")
    directory = Path(config_dir or os.environ.get(ENV_CONFIG_DIR) or DEFAULT_CONFIG_DIR)
    eff, errors = load_effective(directory, org_id, env_name, check_mappings=False)
    if eff is None:
        for err in errors:
            click.echo(str(err), err=True)
        raise click.ClickException(f"the config of {org_id} is invalid")
    targets = [t for t in eff.org.targets if only is None or t == only]
    if not targets:
        raise click.ClickException(f"org {org_id} has no target {only}")
    worst = 0
    for target in targets:
        suite = Path(contract_tests.__file__).parent / target
        if not suite.is_dir():
            click.echo(f"{target}: no contract suite in this build; skipped", err=True)
            continue
        extra, note = suite_env(target, eff.org.targets[target])
        if note:
            click.echo(f"{target}: {note}", err=True)
        args = [sys.executable, "-m", "pytest", str(suite), "-q", "-rs",
                "-o", f"junit_suite_name=contract-{target}", *pytest_args]
        report = _junit_for(junit, target, len(targets) > 1)
        if report:
            args.append(f"--junit-xml={report}")
        click.echo(f"== {target} contract suite against {org_id}"
                   + (f" ({env_name})" if env_name else ""))
        child = {**os.environ, **extra}
        code = subprocess.call(args, env=child)
        worst = max(worst, code)
    return worst


@click.command("contract-test")
@click.option("--vendor", type=click.Choice(VENDORS), default=None,
              help="The suite to run (required without --org; with --org, only this target).")
@click.option("--org", "org_id", default=None, help="Run ORG's configured targets' suites against its endpoints.")
@click.option("--env", "env_name", default=None, help="With --org: the environment overlay (e.g. sandbox).")
@click.option("--config-dir", default=None, type=click.Path(file_okay=False), help="With --org: the org config folder.")
@click.option("--base-url", default=None, help="A real sandbox instead of the simulator.")
@click.option("--host", default=None, help="hl7_mdm: the receiver's host.")
@click.option("--port", default=None, type=int, help="hl7_mdm: the receiver's port.")
@click.option("--client-id", default=None, help="Sandbox client id.")
@click.option("--key", default=None, help="Sandbox key or secret reference (env:NAME or file:PATH).")
@click.option("--junit-xml", "junit", default=None, type=click.Path(dir_okay=False),
              help="Write a JUnit XML report a CI system can show (with --org and several "
                   "targets: one file per target, PATH.<target>.xml).")
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def contract_test(vendor, org_id, env_name, config_dir, base_url, host, port, client_id, key, junit,
                  pytest_args) -> None:
    """Run VENDOR's contract suite (or each of ORG's targets' suites)."""
    if org_id is not None:
        if any(v is not None for v in (base_url, host, port, client_id, key)):
            raise click.UsageError("--org takes the endpoints from the org config; drop "
                                   "--base-url/--host/--port/--client-id/--key")
        raise SystemExit(_run_org(org_id, env_name, config_dir, vendor, junit, pytest_args))
    if vendor is None:
        raise click.UsageError("give --vendor (or --org)")
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
