"""`chartbridge contract-test --vendor V`: run a vendor's contract suite against its
simulator (default) or a real sandbox named on the command line.

`chartbridge contract-test --org ORG --env sandbox`: run the contract suite of each target
ORG has configured (or just --vendor) against that org's endpoints in that environment (the
ORG.sandbox.yaml overlay merged over ORG.yaml).

A run against a real target (--base-url/--host, or --org) is a LIVE run (`run_live`): the
suite runs in its own process and writes a summary (contract_tests/support/live.py:
requests it sent the target, counted at the transport; scenarios run and skipped with
reasons; artifacts created). The run fails closed with one line: when the suite wrote no
summary, when its preflight (connect + credentials) failed, when it sent no request or no
scenario applied, or when a credential given here is not the one the suite used. Each vendor's suite and its settings are its
plugin's (`AdapterSpec.suite`, `suite_env`): the org's target settings become the suites'
environment variables; each suite runs in its own pytest process, so
one vendor's settings never leak into another's. The suites WRITE test documents, so a
production environment is refused.
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from chartbridge.adapters.registry import registry

REFUSED_ENVS = ("production", "prod", "live")
SUMMARY_ENV = "CHARTBRIDGE_CONTRACT_SUMMARY"


def vendors() -> list[str]:
    """Every registered adapter that names a contract suite (`AdapterSpec.suite`)."""
    return [s.name for s in registry.plugins() if s.suite]


def suite_env(target: str, cfg) -> tuple[dict[str, str], str | None]:
    """The environment variables that point `target`'s suite at this target config, and a
    note for the operator (or None): the plugin's `suite_env`. Secrets travel by reference
    where the suite takes one."""
    return registry.get(target).environment(cfg)


def suite_dir(target: str) -> Path | None:
    """The folder of `target`'s contract suite (its plugin's `suite` package), or None when
    the plugin names none or it is not part of this build."""
    name = registry.get(target).suite
    if not name:
        return None
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


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
        suite = suite_dir(target)
        if suite is None or not suite.is_dir():
            click.echo(f"{target}: no contract suite in this build; skipped", err=True)
            continue
        extra, note = suite_env(target, eff.org.targets[target])
        if note:
            click.echo(f"{target}: {note}", err=True)
        click.echo(f"== {target} contract suite against {org_id}"
                   + (f" ({env_name})" if env_name else ""))
        code, problem = run_live(target, suite, extra, {}, _junit_for(junit, target, len(targets) > 1),
                                 pytest_args)
        if problem:
            click.echo(f"{target}: {problem}", err=True)
        worst = max(worst, code)
    return worst


def run_live(vendor: str, suite: Path, env: dict[str, str], given: dict[str, str],
             junit: str | None, pytest_args: tuple[str, ...]) -> tuple[int, str | None]:
    """Run `vendor`'s suite in its own process against a real target and read back the
    summary it writes (contract_tests/support/live.py). Returns (exit code, the one-line
    reason the run failed, or None). Fails closed: a suite that writes no summary, a fatal
    reason (preflight, no request sent, no scenario applied), or credentials given on the
    command line that the suite did not use."""
    with tempfile.TemporaryDirectory(prefix="cb-contract-") as tmp:
        summary_path = Path(tmp) / "summary.json"
        args = [sys.executable, "-m", "pytest", str(suite), "-q", "-rs",
                "-o", f"junit_suite_name=contract-{vendor}", *pytest_args]
        if junit:
            args.append(f"--junit-xml={junit}")
        child = {**os.environ, **env, SUMMARY_ENV: str(summary_path)}
        code = subprocess.call(args, env=child)
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            if "CHARTBRIDGE_CONTRACT_BASE_URL" not in env:
                # a plugin's own suite that does not use contract_tests/support/live.py:
                # its result stands, but nothing here counted what reached the target
                click.echo(f"{vendor}: the suite reports no live summary; requests to the "
                           "target were not counted", err=True)
                return code, None
            return max(code, 1), (f"the {vendor} suite wrote no live summary (exit {code}); "
                                  "it did not run against the target")
    used = summary.get("credentials") or {}
    for name, value in given.items():
        if used.get(name) != value:
            return max(code, 1), (f"--{name.replace('_', '-')} did not reach the {vendor} suite "
                                  f"(it used {used.get(name)!r})")
    if summary.get("fatal"):
        return max(code, 1), summary["fatal"]
    click.echo(f"{vendor} live run against {summary.get('target')}: {summary.get('requests')} "
               f"requests, {summary.get('scenarios_run')} scenarios run "
               f"({len(summary.get('failed') or [])} failed), {len(summary.get('skipped') or {})} "
               f"skipped, {len(summary.get('artifacts') or [])} artifacts created")
    return code, None


@click.command("contract-test")
@click.option("--vendor", type=click.Choice(vendors()), default=None,
              help="The suite to run (required without --org; with --org, only this target).")
@click.option("--org", "org_id", default=None, help="Run ORG's configured targets' suites against its endpoints.")
@click.option("--env", "env_name", default=None, help="With --org: the environment overlay (e.g. sandbox).")
@click.option("--config-dir", default=None, type=click.Path(file_okay=False), help="With --org: the org config folder.")
@click.option("--base-url", default=None, help="A real sandbox instead of the simulator.")
@click.option("--host", default=None, help="Suites that connect to a host and port (not a URL): the host.")
@click.option("--port", default=None, type=int, help="Suites that connect to a host and port (not a URL): the port.")
@click.option("--client-id", default=None, help="Sandbox client id.")
@click.option("--key", default=None, help="Sandbox key or secret reference (env:NAME or file:PATH).")
@click.option("--key-id", default=None, help="Suites that sign with a key: its kid at the sandbox.")
@click.option("--junit-xml", "junit", default=None, type=click.Path(dir_okay=False),
              help="Write a JUnit XML report a CI system can show (with --org and several "
                   "targets: one file per target, PATH.<target>.xml).")
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def contract_test(vendor, org_id, env_name, config_dir, base_url, host, port, client_id, key, key_id,
                  junit, pytest_args) -> None:
    """Run VENDOR's contract suite (or each of ORG's targets' suites)."""
    if org_id is not None:
        if any(v is not None for v in (base_url, host, port, client_id, key, key_id)):
            raise click.UsageError("--org takes the endpoints from the org config; drop "
                                   "--base-url/--host/--port/--client-id/--key")
        raise SystemExit(_run_org(org_id, env_name, config_dir, vendor, junit, pytest_args))
    if vendor is None:
        raise click.UsageError("give --vendor (or --org)")
    import pytest

    suite = suite_dir(vendor)
    if suite is None or not suite.is_dir():
        raise click.ClickException(f"no contract suite for {vendor} in this build")
    given = {k: v for k, v in (("client_id", client_id), ("key", key), ("key_id", key_id))
             if v is not None}
    if base_url is None and host is None:
        if given or port is not None:
            raise click.UsageError("--client-id/--key/--key-id/--port are for a live run: "
                                   "give --base-url (or --host) too")
    else:
        env = {f"CHARTBRIDGE_CONTRACT_{name}": str(value) for name, value in
               (("BASE_URL", base_url), ("HOST", host), ("PORT", port), ("CLIENT_ID", client_id),
                ("KEY", key), ("KEY_ID", key_id)) if value is not None}
        code, problem = run_live(vendor, suite, env, given, junit, pytest_args)
        if problem:
            raise click.ClickException(problem)
        raise SystemExit(code)
    args = [str(suite), "-q", "-rs", *pytest_args]
    if junit:
        args.append(f"--junit-xml={junit}")
    code = pytest.main(args)
    raise SystemExit(int(code))
