"""One settings model lists every CHARTBRIDGE_* environment variable: a name used anywhere in
the code, the deploy files or the docs that chartbridge/settings.py does not document
fails here; docs/deploy.md tabulates the engine's; values are read and checked."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from chartbridge.cli import _attach, cli
from chartbridge.core.errors import ConfigError
from chartbridge.settings import Settings, documented, load_settings

REPO = Path(__file__).resolve().parents[2]
SCANNED = ["chartbridge", "core", "adapters", "ledger", "config", "mappings", "contract_tests",
           "tests", "deploy", "docs", "bench", "Makefile", "README.md", ".ci"]
NAME = re.compile(r"CHARTBRIDGE_[A-Z0-9_]*[A-Z0-9]\b")
NOT_VARIABLES = {"CHARTBRIDGE_TEST"}        # an HL7 facility name in the MDM suite's defaults


def names_in_repo() -> dict[str, str]:
    found: dict[str, str] = {}
    for entry in SCANNED:
        root = REPO / entry
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in files:
            if path.suffix in (".wav", ".pdf", ".pyc", ".png") or "vendor" in path.parts:
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            for name in NAME.findall(text):
                found.setdefault(name, str(path.relative_to(REPO)))
    return found


def test_every_chartbridge_variable_in_the_repository_is_documented():
    found = names_in_repo()
    assert "CHARTBRIDGE_DATABASE_URL" in found              # the scan sees the code
    missing = {n: where for n, where in found.items()
               if n not in NOT_VARIABLES and not documented(n)}
    assert not missing, f"add these to chartbridge/settings.py: {missing}"


def test_the_deploy_guide_tabulates_every_engine_setting():
    guide = (REPO / "docs" / "deploy.md").read_text()
    absent = [v for v in Settings.variables() if f"`{v}`" not in guide]
    assert not absent, f"docs/deploy.md does not list {absent}"


def test_values_come_from_the_environment_and_a_bad_one_names_its_variable(monkeypatch):
    monkeypatch.setenv("CHARTBRIDGE_QUEUE", "site-a")
    monkeypatch.setenv("CHARTBRIDGE_DEV_LOGIN", "1")
    s = load_settings()
    assert s.queue == "site-a" and s.dev_login is True
    monkeypatch.setenv("CHARTBRIDGE_WEB_THREADS", "many")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert err.value.fields.get("key") == "CHARTBRIDGE_WEB_THREADS"


def test_settings_command_lists_each_variable_with_passwords_masked(monkeypatch):
    monkeypatch.setenv("CHARTBRIDGE_BROKER_URL", "amqp://cb:s3cret-pw@mq.example:5672/cb")
    _attach()
    r = CliRunner().invoke(cli, ["settings", "--json"], catch_exceptions=False)
    assert r.exit_code == 0
    rows = {row["variable"]: row for row in json.loads(r.stdout)}
    assert set(rows) == set(Settings.variables())
    assert rows["CHARTBRIDGE_BROKER_URL"]["value"] == "amqp://cb:***@mq.example:5672/cb"
    assert "s3cret-pw" not in r.stdout
    assert all(row["meaning"] for row in rows.values())
