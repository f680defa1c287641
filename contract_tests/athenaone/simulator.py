"""An in-process athenaOne API simulator, written from athenahealth's published API reference
(docs.athenahealth.com; see README.md beside this file for each rule's source).

It models what Chartbridge's athenaOne adapter touches:

- ``POST /oauth2/v1/token``: OAuth 2.0 client credentials, HTTP Basic client auth, scopes,
  ``expires_in`` (3600 unless configured), a per-client token-request rate limit (production
  50/min, preview 5/min) answered with 429;
- ``POST /v1/{practiceid}/patients/{patientid}/documents/clinicaldocument``: the clinical
  document upload (form-encoded or multipart), with athena-style error bodies, including
  200 answers carrying ``"success": false`` and an ``errormessage``;
- ``GET /v1/{practiceid}/patients/{patientid}/documents/clinicaldocument`` (listing, with
  ``departmentid`` required and ``documentsubclass`` / ``status`` filters) and
  ``GET .../clinicaldocument/{clinicaldocumentid}``;
- one practice per client (a token on another practice's route gets 401 "Incorrect
  permissions."), a per-practice requests-per-second quota (429, with or without Retry-After);
- fault injection (5xx, 429 storms, slow answers, expired token, success=false, lost
  response after storing, dropped connection, an unexpected body) in process and under ``/_sim/...`` over HTTP.

Usage in a test::

    with AthenaSimulator() as sim:          # binds 127.0.0.1 on a free port
        base = sim.base_url
        sim.faults.add(call="upload", status=503, times=2, retry_after=1)
        ...
        assert sim.upload_count() == 1

All identifiers the simulator seeds are fake; nothing here is PHI.
"""
from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import secrets
import socket
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from chartbridge.core.errors import InputError

__all__ = ["AthenaSimulator", "Faults", "Fault", "serve", "CLINICAL_DOCUMENT_SUBCLASSES",
           "DEFAULT_PRACTICE_ID", "DEFAULT_CLIENT_ID", "DEFAULT_CLIENT_SECRET"]

# Subclasses of the CLINICALDOCUMENT class (docs.athenahealth.com/api/workflows/
# document-classification-guide).
CLINICAL_DOCUMENT_SUBCLASSES = frozenset({
    "CLINICALDOCUMENT_ADMISSIONDISCHARGE",
    "CLINICALDOCUMENT_CONSULTNOTE",
    "CLINICALDOCUMENT_MENTALHEALTH",
    "CLINICALDOCUMENT_OPERATIVENOTE",
    "CLINICALDOCUMENT_URGENTCARE",
})
# attachmenttype values the simulator accepts (athena recommends PDF; images are common).
ATTACHMENT_TYPES = frozenset({"PDF", "JPG", "JPEG", "PNG", "TIFF", "TIF", "GIF"})

DEFAULT_PRACTICE_ID = "195900"      # athena's public preview sandbox practice number
OTHER_PRACTICE_ID = "195901"
DEFAULT_CLIENT_ID = "sim-client"
DEFAULT_CLIENT_SECRET = "sim-secret"  # a simulator-only credential, never a real one
DEFAULT_SCOPE = "athena/service/Athenanet.MDP.*"
TOKEN_RATE_PER_MIN = {"production": 50, "preview": 5}

CALLS = ("token", "upload", "list", "get", "ping", "any")
FAULT_KINDS = ("status", "slow", "expired_token", "success_false", "lose_response", "drop",
               "unexpected_body")

_API_ROUTE = re.compile(
    r"^/v1/(?P<practiceid>[^/]+)/patients/(?P<patientid>[^/]+)/documents/clinicaldocument"
    r"(?:/(?P<docid>[^/]+))?/?$")
_PRACTICE_ROUTE = re.compile(r"^/v1/(?P<practiceid>[^/]+)(?:/.*)?$")
_DATE = re.compile(r"^(0[1-9]|1[0-2])/(0[1-9]|[12]\d|3[01])/\d{4}$")
_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_INT = re.compile(r"^\d{1,18}$")
_TRUE = {"true", "1", "y", "yes"}
_FALSE = {"false", "0", "n", "no"}


class _Dropped(ConnectionResetError):
    """Raised inside the WSGI app after closing the socket: werkzeug treats it as a
    connection the client dropped and writes nothing."""


# --------------------------------------------------------------------------- state types
@dataclass
class Client:
    client_id: str
    secret: str
    practiceid: str
    scopes: tuple[str, ...] = (DEFAULT_SCOPE,)


@dataclass
class Practice:
    practiceid: str
    departments: set[str] = field(default_factory=set)
    patients: set[str] = field(default_factory=set)


@dataclass
class Token:
    value: str
    client_id: str
    practiceid: str
    scope: str
    expires_at: float


@dataclass
class Fault:
    call: str = "any"
    kind: str = "status"
    status: int | None = None
    times: int | None = 1          # None: until cleared
    retry_after: float | None = None
    delay_s: float = 0.0
    errormessage: str | None = None
    body: str | None = None
    content_type: str = "application/json"
    fired: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Faults:
    """Queued faults, matched first-in first-out by call name (``any`` matches every API
    call but not the token endpoint; use ``call="token"`` for that)."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._queue: list[Fault] = []

    def add(self, call: str = "any", status: int | None = None, times: int | None = 1, *,
            kind: str | None = None, retry_after: float | None = None, delay_s: float = 0.0,
            errormessage: str | None = None, body: str | None = None,
            content_type: str = "application/json") -> Fault:
        """Queue a fault. ``kind`` defaults to ``status`` when a status is given, else ``slow``
        when only a delay is given. Kinds:

        - ``status``: answer ``status`` (5xx, 429...) with an athena-style body, optional
          ``Retry-After``; nothing is stored.
        - ``slow``: wait ``delay_s`` then answer normally (``delay_s`` also delays any kind).
        - ``expired_token``: answer 401 as athena does for an expired bearer token.
        - ``success_false``: (upload) answer 200 ``{"success": false, "errormessage": ...}``.
        - ``lose_response``: process and store normally, then answer ``status`` (default 502),
          or drop the connection when ``status`` is 0.
        - ``drop``: close the connection without answering and without processing.
        - ``unexpected_body``: answer ``status`` (default 200) with ``body`` verbatim as
          ``content_type`` (an HTML error page, a truncated or differently shaped JSON
          document: what a proxy or an API change puts in front of a client); nothing is
          processed.
        """
        if call not in CALLS:
            raise InputError(f"call must be one of {', '.join(CALLS)}", field="call")
        if kind is None:
            kind = "status" if status else ("slow" if delay_s else "")
        if kind not in FAULT_KINDS:
            raise InputError(f"kind must be one of {', '.join(FAULT_KINDS)}", field="kind")
        if kind == "status" and (status is None or not 400 <= int(status) <= 599):
            raise InputError("a status fault needs a 4xx/5xx status", field="status")
        if kind == "lose_response" and status is None:
            status = 502
        if kind == "unexpected_body":
            if body is None:
                raise InputError("an unexpected_body fault needs a body", field="body")
            status = 200 if status is None else status
            if not 200 <= int(status) <= 599:
                raise InputError("an unexpected_body status must be 200..599", field="status")
        if times is not None and int(times) < 1:
            raise InputError("times must be at least 1 (or null for unlimited)", field="times")
        if delay_s < 0 or delay_s > 120:
            raise InputError("delay_s must be between 0 and 120", field="delay_s")
        fault = Fault(call=call, kind=kind, status=None if status is None else int(status),
                      times=None if times is None else int(times),
                      retry_after=retry_after, delay_s=float(delay_s), errormessage=errormessage,
                      body=None if body is None else str(body), content_type=str(content_type))
        with self._lock:
            if len(self._queue) >= 1000:
                raise InputError("too many queued faults (1000)", field="faults")
            self._queue.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.as_dict() for f in self._queue]

    def _take(self, call: str) -> Fault | None:
        with self._lock:
            for fault in self._queue:
                if fault.call == call or (fault.call == "any" and call != "token"):
                    fault.fired += 1
                    if fault.times is not None and fault.fired >= fault.times:
                        self._queue.remove(fault)
                    return fault
        return None


# --------------------------------------------------------------------------- helpers
def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json",
                    headers=headers or {})


def _athena_error(status: int, error: str, detailed: str | None = None,
                  headers: dict[str, str] | None = None, **extra: Any) -> Response:
    body: dict[str, Any] = {"error": error}
    if detailed:
        body["detailedmessage"] = detailed
    body.update(extra)
    return _json(body, status, headers)


def _retry_after_header(seconds: float | None) -> dict[str, str]:
    if seconds is None:
        return {}
    return {"Retry-After": str(max(0, int(round(seconds))))}


def _clock_fn(clock: Any) -> Callable[[], float]:
    if clock is None:
        return time.monotonic
    if hasattr(clock, "now"):
        return lambda: clock.now().timestamp()
    if callable(clock):
        return clock
    raise InputError("clock must be a callable returning seconds or have now()", field="clock")


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:  # no per-request stderr noise
        pass

    def log_error(self, *args: Any) -> None:
        pass


# --------------------------------------------------------------------------- simulator
class AthenaSimulator:
    """athenaOne API simulator. See the module docstring and README.md."""

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
        self.host, self._port = host, int(port)
        self.faults = Faults(self._lock)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.base_url: str | None = None
        self._init_state()

    # ----------------------------------------------------------------- lifecycle
    def _init_state(self) -> None:
        with self._lock:
            self._clients: dict[str, Client] = {}
            self._practices: dict[str, Practice] = {}
            self._tokens: dict[str, Token] = {}
            self._documents: dict[int, dict[str, Any]] = {}
            self._attachments: dict[int, bytes] = {}
            self._ids = itertools.count(200_001)
            self._calls: deque[dict[str, Any]] = deque(maxlen=self._max_calls_logged)
            self._seq = itertools.count(1)
            self._token_requests = 0
            self._tokens_issued = 0
            self._token_windows: dict[str, deque[float]] = {}
            self._uploads = 0
            self._api_windows: dict[str, deque[float]] = {}
            self._all_window: deque[float] = deque()
            self._max_rps: dict[str, int] = {}
            self._max_rps_all = 0
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
        if self._server is not None:
            assert self.base_url is not None
            return self.base_url
        self._stopping.clear()
        server = make_server(self.host, self._port, self._wsgi, threaded=True,
                             request_handler=_QuietHandler)
        server.daemon_threads = True  # type: ignore[attr-defined]
        self._server = server
        self.base_url = f"http://{self.host}:{server.server_port}"
        self._thread = threading.Thread(target=server.serve_forever, name="athena-sim",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        self._stopping.set()  # wakes any injected delay
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

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
        pid = str(practiceid)
        if not _INT.match(pid):
            raise InputError("practiceid must be digits", field="practiceid")
        with self._lock:
            p = self._practices.setdefault(pid, Practice(pid))
            p.departments.update(str(d) for d in departments)
            p.patients.update(str(x) for x in patients)

    def add_client(self, client_id: str, secret: str, practiceid: str,
                   scopes: Iterable[str] = (DEFAULT_SCOPE,)) -> None:
        if not client_id or not secret:
            raise InputError("client_id and secret are required", field="client_id")
        with self._lock:
            if str(practiceid) not in self._practices:
                raise InputError("unknown practice", field="practiceid")
            self._clients[client_id] = Client(client_id, secret, str(practiceid),
                                              tuple(scopes))

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
        with self._lock:
            now = self._now()
            for tok in self._tokens.values():
                tok.expires_at = now - 1
            return len(self._tokens)

    # ----------------------------------------------------------------- inspection
    def documents(self, patientid: str | None = None, practiceid: str | None = None
                  ) -> list[dict[str, Any]]:
        """Stored clinical documents (newest last), each with the attachment bytes under
        ``attachment_bytes`` when one was sent."""
        with self._lock:
            out = []
            for docid, doc in self._documents.items():
                if patientid is not None and doc["patientid"] != str(patientid):
                    continue
                if practiceid is not None and doc["practiceid"] != str(practiceid):
                    continue
                item = dict(doc)
                item["attachment_bytes"] = self._attachments.get(docid)
                out.append(item)
            return out

    def upload_count(self) -> int:
        """Uploads that created a document (success true stored, whatever was answered)."""
        with self._lock:
            return self._uploads

    def token_request_count(self) -> int:
        """Every request to the token endpoint, whatever was answered."""
        with self._lock:
            return self._token_requests

    def tokens_issued(self) -> int:
        with self._lock:
            return self._tokens_issued

    def calls(self, call: str | None = None) -> list[dict[str, Any]]:
        """The call log (bounded): seq, t, method, path, call, practiceid, status, fault."""
        with self._lock:
            return [dict(c) for c in self._calls if call is None or c["call"] == call]

    def max_requests_per_second(self, practiceid: str | None = None) -> int:
        """Most API requests (token endpoint and /_sim excluded) that arrived within any
        1-second window, for one practice or overall."""
        with self._lock:
            if practiceid is None:
                return self._max_rps_all
            return self._max_rps.get(str(practiceid), 0)

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "environment": self.environment,
                "documents": len(self._documents),
                "uploads": self._uploads,
                "token_requests": self._token_requests,
                "tokens_issued": self._tokens_issued,
                "max_requests_per_second": self._max_rps_all,
                "max_requests_per_second_by_practice": dict(self._max_rps),
                "faults_pending": len(self.faults.pending()),
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
        with self._lock:
            entry = {"seq": next(self._seq), "t": self._now(), "method": request.method,
                     "path": request.path, "call": call, "practiceid": practiceid,
                     "status": status, "fault": fault.kind if fault else None}
            entry.update(extra)
            self._calls.append(entry)

    def _drop(self, request: Request) -> None:
        sock = request.environ.get("werkzeug.socket")
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
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
        with self._lock:
            self._token_requests += 1
        fault = self.faults._take("token")
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
                             _retry_after_header(fault.retry_after))
        response, client_id = self._issue_token(request)
        if fault and fault.kind == "lose_response":
            self._log(request, "token", None, fault.status or "dropped", fault,
                      answered=response.status_code)
            if not fault.status:
                self._drop(request)
            return _json({"error": "Bad Gateway"}, fault.status)
        self._log(request, "token", None, response.status_code, fault, client_id=client_id)
        return response

    def _issue_token(self, request: Request) -> tuple[Response, str | None]:
        if request.method != "POST":
            return _json({"error": "invalid_request",
                          "error_description": "the token endpoint takes POST"}, 405,
                         {"Allow": "POST"}), None
        auth = request.authorization
        unauthorized = {"WWW-Authenticate": 'Basic realm="athenahealth"'}
        if auth is None or auth.type != "basic" or not auth.username:
            return _json({"error": "invalid_client",
                          "error_description": "client authentication (HTTP Basic) is required"},
                         401, unauthorized), None
        with self._lock:
            client = self._clients.get(auth.username)
            ok = client is not None and secrets.compare_digest(
                client.secret.encode(), (auth.password or "").encode())
        if not ok:
            return _json({"error": "invalid_client",
                          "error_description": "the client authentication was invalid"},
                         401, unauthorized), None
        assert client is not None
        grant = request.form.get("grant_type")
        if not grant:
            return _json({"error": "invalid_request",
                          "error_description": "grant_type is required"}, 400), client.client_id
        if grant != "client_credentials":
            return _json({"error": "unsupported_grant_type",
                          "error_description": "only client_credentials is supported"},
                         400), client.client_id
        requested = (request.form.get("scope") or "").split()
        if any(s not in client.scopes for s in requested):
            return _json({"error": "invalid_scope",
                          "error_description": "a requested scope is not registered for this "
                                               "client"}, 400), client.client_id
        with self._lock:
            now = self._now()
            window = self._token_windows.setdefault(client.client_id, deque())
            while window and window[0] <= now - 60:
                window.popleft()
            if len(window) >= self.token_rate_per_min:
                wait = 60 - (now - window[0])
                return _json({"error": "rate_limit_exceeded",
                              "error_description": "too many token requests; cache the "
                                                   "token until it expires"},
                             429, {**_retry_after_header(max(1.0, wait)),
                                   "X-RateLimit-Limit": str(self.token_rate_per_min),
                                   "X-RateLimit-Remaining": "0"}), client.client_id
            window.append(now)
            value = secrets.token_urlsafe(24)
            scope = " ".join(requested or client.scopes)
            self._tokens[value] = Token(value, client.client_id, client.practiceid, scope,
                                        now + self.token_ttl_s)
            if len(self._tokens) > 10_000:  # bounded: forget the oldest
                self._tokens.pop(next(iter(self._tokens)))
            self._tokens_issued += 1
            remaining = self.token_rate_per_min - len(window)
        return _json({"access_token": value, "token_type": "Bearer",
                      "expires_in": self.token_ttl_s, "scope": scope}, 200,
                     {"Cache-Control": "no-store", "Pragma": "no-cache",
                      "X-RateLimit-Limit": str(self.token_rate_per_min),
                      "X-RateLimit-Remaining": str(remaining)}), client.client_id

    # ----------------------------------------------------------------- API calls
    def _note_arrival(self, practiceid: str) -> None:
        with self._lock:
            if practiceid not in self._practices:  # keeps the windows bounded
                practiceid = "unknown"
            now = self._now()
            window = self._api_windows.setdefault(practiceid, deque())
            window.append(now)
            while window and window[0] <= now - 1.0:
                window.popleft()
            self._max_rps[practiceid] = max(self._max_rps.get(practiceid, 0), len(window))
            self._all_window.append(now)
            while self._all_window and self._all_window[0] <= now - 1.0:
                self._all_window.popleft()
            self._max_rps_all = max(self._max_rps_all, len(self._all_window))

    def _over_quota(self, practiceid: str) -> bool:
        with self._lock:
            return len(self._api_windows.get(practiceid, ())) > self.qps_per_practice

    def _authenticate(self, request: Request, practiceid: str) -> Response | None:
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("bearer ") or not header[7:].strip():
            return _athena_error(401, "Developer Inactive",
                                 "No bearer token was sent in the Authorization header.",
                                 {"WWW-Authenticate": 'Bearer realm="athenahealth"'})
        with self._lock:
            token = self._tokens.get(header[7:].strip())
            now = self._now()
            known_practice = practiceid in self._practices
        if token is None or token.expires_at <= now:
            return _athena_error(401, "Invalid Access Token",
                                 "The access token is invalid or has expired.",
                                 {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if not known_practice:
            return _athena_error(404, "Invalid practice.", "The practice ID does not exist.")
        if token.practiceid != practiceid:
            return _athena_error(401, "Incorrect permissions.", "Bad auth.")
        return None

    def _api_call(self, request: Request, call: str, practiceid: str, patientid: str,
                  docid: str | None) -> Response:
        self._note_arrival(practiceid)
        fault = self.faults._take(call)
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
                                     _retry_after_header(fault.retry_after))
            if fault.kind == "expired_token":
                self._log(request, call, practiceid, 401, fault)
                return _athena_error(401, "Invalid Access Token",
                                     "The access token is invalid or has expired.",
                                     {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        denied = self._authenticate(request, practiceid)
        if denied is not None:
            self._log(request, call, practiceid, denied.status_code, fault)
            return denied
        if self._over_quota(practiceid):
            retry = self.quota_retry_after
            self._log(request, call, practiceid, 429, fault, quota=True)
            return _athena_error(429, "Rate limit exceeded.",
                                 "Too many requests per second for this practice.",
                                 _retry_after_header(retry))
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

    def _check_patient(self, practiceid: str, patientid: str) -> Response | None:
        with self._lock:
            practice = self._practices[practiceid]
            if not _INT.match(patientid) or patientid not in practice.patients:
                return _athena_error(404, "The patient ID is invalid.",
                                     "No patient with this ID exists in this practice.")
        return None

    def _check_department(self, practiceid: str, value: str | None) -> Response | None:
        if value is None or value == "":
            return _athena_error(400, "Additional fields are required.",
                                 missingfields=["departmentid"])
        with self._lock:
            known = value in self._practices[practiceid].departments
        if not _INT.match(value) or not known:
            return _athena_error(400, "Invalid departmentid.",
                                 "The department ID does not exist in this practice.")
        return None

    def _upload(self, request: Request, practiceid: str, patientid: str
                ) -> tuple[Response, int | None]:
        missing = self._check_patient(practiceid, patientid)
        if missing:
            return missing, None
        form = request.form
        required = [f for f in ("departmentid", "documentsubclass") if not form.get(f)]
        if required:
            return _athena_error(400, "Additional fields are required.",
                                 missingfields=required), None
        bad = self._check_department(practiceid, form.get("departmentid"))
        if bad:
            return bad, None
        subclass = form["documentsubclass"]
        if subclass not in CLINICAL_DOCUMENT_SUBCLASSES:
            return _athena_error(400, "Invalid documentsubclass.",
                                 "Use a CLINICALDOCUMENT_* subclass."), None
        for name in ("providerid", "clinicalproviderid", "documenttypeid"):
            if form.get(name) and not _INT.match(form[name]):
                return _athena_error(400, f"Invalid {name}.", f"{name} must be an integer."), None
        if form.get("observationdate") and not _DATE.match(form["observationdate"]):
            return _athena_error(400, "Invalid observationdate.",
                                 "observationdate must be mm/dd/yyyy."), None
        if form.get("observationtime") and not _TIME.match(form["observationtime"]):
            return _athena_error(400, "Invalid observationtime.",
                                 "observationtime must be hh24:mi."), None
        if form.get("priority") and form["priority"] not in ("1", "2"):
            return _athena_error(400, "Invalid priority.", "priority must be 1 or 2."), None
        autoclose = (form.get("autoclose") or "").lower()
        if autoclose and autoclose not in _TRUE | _FALSE:
            return _athena_error(400, "Invalid autoclose.", "autoclose must be true or false."), None
        if form.get("originalfilename") and len(form["originalfilename"]) > 200:
            return _athena_error(400, "Invalid originalfilename.",
                                 "originalfilename must not exceed 200 characters."), None

        text = form.get("documentdata") or None
        raw_attachment = form.get("attachmentcontents")
        if raw_attachment is None and "attachmentcontents" in request.files:
            raw_attachment = request.files["attachmentcontents"].read().decode("ascii", "replace")
        attachment: bytes | None = None
        attachment_type: str | None = None
        if raw_attachment:
            try:
                attachment = base64.b64decode(raw_attachment, validate=True)
            except (binascii.Error, ValueError):
                return _json({"success": False,
                              "errormessage": "The attachment could not be decoded; "
                                              "attachmentcontents must be Base64."}), None
            attachment_type = (form.get("attachmenttype") or "").upper() or None
            if attachment_type is None:
                return _json({"success": False,
                              "errormessage": "attachmenttype is required with "
                                              "attachmentcontents."}), None
            if attachment_type not in ATTACHMENT_TYPES:
                return _json({"success": False,
                              "errormessage": "The attachment type is not supported."}), None
        if text is None and attachment is None:
            return _json({"success": False,
                          "errormessage": "Either documentdata or attachmentcontents must be "
                                          "provided."}), None

        with self._lock:
            if len(self._documents) >= self.max_documents:
                return _json({"error": "Simulator document store is full; reset it."},
                             507), None
            docid = next(self._ids)
            now = datetime.now(timezone.utc).astimezone()
            closed = autoclose in _TRUE
            doc = {
                "clinicaldocumentid": docid,
                "documentid": str(docid),
                "practiceid": practiceid,
                "patientid": patientid,
                "departmentid": form["departmentid"],
                "documentclass": "CLINICALDOCUMENT",
                "documentsubclass": subclass,
                "status": "CLOSED" if closed else "REVIEW",
                "priority": form.get("priority") or "2",
                "internalnote": form.get("internalnote") or None,
                "documentdata": text,
                "attachmenttype": attachment_type,
                "originalfilename": form.get("originalfilename") or None,
                "providerid": form.get("providerid") or None,
                "clinicalproviderid": form.get("clinicalproviderid") or None,
                "documenttypeid": form.get("documenttypeid") or None,
                "observationdate": form.get("observationdate") or None,
                "observationtime": form.get("observationtime") or None,
                "autoclose": closed,
                "documentsource": "INTERFACE",
                "documentroute": "INTERFACE",
                "createddatetime": now.isoformat(timespec="seconds"),
                "createddate": now.strftime("%m/%d/%Y"),
                "lastmodifieddatetime": now.isoformat(timespec="seconds"),
                "createduser": "API-SIM",
                "deleted": False,
            }
            self._documents[docid] = doc
            if attachment is not None:
                self._attachments[docid] = attachment
            self._uploads += 1
        return _json({"clinicaldocumentid": docid, "success": True}), docid

    @staticmethod
    def _public(doc: dict[str, Any], showmetadata: bool) -> dict[str, Any]:
        out = {k: v for k, v in doc.items()
               if v is not None and k not in ("practiceid", "autoclose", "deleted",
                                              "attachmenttype", "originalfilename")}
        if showmetadata and doc.get("attachmenttype"):
            out["filetype"] = doc["attachmenttype"]
            if doc.get("originalfilename"):
                out["originalfilename"] = doc["originalfilename"]
        return out

    def _list(self, request: Request, practiceid: str, patientid: str) -> Response:
        missing = self._check_patient(practiceid, patientid)
        if missing:
            return missing
        args = request.args
        bad = self._check_department(practiceid, args.get("departmentid"))
        if bad:
            return bad
        try:
            limit = int(args.get("limit", "1500"))
            offset = int(args.get("offset", "0"))
        except ValueError:
            return _athena_error(400, "Invalid limit or offset.", "limit and offset are integers.")
        if limit < 1 or limit > 5000 or offset < 0:
            return _athena_error(400, "Invalid limit or offset.",
                                 "limit is 1..5000 and offset is 0 or more.")
        subclass = args.get("documentsubclass")
        status = args.get("status")
        showdeleted = (args.get("showdeleted") or "").lower() in _TRUE
        showmetadata = (args.get("showmetadata") or "").lower() in _TRUE
        with self._lock:
            matches = [self._public(d, showmetadata) for d in self._documents.values()
                       if d["practiceid"] == practiceid and d["patientid"] == patientid
                       and d["departmentid"] == args["departmentid"]
                       and (subclass is None or d["documentsubclass"] == subclass)
                       and (status is None or d["status"] == status)
                       and (showdeleted or not d["deleted"])]
        page = matches[offset:offset + limit]
        body: dict[str, Any] = {"clinicaldocuments": page, "totalcount": len(matches)}
        if offset + limit < len(matches):
            body["next"] = (f"/v1/{practiceid}/patients/{patientid}/documents/clinicaldocument"
                            f"?departmentid={args['departmentid']}&limit={limit}"
                            f"&offset={offset + limit}")
        return _json(body)

    def _get_one(self, request: Request, practiceid: str, patientid: str, docid: str
                 ) -> Response:
        missing = self._check_patient(practiceid, patientid)
        if missing:
            return missing
        with self._lock:
            doc = self._documents.get(int(docid)) if _INT.match(docid) else None
            if doc is None or doc["practiceid"] != practiceid or doc["patientid"] != patientid:
                return _athena_error(404, "The clinical document ID is invalid.")
            showmetadata = (request.args.get("showmetadata") or "").lower() in _TRUE
            return _json([self._public(doc, showmetadata)])

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
        while sim._server is not None:
            sim._stopping.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
