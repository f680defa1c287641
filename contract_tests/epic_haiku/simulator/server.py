"""Epic's HTTP side: the outbound Ambient API under the session ``CallbackURL``
(``GetAmbientRecordingChunk``, ``AmbientRecordingsProcessed``, ``DocumentationReady``) behind
the SMART Backend Services token endpoint, the JWKS, per-call faults, the SMART EHR-launch
server and the ``/_sim`` controls; start/stop and the standalone ``serve``."""
from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any, Callable

import httpx
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from chartbridge.core.errors import InputError, NotFound, StateConflict
from contract_tests.support.http import BackgroundServer, json_response

from .controls import add_control_routes
from .faults import fault_response
from .site import EpicSite
from .spec import CALLBACK_PATH, JWKS_PATH, OUTBOUND_CALLS, SIGNING_ALGS, TOKEN_PATH
from .store import CallRecord
from .validation import _CallError, _require_pos_int, _require_str, check_documentation, json_body


class EpicSimulator(EpicSite):
    """In-process Epic site served over HTTP. ``start()`` returns its base URL; use as a
    context manager. Takes EpicSite's parameters."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._server: BackgroundServer | None = None
        self._stopping = threading.Event()
        self.app = self._build_app()

    # ----------------------------------------------------------------- lifecycle

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self._server is not None:
            return self.base_url  # type: ignore[return-value]
        self._stopping.clear()
        self._server = BackgroundServer(self.app, host=host, port=port, name="epic-sim")
        self.base_url = self._server.start()
        return self.base_url

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.stop()
            self._server = None
        self._http.close()
        self._http = httpx.Client(timeout=self._http.timeout)

    def __enter__(self) -> EpicSimulator:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ----------------------------------------------------------------- HTTP app

    def _build_app(self) -> Flask:
        app = Flask(f"epic_sim_{id(self)}")
        app.config["MAX_CONTENT_LENGTH"] = 64 * 1024 * 1024

        @app.errorhandler(HTTPException)
        def _http_error(exc: HTTPException) -> Response:
            return json_response({"Error": exc.name.replace(" ", ""), "Detail": exc.description or exc.name},
                                 exc.code or 500)

        @app.errorhandler(InputError)
        def _input_error(exc: InputError) -> Response:
            return json_response({"Error": "InvalidRequest", "Detail": exc.message, "Field": exc.field}, 400)

        @app.errorhandler(NotFound)
        def _not_found(exc: NotFound) -> Response:
            return json_response({"Error": "NotFound", "Detail": exc.message}, 404)

        @app.errorhandler(StateConflict)
        def _conflict(exc: StateConflict) -> Response:
            return json_response({"Error": "Conflict", "Detail": exc.message}, 409)

        @app.get(JWKS_PATH)
        def _jwks() -> Response:
            return json_response(self.jwks)

        @app.get("/.well-known/smart-configuration")
        def _smart_config() -> Response:
            return json_response({"token_endpoint": self.token_url, "jwks_uri": self.jwks_url,
                                  "grant_types_supported": ["client_credentials"],
                                  "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                                  "token_endpoint_auth_signing_alg_values_supported": list(SIGNING_ALGS)})

        @app.post(TOKEN_PATH)
        def _token() -> Response:
            return self._handle("token", None, lambda: self._auth.token_endpoint(request.form, self.token_url))

        @app.post(CALLBACK_PATH + "<name>")
        def _outbound(name: str) -> Response:
            if name not in OUTBOUND_CALLS:
                return json_response({"Error": "UnknownOperation", "Detail": "no such Ambient operation"}, 404)
            handler = {"GetAmbientRecordingChunk": self._get_chunk,
                       "AmbientRecordingsProcessed": self._recordings_processed,
                       "DocumentationReady": self._documentation_ready}[name]
            return self._handle(name, self._authorize, handler)

        add_control_routes(app, self)
        from ..smart import SmartAuthServer     # the SMART EHR-launch side (epic_haiku/smart.py)
        self.smart = SmartAuthServer(self._base, clock=lambda: self.clock())
        self.smart.mount(app)
        return app

    def _handle(self, call: str, auth: Callable[[], None] | None, handler: Callable[[], Response]) -> Response:
        fault = self.faults.take(call)
        body = request.get_json(silent=True, force=True) if call != "token" else None
        session_id = body.get("SessionID") if isinstance(body, dict) else None
        if fault and fault.delay_s and not fault.after_processing:
            self._stopping.wait(fault.delay_s)
        if fault and fault.status and not fault.after_processing:
            resp = fault_response(call, fault)
        else:
            try:
                if auth is not None:
                    auth()
                resp = handler()
            except _CallError as err:
                resp = json_response({"Error": err.code, "Detail": err.detail, **err.extra}, err.status)
                if err.status == 401:
                    resp.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            if fault and fault.delay_s and fault.after_processing:
                self._stopping.wait(fault.delay_s)
            if fault and fault.status and fault.after_processing:
                resp = fault_response(call, fault)
        self._store.log_call(CallRecord(call=call, status=resp.status_code, session_id=session_id
                                        if isinstance(session_id, str) else None, body=body, at=self.clock()))
        return resp

    # ----------------------------------------------------------------- outbound operations

    def _authorize(self) -> None:
        self._auth.authorize(request.headers.get("Authorization", ""))

    def _get_chunk(self) -> Response:
        body = json_body(request)
        sid = _require_str(body, "SessionID")
        rid = _require_str(body, "RecordingID")
        version = _require_pos_int(body, "RecordingVersion")
        seq = _require_pos_int(body, "ChunkSequence")
        return Response(self._store.chunk_wav(sid, rid, version, seq), status=200, content_type="audio/wav")

    def _recordings_processed(self) -> Response:
        body = json_body(request)
        sid = _require_str(body, "SessionID")
        version = _require_pos_int(body, "RecordingVersion")
        self._store.report_processed(sid, version)
        return json_response({"Accepted": True})

    def _documentation_ready(self) -> Response:
        body = json_body(request)
        sid, version, codes = check_documentation(body)
        self._store.accept_documentation(sid, version, codes, body)
        return json_response({"Accepted": True})


def serve(host: str = "127.0.0.1", port: int = 8790, *, engine_url: str | None = None,
          epic_client_id: str = "epic-sim-client", client_id: str | None = None,
          client_key: str | Path | None = None, epic_alg: str = "RS384", token_ttl: int = 300,
          **options: Any) -> None:
    """Run the simulator standalone until interrupted. ``client_key`` is a path to the backend
    client's public JWKS (JSON) or PEM, registered for ``client_id``."""
    clients: dict[str, Any] = {}
    if client_id:
        if client_key is None:
            raise InputError("client_key (public JWKS or PEM file) is needed with client_id", field="client_key")
        try:
            clients[client_id] = Path(client_key).read_bytes()
        except OSError as exc:
            raise InputError("cannot read client_key file", field="client_key") from exc
    sim = EpicSimulator(engine_url=engine_url, epic_client_id=epic_client_id, clients=clients,
                        epic_alg=epic_alg, token_ttl=token_ttl, **options)
    base = sim.start(host, port)
    print(f"Epic Haiku simulator at {base} — configure the org: epic.jwks_url={sim.jwks_url} "
          f"epic.client_id(iss)={epic_client_id} token_url={sim.token_url} callback={sim.callback_url}; "
          f"controls at {base}/_sim/ (engine: {engine_url or 'POST /_sim/engine'})", flush=True)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sim._stopping.set())
    try:
        while not sim._stopping.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
