"""HTTP machinery for the simulators: a request handler that does not log every request
to stderr, a JSON answer, and a werkzeug server run on a background thread."""
from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Response


class QuietHandler(WSGIRequestHandler):
    """No per-request line on stderr (a test run would drown in them)."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_error(self, *args: Any) -> None:
        pass


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None,
                  mimetype: str = "application/json") -> Response:
    return Response(json.dumps(body), status=status, mimetype=mimetype,
                    headers=dict(headers or {}))


class BackgroundServer:
    """A threaded werkzeug server for one WSGI app on a daemon thread."""

    def __init__(self, app: Callable, *, host: str = "127.0.0.1", port: int = 0,
                 name: str = "simulator") -> None:
        self._app, self.host, self._port, self._name = app, host, port, name
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server not started")
        return self._server.server_port

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        if self._server is not None:
            return self.base_url
        self._server = make_server(self.host, self._port, self._app, threaded=True,
                                   request_handler=QuietHandler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, name=self._name,
                                        daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def drop_connection(environ: Mapping[str, Any]) -> bool:
    """Shut the request's socket down in both directions (a connection lost mid-answer);
    False if the server gives no socket. The WSGI app should then raise
    ConnectionResetError (or a subclass): werkzeug takes it as a client gone."""
    sock = environ.get("werkzeug.socket")
    if sock is None:
        return False
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    return True
