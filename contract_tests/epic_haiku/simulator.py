"""Epic Haiku ambient simulator: plays Epic's side of /work/shared/vendors/epic-haiku-ambient.md.

Written from that page only (never from the adapter). It

* keeps Epic's ambient sessions and DELIVERS Epic's inbound events to an engine
  (``POST {engine}/orgs/{org}/epic/ambient/{Event}``), each with a fresh bearer JWT signed by the
  simulator's own Epic key (RS384 default, ES384 option), published at ``/.well-known/jwks.json``;
* cuts WAV recordings into chunk WAVs and announces them (``RecordingChunkAvailable`` then
  ``RecordingAvailable``), version after version, with duplicate / reorder / subset options;
* serves Epic's outbound API under the session ``CallbackURL`` (``GetAmbientRecordingChunk``,
  ``AmbientRecordingsProcessed``, ``DocumentationReady``) enforcing every rule on the page, behind a
  SMART Backend Services token endpoint (``POST /oauth2/token``);
* injects faults per call (5xx, 429 + Retry-After, delay, 403, 401) and exposes what it saw.

Everything is also reachable over HTTP under ``/_sim/`` (JSON) for standalone use, see README.md.
"""
from __future__ import annotations

import base64
import copy
import io
import itertools
import json
import logging
import math
import secrets
import signal
import struct
import threading
import time
import uuid
import wave
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import quote

import httpx
from flask import Flask, Response, redirect, request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey
from werkzeug.exceptions import HTTPException
from werkzeug.serving import WSGIRequestHandler, make_server

from chartbridge.core.errors import InputError, NotFound, StateConflict

log = logging.getLogger(__name__)

CALLBACK_PATH = "/interconnect/api/epic/2026/Ambient/"
TOKEN_PATH = "/oauth2/token"
JWKS_PATH = "/.well-known/jwks.json"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SIGNING_ALGS = ("RS384", "ES384")
OUTBOUND_CALLS = ("GetAmbientRecordingChunk", "AmbientRecordingsProcessed", "DocumentationReady")
FAULTABLE_CALLS = OUTBOUND_CALLS + ("token",)
EVENTS = ("AmbientSessionBegin", "RecordingChunkAvailable", "RecordingAvailable",
          "DocumentationUpdated", "AmbientSessionComplete")
# LOINC section codes named on the page; the set Epic enforces when AmbientNoteSections is absent.
ALL_SECTIONS = ("10164-2", "10187-3", "29545-1", "30954-2", "51847-2", "51848-0", "18776-5")
MAX_ASSERTION_LIFETIME_S = 300
CLOCK_SKEW_S = 5
MAX_SESSIONS = 10_000
MAX_LOG = 10_000
MAX_TOKENS = 10_000
_DEFAULT: Any = object()

EXAMPLE_USER = {"ID": "E1001", "Type": "EXTERNAL"}
EXAMPLE_PATIENT_IDS = [{"ID": "Z4481", "Type": "MRN"}, {"ID": "eJzlzKe3KPzAV5TtkxmNivQ3", "Type": "FHIR"}]
EXAMPLE_ENCOUNTER_IDS = [{"ID": "300012345", "Type": "CSN"}, {"ID": "eoK8nLRcEypNjtns4dgnF3Q3", "Type": "FHIR"}]
EXAMPLE_CARE_CONTEXT = {"DepartmentID": "10501", "Specialty": "Family Medicine", "VisitType": "Office Visit"}
EXAMPLE_NOTE_TYPE = {"Code": "11506-3", "System": "LOINC", "Name": "Progress note"}
EXAMPLE_SECTIONS = ["10164-2", "10187-3", "29545-1", "51847-2"]


# --------------------------------------------------------------------------- records

@dataclass
class Delivery:
    """One inbound event the simulator sent to the engine and what the engine answered."""

    event: str
    url: str
    body: dict[str, Any]
    token: str | None
    jti: str | None
    status: int | None = None
    response: Any = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("token")
        return d


@dataclass
class CallRecord:
    """One request the engine made to the simulator and the status it got."""

    call: str
    status: int
    session_id: str | None = None
    body: Any = None
    at: float = 0.0


@dataclass
class Fault:
    call: str
    status: int | None = None
    times: int = 1
    retry_after: float | int | None = None
    delay_s: float = 0.0
    after_processing: bool = False
    remaining: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RecordResult:
    recording_id: str
    version: int
    new_sequences: list[int]
    chunk_count: int
    deliveries: list[Delivery]


class Faults:
    """Per-call fault queue. ``call`` is one of FAULTABLE_CALLS or ``"*"`` (any outbound call)."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._faults: list[Fault] = []

    def add(self, call: str, status: int | None = None, times: int = 1, retry_after: float | int | None = None,
            delay_s: float = 0.0, after_processing: bool = False) -> Fault:
        """Make the next ``times`` requests to ``call`` fail with ``status`` (and/or wait ``delay_s``).

        ``after_processing=True`` applies the fault to the answer only: Epic does the work, then the
        engine sees the error (models an answer lost after commit)."""
        if call != "*" and call not in FAULTABLE_CALLS:
            raise InputError(f"unknown call; expected one of {', '.join(FAULTABLE_CALLS)} or *", field="call")
        if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
            raise InputError("status must be an HTTP error status 400-599", field="status")
        if not isinstance(times, int) or times < 1:
            raise InputError("times must be a positive integer", field="times")
        if not isinstance(delay_s, (int, float)) or delay_s < 0 or delay_s > 120:
            raise InputError("delay_s must be between 0 and 120 seconds", field="delay_s")
        if status is None and not delay_s:
            raise InputError("a fault needs a status or a delay", field="status")
        if retry_after is not None and (not isinstance(retry_after, (int, float)) or retry_after < 0):
            raise InputError("retry_after must be a non-negative number of seconds", field="retry_after")
        fault = Fault(call=call, status=status, times=times, retry_after=retry_after, delay_s=float(delay_s),
                      after_processing=bool(after_processing), remaining=times)
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, call: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and (fault.call == call or (fault.call == "*" and call in OUTBOUND_CALLS)):
                    fault.remaining -= 1
                    return fault
            return None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.as_dict() for f in self._faults if f.remaining > 0]


# --------------------------------------------------------------------------- Epic-side state

@dataclass
class _Chunk:
    seq: int
    version: int  # version in which the chunk was first announced
    wav: bytes
    duration_ms: int


@dataclass
class _Recording:
    recording_id: str
    params: tuple[int, int, int]  # channels, sample width, frame rate
    chunks: list[_Chunk] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)  # {"version","chunk_count","status"}


@dataclass
class _Session:
    org: str
    session_id: str
    begin_body: dict[str, Any]
    allowed: tuple[str, ...]
    recordings: dict[str, _Recording] = field(default_factory=dict)
    edited: dict[str, dict[str, Any]] = field(default_factory=dict)
    newest_announced: int = 0
    documented_max: int = 0
    accepted: dict[int, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    processed_reported: int = 0
    processed_reports: list[int] = field(default_factory=list)
    closed: str | None = None


class _CallError(Exception):
    """An Epic error answer (internal control flow inside a request handler only)."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra = status, code, detail, extra


# --------------------------------------------------------------------------- helpers

def _b64url_json(segment: str) -> dict[str, Any]:
    padded = segment + "=" * (-len(segment) % 4)
    value = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


def _canonical(body: Any) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_str(body: dict[str, Any], name: str, prefix: str = "") -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise _CallError(400, "InvalidBody", f"{prefix}{name} is required and must be a non-empty string",
                         Field=f"{prefix}{name}")
    return value


def _require_pos_int(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if not _is_int(value) or value < 1:
        raise _CallError(400, "InvalidBody", f"{name} is required and must be an integer >= 1", Field=name)
    return value


def _load_keyset(key: Any, *, field_name: str = "key") -> KeySet:
    """JWKS dict, single JWK dict, PEM (str/bytes), or a joserfc key -> KeySet (public parts)."""
    try:
        if isinstance(key, KeySet):
            return key
        if isinstance(key, (RSAKey, ECKey)):
            return KeySet([key])
        if isinstance(key, dict):
            jwks = key if "keys" in key else {"keys": [key]}
            return KeySet.import_key_set(jwks)
        if isinstance(key, (str, bytes)):
            data = key.encode() if isinstance(key, str) else key
            if data.lstrip().startswith(b"{"):
                return _load_keyset(json.loads(data), field_name=field_name)
            for cls in (RSAKey, ECKey):
                try:
                    return KeySet([cls.import_key(data)])
                except (JoseError, ValueError, TypeError):
                    continue
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise InputError(f"{field_name} is not a usable JWKS, JWK or PEM public key", field=field_name) from exc
    raise InputError(f"{field_name} is not a usable JWKS, JWK or PEM public key", field=field_name)


def _ids(value: Any, name: str) -> list[dict[str, str]]:
    items = list(value or [])
    out: list[dict[str, str]] = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get("ID"), str) and isinstance(item.get("Type"), str):
            out.append({"ID": item["ID"], "Type": item["Type"]})
        elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
            out.append({"ID": item[0], "Type": item[1]})
        else:
            raise InputError(f"{name}[{i}] must be {{'ID': str, 'Type': str}} or (id, type)", field=f"{name}[{i}]")
    if not out:
        raise InputError(f"{name} needs at least one identifier", field=name)
    return out


def synth_wav(seconds: float, *, rate: int = 16_000, freq: float = 440.0) -> bytes:
    """A 16-bit mono PCM WAV tone of ``seconds`` (for demos and tests without a recording at hand)."""
    frames = int(seconds * rate)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        step = 2 * math.pi * freq / rate
        # One second holds a whole number of cycles for an integer freq: compute it once, then tile.
        second = b"".join(struct.pack("<h", int(3000 * math.sin(step * i))) for i in range(rate))
        whole, rest = divmod(frames, rate)
        w.writeframes(second * whole + second[: rest * 2])
    return buf.getvalue()


def cut_wav(data: bytes, chunk_seconds: float) -> tuple[tuple[int, int, int], list[tuple[bytes, int]]]:
    """Cut a PCM WAV into chunk WAVs of ``chunk_seconds`` (last one may be shorter).

    Returns ((channels, sample width, rate), [(chunk wav bytes, duration ms), ...])."""
    if not isinstance(chunk_seconds, (int, float)) or chunk_seconds <= 0:
        raise InputError("chunk_seconds must be a positive number", field="chunk_seconds")
    try:
        with wave.open(io.BytesIO(data), "rb") as src:
            channels, width, rate = src.getnchannels(), src.getsampwidth(), src.getframerate()
            total = src.getnframes()
            pcm = src.readframes(total)
    except (wave.Error, EOFError, struct.error) as exc:
        raise InputError("audio is not a readable PCM WAV file", field="wav") from exc
    if total == 0:
        raise InputError("audio holds no samples", field="wav")
    frame_bytes = channels * width
    per_chunk = max(1, int(chunk_seconds * rate))
    chunks: list[tuple[bytes, int]] = []
    for start in range(0, total, per_chunk):
        n = min(per_chunk, total - start)
        out = io.BytesIO()
        with wave.open(out, "wb") as w:
            w.setnchannels(channels)
            w.setsampwidth(width)
            w.setframerate(rate)
            w.writeframes(pcm[start * frame_bytes:(start + n) * frame_bytes])
        chunks.append((out.getvalue(), round(n * 1000 / rate)))
    return (channels, width, rate), chunks


# --------------------------------------------------------------------------- the simulator

class EpicSimulator:
    """In-process Epic site. ``start()`` returns its base URL; use as a context manager.

    :param engine_url: the engine's base URL (``{engine}/orgs/{org}/epic/ambient/{Event}``); may be set later.
    :param epic_client_id: ``iss`` of the JWTs Epic signs for inbound deliveries: one string for every org,
        or ``{org: client_id}``.
    :param clients: backend clients allowed at the token endpoint: ``{client_id: JWKS | JWK | PEM}``.
    :param epic_alg: ``RS384`` (default) or ``ES384`` for the simulator's own signing key.
    :param token_ttl: lifetime of issued access tokens in seconds (page: 5 minutes).
    :param default_allowed_sections: the set Epic enforces when ``AllowedNoteSections`` is absent.
    :param clock: seconds since the epoch (injectable so tests can age tokens without sleeping).
    """

    def __init__(self, *, engine_url: str | None = None, epic_client_id: str | dict[str, str] = "epic-sim-client",
                 clients: dict[str, Any] | None = None, epic_alg: str = "RS384", token_ttl: int = 300,
                 inbound_token_ttl: int = 120, default_allowed_sections: Iterable[str] = ALL_SECTIONS,
                 delivery_timeout: float = 10.0, delivery_retries: int = 0, epic_key: Any = None,
                 clock: Callable[[], float] = time.time) -> None:
        if epic_alg not in SIGNING_ALGS:
            raise InputError("epic_alg must be RS384 or ES384", field="epic_alg")
        if not 0 < inbound_token_ttl <= MAX_ASSERTION_LIFETIME_S:
            raise InputError("inbound_token_ttl must be 1..300 seconds", field="inbound_token_ttl")
        self.engine_url = engine_url.rstrip("/") if engine_url else None
        self.epic_client_id = epic_client_id
        self.epic_alg = epic_alg
        self.token_ttl = int(token_ttl)
        self.inbound_token_ttl = int(inbound_token_ttl)
        self.default_allowed_sections = tuple(default_allowed_sections)
        self.delivery_retries = int(delivery_retries)
        self.clock = clock
        self._key = self._load_epic_key(epic_key, epic_alg) if epic_key is not None else self._generate_key(epic_alg)
        self._wrong_key: RSAKey | ECKey | None = None
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self.faults = Faults(self._lock)
        self._clients: dict[str, KeySet] = {}
        for client_id, key in (clients or {}).items():
            self.register_client(client_id, key)
        self._http = httpx.Client(timeout=delivery_timeout)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.base_url: str | None = None
        self._seq = itertools.count(1)
        self.app = self._build_app()
        self._init_state()

    # ----------------------------------------------------------------- lifecycle

    def _init_state(self) -> None:
        with self._lock:
            self._sessions: dict[str, _Session] = {}
            self._tokens: dict[str, tuple[str, float]] = {}  # access token -> (client id, exp)
            self._assertion_jtis: dict[str, float] = {}  # client assertion jti -> exp
            self._calls: deque[CallRecord] = deque(maxlen=MAX_LOG)
            self._counts: Counter[str] = Counter()
            self._deliveries: deque[Delivery] = deque(maxlen=MAX_LOG)
            self._accepted: deque[dict[str, Any]] = deque(maxlen=MAX_LOG)
            self.faults.clear()
            self._cond.notify_all()

    def reset(self) -> None:
        """Forget sessions, tokens, faults and logs (keys and registered clients stay)."""
        self._init_state()

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self._server is not None:
            return self.base_url  # type: ignore[return-value]
        self._stopping.clear()
        self._server = make_server(host, port, self.app, threaded=True, request_handler=_QuietHandler)
        self.base_url = f"http://{host}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="epic-sim", daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._http.close()
        self._http = httpx.Client(timeout=self._http.timeout)

    def __enter__(self) -> EpicSimulator:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ----------------------------------------------------------------- URLs and keys

    def _base(self) -> str:
        if not self.base_url:
            raise StateConflict("simulator is not started")
        return self.base_url

    @property
    def callback_url(self) -> str:
        return self._base() + CALLBACK_PATH

    @property
    def token_url(self) -> str:
        return self._base() + TOKEN_PATH

    @property
    def jwks_url(self) -> str:
        return self._base() + JWKS_PATH

    @staticmethod
    def _generate_key(alg: str) -> RSAKey | ECKey:
        key = RSAKey.generate_key(2048, private=True) if alg == "RS384" else ECKey.generate_key("P-384", private=True)
        key.ensure_kid()
        return key

    @staticmethod
    def _load_epic_key(key: Any, alg: str) -> RSAKey | ECKey:
        """A private RSA key for RS384 or P-384 EC key for ES384: joserfc key, PEM text/bytes or a PEM path."""
        cls = RSAKey if alg == "RS384" else ECKey
        try:
            if isinstance(key, Path):
                key = key.read_bytes()
            loaded = key if isinstance(key, (RSAKey, ECKey)) else cls.import_key(key)
        except (OSError, JoseError, ValueError, TypeError) as exc:
            raise InputError("epic_key is not a readable private key PEM", field="epic_key") from exc
        if not isinstance(loaded, cls) or not loaded.is_private:
            raise InputError(f"epic_key must be a private key matching {alg}", field="epic_key")
        loaded.ensure_kid()
        return loaded

    @property
    def jwks(self) -> dict[str, Any]:
        """The public JWKS Epic publishes for its inbound JWTs."""
        jwk = self._key.as_dict(private=False)
        jwk.update({"use": "sig", "alg": self.epic_alg})
        return {"keys": [jwk]}

    def register_client(self, client_id: str, key: Any) -> None:
        """Allow ``client_id`` at the token endpoint, its assertions verified with ``key`` (JWKS/JWK/PEM)."""
        if not isinstance(client_id, str) or not client_id:
            raise InputError("client_id must be a non-empty string", field="client_id")
        keyset = _load_keyset(key, field_name="key")
        with self._lock:
            self._clients[client_id] = keyset

    def engine_event_url(self, org: str, event: str) -> str:
        if not self.engine_url:
            raise StateConflict("no engine URL configured; set engine_url first")
        return f"{self.engine_url}/orgs/{quote(org, safe='')}/epic/ambient/{event}"

    def _iss_for(self, org: str) -> str:
        if isinstance(self.epic_client_id, dict):
            if org not in self.epic_client_id:
                raise NotFound("no Epic client id configured for this org")
            return self.epic_client_id[org]
        return self.epic_client_id

    # ----------------------------------------------------------------- inbound JWTs

    def make_inbound_token(self, url: str, org: str, mode: str = "valid") -> str:
        """A bearer JWT for delivering to ``url``. ``mode`` builds bad ones for tests:
        valid | expired | wrong_aud | wrong_key | wrong_iss | too_long (exp > 5 min) | no_jti | alg_none."""
        now = int(self.clock())
        claims: dict[str, Any] = {"iss": self._iss_for(org), "sub": self._iss_for(org), "aud": url,
                                  "iat": now, "exp": now + self.inbound_token_ttl, "jti": str(uuid.uuid4())}
        key = self._key
        if mode == "expired":
            claims.update(iat=now - 600, exp=now - 300)
        elif mode == "wrong_aud":
            claims["aud"] = url + "-elsewhere"
        elif mode == "wrong_iss":
            claims["iss"] = claims["sub"] = "not-" + claims["iss"]
        elif mode == "too_long":
            claims["exp"] = now + 3600
        elif mode == "no_jti":
            claims.pop("jti")
        elif mode == "wrong_key":
            if self._wrong_key is None:
                self._wrong_key = self._generate_key(self.epic_alg)
            key = self._wrong_key
        elif mode == "alg_none":
            header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
            payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
            return f"{header}.{payload}."
        elif mode != "valid":
            raise InputError("unknown token mode", field="token")
        # wrong_key keeps the real kid: the kid matches, the signature does not.
        header = {"alg": self.epic_alg, "kid": self._key.kid, "typ": "JWT"}
        return jwt.encode(header, claims, key, algorithms=[self.epic_alg])

    # ----------------------------------------------------------------- delivery

    def deliver(self, org: str, event: str, body: dict[str, Any], *, token: str = "valid") -> Delivery:
        """POST one inbound event to the engine. ``token`` is a mode for make_inbound_token, or
        ``"missing"`` (no Authorization header). Returns (and records) the engine's answer."""
        url = self.engine_event_url(org, event)
        if event == "RecordingAvailable":
            self._mark_announced(body)
        attempts = 1 + max(0, self.delivery_retries) if token == "valid" else 1
        delivery = None
        for _ in range(attempts):
            bearer = None if token == "missing" else self.make_inbound_token(url, org, token)
            delivery = self._send(event, url, body, bearer)
            if delivery.status is not None and delivery.status < 500 and delivery.status != 429:
                break
        assert delivery is not None
        return delivery

    def replay(self, delivery: Delivery) -> Delivery:
        """Send ``delivery`` again with the SAME token (a replay: the engine must answer 401)."""
        return self._send(delivery.event, delivery.url, delivery.body, delivery.token)

    def redeliver(self, delivery: Delivery) -> Delivery:
        """Send ``delivery`` again with a fresh token (Epic's at-least-once retry)."""
        with self._lock:
            org = next((s.org for s in self._sessions.values()
                        if s.session_id == delivery.body.get("SessionID")), None)
        if org is None:
            raise NotFound("delivery belongs to no known session")
        return self.deliver(org, delivery.event, delivery.body)

    def _send(self, event: str, url: str, body: dict[str, Any], bearer: str | None) -> Delivery:
        jti = None
        if bearer:
            try:
                jti = _b64url_json(bearer.split(".")[1]).get("jti")
            except (ValueError, IndexError):
                jti = None
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        delivery = Delivery(event=event, url=url, body=copy.deepcopy(body), token=bearer, jti=jti)
        try:
            resp = self._http.post(url, json=body, headers=headers)
            delivery.status = resp.status_code
            try:
                delivery.response = resp.json()
            except ValueError:
                delivery.response = resp.text[:500]
        except httpx.HTTPError as exc:
            delivery.error = type(exc).__name__
        log.info("epic-sim delivered %s -> %s", event, delivery.status or delivery.error)
        with self._lock:
            self._deliveries.append(delivery)
            self._cond.notify_all()
        return delivery

    def _mark_announced(self, body: dict[str, Any]) -> None:
        version = body.get("RecordingVersion")
        with self._lock:
            session = self._sessions.get(str(body.get("SessionID")))
            if session is not None and _is_int(version):
                session.newest_announced = max(session.newest_announced, version)
                self._cond.notify_all()

    # ----------------------------------------------------------------- Epic-side actions

    def begin_session(self, org: str, *, session_id: str | None = None, user: Any = _DEFAULT,
                      patient_ids: Any = _DEFAULT, encounter_ids: Any = _DEFAULT,
                      allowed_sections: Any = _DEFAULT, note_type: Any = _DEFAULT, care_context: Any = _DEFAULT,
                      deliver: bool = True, token: str = "valid") -> Delivery | None:
        """Create an ambient session and deliver AmbientSessionBegin. Optional parts default to the
        page's example; pass ``None`` to omit CareContext / NoteType / AllowedNoteSections."""
        if not isinstance(org, str) or not org:
            raise InputError("org must be a non-empty string", field="org")
        sid = session_id or self.new_session_id()
        if not isinstance(sid, str) or not sid.strip():
            raise InputError("session_id must be a non-empty string", field="session_id")
        body: dict[str, Any] = {
            "SessionID": sid,
            "UserID": _ids([EXAMPLE_USER if user is _DEFAULT else user], "UserID")[0],
            "PatientIDs": _ids(EXAMPLE_PATIENT_IDS if patient_ids is _DEFAULT else patient_ids, "PatientIDs"),
            "EncounterIDs": _ids(EXAMPLE_ENCOUNTER_IDS if encounter_ids is _DEFAULT else encounter_ids,
                                 "EncounterIDs"),
            "CallbackURL": self.callback_url,
        }
        if care_context is not None:
            body["CareContext"] = dict(EXAMPLE_CARE_CONTEXT if care_context is _DEFAULT else care_context)
        if note_type is not None:
            body["NoteType"] = dict(EXAMPLE_NOTE_TYPE if note_type is _DEFAULT else note_type)
        if allowed_sections is not None:
            sections = list(EXAMPLE_SECTIONS if allowed_sections is _DEFAULT else allowed_sections)
            if not all(isinstance(s, str) and s for s in sections):
                raise InputError("allowed_sections must be LOINC code strings", field="allowed_sections")
            body["AllowedNoteSections"] = sections
            allowed = tuple(sections)
        else:
            allowed = self.default_allowed_sections
        with self._lock:
            if sid in self._sessions:
                raise StateConflict("session already begun; use redeliver() to resend its events")
            if len(self._sessions) >= MAX_SESSIONS:
                raise StateConflict("simulator holds too many sessions; reset() it")
            self._sessions[sid] = _Session(org=org, session_id=sid, begin_body=copy.deepcopy(body), allowed=allowed)
            self._cond.notify_all()
        if not deliver or not self.engine_url:
            return None
        return self.deliver(org, "AmbientSessionBegin", body, token=token)

    def new_session_id(self) -> str:
        return f"AMB-SIM-{next(self._seq):06d}"

    def _session(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise NotFound("unknown session", field="session_id")
        return session

    def record(self, session_id: str, wav: str | Path | bytes, *, recording_id: str = "R1",
               chunk_seconds: float = 30, status: str = "Stopped", duplicate: bool = False,
               reorder: bool = False, announce_chunks: Iterable[int] | None = None,
               announce_available: bool = True) -> RecordResult:
        """Add a recording version holding the earlier audio plus ``wav`` (the audio recorded since
        the last version), cut into ``chunk_seconds`` chunks, and announce it.

        Delivery options: ``duplicate`` sends every event twice (fresh token each); ``reorder`` sends
        RecordingAvailable before the last chunk announcement; ``announce_chunks`` (sequences) and
        ``announce_available`` choose a subset (the rest can be sent later with announce_chunk() /
        announce_recording())."""
        if status not in ("Paused", "Stopped"):
            raise InputError("status must be Paused or Stopped", field="status")
        if not isinstance(recording_id, str) or not recording_id:
            raise InputError("recording_id must be a non-empty string", field="recording_id")
        if isinstance(wav, (str, Path)):
            try:
                data = Path(wav).read_bytes()
            except OSError as exc:
                raise InputError("cannot read the WAV file", field="wav") from exc
        elif isinstance(wav, (bytes, bytearray)):
            data = bytes(wav)
        else:
            raise InputError("wav must be a path or bytes", field="wav")
        params, pieces = cut_wav(data, chunk_seconds)
        with self._lock:
            session = self._session(session_id)
            if session.closed:
                raise StateConflict("session is complete; no more recordings")
            rec = session.recordings.get(recording_id)
            if rec is None:
                rec = session.recordings[recording_id] = _Recording(recording_id=recording_id, params=params)
            elif rec.params != params:
                raise InputError("audio format differs from the recording's earlier versions", field="wav")
            version = len(rec.versions) + 1
            first = len(rec.chunks) + 1
            for i, (chunk_wav, ms) in enumerate(pieces):
                rec.chunks.append(_Chunk(seq=first + i, version=version, wav=chunk_wav, duration_ms=ms))
            count = len(rec.chunks)
            rec.versions.append({"version": version, "chunk_count": count, "status": status})
            org = session.org
            new_seqs = list(range(first, count + 1))
            self._cond.notify_all()
        wanted = set(new_seqs if announce_chunks is None else announce_chunks)
        unknown = wanted - set(new_seqs)
        if unknown:
            raise InputError("announce_chunks names sequences not new in this version", field="announce_chunks")
        events: list[tuple[str, dict[str, Any]]] = [
            ("RecordingChunkAvailable", self._chunk_event(session_id, recording_id, seq)) for seq in new_seqs
            if seq in wanted]
        if announce_available:
            available = ("RecordingAvailable", self._available_event(session_id, recording_id, version))
            if reorder and events:
                events.insert(len(events) - 1, available)
            else:
                events.append(available)
        deliveries: list[Delivery] = []
        if self.engine_url:
            for event, body in events:
                for _ in range(2 if duplicate else 1):
                    deliveries.append(self.deliver(org, event, body))
        elif announce_available:
            self._mark_announced(events[-1][1] if not reorder else
                                 next(b for e, b in events if e == "RecordingAvailable"))
        return RecordResult(recording_id, version, new_seqs, count, deliveries)

    def _chunk_event(self, session_id: str, recording_id: str, seq: int) -> dict[str, Any]:
        with self._lock:
            rec = self._session(session_id).recordings[recording_id]
            chunk = rec.chunks[seq - 1]
            return {"SessionID": session_id, "RecordingID": recording_id, "RecordingVersion": chunk.version,
                    "ChunkSequence": seq, "ContentType": "audio/wav", "DurationMs": chunk.duration_ms}

    def _available_event(self, session_id: str, recording_id: str, version: int) -> dict[str, Any]:
        with self._lock:
            rec = self._session(session_id).recordings[recording_id]
            v = rec.versions[version - 1]
            return {"SessionID": session_id, "RecordingID": recording_id, "RecordingVersion": version,
                    "ChunkCount": v["chunk_count"], "Status": v["status"]}

    def announce_chunk(self, session_id: str, seq: int, *, recording_id: str = "R1") -> Delivery:
        """(Re)send RecordingChunkAvailable for one chunk (e.g. one left out of a subset)."""
        with self._lock:
            session = self._session(session_id)
            rec = session.recordings.get(recording_id)
            if rec is None or not 1 <= seq <= len(rec.chunks):
                raise NotFound("unknown recording or chunk", field="seq")
            org = session.org
        return self.deliver(org, "RecordingChunkAvailable", self._chunk_event(session_id, recording_id, seq))

    def announce_recording(self, session_id: str, *, recording_id: str = "R1", version: int | None = None) -> Delivery:
        """(Re)send RecordingAvailable for ``version`` (default: the newest)."""
        with self._lock:
            session = self._session(session_id)
            rec = session.recordings.get(recording_id)
            if rec is None or not rec.versions:
                raise NotFound("unknown recording", field="recording_id")
            version = version or len(rec.versions)
            if not 1 <= version <= len(rec.versions):
                raise NotFound("unknown recording version", field="version")
            org = session.org
        return self.deliver(org, "RecordingAvailable", self._available_event(session_id, recording_id, version))

    def edit_sections(self, session_id: str, sections: Iterable[str], *, user: Any = _DEFAULT,
                      instant: str | None = None, token: str = "valid") -> Delivery | None:
        """A clinician edits ``sections`` in Epic: they are protected from now on; DocumentationUpdated."""
        codes = list(sections)
        if not codes or not all(isinstance(c, str) and c for c in codes):
            raise InputError("sections must be one or more section codes", field="sections")
        editor = _ids([EXAMPLE_USER if user is _DEFAULT else user], "user")[0]
        when = instant or datetime.now().astimezone().isoformat(timespec="seconds")
        entries = [{"SectionID": c, "EditedBy": editor, "EditedInstant": when} for c in codes]
        with self._lock:
            session = self._session(session_id)
            for entry in entries:
                session.edited[entry["SectionID"]] = entry
            org = session.org
            self._cond.notify_all()
        body = {"SessionID": session_id, "Sections": entries}
        return self.deliver(org, "DocumentationUpdated", body, token=token) if self.engine_url else None

    def complete(self, session_id: str, reason: str = "Signed", *, token: str = "valid") -> Delivery | None:
        """Close the session (Signed or Cancelled) and deliver AmbientSessionComplete."""
        if reason not in ("Signed", "Cancelled"):
            raise InputError("reason must be Signed or Cancelled", field="reason")
        with self._lock:
            session = self._session(session_id)
            session.closed = session.closed or reason
            org = session.org
            self._cond.notify_all()
        body = {"SessionID": session_id, "Reason": reason}
        return self.deliver(org, "AmbientSessionComplete", body, token=token) if self.engine_url else None

    def expire_tokens(self) -> int:
        """Expire every access token issued so far: the next outbound call with one gets 401."""
        with self._lock:
            for tok, (client, _exp) in list(self._tokens.items()):
                self._tokens[tok] = (client, 0.0)
            return len(self._tokens)

    # ----------------------------------------------------------------- inspection

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    @property
    def calls(self) -> list[CallRecord]:
        with self._lock:
            return list(self._calls)

    def call_log(self, call: str | None = None) -> list[tuple[str, int]]:
        """(call, status) pairs in arrival order, optionally for one call name."""
        with self._lock:
            return [(c.call, c.status) for c in self._calls if call is None or c.call == call]

    def call_count(self, call: str) -> int:
        with self._lock:
            return self._counts[call]

    @property
    def token_requests(self) -> int:
        return self.call_count("token")

    def documentation(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """Every accepted DocumentationReady body, in acceptance order (one copy each)."""
        with self._lock:
            return [copy.deepcopy(b) for b in self._accepted if session_id is None or b["SessionID"] == session_id]

    def session_state(self, session_id: str) -> dict[str, Any]:
        with self._lock:
            s = self._session(session_id)
            return {
                "org": s.org, "SessionID": s.session_id, "begin": copy.deepcopy(s.begin_body),
                "allowed_sections": list(s.allowed), "edited_sections": sorted(s.edited),
                "newest_announced_version": s.newest_announced, "documented_version": s.documented_max,
                "processed_reports": list(s.processed_reports), "closed": s.closed,
                "accepted_versions": sorted(s.accepted),
                "recordings": {rid: {"chunks": len(r.chunks), "versions": copy.deepcopy(r.versions),
                                     "format": {"channels": r.params[0], "sample_width": r.params[1],
                                                "rate": r.params[2]}}
                               for rid, r in s.recordings.items()},
            }

    def haiku_launch_url(self, session_id: str, *, app_launch_url: str | None = None) -> str:
        """The URL Haiku opens for the app's embedded page in a session: the app's launch
        URL (default: the engine's, for the session's org) with `session`, `iss` and a fresh
        single-context `launch` handle for the session's FHIR patient and encounter."""
        state = self.session_state(session_id)
        if app_launch_url is None:
            if not self.engine_url:
                raise StateConflict("no engine URL is set for the app's launch URL")
            app_launch_url = f"{self.engine_url.rstrip('/')}/orgs/{state['org']}/epic/haiku/launch"
        patient, encounter = self.smart.fhir_ids_of(state["begin"])
        launch = self.smart.new_launch(patient=patient, encounter=encounter)
        return self.smart.launch_url(app_launch_url, launch, session=session_id)

    def haiku_open_url(self, session_id: str) -> str:
        """A link that plays Haiku opening the embedded page (each visit a fresh launch)."""
        return f"{self._base()}/_sim/sessions/{quote(session_id, safe='')}/haiku"

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Block until ``predicate()`` (evaluated under the simulator's lock) is true; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("condition not met before the deadline")
                self._cond.wait(remaining)

    def wait_documentation(self, session_id: str, version: int, timeout: float = 10.0) -> dict[str, Any]:
        """Wait for an accepted DocumentationReady of ``version``; returns its body."""
        def found() -> bool:
            s = self._sessions.get(session_id)
            return s is not None and version in s.accepted
        self.wait_for(found, timeout)
        with self._lock:
            return copy.deepcopy(self._sessions[session_id].accepted[version][1])

    def wait_calls(self, call: str, count: int, timeout: float = 10.0) -> None:
        self.wait_for(lambda: self._counts[call] >= count, timeout)

    # ----------------------------------------------------------------- HTTP app

    def _build_app(self) -> Flask:
        app = Flask(f"epic_sim_{id(self)}")
        app.config["MAX_CONTENT_LENGTH"] = 64 * 1024 * 1024

        @app.errorhandler(HTTPException)
        def _http_error(exc: HTTPException) -> Response:
            return _json({"Error": exc.name.replace(" ", ""), "Detail": exc.description or exc.name},
                         exc.code or 500)

        @app.errorhandler(InputError)
        def _input_error(exc: InputError) -> Response:
            return _json({"Error": "InvalidRequest", "Detail": exc.message, "Field": exc.field}, 400)

        @app.errorhandler(NotFound)
        def _not_found(exc: NotFound) -> Response:
            return _json({"Error": "NotFound", "Detail": exc.message}, 404)

        @app.errorhandler(StateConflict)
        def _conflict(exc: StateConflict) -> Response:
            return _json({"Error": "Conflict", "Detail": exc.message}, 409)

        @app.get(JWKS_PATH)
        def _jwks() -> Response:
            return _json(self.jwks)

        @app.get("/.well-known/smart-configuration")
        def _smart_config() -> Response:
            return _json({"token_endpoint": self.token_url, "jwks_uri": self.jwks_url,
                          "grant_types_supported": ["client_credentials"],
                          "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                          "token_endpoint_auth_signing_alg_values_supported": list(SIGNING_ALGS)})

        @app.post(TOKEN_PATH)
        def _token() -> Response:
            return self._handle("token", None, self._token_endpoint)

        @app.post(CALLBACK_PATH + "<name>")
        def _outbound(name: str) -> Response:
            if name not in OUTBOUND_CALLS:
                return _json({"Error": "UnknownOperation", "Detail": "no such Ambient operation"}, 404)
            handler = {"GetAmbientRecordingChunk": self._get_chunk,
                       "AmbientRecordingsProcessed": self._recordings_processed,
                       "DocumentationReady": self._documentation_ready}[name]
            return self._handle(name, self._authorize, handler)

        self._add_control_routes(app)
        from .smart import SmartAuthServer      # the SMART EHR-launch side (smart.py)
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
            resp = self._fault_response(call, fault)
        else:
            try:
                if auth is not None:
                    auth()
                resp = handler()
            except _CallError as err:
                resp = _json({"Error": err.code, "Detail": err.detail, **err.extra}, err.status)
                if err.status == 401:
                    resp.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            if fault and fault.delay_s and fault.after_processing:
                self._stopping.wait(fault.delay_s)
            if fault and fault.status and fault.after_processing:
                resp = self._fault_response(call, fault)
        with self._lock:
            self._counts[call] += 1
            self._calls.append(CallRecord(call=call, status=resp.status_code, session_id=session_id
                                          if isinstance(session_id, str) else None, body=body, at=self.clock()))
            self._cond.notify_all()
        return resp

    @staticmethod
    def _fault_response(call: str, fault: Fault) -> Response:
        status = fault.status or 500
        if call == "token":
            code = "invalid_client" if status in (400, 401) else "temporarily_unavailable"
            resp = _json({"error": code, "error_description": "injected fault"}, status)
        else:
            code = {401: "TokenExpired", 403: "PermissionDenied", 429: "TooManyRequests"}.get(
                status, "ServiceUnavailable" if status >= 500 else "Rejected")
            resp = _json({"Error": code, "Detail": "injected fault"}, status)
        if status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer error="invalid_token", error_description="token expired"'
        if fault.retry_after is not None:
            ra = fault.retry_after
            resp.headers["Retry-After"] = str(int(ra) if float(ra).is_integer() else ra)
        return resp

    # ----------------------------------------------------------------- token endpoint

    def _token_endpoint(self) -> Response:
        form = request.form
        def oauth_error(code: str, description: str, status: int = 400) -> _CallError:
            return _OAuthError(status, code, description)
        try:
            grant = form.get("grant_type")
            if not grant:
                raise oauth_error("invalid_request", "grant_type is required")
            if grant != "client_credentials":
                raise oauth_error("unsupported_grant_type", "grant_type must be client_credentials")
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                raise oauth_error("invalid_request" if not form.get("client_assertion_type") else "invalid_client",
                                  f"client_assertion_type must be {ASSERTION_TYPE}")
            assertion = form.get("client_assertion")
            if not assertion:
                raise oauth_error("invalid_request", "client_assertion is required")
            client_id = self._verify_assertion(assertion, form.get("client_id"))
        except _OAuthError as err:
            return _json({"error": err.code, "error_description": err.detail}, err.status)
        now = self.clock()
        token = secrets.token_urlsafe(32)
        with self._lock:
            if len(self._tokens) >= MAX_TOKENS:
                for tok in [t for t, (_c, exp) in self._tokens.items() if exp <= now][:MAX_TOKENS // 2] or \
                        list(self._tokens)[:MAX_TOKENS // 2]:
                    self._tokens.pop(tok, None)
            self._tokens[token] = (client_id, now + self.token_ttl)
        scope = form.get("scope") or "system/*.read"
        resp = _json({"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl, "scope": scope})
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def _verify_assertion(self, assertion: str, form_client_id: str | None) -> str:
        def bad(description: str) -> _OAuthError:
            return _OAuthError(400, "invalid_client", description)
        parts = assertion.split(".")
        if len(parts) != 3:
            raise bad("client_assertion is not a compact JWS")
        try:
            header, unverified = _b64url_json(parts[0]), _b64url_json(parts[1])
        except (ValueError, UnicodeDecodeError):
            raise bad("client_assertion is not a readable JWT") from None
        alg = header.get("alg")
        if alg not in SIGNING_ALGS:
            raise bad("client_assertion must be signed with RS384 or ES384")
        client_id = unverified.get("iss")
        with self._lock:
            keyset = self._clients.get(client_id) if isinstance(client_id, str) else None
        if keyset is None:
            raise bad("client_assertion iss is not a registered client")
        key: Any = keyset
        if "kid" not in header and len(keyset.keys) == 1:
            key = keyset.keys[0]
        try:
            claims = jwt.decode(assertion, key, algorithms=[alg]).claims
        except (JoseError, ValueError, TypeError):
            raise bad("client_assertion signature does not verify with the registered key") from None
        if claims.get("sub") != client_id:
            raise bad("client_assertion sub must equal iss (the client id)")
        if form_client_id is not None and form_client_id != client_id:
            raise bad("client_id does not match the client_assertion")
        if claims.get("aud") != self.token_url and not (isinstance(claims.get("aud"), list)
                                                        and self.token_url in claims["aud"]):
            raise bad("client_assertion aud must be the token endpoint URL")
        now = self.clock()
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise bad("client_assertion exp is required")
        if exp <= now - CLOCK_SKEW_S:
            raise bad("client_assertion has expired")
        if exp > now + MAX_ASSERTION_LIFETIME_S + CLOCK_SKEW_S:
            raise bad("client_assertion exp must be at most 5 minutes in the future")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise bad("client_assertion jti is required")
        with self._lock:
            for old, old_exp in list(self._assertion_jtis.items()):
                if old_exp < now - CLOCK_SKEW_S:
                    del self._assertion_jtis[old]
            key_jti = f"{client_id}\x00{jti}"
            if key_jti in self._assertion_jtis:
                raise bad("client_assertion jti was already used")
            self._assertion_jtis[key_jti] = float(exp)
        return client_id

    def _authorize(self) -> None:
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _CallError(401, "Unauthorized", "a bearer token from the token endpoint is required")
        with self._lock:
            entry = self._tokens.get(token.strip())
        if entry is None:
            raise _CallError(401, "Unauthorized", "the bearer token is not one this server issued")
        if entry[1] <= self.clock():
            raise _CallError(401, "TokenExpired", "the bearer token has expired")

    # ----------------------------------------------------------------- outbound operations

    def _json_body(self) -> dict[str, Any]:
        raw = request.get_data(cache=True)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise _CallError(400, "InvalidBody", "body is not valid JSON", Field="body") from None
        if not isinstance(body, dict):
            raise _CallError(400, "InvalidBody", "body must be a JSON object", Field="body")
        return body

    def _get_chunk(self) -> Response:
        body = self._json_body()
        sid = _require_str(body, "SessionID")
        rid = _require_str(body, "RecordingID")
        version = _require_pos_int(body, "RecordingVersion")
        seq = _require_pos_int(body, "ChunkSequence")
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                raise _CallError(404, "UnknownSession", "no ambient session with this SessionID")
            rec = session.recordings.get(rid)
            if rec is None:
                raise _CallError(404, "UnknownRecording", "no recording with this RecordingID in the session")
            if version > len(rec.versions):
                raise _CallError(404, "NotAvailable", "this recording version does not exist yet")
            if seq > rec.versions[version - 1]["chunk_count"]:
                raise _CallError(404, "NotAvailable", "this chunk is not part of the requested version")
            chunk = rec.chunks[seq - 1]
            if chunk.version <= session.documented_max:
                raise _CallError(410, "Gone", "a version holding this chunk has already been documented")
            wav = chunk.wav
        return Response(wav, status=200, content_type="audio/wav")

    def _recordings_processed(self) -> Response:
        body = self._json_body()
        sid = _require_str(body, "SessionID")
        version = _require_pos_int(body, "RecordingVersion")
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                raise _CallError(404, "UnknownSession", "no ambient session with this SessionID")
            if version > session.newest_announced:
                raise _CallError(409, "UnknownVersion", "this RecordingVersion was never announced")
            if version < session.processed_reported:
                raise _CallError(409, "StaleVersion",
                                 "RecordingVersion is older than one already reported as processed")
            session.processed_reported = version
            session.processed_reports.append(version)
            self._cond.notify_all()
        return _json({"Accepted": True})

    def _validate_documentation(self, body: dict[str, Any]) -> tuple[str, int, list[str]]:
        sid = _require_str(body, "SessionID")
        version = _require_pos_int(body, "RecordingVersion")
        instant = _require_str(body, "GeneratedInstant")
        try:
            parsed = datetime.fromisoformat(instant)
        except ValueError:
            raise _CallError(400, "InvalidBody", "GeneratedInstant must be an ISO 8601 instant",
                             Field="GeneratedInstant") from None
        if parsed.tzinfo is None:
            raise _CallError(400, "InvalidBody", "GeneratedInstant must carry a UTC offset", Field="GeneratedInstant")
        sections = body.get("Sections")
        if not isinstance(sections, list) or not sections:
            raise _CallError(400, "InvalidBody", "Sections must be a non-empty list", Field="Sections")
        codes: list[str] = []
        for i, section in enumerate(sections):
            prefix = f"Sections[{i}]."
            if not isinstance(section, dict):
                raise _CallError(400, "InvalidBody", f"Sections[{i}] must be an object", Field=f"Sections[{i}]")
            code = _require_str(section, "SectionID", prefix)
            _require_str(section, "ContentType", prefix)
            if not isinstance(section.get("Text"), str):
                raise _CallError(400, "InvalidBody", f"{prefix}Text is required and must be a string",
                                 Field=f"{prefix}Text")
            if code in codes:
                raise _CallError(400, "InvalidBody", f"{prefix}SectionID repeats an earlier section",
                                 Field=f"{prefix}SectionID")
            codes.append(code)
        return sid, version, codes

    def _documentation_ready(self) -> Response:
        body = self._json_body()
        sid, version, codes = self._validate_documentation(body)
        canon = _canonical(body)
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                raise _CallError(404, "UnknownSession", "no ambient session with this SessionID")
            previous = session.accepted.get(version)
            if previous is not None:
                if previous[0] == canon:
                    return _json({"Accepted": True})  # same body again: accepted once, one copy kept
                raise _CallError(409, "AlreadyDocumented",
                                 "a different body was already accepted for this RecordingVersion")
            if session.closed:
                raise _CallError(409, "SessionClosed", "the ambient session is complete")
            if version != session.newest_announced:
                raise _CallError(409, "StaleVersion",
                                 "RecordingVersion is not the newest version announced by RecordingAvailable",
                                 NewestVersion=session.newest_announced)
            not_allowed = [c for c in codes if c not in session.allowed]
            edited = [c for c in codes if c in session.edited]
            if not_allowed or edited:
                detail = []
                if not_allowed:
                    detail.append(f"not in the session's allowed sections: {', '.join(not_allowed)}")
                if edited:
                    detail.append(f"edited by a clinician: {', '.join(edited)}")
                raise _CallError(422, "SectionRejected", "; ".join(detail),
                                 SectionIDs=not_allowed + edited, NotAllowed=not_allowed, Edited=edited)
            session.accepted[version] = (canon, copy.deepcopy(body))
            session.documented_max = max(session.documented_max, version)
            self._accepted.append(copy.deepcopy(body))
            self._cond.notify_all()
        return _json({"Accepted": True})

    # ----------------------------------------------------------------- /_sim controls

    def _add_control_routes(self, app: Flask) -> None:
        def payload() -> dict[str, Any]:
            body = request.get_json(silent=True, force=True)
            if body is None and not request.get_data():
                return {}
            if not isinstance(body, dict):
                raise InputError("body must be a JSON object", field="body")
            return body

        def delivery_json(d: Delivery | None) -> Any:
            return d.as_dict() if d is not None else None

        @app.post("/_sim/reset")
        def _reset() -> Response:
            self.reset()
            return _json({"ok": True})

        @app.post("/_sim/engine")
        def _engine() -> Response:
            url = payload().get("url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise InputError("url must be an http(s) URL", field="url")
            self.engine_url = url.rstrip("/")
            return _json({"engine_url": self.engine_url})

        @app.post("/_sim/clients")
        def _clients() -> Response:
            body = payload()
            key = body.get("jwks") or body.get("pem")
            if key is None:
                raise InputError("give jwks or pem", field="jwks")
            self.register_client(body.get("client_id"), key)
            return _json({"ok": True})

        @app.post("/_sim/sessions")
        def _begin() -> Response:
            body = payload()
            org = body.get("org")
            kwargs: dict[str, Any] = {"session_id": body.get("session_id") or self.new_session_id()}
            for name in ("session_id", "user", "patient_ids", "encounter_ids", "allowed_sections", "note_type",
                         "care_context", "token"):
                if name in body:
                    kwargs[name] = body[name]
            d = self.begin_session(org, **kwargs)
            return _json({"SessionID": kwargs["session_id"], "delivery": delivery_json(d)})

        @app.get("/_sim/sessions/<sid>")
        def _state(sid: str) -> Response:
            state = self.session_state(sid)
            state["documentation"] = self.documentation(sid)
            return _json(state)

        @app.get("/_sim/sessions/<sid>/haiku")
        def _open_haiku(sid: str) -> Response:
            # What Haiku does when the clinician opens the app's web view in this session:
            # a fresh launch handle for the session's patient and encounter, then the app's
            # launch URL with iss and launch (SMART App Launch, EHR launch).
            return redirect(self.haiku_launch_url(sid), code=302)

        @app.post("/_sim/sessions/<sid>/record")
        def _record(sid: str) -> Response:
            body = payload()
            if "wav_base64" in body:
                try:
                    wav: Any = base64.b64decode(body["wav_base64"], validate=True)
                except (ValueError, TypeError):
                    raise InputError("wav_base64 is not base64", field="wav_base64") from None
            elif "wav_path" in body:
                wav = str(body["wav_path"])
            elif "synth_seconds" in body:
                secs = body["synth_seconds"]
                if not isinstance(secs, (int, float)) or not 0 < secs <= 3600:
                    raise InputError("synth_seconds must be 0..3600", field="synth_seconds")
                wav = synth_wav(secs)
            else:
                raise InputError("give wav_base64, wav_path or synth_seconds", field="wav_base64")
            kwargs = {k: body[k] for k in ("recording_id", "chunk_seconds", "status", "duplicate", "reorder",
                                           "announce_chunks", "announce_available") if k in body}
            result = self.record(sid, wav, **kwargs)
            return _json({"recording_id": result.recording_id, "version": result.version,
                          "new_sequences": result.new_sequences, "chunk_count": result.chunk_count,
                          "deliveries": [delivery_json(d) for d in result.deliveries]})

        @app.post("/_sim/sessions/<sid>/announce")
        def _announce(sid: str) -> Response:
            body = payload()
            rid = body.get("recording_id", "R1")
            if "chunk" in body:
                return _json({"delivery": delivery_json(self.announce_chunk(sid, body["chunk"], recording_id=rid))})
            return _json({"delivery": delivery_json(
                self.announce_recording(sid, recording_id=rid, version=body.get("version")))})

        @app.post("/_sim/sessions/<sid>/edit")
        def _edit(sid: str) -> Response:
            body = payload()
            kwargs = {"user": body["user"]} if "user" in body else {}
            return _json({"delivery": delivery_json(self.edit_sections(sid, body.get("sections") or [], **kwargs))})

        @app.post("/_sim/sessions/<sid>/complete")
        def _complete(sid: str) -> Response:
            return _json({"delivery": delivery_json(self.complete(sid, payload().get("reason", "Signed")))})

        @app.get("/_sim/state")
        def _global_state() -> Response:
            with self._lock:
                counts = dict(self._counts)
                sessions = sorted(self._sessions)
            return _json({"engine_url": self.engine_url, "sessions": sessions, "counts": counts,
                          "token_requests": self.token_requests,
                          "calls": [{"call": c, "status": s} for c, s in self.call_log()],
                          "deliveries": [d.as_dict() for d in self.deliveries],
                          "documentation": self.documentation(), "faults": self.faults.pending()})

        @app.post("/_sim/faults")
        def _add_fault() -> Response:
            body = payload()
            allowed = {"call", "status", "times", "retry_after", "delay_s", "after_processing"}
            extra = set(body) - allowed
            if extra:
                raise InputError("unknown fault option", field=sorted(extra)[0])
            if "call" not in body:
                raise InputError("call is required", field="call")
            return _json(self.faults.add(**body).as_dict())

        @app.delete("/_sim/faults")
        def _clear_faults() -> Response:
            self.faults.clear()
            return _json({"ok": True})

        @app.post("/_sim/expire_tokens")
        def _expire() -> Response:
            return _json({"expired": self.expire_tokens()})


class _OAuthError(_CallError):
    pass


class _QuietHandler(WSGIRequestHandler):
    """No per-request access log lines on stderr (URLs may carry org names; tests stay quiet)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("epic-sim %s %s", self.command, code)


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


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
