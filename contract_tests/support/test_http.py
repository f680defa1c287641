"""The shared HTTP machinery: a quiet handler, a JSON answer, a background server."""
from __future__ import annotations

import json
import logging

import httpx
import pytest
from werkzeug.wrappers import Request, Response

from contract_tests.support.http import BackgroundServer, QuietHandler, drop_connection, json_response


@Request.application
def _app(request: Request) -> Response:
    if request.path == "/boom":
        raise ConnectionResetError("client went away")
    if request.path == "/drop":
        drop_connection(request.environ)
        raise ConnectionResetError("dropped")
    return json_response({"path": request.path}, 201, {"X-Sim": "yes"})


def test_json_response_carries_body_status_headers_and_type():
    resp = json_response({"a": [1, "é"]}, 429, {"Retry-After": "2"})
    assert resp.status_code == 429
    assert resp.headers["Retry-After"] == "2"
    assert resp.mimetype == "application/json"
    assert json.loads(resp.get_data()) == {"a": [1, "é"]}
    assert json_response("x", mimetype="application/fhir+json").mimetype == "application/fhir+json"
    assert json_response(None).status_code == 200 and resp.headers.get("X-Sim") is None


def test_background_server_serves_until_stopped():
    server = BackgroundServer(_app, name="test-sim")
    with pytest.raises(RuntimeError):
        server.port
    assert not server.running
    # When started
    base = server.start()
    try:
        # Then it answers on a free loopback port, and starting again changes nothing
        assert base == f"http://127.0.0.1:{server.port}" and server.running
        assert server.start() == base
        resp = httpx.get(base + "/hello")
        assert resp.status_code == 201 and resp.json() == {"path": "/hello"}
        assert resp.headers["X-Sim"] == "yes"
    finally:
        server.stop()
    # And after stop nothing listens there any more; stop twice is harmless
    assert not server.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(base + "/hello", timeout=2)
    server.stop()


def test_background_server_can_be_started_again_after_stop():
    server = BackgroundServer(_app)
    server.start()
    server.stop()
    base = server.start()
    try:
        assert httpx.get(base + "/again").json() == {"path": "/again"}
    finally:
        server.stop()


def test_quiet_handler_writes_no_request_lines(caplog, capfd):
    # Given the werkzeug logger at its most talkative
    caplog.set_level(logging.DEBUG, logger="werkzeug")
    server = BackgroundServer(_app)
    base = server.start()
    try:
        # When a request is answered and another is dropped by the app
        assert httpx.get(base + "/quiet").status_code == 201
        with pytest.raises(httpx.HTTPError):
            httpx.get(base + "/boom", timeout=5)
    finally:
        server.stop()
    # Then no access-log or error line was written (URLs may name orgs or patients)
    assert [r for r in caplog.records if r.name == "werkzeug"] == []
    assert "/quiet" not in capfd.readouterr().err


def test_quiet_handler_is_a_werkzeug_request_handler():
    from werkzeug.serving import WSGIRequestHandler
    assert issubclass(QuietHandler, WSGIRequestHandler)


def test_drop_connection_leaves_the_client_without_an_answer():
    server = BackgroundServer(_app)
    base = server.start()
    try:
        # When the app drops the connection mid-request
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(base + "/drop", timeout=5)
        # Then the server goes on answering other requests
        assert httpx.get(base + "/after").status_code == 201
    finally:
        server.stop()
    drop_connection({})                     # no socket (not werkzeug): nothing to do
