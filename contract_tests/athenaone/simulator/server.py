"""The athenaOne HTTP surface: routes (token endpoint, clinical documents, ping), the
fault each call may take, the ``/_sim/...`` controls, start/stop and ``serve``."""
from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable

from werkzeug.wrappers import Request, Response

from chartbridge.core.errors import InputError
from contract_tests.support.http import BackgroundServer, drop_connection, json_response as _json

from .auth import (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_SCOPE, TOKEN_RATE_PER_MIN,
                   AthenaAuth)
from .faults import Fault, Faults
from .store import DEFAULT_PRACTICE_ID, OTHER_PRACTICE_ID, DocumentStore
from .traffic import Traffic
from .validation import (athena_error as _athena_error, check_paging, check_patient,
                         check_department, check_upload, flag, retry_after_header)

_API_ROUTE = re.compile(
    r"^/v1/(?P<practiceid>[^/]+)/patients/(?P<patientid>[^/]+)/documents/clinicaldocument"
    r"(?:/(?P<docid>[^/]+))?/?$")
_PRACTICE_ROUTE = re.compile(r"^/v1/(?P<practiceid>[^/]+)(?:/.*)?$")


class _Dropped(ConnectionResetError):
    """Raised inside the WSGI app after closing the socket: werkzeug treats it as a
    connection the client dropped and writes nothing."""


def _clock_fn(clock: Any) -> Callable[[], float]:
    if clock is None:
        return time.monotonic
    if hasattr(clock, "now"):
        return lambda: clock.now().timestamp()
    if callable(clock):
        return clock
    raise InputError("clock must be a callable returning seconds or have now()", field="clock")


class AthenaSimulator:
    """athenaOne API simulator. See the package docstring and README.md."""

    def __init__(self, *, environment: str = "production", token_ttl_s: int = 3600,
                 token_rate_per_min: int | None = None, qps_per_practice: int = 10,
                 quota_retry_after: float | None = 1, clock: Any = None,
                 seed_defaults: bool = True, max_documents: int = 10_000,
                 max_calls_logged: int = 5_000, max_body_bytes: int = 20 * 1024 * 1024,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        if environment not in TOKEN_RATE_PER_MIN:
            raise InputError("environment must be 'production' or 'preview'",
                             field="environment")
        self._lock = threading.RLock()
        self._now = _clock_fn(clock)
        self.environment = environment
        self.token_ttl_s = int(token_ttl_s)
        self.token_rate_per_min = int(token_rate_per_min if token_rate_per_min is not None
                                      else TOKEN_RATE_PER_MIN[environment])
        self.qps_per_practice = int(qps_per_practice)
        self.quota_retry_after = quota_retry_after
        self.max_documents = int(max_documents)
        self.max_body_bytes = int(max_body_bytes)
        self._max_calls_logged = int(max_calls_logged)
        self._seed_defaults = seed_defaults
        self.host = host
        self.faults = Faults(lock=self._lock)
        self._http = BackgroundServer(self._wsgi, host=host, port=int(port), name="athena-sim")
        self._stopping = threading.Event()
        self.base_url: str | None = None
        self._init_state()

    # ----------------------------------------------------------------- lifecycle
    def _init_state(self) -> None:
        with self._lock:
            self._store = DocumentStore(self._lock, self.max_documents)
            self._auth = AthenaAuth(self._lock, self._now)
            self._traffic = Traffic(self._lock, self._now, self._max_calls_logged)
            self._internal_errors: deque[str] = deque(maxlen=100)
            self.faults.clear()
            if self._seed_defaults:
                self.add_practice(DEFAULT_PRACTICE_ID, departments=["1", "150"],
                                  patients=[str(i) for i in range(1, 21)])
                self.add_practice(OTHER_PRACTICE_ID, departments=["1"],
                                  patients=[str(i) for i in range(1, 6)])
                self.add_client(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_PRACTICE_ID)
                self.add_client("sim-client-2", "sim-secret-2", OTHER_PRACTICE_ID)

    def reset(self) -> None:
        """Forget documents, tokens, counters, calls and faults; re-seed the defaults."""
        self._init_state()

    def start(self) -> str:
        if not self._http.running:
            self._stopping.clear()
            self.base_url = self._http.start()
        assert self.base_url is not None
        return self.base_url

    def stop(self) -> None:
        self._stopping.set()  # wakes any injected delay
        self._http.stop()

    @property
    def running(self) -> bool:
        return self._http.running

    def __enter__(self) -> "AthenaSimulator":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/oauth2/v1/token"

    # ----------------------------------------------------------------- setup
    def add_practice(self, practiceid: str, *, departments: Iterable[str] = (),
                     patients: Iterable[str] = ()) -> None:
        self._store.add_practice(practiceid, departments=departments, patients=patients)

    def add_client(self, client_id: str, secret: str, practiceid: str,
                   scopes: Iterable[str] = (DEFAULT_SCOPE,)) -> None:
        self._auth.add_client(client_id, secret, str(practiceid), scopes,
                              known_practice=self._store.knows(str(practiceid)))

    def configure(self, **options: Any) -> None:
        """Change token_ttl_s, token_rate_per_min, qps_per_practice or quota_retry_after."""
        allowed = {"token_ttl_s", "token_rate_per_min", "qps_per_practice", "quota_retry_after"}
        with self._lock:
            for key, value in options.items():
                if key not in allowed:
                    raise InputError(f"unknown option; allowed: {', '.join(sorted(allowed))}",
                                     field=key)
                if key == "quota_retry_after":
                    setattr(self, key, None if value is None else float(value))
                else:
                    if int(value) < 1:
                        raise InputError("must be a positive integer", field=key)
                    setattr(self, key, int(value))

    def expire_tokens(self) -> int:
        """Make every issued token expired now; returns how many there were."""
        return self._auth.expire_all()

    # ----------------------------------------------------------------- inspection
    def documents(self, patientid: str | None = None, practiceid: str | None = None
                  ) -> list[dict[str, Any]]:
        """Stored clinical documents (newest last), each with the attachment bytes under
        ``attachment_bytes`` when one was sent."""
        return self._store.listing(patientid, practiceid)

    def upload_count(self) -> int:
        """Uploads that created a document (success true stored, whatever was answered)."""
        with self._lock:
            return self._store.uploads

    def token_request_count(self) -> int:
        """Every request to the token endpoint, whatever was answered."""
        with self._lock:
            return self._auth.requests

    def tokens_issued(self) -> int:
        with self._lock:
            return self._auth.issued

    def calls(self, call: str | None = None) -> list[dict[str, Any]]:
        """The call log (bounded): seq, t, method, path, call, practiceid, status, fault."""
        return self._traffic.calls(call)

    def max_requests_per_second(self, practiceid: str | None = None) -> int:
        """Most API requests (token endpoint and /_sim excluded) that arrived within any
        1-second window, for one practice or overall."""
        with self._lock:
            if practiceid is None:
                return self._traffic.max_rps_all
            return self._traffic.max_rps.get(str(practiceid), 0)

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "environment": self.environment,
                "documents": len(self._store.documents),
                "uploads": self._store.uploads,
                "token_requests": self._auth.requests,
                "tokens_issued": self._auth.issued,
                "max_requests_per_second": self._traffic.max_rps_all,
                "max_requests_per_second_by_practice": dict(self._traffic.max_rps),
                "faults_pending": len(self.faults),
                "internal_errors": list(self._internal_errors),
                "config": {"token_ttl_s": self.token_ttl_s,
                           "token_rate_per_min": self.token_rate_per_min,
                           "qps_per_practice": self.qps_per_practice,
                           "quota_retry_after": self.quota_retry_after},
            }

    # ----------------------------------------------------------------- WSGI entry
    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        request.max_content_length = self.max_body_bytes
        try:
            response = self._dispatch(request)
        except _Dropped:
            raise
        except InputError as exc:
            response = _json({"error": exc.message, "field": exc.field}, 400)
        except Exception as exc:  # a simulator bug: answer 500, keep the class for state()
            with self._lock:
                self._internal_errors.append(type(exc).__name__)
            response = _json({"error": "simulator internal error"}, 500)
        return response(environ, start_response)

    def _log(self, request: Request, call: str, practiceid: str | None, status: int | str,
             fault: Fault | None, **extra: Any) -> None:
        self._traffic.log(request.method, request.path, call, practiceid, status,
                          fault.kind if fault else None, **extra)

    def _drop(self, request: Request) -> None:
        drop_connection(request.environ)
        raise _Dropped("dropped by fault injection")

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _dispatch(self, request: Request) -> Response:
        path = request.path
        if path.startswith("/_sim/") or path == "/_sim":
            return self._control(request)
        if path == "/oauth2/v1/token":
            return self._token_call(request)
        m = _API_ROUTE.match(path)
        if m:
            call = ("upload" if request.method == "POST" else "get" if m["docid"] else "list")
            return self._api_call(request, call, m["practiceid"], m["patientid"], m["docid"])
        pm = _PRACTICE_ROUTE.match(path)
        practiceid = pm["practiceid"] if pm else None
        if pm and path.rstrip("/") == f"/v1/{practiceid}/ping":
            return self._api_call(request, "ping", practiceid, "", None)
        self._log(request, "other", practiceid, 404, None)
        return _athena_error(404, "Invalid URL.", "This endpoint is not modelled by the simulator.")

    # ----------------------------------------------------------------- token endpoint
    def _token_call(self, request: Request) -> Response:
        self._auth.count_request()
        fault = self.faults.take("token")
        if fault:
            self._wait(fault.delay_s)
            if fault.kind == "drop":
                self._log(request, "token", None, "dropped", fault)
                self._drop(request)
            if fault.kind == "status" and fault.status:
                self._log(request, "token", None, fault.status, fault)
                return _json({"error": "server_error" if fault.status >= 500
                              else "rate_limit_exceeded",
                              "error_description": "injected fault"}, fault.status,
                             retry_after_header(fault.retry_after))
        response, client_id = self._auth.issue(request, self.token_ttl_s,
                                              self.token_rate_per_min)
        if fault and fault.kind == "lose_response":
            self._log(request, "token", None, fault.status or "dropped", fault,
                      answered=response.status_code)
            if not fault.status:
                self._drop(request)
            return _json({"error": "Bad Gateway"}, fault.status)
        self._log(request, "token", None, response.status_code, fault, client_id=client_id)
        return response

    # ----------------------------------------------------------------- API calls
    def _api_call(self, request: Request, call: str, practiceid: str, patientid: str,
                  docid: str | None) -> Response:
        self._traffic.arrived(practiceid, self._store.knows(practiceid))
        fault = self.faults.take(call)
        if fault:
            self._wait(fault.delay_s)
            if fault.kind == "drop":
                self._log(request, call, practiceid, "dropped", fault)
                self._drop(request)
            if fault.kind == "status" and fault.status:
                self._log(request, call, practiceid, fault.status, fault)
                error = ("Rate limit exceeded." if fault.status == 429
                         else "Service Unavailable" if fault.status == 503
                         else "Internal Server Error")
                return _athena_error(fault.status, error, "Injected fault.",
                                     retry_after_header(fault.retry_after))
            if fault.kind == "expired_token":
                self._log(request, call, practiceid, 401, fault)
                return _athena_error(401, "Invalid Access Token",
                                     "The access token is invalid or has expired.",
                                     {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        denied = self._auth.authenticate(request, practiceid, self._store.knows(practiceid))
        if denied is not None:
            self._log(request, call, practiceid, denied.status_code, fault)
            return denied
        if self._traffic.over(practiceid, self.qps_per_practice):
            retry = self.quota_retry_after
            self._log(request, call, practiceid, 429, fault, quota=True)
            return _athena_error(429, "Rate limit exceeded.",
                                 "Too many requests per second for this practice.",
                                 retry_after_header(retry))
        if fault and fault.kind == "success_false" and call == "upload":
            self._log(request, call, practiceid, 200, fault, success=False)
            return _json({"success": False,
                          "errormessage": fault.errormessage or "The document could not be "
                                                                "created."})
        if fault and fault.kind == "unexpected_body":
            self._log(request, call, practiceid, fault.status, fault, unexpected_body=True)
            return Response(fault.body, status=fault.status, content_type=fault.content_type)
        if call == "ping":
            response, stored = _json({"pong": "true"}), None
        elif call == "upload":
            if request.method != "POST":
                response, stored = _athena_error(405, "Method not allowed."), None
            else:
                response, stored = self._upload(request, practiceid, patientid)
        elif request.method != "GET":
            response, stored = _athena_error(405, "Method not allowed."), None
        elif call == "list":
            response, stored = self._list(request, practiceid, patientid), None
        else:
            response, stored = self._get_one(request, practiceid, patientid, docid or ""), None
        if fault and fault.kind == "lose_response":
            self._log(request, call, practiceid, fault.status or "dropped", fault,
                      answered=response.status_code, stored=stored)
            if not fault.status:
                self._drop(request)
            return _athena_error(fault.status, "Bad Gateway", "Injected fault.")
        self._log(request, call, practiceid, response.status_code, fault, stored=stored)
        return response

    def _upload(self, request: Request, practiceid: str, patientid: str
                ) -> tuple[Response, int | None]:
        upload = check_upload(request, self._store.practice(practiceid), patientid)
        if isinstance(upload, Response):
            return upload, None
        docid = self._store.create(practiceid, patientid, upload)
        if docid is None:
            return _json({"error": "Simulator document store is full; reset it."}, 507), None
        return _json({"clinicaldocumentid": docid, "success": True}), docid

    def _list(self, request: Request, practiceid: str, patientid: str) -> Response:
        practice = self._store.practice(practiceid)
        args = request.args
        bad = check_patient(practice, patientid) or check_department(practice,
                                                                     args.get("departmentid"))
        if bad:
            return bad
        paging = check_paging(args)
        if isinstance(paging, Response):
            return paging
        limit, offset = paging
        matches = self._store.find(practiceid, patientid, args["departmentid"],
                                   subclass=args.get("documentsubclass"),
                                   status=args.get("status"),
                                   showdeleted=flag(args.get("showdeleted")),
                                   showmetadata=flag(args.get("showmetadata")))
        page = matches[offset:offset + limit]
        body: dict[str, Any] = {"clinicaldocuments": page, "totalcount": len(matches)}
        if offset + limit < len(matches):
            body["next"] = (f"/v1/{practiceid}/patients/{patientid}/documents/clinicaldocument"
                            f"?departmentid={args['departmentid']}&limit={limit}"
                            f"&offset={offset + limit}")
        return _json(body)

    def _get_one(self, request: Request, practiceid: str, patientid: str, docid: str
                 ) -> Response:
        missing = check_patient(self._store.practice(practiceid), patientid)
        if missing:
            return missing
        doc = self._store.get(practiceid, patientid, docid,
                              flag(request.args.get("showmetadata")))
        if doc is None:
            return _athena_error(404, "The clinical document ID is invalid.")
        return _json([doc])

    # ----------------------------------------------------------------- /_sim controls
    def _control(self, request: Request) -> Response:
        try:
            return self._control_inner(request)
        except (TypeError, ValueError):
            return _json({"error": "invalid option types", "field": "body"}, 400)

    def _control_inner(self, request: Request) -> Response:
        path, method = request.path.rstrip("/"), request.method
        body: dict[str, Any] = {}
        if method in ("POST", "PUT") and request.get_data():
            try:
                body = json.loads(request.get_data())
            except ValueError:
                return _json({"error": "body must be JSON", "field": "body"}, 400)
            if not isinstance(body, dict):
                return _json({"error": "body must be a JSON object", "field": "body"}, 400)
        if path == "/_sim/state" and method == "GET":
            return _json(self.state())
        if path == "/_sim/reset" and method == "POST":
            self.reset()
            return _json({"reset": True})
        if path == "/_sim/faults":
            if method == "GET":
                return _json({"faults": self.faults.pending()})
            if method == "DELETE":
                self.faults.clear()
                return _json({"cleared": True})
            if method == "POST":
                allowed = {"call", "status", "times", "kind", "retry_after", "delay_s",
                           "errormessage", "body", "content_type"}
                unknown = sorted(set(body) - allowed)
                if unknown:
                    return _json({"error": "unknown fault option", "field": unknown[0]}, 400)
                try:
                    fault = self.faults.add(**body)
                except (TypeError, ValueError):
                    return _json({"error": "invalid fault option types", "field": "body"}, 400)
                return _json({"fault": fault.as_dict()}, 201)
        if path == "/_sim/documents" and method == "GET":
            docs = self.documents(request.args.get("patientid"), request.args.get("practiceid"))
            for d in docs:
                raw = d.pop("attachment_bytes")
                d["attachment_base64"] = base64.b64encode(raw).decode() if raw else None
            return _json({"documents": docs})
        if path == "/_sim/calls" and method == "GET":
            return _json({"calls": self.calls(request.args.get("call"))})
        if path == "/_sim/expire_tokens" and method == "POST":
            return _json({"expired": self.expire_tokens()})
        if path == "/_sim/config" and method == "POST":
            self.configure(**body)
            return _json(self.state()["config"])
        if path == "/_sim/practices" and method == "POST":
            if "practiceid" not in body:
                return _json({"error": "practiceid is required", "field": "practiceid"}, 400)
            self.add_practice(str(body["practiceid"]), departments=body.get("departments", []),
                              patients=body.get("patients", []))
            return _json({"practiceid": str(body["practiceid"])}, 201)
        if path == "/_sim/clients" and method == "POST":
            for name in ("client_id", "secret", "practiceid"):
                if not body.get(name):
                    return _json({"error": f"{name} is required", "field": name}, 400)
            self.add_client(body["client_id"], body["secret"], str(body["practiceid"]),
                            body.get("scopes") or (DEFAULT_SCOPE,))
            return _json({"client_id": body["client_id"]}, 201)
        return _json({"error": "unknown simulator control"}, 404)


def serve(host: str = "127.0.0.1", port: int = 8090, **options: Any) -> None:
    """Run the simulator in the foreground until interrupted (Ctrl-C)."""
    sim = AthenaSimulator(host=host, port=port, **options)
    base = sim.start()
    print(f"athenaOne simulator at {base} - point an org's athenaone target at "
          f"base_url={base} (token {base}/oauth2/v1/token), practice {DEFAULT_PRACTICE_ID}, "
          f"client_id {DEFAULT_CLIENT_ID}, client_secret env:ATHENA_CLIENT_SECRET with "
          f"ATHENA_CLIENT_SECRET={DEFAULT_CLIENT_SECRET} (simulator-only); controls at {base}/_sim/",
          flush=True)
    try:
        while sim.running:
            sim._stopping.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
