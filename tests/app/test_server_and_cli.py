"""The server skeleton and the CLI: health, readiness, JSON errors, one-line CLI failures."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import httpx
import pytest

from chartbridge.bootstrap import bootstrap
from chartbridge.cli import main
from chartbridge.ledger.db import Database
from chartbridge.web import create_app


@pytest.fixture
def app(database_url, tmp_path):
    engine = bootstrap(database_url=database_url, config_dir=tmp_path)
    yield create_app(engine)
    engine.db.dispose()


def test_healthz_and_readyz(app):
    client = app.test_client()
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["status"] == "ready"


def test_readyz_reports_unreachable_database(tmp_path):
    engine = bootstrap(database_url="postgresql://nobody@127.0.0.1:1/none", migrate=False,
                       config_dir=tmp_path)
    resp = create_app(engine).test_client().get("/readyz")
    assert resp.status_code == 503 and resp.json == {"status": "unavailable", "database": "unreachable"}


def test_unknown_route_is_json_404(app):
    resp = app.test_client().get("/nope")
    assert resp.status_code == 404 and resp.is_json and resp.json["error"] == "not_found"


def test_ledger_show_json_and_table(database_url, capsys):
    from command_factory_shim import seeded_ledger
    seeded_ledger(database_url)
    assert main(["ledger", "show", "--org", "org-a", "--json", "--database-url", database_url]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows] == ["succeeded"] and rows[0]["key"].startswith("org-a:")
    assert main(["ledger", "show", "--org", "org-b", "--json", "--database-url", database_url]) == 0
    assert json.loads(capsys.readouterr().out) == []               # scoped by org
    assert main(["ledger", "show", "--org", "org-a", "--database-url", database_url]) == 0
    assert "succeeded" in capsys.readouterr().out


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "chartbridge.cli", "ledger", "show", "--org", "x",
                          "--database-url", f"sqlite:///{tmp_path}/missing.db"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    assert "chartbridge db upgrade" in out.stderr


def test_db_upgrade_command(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/fresh.db"
    from alembic.script import ScriptDirectory

    from chartbridge.ledger.migrate import HERE
    head = ScriptDirectory(str(HERE / "migrations")).get_current_head()
    assert main(["db", "upgrade", "--database-url", url]) == 0
    assert f"revision {head} " in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_runs_a_production_server(tmp_path):
    port = _free_port()
    env = {"CHARTBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path}/serve.db",
           "CHARTBRIDGE_CONFIG_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-m", "chartbridge.cli", "serve", "--port", str(port),
                             "--public-url", "https://cb.example.org", "--trusted-proxies", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.1)
        assert resp.status_code == 200 and resp.json()["database"] == "sqlite"
        assert resp.headers.get("server", "").startswith("waitress")
        # headers and bodies are bounded at the server, before the app
        big = httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"X-Big": "a" * 100_000})
        assert big.status_code == 431
        body = httpx.post(f"http://127.0.0.1:{port}/orgs/x/epic/ambient/AmbientSessionBegin",
                          content=b"{" * (3 * 1024 * 1024))
        assert body.status_code == 413
    finally:
        proc.terminate()
        proc.wait(20)


def test_an_unexpected_cli_failure_is_one_line(monkeypatch, capsys):
    import chartbridge.cli.ledger as ledger_cmd

    def boom(url):
        raise RuntimeError("something internal")
    monkeypatch.setattr(ledger_cmd, "_ledger", boom)
    monkeypatch.delenv("CHARTBRIDGE_DEBUG", raising=False)
    assert main(["ledger", "show", "--org", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError" in err and "something internal" not in err
