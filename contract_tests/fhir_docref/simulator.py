"""A FHIR R4 (4.0.1) server subset for DocumentReference write-back, written from the specs
(FHIR R4 http.html / documentreference / provenance / bundle, SMART Backend Services, US Core
"Writing Clinical Notes", Epic's public notes on DocumentReference.Create (Clinical Notes)) —
never from the adapter's code. Two behaviours, chosen at construction:

- ``profile="us-core"``: a well-behaved R4 server. Conditional create (If-None-Exist),
  version-aware PUT (If-Match / ETag W/"n"), transaction Bundles at POST [base], relatesTo,
  Provenance and Binary.
- ``profile="epic"``: what Epic's Clinical Notes create really does to a client. If-None-Exist
  is IGNORED (a replayed create files a duplicate), docStatus and context.encounter are
  required, only the first attachment is kept and it must be inline text/plain, 201 with a
  RELATIVE Location and no body (unless Prefer: return=representation), no ETag, no
  transaction, no PUT/PATCH/DELETE.

Use in-process::

    with FhirSimulator(profile="epic") as sim:
        sim.add_patient("p1"); sim.add_encounter("e1", "p1")
        sim.register_client("client-1", public_jwk, scopes=["system/DocumentReference.c"])
        base = sim.base_url  # FHIR base; token endpoint at sim.token_url

or standalone with :func:`serve`. Controls are also under ``/_sim/...`` (JSON); see README.md.
Nothing here logs request bodies or identifiers.
"""
from __future__ import annotations

import base64
import binascii
import copy
import json
import re
import secrets
import socket
import threading
import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import parse_qsl, unquote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from werkzeug.exceptions import HTTPException
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from chartbridge.core.errors import ChartbridgeError, InputError

PROFILES = ("us-core", "epic")
FHIR_JSON = "application/fhir+json"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_MAX_LIFETIME_S = 300  # SMART Backend Services: exp no more than five minutes ahead
SUPPORTED_ALGS = ("RS384", "ES384")

DOCREF_STATUS = ("current", "superseded", "entered-in-error")
DOC_STATUS = ("preliminary", "final", "amended", "entered-in-error")
RELATES_CODES = ("replaces", "transforms", "signs", "appends")
WRITABLE_TYPES = ("DocumentReference", "Provenance", "Binary")
SEEDED_TYPES = ("Patient", "Encounter")
ALL_TYPES = WRITABLE_TYPES + SEEDED_TYPES

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
INSTANT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
DATE_PARAM_RE = re.compile(r"^(eq|ne|gt|lt|ge|le)?(\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?"
                           r"(Z|[+-]\d{2}:\d{2})?)?)?)?)$")
SCOPE_RE = re.compile(r"^(system|user|patient)/([A-Za-z]+|\*)\.([a-z]+|\*)(\?.*)?$")
# search result parameters accepted and ignored; any other unknown parameter is refused (400)
IGNORED_SEARCH_PARAMS = ("_count", "_sort", "_format", "_elements", "_summary", "_total")
DOCREF_SEARCH_PARAMS = ("_id", "identifier", "patient", "subject", "encounter", "type", "date",
                        "status", "category")
# common search parameters (search.html "Parameters for all resources") this server supports
# on every resource type besides _id: _tag, a token on Resource.meta.tag
COMMON_SEARCH_PARAMS = ("_id", "_tag")
# reference search parameters -> the types their references may point to (R4 search
# parameter registry: DocumentReference-patient, clinical-patient, DocumentReference-subject,
# clinical-encounter)
REFERENCE_TARGETS = {"patient": ("Patient",),
                     "subject": ("Patient", "Practitioner", "Group", "Device"),
                     "encounter": ("Encounter", "EpisodeOfCare")}
TYPE_NAME_RE = re.compile(r"^[A-Z][A-Za-z]+$")
FAULT_CALLS = ("*", "token", "metadata", "create", "read", "vread", "search", "update",
               "transaction")
FAULT_KINDS = ("status", "slow", "lose_response", "expired_token", "forbidden_scope",
               "not_registered", "stale_search")


# ---------------------------------------------------------------- answers and OperationOutcome

class FhirAnswer(ChartbridgeError):
    """Raised inside a handler to answer at once (an error status, an OperationOutcome...)."""

    def __init__(self, status: int, body: Any = None, *, headers: Mapping[str, str] | None = None,
                 content_type: str = FHIR_JSON) -> None:
        super().__init__(f"answer {status}")
        self.status, self.body, self.content_type = status, body, content_type
        self.headers = dict(headers or {})


def issue(code: str, diagnostics: str, expression: str | None = None,
          severity: str = "error") -> dict[str, Any]:
    item: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        item["expression"] = [expression]
    return item


def outcome(*issues: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": list(issues)}


def fail(status: int, code: str, diagnostics: str, expression: str | None = None,
         headers: Mapping[str, str] | None = None) -> FhirAnswer:
    return FhirAnswer(status, outcome(issue(code, diagnostics, expression)), headers=headers)


class _Issues:
    """Collects validation issues; 400 = failed base R4 rules (structure, datatypes, required
    base elements), 422 = violated the profile / business rules, 404 = epic's unknown target.
    The answer is the most basic class present (400 before 422 before 404) with every issue."""

    def __init__(self) -> None:
        self.items: list[tuple[int, dict[str, Any]]] = []

    def add(self, status: int, code: str, diagnostics: str, expression: str) -> None:
        self.items.append((status, issue(code, diagnostics, expression)))

    def raise_if_any(self, prefix_from: str | None = None, prefix_to: str | None = None) -> None:
        if not self.items:
            return
        statuses = {s for s, _ in self.items}
        status = next(s for s in (400, 422, 404, 409, 412) if s in statuses)
        issues = []
        for _, item in self.items:
            item = dict(item)
            if prefix_from and item.get("expression"):
                item["expression"] = [e.replace(prefix_from, prefix_to or "", 1)
                                      for e in item["expression"]]
            issues.append(item)
        raise FhirAnswer(status, outcome(*issues))


# ---------------------------------------------------------------- faults

@dataclass
class Fault:
    call: str = "*"
    kind: str = "status"
    status: int | None = None
    times: int | None = 1          # None: until cleared
    retry_after: float | None = None
    delay_s: float = 0.0
    resource_type: str | None = None
    drop_connection: bool = False  # lose_response only: close the socket instead of a 502
    fired: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Faults:
    """Injected failures, matched by call name (and optionally resource type) in the order
    they were added. Each fires `times` times (None: until cleared)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, call: str = "*", status: int | None = None, *, kind: str | None = None,
            times: int | None = 1, retry_after: float | None = None, delay_s: float = 0.0,
            resource_type: str | None = None, drop_connection: bool = False) -> Fault:
        if call not in FAULT_CALLS:
            raise InputError(f"unknown fault call; expected one of {', '.join(FAULT_CALLS)}",
                             field="call")
        if kind is None:
            kind = "status" if status is not None else ("slow" if delay_s else "")
        if kind not in FAULT_KINDS:
            raise InputError(f"fault kind missing or unknown; expected one of "
                             f"{', '.join(FAULT_KINDS)}", field="kind")
        if kind == "status" and status is None:
            raise InputError("a status fault needs a status", field="status")
        if kind == "stale_search" and call != "search":
            raise InputError("a stale_search fault applies to call=search", field="call")
        if status is not None and (not isinstance(status, int) or not 100 <= status <= 599):
            raise InputError("status must be an HTTP status code", field="status")
        if times is not None and (not isinstance(times, int) or times < 1):
            raise InputError("times must be a positive integer or null", field="times")
        if not isinstance(delay_s, (int, float)) or delay_s < 0 or delay_s > 120:
            raise InputError("delay_s must be between 0 and 120 seconds", field="delay_s")
        if retry_after is not None and (not isinstance(retry_after, (int, float)) or retry_after < 0):
            raise InputError("retry_after must be a non-negative number", field="retry_after")
        if resource_type is not None and resource_type not in ALL_TYPES:
            raise InputError("unknown resource_type", field="resource_type")
        fault = Fault(call=call, kind=kind, status=status, times=times, retry_after=retry_after,
                      delay_s=float(delay_s), resource_type=resource_type,
                      drop_connection=bool(drop_connection))
        with self._lock:
            if len(self._faults) >= 100:
                raise InputError("too many faults queued (100); clear some", field="faults")
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.as_dict() for f in self._faults]

    def take(self, call: str, resource_type: str | None) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.call not in ("*", call):
                    continue
                if fault.resource_type and fault.resource_type != resource_type:
                    continue
                fault.fired += 1
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                return copy.copy(fault)
        return None


# ---------------------------------------------------------------- JOSE by hand (RS384 / ES384)

def _b64url_decode(part: str) -> bytes:
    if not isinstance(part, str) or not re.fullmatch(r"[A-Za-z0-9_\-]*", part):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64url_uint(value: Any) -> int:
    return int.from_bytes(_b64url_decode(value), "big")


def public_key_from_jwk(jwk: Mapping[str, Any]) -> Any:
    """An RSA or EC P-384 public key from a JWK (the private members are ignored)."""
    kty = jwk.get("kty")
    try:
        if kty == "RSA":
            return rsa.RSAPublicNumbers(_b64url_uint(jwk["e"]), _b64url_uint(jwk["n"])).public_key()
        if kty == "EC":
            if jwk.get("crv") != "P-384":
                raise InputError("only EC keys on curve P-384 (ES384) are accepted", field="crv")
            return ec.EllipticCurvePublicNumbers(_b64url_uint(jwk["x"]), _b64url_uint(jwk["y"]),
                                                 ec.SECP384R1()).public_key()
    except (KeyError, ValueError) as exc:
        raise InputError("JWK is missing or has a malformed key member", field="jwk") from exc
    raise InputError("JWK kty must be RSA or EC", field="kty")


def _verify_signature(key: Any, alg: str, signing_input: bytes, signature: bytes) -> bool:
    try:
        if alg == "RS384" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA384())
            return True
        if alg == "ES384" and isinstance(key, ec.EllipticCurvePublicKey):
            if len(signature) != 96:
                return False
            der = encode_dss_signature(int.from_bytes(signature[:48], "big"),
                                       int.from_bytes(signature[48:], "big"))
            key.verify(der, signing_input, ec.ECDSA(hashes.SHA384()))
            return True
    except InvalidSignature:
        return False
    return False


@dataclass
class _Client:
    client_id: str
    keys: dict[str, Any]           # kid -> public key
    scopes: tuple[str, ...]


@dataclass
class _Token:
    client_id: str
    scopes: frozenset[str]
    expires_at: float
    revoked: bool = False


def _scope_allows(scopes: Iterable[str], rtype: str, need: str) -> bool:
    """SMART v1 (read/write/*) and v2 (cruds) system scopes. `need` is one of c r u d s."""
    for scope in scopes:
        m = SCOPE_RE.match(scope)
        if not m or m.group(1) != "system" or m.group(2) not in ("*", rtype):
            continue
        perm = m.group(3)
        if perm == "*" or (perm == "read" and need in "rs") or (perm == "write" and need in "cud"):
            return True
        if re.fullmatch(r"c?r?u?d?s?", perm) and need in perm:
            return True
    return False


# ---------------------------------------------------------------- small FHIR helpers

def _now_instant(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _http_date(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")


def _parse_instant(value: Any) -> datetime | None:
    if not isinstance(value, str) or not INSTANT_RE.match(value):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _date_range(value: str) -> tuple[datetime, datetime] | None:
    """The [start, end) a FHIR date search value covers (precision-aware, UTC if no zone)."""
    try:
        if len(value) == 4:
            start = datetime(int(value), 1, 1, tzinfo=timezone.utc)
            return start, start.replace(year=start.year + 1)
        if len(value) == 7:
            y, m = int(value[:4]), int(value[5:7])
            start = datetime(y, m, 1, tzinfo=timezone.utc)
            return start, (start.replace(year=y + 1, month=1) if m == 12 else start.replace(month=m + 1))
        if len(value) == 10:
            start = datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
            return start, start + timedelta(days=1)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        clock_part = re.split(r"[Z+-]", value[11:])[0]
        step = timedelta(minutes=1) if clock_part.count(":") == 1 else timedelta(seconds=1)
        return moment, moment + step
    except ValueError:
        return None


def _is_b64(value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    compact = re.sub(r"\s+", "", value)
    if len(compact) % 4:
        return False
    try:
        base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _walk_references(node: Any, fn: Callable[[str], str | None]) -> None:
    """Call fn on every Reference.reference string; replace it when fn returns a value."""
    if isinstance(node, dict):
        for key, value in list(node.items()):
            if key == "reference" and isinstance(value, str):
                new = fn(value)
                if new is not None:
                    node[key] = new
            else:
                _walk_references(value, fn)
    elif isinstance(node, list):
        for item in node:
            _walk_references(item, fn)


def _token_match(codings: Iterable[Mapping[str, Any]], value: str) -> bool:
    if "|" in value:
        system, code = value.split("|", 1)
    else:
        system, code = None, value
    for coding in codings:
        if not isinstance(coding, Mapping):
            continue
        if system is not None:
            if system == "" and coding.get("system"):
                continue
            if system and coding.get("system") != system:
                continue
        if code == "" or coding.get("code", coding.get("value")) == code:
            return True
    return False


class _QuietHandler(WSGIRequestHandler):
    """No access log lines: paths carry patient ids."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass


# ---------------------------------------------------------------- the simulator

class FhirSimulator:
    """In-process FHIR R4 server subset. Thread-safe (one lock over all state); bounded."""

    def __init__(self, profile: str = "us-core", *, host: str = "127.0.0.1", port: int = 0,
                 token_ttl_s: int = 300, require_auth: bool = True,
                 require_if_match: bool = True, max_resources: int = 10_000,
                 max_calls: int = 2_000, max_jti: int = 100_000,
                 max_body_bytes: int = 10 * 1024 * 1024,
                 strict_references: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        if profile not in PROFILES:
            raise InputError("profile must be 'us-core' or 'epic'", field="profile")
        if not isinstance(token_ttl_s, int) or token_ttl_s < 1:
            raise InputError("token_ttl_s must be a positive integer", field="token_ttl_s")
        self.profile = profile
        self.host, self.port = host, port
        self.token_ttl_s = token_ttl_s
        self.require_auth = require_auth
        self.require_if_match = require_if_match
        # a reference search value must name its type: `patient=Patient/p1` matches,
        # `patient=p1` finds nothing (servers that match references strictly do this,
        # although the spec defines the bare [id] form); a plain attribute, set it any time
        self.strict_references = strict_references
        self.max_resources, self.max_calls, self.max_jti = max_resources, max_calls, max_jti
        self.max_body_bytes = max_body_bytes
        self.clock = clock
        self.faults = Faults()
        self._lock = threading.RLock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None
        self._clients: dict[str, _Client] = {}
        self._store: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self._tokens: dict[str, _Token] = {}
        self._jti: OrderedDict[str, float] = OrderedDict()
        self._calls: deque[dict[str, Any]] = deque(maxlen=max_calls)
        self._token_log: deque[dict[str, Any]] = deque(maxlen=max_calls)
        self._counts: dict[str, int] = {}
        self._seq = 0
        self.reset(keep_seed=False)

    # ------------------------------------------------------------ lifecycle
    @property
    def epic(self) -> bool:
        return self.profile == "epic"

    @property
    def base_url(self) -> str:
        if not self._base_url:
            raise InputError("simulator not started", field="base_url")
        return self._base_url

    @property
    def token_url(self) -> str:
        return self.base_url + "/oauth2/token"

    def start(self) -> str:
        if self._server is not None:
            return self.base_url
        self._server = make_server(self.host, self.port, self.wsgi_app, threaded=True,
                                   request_handler=_QuietHandler)
        self._server.daemon_threads = True
        self.port = self._server.server_port
        self._base_url = f"http://{self.host}:{self.port}"
        server = self._server
        self._thread = threading.Thread(target=lambda: server.serve_forever(poll_interval=0.05),
                                        name="fhir-sim", daemon=True)
        self._thread.start()
        return self._base_url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FhirSimulator":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def reset(self, keep_seed: bool = True) -> None:
        """Forget written resources, tokens, used jtis, faults, calls and counts. With
        keep_seed (default) registered clients and seeded Patients/Encounters stay."""
        with self._lock:
            seeded = {t: self._store.get(t, {}) for t in SEEDED_TYPES} if keep_seed else {}
            self._store = {t: {} for t in ALL_TYPES}
            self._store.update(seeded)
            if not keep_seed:
                self._clients = {}
            self._tokens.clear()
            self._jti.clear()
            self._calls.clear()
            self._token_log.clear()
            self._counts = {}
            self.faults.clear()

    # ------------------------------------------------------------ seeding and clients
    def add_patient(self, patient_id: str) -> dict[str, Any]:
        if not isinstance(patient_id, str) or not ID_RE.match(patient_id):
            raise InputError("patient id must match [A-Za-z0-9-.]{1,64}", field="id")
        return self._seed("Patient", {"resourceType": "Patient", "id": patient_id, "active": True})

    def add_encounter(self, encounter_id: str, patient_id: str) -> dict[str, Any]:
        if not isinstance(encounter_id, str) or not ID_RE.match(encounter_id):
            raise InputError("encounter id must match [A-Za-z0-9-.]{1,64}", field="id")
        with self._lock:
            if patient_id not in self._store["Patient"]:
                raise InputError("encounter's patient is not seeded; add_patient first",
                                 field="patient_id")
            return self._seed("Encounter", {
                "resourceType": "Encounter", "id": encounter_id, "status": "in-progress",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                          "code": "AMB"},
                "subject": {"reference": f"Patient/{patient_id}"}})

    def _seed(self, rtype: str, resource: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            resource["meta"] = {"versionId": "1", "lastUpdated": _now_instant(self.clock())}
            self._store[rtype][resource["id"]] = [resource]
            return copy.deepcopy(resource)

    def register_client(self, client_id: str, keys: Any, scopes: Iterable[str] | str = (),
                        kid: str | None = None) -> None:
        """Register a backend-services client: `keys` is one JWK, a list of JWKs, a JWKS
        ({"keys": [...]}) or a cryptography public key (then `kid` is required)."""
        if not isinstance(client_id, str) or not client_id:
            raise InputError("client_id is required", field="client_id")
        if isinstance(scopes, str):
            scopes = scopes.split()
        scopes = tuple(scopes)
        bad = [s for s in scopes if not SCOPE_RE.match(s)]
        if bad:
            raise InputError("scopes must look like system/Type.perm", field="scopes")
        found: dict[str, Any] = {}
        if isinstance(keys, Mapping) and "keys" in keys:
            keys = keys["keys"]
        if isinstance(keys, Mapping):
            keys = [keys]
        if isinstance(keys, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            if not kid:
                raise InputError("kid is required with a bare public key", field="kid")
            found[kid] = keys
        elif isinstance(keys, list):
            for jwk in keys:
                if not isinstance(jwk, Mapping) or not jwk.get("kid"):
                    raise InputError("every JWK needs a kid", field="kid")
                found[str(jwk["kid"])] = public_key_from_jwk(jwk)
        if not found:
            raise InputError("at least one public key is required", field="keys")
        with self._lock:
            self._clients[client_id] = _Client(client_id, found, scopes)

    def expire_tokens(self) -> int:
        """Expire every access token issued so far; the next FHIR call with one gets 401."""
        with self._lock:
            for token in self._tokens.values():
                token.revoked = True
            return len(self._tokens)

    # ------------------------------------------------------------ inspection
    def documents(self, patient_id: str | None = None) -> list[dict[str, Any]]:
        """Current versions of stored DocumentReferences, optionally for one patient."""
        with self._lock:
            docs = [v[-1] for v in self._store["DocumentReference"].values()]
            if patient_id is not None:
                docs = [d for d in docs
                        if (d.get("subject") or {}).get("reference") == f"Patient/{patient_id}"]
            return copy.deepcopy(docs)

    def resources(self, rtype: str) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy([v[-1] for v in self._store.get(rtype, {}).values()])

    def get(self, rtype: str, rid: str) -> dict[str, Any] | None:
        with self._lock:
            versions = self._store.get(rtype, {}).get(rid)
            return copy.deepcopy(versions[-1]) if versions else None

    def history(self, rtype: str, rid: str) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._store.get(rtype, {}).get(rid, []))

    def ehr_update(self, rtype: str, rid: str, changes: dict[str, Any]) -> dict[str, Any]:
        """A change made at the EHR itself (a clinician editing the document in its own UI):
        a new version of the resource, as any update makes (FHIR R4 3.1.0.1.2 versioning)."""
        with self._lock:
            current = copy.deepcopy(self._store[rtype][rid][-1])
            current.update(changes)
            return copy.deepcopy(self._put_version(rtype, rid, current,
                                                   int(current["meta"]["versionId"]) + 1))

    def creates(self, rtype: str | None = "DocumentReference") -> int:
        """How many resources were created (all types when rtype is None)."""
        with self._lock:
            if rtype is None:
                return sum(v for k, v in self._counts.items() if k.startswith("create:"))
            return self._counts.get(f"create:{rtype}", 0)

    @property
    def token_requests(self) -> int:
        with self._lock:
            return self._counts.get("token_requests", 0)

    def token_log(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(x) for x in self._token_log]

    def calls(self, call: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(c) for c in self._calls if call is None or c["call"] == call]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"profile": self.profile, "counts": dict(self._counts),
                    "stored": {t: len(v) for t, v in self._store.items()},
                    "tokens_live": sum(1 for t in self._tokens.values()
                                       if not t.revoked and t.expires_at > self.clock()),
                    "faults": self.faults.list(), "calls": len(self._calls)}

    def _count(self, key: str, n: int = 1) -> None:
        self._counts[key] = self._counts.get(key, 0) + n

    # ------------------------------------------------------------ WSGI
    def wsgi_app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        record: dict[str, Any] = {"method": request.method, "path": request.path,
                                  "call": "unknown", "resource_type": None, "status": None,
                                  "fault": None, "if_none_exist": "If-None-Exist" in request.headers,
                                  "if_match": request.headers.get("If-Match"),
                                  "prefer": request.headers.get("Prefer"),
                                  "at": self.clock()}
        request.max_content_length = self.max_body_bytes
        request.max_form_memory_size = self.max_body_bytes
        try:
            response = self._dispatch(request, record)
        except FhirAnswer as answer:
            response = self._render(answer)
        except InputError as exc:  # bad /_sim control input
            response = self._json(400, exc.as_dict())
        except HTTPException as exc:  # e.g. 413 from the body size limit
            response = self._render(fail(exc.code or 400, "too-costly" if exc.code == 413
                                         else "invalid", exc.name))
        except Exception as exc:  # noqa: BLE001 -- the HTTP edge: a simulator bug, not a hang
            record["error"] = type(exc).__name__
            response = self._render(fail(500, "exception", "simulator internal error"))
        record["status"] = response.status_code
        if record["call"] != "sim":
            with self._lock:
                self._seq += 1
                record["seq"] = self._seq
                self._calls.append(record)
        return response(environ, start_response)

    def _render(self, answer: FhirAnswer) -> Response:
        if answer.body is None:
            resp = Response(b"", status=answer.status)
            resp.headers.pop("Content-Type", None)
        elif isinstance(answer.body, (bytes, str)):
            resp = Response(answer.body, status=answer.status, content_type=answer.content_type)
        else:
            resp = Response(json.dumps(answer.body), status=answer.status,
                            content_type=answer.content_type)
        for k, v in answer.headers.items():
            resp.headers[k] = v
        return resp

    @staticmethod
    def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
        resp = Response(json.dumps(body), status=status, content_type="application/json")
        for k, v in (headers or {}).items():
            resp.headers[k] = v
        return resp

    def _route(self, request: Request) -> tuple[str, str | None, list[str]]:
        parts = [unquote(p) for p in request.path.strip("/").split("/") if p]
        if not parts:
            return ("transaction" if request.method == "POST" else "unknown"), None, parts
        head = parts[0]
        if head == "_sim":
            return "sim", None, parts
        if head == "metadata":
            return "metadata", None, parts
        if parts[:2] == [".well-known", "smart-configuration"]:
            return "smart_config", None, parts
        if parts[:2] == ["oauth2", "token"]:
            return "token", None, parts
        if head not in ALL_TYPES:
            return "unknown", head, parts
        if len(parts) == 1:
            return ("create" if request.method == "POST" else "search"), head, parts
        if len(parts) == 2 and parts[1] == "_search":
            return "search", head, parts
        if len(parts) == 2:
            return ("read" if request.method == "GET" else "update"), head, parts
        if len(parts) == 4 and parts[2] == "_history":
            return "vread", head, parts
        return "unknown", head, parts

    def _dispatch(self, request: Request, record: dict[str, Any]) -> Response:
        call, rtype, parts = self._route(request)
        record["call"], record["resource_type"] = call, rtype
        if call == "sim":
            return self._sim_control(request, parts)
        fault = self.faults.take(call, rtype) if call != "unknown" else None
        if fault:
            record["fault"] = fault.kind
            if fault.delay_s:
                time.sleep(fault.delay_s)  # the fault IS the delay (server side)
            if fault.kind == "stale_search":
                # a search index that lags the writes: nothing written yet is found
                return self._render(FhirAnswer(200, {
                    "resourceType": "Bundle", "type": "searchset", "total": 0,
                    "link": [{"relation": "self", "url": request.url}], "entry": []}))
            early = self._fault_answer(fault, call)
            if early is not None:
                return early
        response = self._handle(call, rtype, parts, request, record)
        if fault and fault.kind == "lose_response" and response.status_code < 300:
            # the write happened; the client must not be able to tell
            if fault.drop_connection:
                sock = request.environ.get("werkzeug.socket")
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                record["dropped"] = True
            return Response("Bad Gateway", status=fault.status or 502, content_type="text/plain")
        return response

    def _fault_answer(self, fault: Fault, call: str) -> Response | None:
        kind = fault.kind
        if kind in ("slow", "lose_response"):
            return None
        if kind == "not_registered":
            resp = Response(b"", status=fault.status or 403)
            resp.headers.pop("Content-Type", None)
            return resp
        if kind == "expired_token":
            return self._render(fail(401, "expired", "access token expired", None,
                                     {"WWW-Authenticate": 'Bearer error="invalid_token", '
                                                          'error_description="expired"'}))
        if kind == "forbidden_scope":
            return self._render(fail(fault.status or 403, "forbidden",
                                     "access token lacks the scope for this interaction"))
        status = fault.status or 500
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(int(fault.retry_after) if float(fault.retry_after).is_integer()
                                         else fault.retry_after)
        if call == "token":
            err = "temporarily_unavailable" if status >= 500 or status == 429 else "invalid_request"
            return self._json(status, {"error": err, "error_description": "injected fault"}, headers)
        code = "throttled" if status == 429 else ("transient" if status >= 500 else "processing")
        return self._render(fail(status, code, "injected fault", None, headers))

    def _handle(self, call: str, rtype: str | None, parts: list[str], request: Request,
                record: dict[str, Any]) -> Response:
        try:
            if call == "metadata":
                self._only(request, "GET")
                return self._render(FhirAnswer(200, self.capability_statement()))
            if call == "smart_config":
                self._only(request, "GET")
                return self._json(200, self.smart_configuration())
            if call == "token":
                return self._token(request, record)
            if call == "unknown":
                if rtype is not None and not parts[1:]:
                    raise fail(404, "not-supported", "resource type not supported by this server")
                if not parts and request.method == "GET":
                    raise fail(404, "not-supported", "no interaction at the base with GET")
                raise fail(404, "not-found", "no such endpoint")
            if call == "transaction":
                if self.epic:
                    raise fail(400, "not-supported",
                               "transaction/batch Bundles are not supported by this server")
                token = self._authenticate(request)
                return self._transaction(request, token)
            token = self._authenticate(request)
            assert rtype is not None
            if call == "create":
                return self._create(request, rtype, token, record)
            if call == "search":
                self._only(request, "GET", "POST")
                self._need(token, rtype, "s")
                return self._search_answer(request, rtype, parts)
            if call == "read":
                self._need(token, rtype, "r")
                return self._read(rtype, parts[1], None)
            if call == "vread":
                self._only(request, "GET")
                self._need(token, rtype, "r")
                return self._read(rtype, parts[1], parts[3])
            if call == "update":
                return self._update(request, rtype, parts[1], token)
            raise fail(404, "not-found", "no such endpoint")
        except FhirAnswer as answer:
            return self._render(answer)

    @staticmethod
    def _only(request: Request, *methods: str) -> None:
        if request.method not in methods:
            raise fail(405, "not-supported", f"method not allowed here; use {', '.join(methods)}",
                       headers={"Allow": ", ".join(methods)})

    # ------------------------------------------------------------ discovery
    def capability_statement(self) -> dict[str, Any]:
        base = self._base_url or ""
        us = not self.epic

        def res(rtype: str, interactions: list[str], params: tuple[str, ...] = ()) -> dict[str, Any]:
            entry: dict[str, Any] = {"type": rtype,
                                     "interaction": [{"code": c} for c in interactions],
                                     "versioning": "versioned-update" if us else "no-version",
                                     "updateCreate": False,
                                     "conditionalCreate": us and rtype in WRITABLE_TYPES,
                                     "conditionalUpdate": False, "conditionalDelete": "not-supported"}
            if params:
                entry["searchParam"] = [
                    {"name": p, "type": "reference" if p in REFERENCE_TARGETS else
                     "date" if p == "date" else "token"} for p in params]
            return entry

        write = ["create", "read", "vread", "update", "search-type"] if us else ["create", "read",
                                                                                "search-type"]
        resources = [res("DocumentReference", write, DOCREF_SEARCH_PARAMS + ("_tag",)),
                     res("Patient", ["read"]), res("Encounter", ["read"])]
        if us:
            resources += [res("Provenance", ["create", "read", "vread", "search-type"],
                              COMMON_SEARCH_PARAMS),
                          res("Binary", ["create", "read", "vread"])]
        return {
            "resourceType": "CapabilityStatement", "status": "active",
            "date": "2024-01-01", "kind": "instance", "fhirVersion": "4.0.1",
            "format": ["json"], "software": {"name": f"chartbridge fhir simulator ({self.profile})"},
            "implementation": {"description": "simulator", "url": base},
            "rest": [{
                "mode": "server",
                "security": {
                    "service": [{"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR"}]}],
                    "extension": [{
                        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                        "extension": [{"url": "token", "valueUri": base + "/oauth2/token"}]}]},
                "resource": resources,
                "interaction": [{"code": "transaction"}] if us else [],
            }],
        }

    def smart_configuration(self) -> dict[str, Any]:
        base = self._base_url or ""
        return {
            "token_endpoint": base + "/oauth2/token",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": list(SUPPORTED_ALGS),
            "scopes_supported": ["system/DocumentReference.c", "system/DocumentReference.rs",
                                 "system/DocumentReference.u", "system/Provenance.c",
                                 "system/Binary.c", "system/DocumentReference.read",
                                 "system/DocumentReference.write"],
            "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
        }

    # ------------------------------------------------------------ SMART Backend Services token
    def _token(self, request: Request, record: dict[str, Any]) -> Response:
        with self._lock:
            self._count("token_requests")
        entry: dict[str, Any] = {"at": self.clock(), "client_id": None, "scope_param": None,
                                 "granted": None, "status": None, "error": None}

        def refuse(error: str, description: str, status: int = 400) -> Response:
            entry.update(status=status, error=error)
            with self._lock:
                self._token_log.append(entry)
            return self._json(status, {"error": error, "error_description": description},
                              {"Cache-Control": "no-store", "Pragma": "no-cache"})

        if request.method != "POST":
            return refuse("invalid_request", "use POST", 405)
        if request.mimetype != "application/x-www-form-urlencoded":
            return refuse("invalid_request", "body must be application/x-www-form-urlencoded")
        form = request.form
        entry["scope_param"] = form.get("scope")
        if form.get("grant_type") != "client_credentials":
            return refuse("unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            return refuse("invalid_request", "client_assertion_type must be " + ASSERTION_TYPE)
        assertion = form.get("client_assertion")
        if not assertion:
            return refuse("invalid_request", "client_assertion is required")
        if not self.epic and not form.get("scope"):
            return refuse("invalid_request", "scope is required")
        # parse the JWT
        pieces = assertion.split(".")
        if len(pieces) != 3:
            return refuse("invalid_client", "client_assertion is not a compact JWS")
        try:
            header = json.loads(_b64url_decode(pieces[0]))
            claims = json.loads(_b64url_decode(pieces[1]))
            signature = _b64url_decode(pieces[2])
        except (ValueError, UnicodeDecodeError):
            return refuse("invalid_client", "client_assertion is not valid base64url JSON")
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return refuse("invalid_client", "client_assertion header and claims must be objects")
        alg = header.get("alg")
        if alg not in SUPPORTED_ALGS:
            return refuse("invalid_client", "alg must be RS384 or ES384")
        if header.get("typ") not in (None, "JWT"):
            return refuse("invalid_client", "typ must be JWT")
        kid = header.get("kid")
        if not kid:
            return refuse("invalid_client", "kid header is required")
        iss, sub = claims.get("iss"), claims.get("sub")
        entry["client_id"] = iss if isinstance(iss, str) else None
        with self._lock:
            client = self._clients.get(iss) if isinstance(iss, str) else None
        if client is None:
            return refuse("invalid_client", "iss is not a registered client_id")
        if sub != iss:
            return refuse("invalid_client", "sub must equal iss (the client_id)")
        if claims.get("aud") != self.token_url:
            return refuse("invalid_client", "aud must be the token endpoint URL")
        exp = claims.get("exp")
        now = self.clock()
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            return refuse("invalid_client", "exp is required (seconds since epoch)")
        if exp <= now:
            return refuse("invalid_client", "client_assertion has expired")
        if exp > now + ASSERTION_MAX_LIFETIME_S:
            return refuse("invalid_client", "exp must be no more than five minutes in the future")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            return refuse("invalid_client", "jti is required")
        key = client.keys.get(str(kid))
        if key is None:
            return refuse("invalid_client", "kid does not match a key registered for this client")
        if not _verify_signature(key, alg, f"{pieces[0]}.{pieces[1]}".encode("ascii"), signature):
            return refuse("invalid_client", "signature does not verify with the registered key")
        with self._lock:
            replay_key = f"{iss}\x00{jti}"
            if replay_key in self._jti:
                return refuse("invalid_client", "jti has already been used")
            self._jti[replay_key] = now
            while len(self._jti) > self.max_jti:
                self._jti.popitem(last=False)
            if self.epic:
                granted = list(client.scopes)  # Epic ignores a scope param; grants registration
            else:
                requested = form.get("scope", "").split()
                granted = [s for s in requested if s in client.scopes]
                if not granted:
                    return refuse("invalid_scope", "none of the requested scopes is granted")
            access = secrets.token_urlsafe(32)
            self._tokens = {k: t for k, t in self._tokens.items()
                            if t.expires_at > now and not t.revoked}
            if len(self._tokens) >= 10_000:
                return refuse("temporarily_unavailable", "too many live tokens", 503)
            self._tokens[access] = _Token(iss, frozenset(granted), now + self.token_ttl_s)
            self._count("tokens_issued")
            entry.update(status=200, granted=" ".join(granted))
            self._token_log.append(entry)
        return self._json(200, {"access_token": access, "token_type": "bearer",
                                "expires_in": self.token_ttl_s, "scope": " ".join(granted)},
                          {"Cache-Control": "no-store", "Pragma": "no-cache"})

    def _authenticate(self, request: Request) -> _Token | None:
        if not self.require_auth:
            return None
        header = request.headers.get("Authorization", "")
        challenge = {"WWW-Authenticate": 'Bearer realm="fhir"'}
        if not header.lower().startswith("bearer "):
            raise fail(401, "login", "bearer access token required", None, challenge)
        with self._lock:
            token = self._tokens.get(header[7:].strip())
            if token is None:
                raise fail(401, "login", "unknown access token", None,
                           {"WWW-Authenticate": 'Bearer error="invalid_token"'})
            if token.revoked or token.expires_at <= self.clock():
                raise fail(401, "expired", "access token expired", None,
                           {"WWW-Authenticate": 'Bearer error="invalid_token", '
                                                'error_description="expired"'})
            return token

    @staticmethod
    def _need(token: _Token | None, rtype: str, perm: str) -> None:
        if token is not None and not _scope_allows(token.scopes, rtype, perm):
            raise fail(403, "forbidden", f"access token lacks a system scope for {rtype} ({perm})")

    # ------------------------------------------------------------ body parsing
    @staticmethod
    def _body(request: Request) -> Any:
        mimetype = request.mimetype
        if mimetype and mimetype not in (FHIR_JSON, "application/json"):
            raise fail(415, "not-supported", "Content-Type must be application/fhir+json")
        raw = request.get_data(cache=True)
        if not raw:
            raise fail(400, "structure", "request body is empty; a JSON resource is required")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise fail(400, "structure", "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise fail(400, "structure", "request body must be a JSON object (a FHIR resource)")
        return body

    # ------------------------------------------------------------ validation
    def _ref(self, value: Any) -> tuple[str, str] | None:
        """(type, id) of a literal reference 'Type/id', '[base]/Type/id', '.../_history/n'."""
        if not isinstance(value, str):
            return None
        if self._base_url and value.startswith(self._base_url + "/"):
            value = value[len(self._base_url) + 1:]
        parts = value.split("/")
        if len(parts) == 4 and parts[2] == "_history":
            parts = parts[:2]
        if len(parts) == 2 and re.fullmatch(r"[A-Z][A-Za-z]+", parts[0]) and ID_RE.match(parts[1]):
            return parts[0], parts[1]
        return None

    def _exists(self, rtype: str, rid: str, pending: set[tuple[str, str]]) -> bool:
        return (rtype, rid) in pending or rid in self._store.get(rtype, {})

    def _validate(self, rtype: str, res: dict[str, Any], pending: set[tuple[str, str]],
                  current: dict[str, Any] | None = None) -> None:
        v = _Issues()
        if rtype == "DocumentReference":
            self._validate_docref(res, v, pending, current)
        elif rtype == "Provenance":
            self._validate_provenance(res, v, pending)
        elif rtype == "Binary":
            if not isinstance(res.get("contentType"), str) or not res.get("contentType"):
                v.add(400, "required", "Binary.contentType is required", "Binary.contentType")
            if "data" in res and not _is_b64(res["data"]):
                v.add(400, "value", "Binary.data is not valid base64", "Binary.data")
        v.raise_if_any()

    def _validate_docref(self, res: dict[str, Any], v: _Issues, pending: set[tuple[str, str]],
                         current: dict[str, Any] | None) -> None:
        D = "DocumentReference"
        # status 1..1 (base)
        status = res.get("status")
        if status is None:
            v.add(400, "required", "status is required", f"{D}.status")
        elif status not in DOCREF_STATUS:
            v.add(400, "code-invalid", "status must be current, superseded or entered-in-error",
                  f"{D}.status")
        # docStatus 0..1 (base); required by epic
        if "docStatus" in res:
            if res["docStatus"] not in DOC_STATUS:
                v.add(400, "code-invalid",
                      "docStatus must be preliminary, final, amended or entered-in-error",
                      f"{D}.docStatus")
        elif self.epic:
            v.add(422, "required", "docStatus is required by this server", f"{D}.docStatus")
        # type (US Core 1..1; Epic needs the note type)
        doc_type = res.get("type")
        if doc_type is None:
            v.add(422, "required", "type is required", f"{D}.type")
        elif not isinstance(doc_type, dict) or not (
                isinstance(doc_type.get("coding"), list) or isinstance(doc_type.get("text"), str)):
            v.add(400, "structure", "type must be a CodeableConcept", f"{D}.type")
        # category (US Core 1..*)
        category = res.get("category")
        if category is None:
            if not self.epic:
                v.add(422, "required", "category is required (US Core 1..*)", f"{D}.category")
        elif not isinstance(category, list) or not all(isinstance(c, dict) for c in category):
            v.add(400, "structure", "category must be an array of CodeableConcept", f"{D}.category")
        # identifier 0..*
        if "identifier" in res:
            ids = res["identifier"]
            if not isinstance(ids, list) or not all(
                    isinstance(i, dict) and isinstance(i.get("value", ""), str)
                    and isinstance(i.get("system", ""), str) for i in ids):
                v.add(400, "structure", "identifier must be an array of Identifier",
                      f"{D}.identifier")
        # date 0..1 instant
        if "date" in res and _parse_instant(res["date"]) is None:
            v.add(400, "value", "date must be an instant with a time zone", f"{D}.date")
        # subject: US Core and Epic 1..1 Reference(Patient)
        patient_id = self._check_subject(res, v, pending)
        if current is not None and patient_id is not None:
            if (current.get("subject") or {}).get("reference") != f"Patient/{patient_id}":
                v.add(422, "business-rule", "an update may not move a document to another patient",
                      f"{D}.subject")
        # context.encounter 0..* Reference(Encounter|EpisodeOfCare)
        self._check_encounter(res, v, pending, patient_id)
        # content 1..* with attachment 1..1
        self._check_content(res, v)
        # relatesTo 0..*
        if "relatesTo" in res:
            rel = res["relatesTo"]
            if not isinstance(rel, list):
                v.add(400, "structure", "relatesTo must be an array", f"{D}.relatesTo")
            else:
                for i, item in enumerate(rel):
                    where = f"{D}.relatesTo[{i}]"
                    if not isinstance(item, dict):
                        v.add(400, "structure", "relatesTo entry must be an object", where)
                        continue
                    if item.get("code") not in RELATES_CODES:
                        v.add(400, "code-invalid",
                              "relatesTo.code must be replaces, transforms, signs or appends",
                              f"{where}.code")
                    target = self._ref((item.get("target") or {}).get("reference")
                                       if isinstance(item.get("target"), dict) else None)
                    if target is None or target[0] != D:
                        v.add(400, "structure",
                              "relatesTo.target must reference DocumentReference/<id>",
                              f"{where}.target")
                    elif not self._exists(D, target[1], pending):
                        v.add(422, "not-found", "relatesTo.target is not a known DocumentReference",
                              f"{where}.target")

    def _check_subject(self, res: dict[str, Any], v: _Issues,
                       pending: set[tuple[str, str]]) -> str | None:
        where = "DocumentReference.subject"
        subject = res.get("subject")
        if subject is None:
            v.add(422, "required", "subject is required", where)
            return None
        if not isinstance(subject, dict) or not isinstance(subject.get("reference"), str):
            v.add(400, "structure", "subject must be a Reference with a reference string", where)
            return None
        ref = self._ref(subject["reference"])
        if ref is None:
            v.add(400, "value", "subject.reference must look like Patient/<id>", where)
            return None
        if ref[0] != "Patient":
            v.add(422, "business-rule", "subject must reference a Patient", where)
            return None
        if not self._exists("Patient", ref[1], pending):
            v.add(404 if self.epic else 422, "not-found", "subject patient is not known", where)
            return None
        return ref[1]

    def _check_encounter(self, res: dict[str, Any], v: _Issues, pending: set[tuple[str, str]],
                         patient_id: str | None) -> None:
        where = "DocumentReference.context.encounter"
        context = res.get("context")
        if context is not None and not isinstance(context, dict):
            v.add(400, "structure", "context must be an object", "DocumentReference.context")
            return
        encounters = (context or {}).get("encounter")
        if encounters is None:
            if self.epic:
                v.add(422, "required", "context.encounter is required by this server", where)
            return
        if not isinstance(encounters, list):
            v.add(400, "structure", "context.encounter must be an array of Reference in R4", where)
            return
        if self.epic and len(encounters) != 1:
            v.add(422, "business-rule", "exactly one context.encounter is required", where)
        for i, enc in enumerate(encounters):
            here = f"{where}[{i}]"
            ref = self._ref(enc.get("reference") if isinstance(enc, dict) else None)
            if ref is None or ref[0] not in ("Encounter", "EpisodeOfCare"):
                v.add(400, "value", "context.encounter reference must look like Encounter/<id>", here)
                continue
            if ref[0] != "Encounter":
                v.add(422, "not-supported", "only Encounter references are supported", here)
                continue
            stored = self._store["Encounter"].get(ref[1])
            if stored is None:
                v.add(404 if self.epic else 422, "not-found", "encounter is not known", here)
                continue
            owner = self._ref(stored[-1].get("subject", {}).get("reference"))
            if patient_id is not None and (owner is None or owner[1] != patient_id):
                v.add(422, "business-rule", "encounter belongs to a different patient", here)

    def _check_content(self, res: dict[str, Any], v: _Issues) -> None:
        D = "DocumentReference"
        content = res.get("content")
        if content is None:
            v.add(400, "required", "content is required (1..*)", f"{D}.content")
            return
        if not isinstance(content, list) or not content:
            v.add(400, "required", "content must be a non-empty array", f"{D}.content")
            return
        for i, item in enumerate(content):
            where = f"{D}.content[{i}]"
            if self.epic and i > 0:
                break  # Epic keeps (and looks at) only the first attachment
            if not isinstance(item, dict) or not isinstance(item.get("attachment"), dict):
                v.add(400, "required", "content.attachment is required", f"{where}.attachment")
                continue
            att = item["attachment"]
            ctype = att.get("contentType")
            if ctype is None:
                v.add(422, "required", "attachment.contentType is required",
                      f"{where}.attachment.contentType")
            elif not isinstance(ctype, str) or "/" not in ctype:
                v.add(400, "value", "attachment.contentType must be a MIME type",
                      f"{where}.attachment.contentType")
            elif self.epic and ctype.split(";")[0].strip().lower() != "text/plain":
                v.add(422, "not-supported", "only text/plain notes are accepted",
                      f"{where}.attachment.contentType")
            if "data" in att and not _is_b64(att["data"]):
                v.add(400, "value", "attachment.data is not valid base64",
                      f"{where}.attachment.data")
            if self.epic and "data" not in att:
                v.add(422, "required", "the note must be inline (attachment.data)",
                      f"{where}.attachment.data")
            elif "data" not in att and "url" not in att:
                v.add(422, "required", "attachment needs data or url (us-core-6)",
                      f"{where}.attachment")

    def _validate_provenance(self, res: dict[str, Any], v: _Issues,
                             pending: set[tuple[str, str]]) -> None:
        P = "Provenance"
        targets = res.get("target")
        if not isinstance(targets, list) or not targets:
            v.add(400, "required", "target is required (1..*)", f"{P}.target")
        else:
            for i, t in enumerate(targets):
                ref = self._ref(t.get("reference") if isinstance(t, dict) else None)
                if ref is None:
                    v.add(400, "value", "target reference must look like Type/<id>",
                          f"{P}.target[{i}]")
                elif not self._exists(ref[0], ref[1], pending):
                    v.add(422, "not-found", "target does not resolve", f"{P}.target[{i}]")
        if _parse_instant(res.get("recorded")) is None:
            v.add(400, "required", "recorded is required (an instant)", f"{P}.recorded")
        agents = res.get("agent")
        if not isinstance(agents, list) or not agents:
            v.add(400, "required", "agent is required (1..*)", f"{P}.agent")
        else:
            for i, a in enumerate(agents):
                if not isinstance(a, dict) or not isinstance(a.get("who"), dict):
                    v.add(400, "required", "agent.who is required", f"{P}.agent[{i}].who")

    # ------------------------------------------------------------ store
    def _new_id(self) -> str:
        return ("e" if self.epic else "") + secrets.token_hex(10)

    def _capacity(self, n: int) -> None:
        total = sum(len(v) for t, v in self._store.items() if t in WRITABLE_TYPES)
        if total + n > self.max_resources:
            raise fail(507, "too-costly", "simulator store is full; reset it")

    def _put_version(self, rtype: str, rid: str, resource: dict[str, Any], version: int) -> dict[str, Any]:
        resource = copy.deepcopy(resource)
        resource["id"] = rid
        meta = resource.get("meta") if isinstance(resource.get("meta"), dict) else {}
        meta = {k: val for k, val in meta.items() if k not in ("versionId", "lastUpdated")}
        meta.update(versionId=str(version), lastUpdated=_now_instant(self.clock()))
        resource["meta"] = meta
        self._store[rtype].setdefault(rid, []).append(resource)
        if version == 1:
            self._count(f"create:{rtype}")
        else:
            self._count(f"update:{rtype}")
        return resource

    def _prepare_new(self, rtype: str, body: dict[str, Any]) -> dict[str, Any]:
        res = copy.deepcopy(body)
        res.pop("id", None)  # the server ignores a client id on create
        if self.epic and rtype == "DocumentReference" and isinstance(res.get("content"), list):
            res["content"] = res["content"][:1]  # exactly one attachment is kept
        return res

    # ------------------------------------------------------------ interactions
    def _location(self, rtype: str, rid: str, version: str | None, absolute: bool) -> str:
        path = f"{rtype}/{rid}" + (f"/_history/{version}" if version else "")
        return f"{self.base_url}/{path}" if absolute else path

    def _resource_response(self, status: int, res: dict[str, Any], request: Request | None,
                           created: bool) -> Response:
        rtype, rid, ver = res["resourceType"], res["id"], res["meta"]["versionId"]
        headers: dict[str, str] = {}
        prefer = (request.headers.get("Prefer", "") if request is not None else "").replace(" ", "")
        if self.epic:
            if created:
                headers["Location"] = self._location(rtype, rid, None, absolute=False)
            body = res if (not created or "return=representation" in prefer) else None
            return self._render(FhirAnswer(status, copy.deepcopy(body), headers=headers))
        headers["ETag"] = f'W/"{ver}"'
        updated = _parse_instant(res["meta"].get("lastUpdated"))
        headers["Last-Modified"] = _http_date(updated.timestamp() if updated else self.clock())
        if created or status in (200,) and request is not None and request.method in ("POST", "PUT"):
            headers["Location"] = self._location(rtype, rid, ver, absolute=True)
        if "return=minimal" in prefer:
            body: Any = None
        elif "return=OperationOutcome" in prefer:
            body = outcome(issue("informational", "ok", None, severity="information"))
        else:
            body = copy.deepcopy(res)
        return self._render(FhirAnswer(status, body, headers=headers))

    def _create(self, request: Request, rtype: str, token: _Token | None,
                record: dict[str, Any]) -> Response:
        if rtype in SEEDED_TYPES:
            raise fail(405, "not-supported", f"{rtype} cannot be created here", headers={"Allow": "GET"})
        if self.epic and rtype != "DocumentReference":
            raise fail(405, "not-supported", f"{rtype} create is not supported by this server")
        self._need(token, rtype, "c")
        body = self._body(request)
        if body.get("resourceType") != rtype:
            raise fail(400, "invalid", f"resourceType must be {rtype}", "resourceType")
        condition = request.headers.get("If-None-Exist")
        with self._lock:
            if condition and self.epic:
                record["if_none_exist_ignored"] = True
            elif condition:
                matches = self._search(rtype, self._condition_params(rtype, condition))
                if len(matches) == 1:
                    self._count(f"conditional_match:{rtype}")
                    existing = matches[0]
                    resp = self._resource_response(200, existing, request, created=False)
                    resp.headers["Location"] = self._location(rtype, existing["id"], None, True)
                    return resp
                if len(matches) > 1:
                    raise fail(412, "duplicate",
                               "If-None-Exist matched more than one resource")
            res = self._prepare_new(rtype, body)
            self._validate(rtype, res, set())
            self._capacity(1)
            stored = self._put_version(rtype, self._new_id(), res, 1)
        return self._resource_response(201, stored, request, created=True)

    def _condition_params(self, rtype: str, condition: str) -> list[tuple[str, str]]:
        query = condition.strip()
        if "?" in query:
            prefix, query = query.split("?", 1)
            if prefix and prefix.rstrip("/").split("/")[-1] != rtype:
                raise fail(400, "invalid", "If-None-Exist names another resource type",
                           "If-None-Exist")
        params = parse_qsl(query, keep_blank_values=True)
        if not params:
            raise fail(400, "invalid", "If-None-Exist has no search parameters", "If-None-Exist")
        return params

    def _read(self, rtype: str, rid: str, version: str | None) -> Response:
        with self._lock:
            versions = self._store.get(rtype, {}).get(rid)
            if not versions:
                raise fail(404, "not-found", f"{rtype} not found")
            if version is None:
                res = versions[-1]
            else:
                match = [x for x in versions if x["meta"]["versionId"] == version]
                if not match:
                    raise fail(404, "not-found", f"{rtype} version not found")
                res = match[0]
            res = copy.deepcopy(res)
        return self._resource_response(200, res, None, created=False)

    def _update(self, request: Request, rtype: str, rid: str, token: _Token | None) -> Response:
        if self.epic or rtype in SEEDED_TYPES:
            raise fail(405, "not-supported", "update is not supported by this server",
                       headers={"Allow": "GET"})
        if request.method != "PUT":
            raise fail(405, "not-supported", "only PUT updates are supported",
                       headers={"Allow": "GET, PUT"})
        self._need(token, rtype, "u")
        body = self._body(request)
        if body.get("resourceType") != rtype:
            raise fail(400, "invalid", f"resourceType must be {rtype}", "resourceType")
        with self._lock:
            stored = self._apply_update(rtype, rid, body, request.headers.get("If-Match"), set())
        return self._resource_response(200, stored, request, created=False)

    def _apply_update(self, rtype: str, rid: str, body: dict[str, Any], if_match: str | None,
                      pending: set[tuple[str, str]], commit: bool = True) -> dict[str, Any]:
        if body.get("id") != rid:
            raise fail(400, "invalid", "resource id must equal the id in the URL", f"{rtype}.id")
        versions = self._store[rtype].get(rid)
        if not versions:
            raise fail(404, "not-found",
                       f"{rtype} not found; this server does not support update-as-create")
        current = versions[-1]
        if if_match is None:
            if self.require_if_match:
                raise fail(428, "required", "If-Match is required for updates (versioned-update)",
                           "If-Match")
        else:
            m = re.fullmatch(r'\s*(W/)?"([^"]+)"\s*', if_match)
            if not m:
                raise fail(400, "invalid", 'If-Match must look like W/"<versionId>"', "If-Match")
            if m.group(2) != current["meta"]["versionId"]:
                raise fail(412, "conflict", "If-Match does not match the current version")
        self._validate(rtype, body, pending, current=current)
        if not commit:
            return body
        return self._put_version(rtype, rid, body, int(current["meta"]["versionId"]) + 1)

    # ------------------------------------------------------------ search
    def _search_answer(self, request: Request, rtype: str, parts: list[str]) -> Response:
        if len(parts) == 2 and request.method != "POST":
            raise fail(405, "not-supported", "_search takes POST", headers={"Allow": "POST"})
        if len(parts) == 1 and request.method != "GET":
            raise fail(405, "not-supported", "use GET to search", headers={"Allow": "GET, POST"})
        params = list(request.args.items(multi=True))
        if request.method == "POST":
            params += list(request.form.items(multi=True))
        with self._lock:
            matches = self._search(rtype, params)
        bundle = {
            "resourceType": "Bundle", "type": "searchset", "total": len(matches),
            "link": [{"relation": "self", "url": request.url}],
            "entry": [{"fullUrl": f"{self.base_url}/{rtype}/{r['id']}", "resource": r,
                       "search": {"mode": "match"}} for r in matches],
        }
        return self._render(FhirAnswer(200, bundle))

    def _search(self, rtype: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Current versions matching every parameter (AND); comma-separated values are OR."""
        allowed = (DOCREF_SEARCH_PARAMS if rtype == "DocumentReference" else ("identifier",)
                   ) + COMMON_SEARCH_PARAMS
        tests: list[Callable[[dict[str, Any]], bool]] = []
        for name, raw in params:
            if name in IGNORED_SEARCH_PARAMS:
                continue
            base_name, _, modifier = name.partition(":")
            # the only modifier supported is a reference's [type] (`subject:Patient=23`)
            if base_name not in allowed or (modifier and not (
                    base_name in REFERENCE_TARGETS and TYPE_NAME_RE.match(modifier))):
                raise fail(400, "not-supported", "unknown or unsupported search parameter",
                           name)
            if modifier and modifier not in REFERENCE_TARGETS[base_name]:
                raise fail(400, "invalid", "the type modifier is not a target of this parameter",
                           name)
            if raw == "":
                raise fail(400, "invalid", "empty search parameter value", name)
            if base_name in REFERENCE_TARGETS:
                tests.append(self._reference_test(base_name, raw, modifier or None))
            else:
                tests.append(self._search_test(base_name, raw))
        out = []
        for versions in self._store.get(rtype, {}).values():
            res = versions[-1]
            if all(t(res) for t in tests):
                out.append(copy.deepcopy(res))
        out.sort(key=lambda r: r["meta"]["lastUpdated"])
        return out

    def _search_test(self, name: str, raw: str) -> Callable[[dict[str, Any]], bool]:
        values = raw.split(",")

        def any_of(pred: Callable[[dict[str, Any], str], bool]) -> Callable[[dict[str, Any]], bool]:
            return lambda res: any(pred(res, val) for val in values)

        if name == "_id":
            return any_of(lambda r, val: r.get("id") == val)
        if name == "_tag":
            return any_of(lambda r, val: _token_match(
                [t for t in ((r.get("meta") or {}).get("tag") or []) if isinstance(t, dict)], val))
        if name == "identifier":
            return any_of(lambda r, val: _token_match(
                [i for i in r.get("identifier", []) if isinstance(i, dict)], val))
        if name == "type":
            return any_of(lambda r, val: _token_match((r.get("type") or {}).get("coding", []), val))
        if name == "category":
            return any_of(lambda r, val: any(_token_match(c.get("coding", []), val)
                                             for c in r.get("category", []) if isinstance(c, dict)))
        if name == "status":
            return any_of(lambda r, val: r.get("status") == val)
        if name == "date":
            m = DATE_PARAM_RE.match(raw)
            rng = _date_range(m.group(2)) if m else None
            if rng is None:
                raise fail(400, "invalid", "date must be [prefix]YYYY[-MM[-DD[Thh:mm[:ss]]]]", "date")
            prefix, (lo, hi) = m.group(1) or "eq", rng

            def date_test(res: dict[str, Any]) -> bool:
                t = _parse_instant(res.get("date"))
                if t is None:
                    return False
                return {"eq": lo <= t < hi, "ne": not lo <= t < hi, "gt": t >= hi, "ge": t >= lo,
                        "lt": t < lo, "le": t < hi}[prefix]
            return date_test
        raise fail(400, "not-supported", "unsupported search parameter", name)

    def _reference_test(self, name: str, raw: str, type_modifier: str | None
                        ) -> Callable[[dict[str, Any]], bool]:
        """A reference parameter (search.html#reference). Each comma-separated value is
        `[id]` (a local reference to any of the parameter's target types with that id; with
        `strict_references` it matches nothing), `[type]/[id]` (a local reference of that
        type), or `[url]` (an absolute URL: one of this server's own resources is the local
        reference; any other URL matches a reference written exactly so). `name:[type]=[id]`
        is the same as `name=[type]/[id]`."""
        targets = REFERENCE_TARGETS[name]

        def wanted(val: str) -> Callable[[str], bool]:
            if type_modifier:
                if "/" in val:
                    raise fail(400, "invalid", "with a [type] modifier the value is an id", name)
                val = f"{type_modifier}/{val}"
            if "://" in val:
                local = self._ref(val)   # own base stripped; None for another server's URL
                if local is None:
                    return lambda stored: stored == val
                val = f"{local[0]}/{local[1]}"
            parts = val.split("/")
            if len(parts) == 1:
                if self.strict_references:
                    return lambda stored: False
                return lambda stored: (self._ref(stored) or ("", ""))[1] == val and (
                    self._ref(stored) or ("", ""))[0] in targets
            if len(parts) == 2 and TYPE_NAME_RE.match(parts[0]):
                want = (parts[0], parts[1])
                return lambda stored: self._ref(stored) == want
            return lambda stored: False

        wants = [wanted(v) for v in raw.split(",")]

        def references(res: dict[str, Any]) -> list[str]:
            if name == "encounter":
                found = [e.get("reference") for e in
                         ((res.get("context") or {}).get("encounter") or []) if isinstance(e, dict)]
            else:
                found = [(res.get("subject") or {}).get("reference")]
            return [r for r in found if isinstance(r, str)]

        return lambda res: any(w(ref) for ref in references(res) for w in wants)

    # ------------------------------------------------------------ transaction (us-core)
    def _transaction(self, request: Request, token: _Token | None) -> Response:
        bundle = self._body(request)
        if bundle.get("resourceType") != "Bundle":
            raise fail(400, "invalid", "POST to the base takes a Bundle", "Bundle.resourceType")
        if bundle.get("type") != "transaction":
            raise fail(400, "not-supported", "only transaction Bundles are supported", "Bundle.type")
        entries = bundle.get("entry")
        if not isinstance(entries, list) or not entries:
            raise fail(400, "required", "transaction needs at least one entry", "Bundle.entry")
        plan: list[dict[str, Any]] = []
        for i, entry in enumerate(entries):
            where = f"Bundle.entry[{i}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
                raise fail(400, "required", "entry.request is required", f"{where}.request")
            req = entry["request"]
            method, url = req.get("method"), req.get("url")
            if method not in ("POST", "PUT"):
                raise fail(400, "not-supported", "only POST and PUT entries are supported",
                           f"{where}.request.method")
            resource = entry.get("resource")
            if not isinstance(resource, dict):
                raise fail(400, "required", "entry.resource is required", f"{where}.resource")
            rtype = resource.get("resourceType")
            if rtype not in WRITABLE_TYPES:
                raise fail(400, "not-supported", "resource type not writable here",
                           f"{where}.resource.resourceType")
            url_parts = (url or "").split("?")[0].strip("/").split("/")
            if url_parts[0] != rtype or (method == "POST" and len(url_parts) != 1) or (
                    method == "PUT" and len(url_parts) != 2):
                raise fail(400, "invalid", "request.url must be Type (POST) or Type/id (PUT) "
                           "matching the resource", f"{where}.request.url")
            self._need(token, rtype, "c" if method == "POST" else "u")
            full_url = entry.get("fullUrl")
            if full_url is not None and not isinstance(full_url, str):
                raise fail(400, "structure", "fullUrl must be a string", f"{where}.fullUrl")
            plan.append({"i": i, "method": method, "rtype": rtype, "resource": copy.deepcopy(resource),
                         "full_url": full_url, "if_none_exist": req.get("ifNoneExist"),
                         "if_match": req.get("ifMatch"),
                         "id": url_parts[1] if method == "PUT" else None})
        with self._lock:
            id_map: dict[str, str] = {}
            pending: set[tuple[str, str]] = set()
            for p in plan:  # POSTs first (R4 transaction processing order), then PUTs
                if p["method"] != "POST":
                    continue
                if p["if_none_exist"]:
                    matches = self._search(p["rtype"],
                                           self._condition_params(p["rtype"], p["if_none_exist"]))
                    if len(matches) > 1:
                        raise fail(412, "duplicate", "ifNoneExist matched more than one resource",
                                   f"Bundle.entry[{p['i']}].request.ifNoneExist")
                    if matches:
                        p["existing"] = matches[0]
                        p["id"] = matches[0]["id"]
                if p["id"] is None:
                    p["id"] = self._new_id()
                    pending.add((p["rtype"], p["id"]))
                if p["full_url"]:
                    id_map[p["full_url"]] = f"{p['rtype']}/{p['id']}"
            for p in plan:
                _walk_references(p["resource"], id_map.get)
            for p in plan:
                prefix = f"Bundle.entry[{p['i']}].resource."
                try:
                    if p["method"] == "POST" and "existing" not in p:
                        p["resource"] = self._prepare_new(p["rtype"], p["resource"])
                        self._validate(p["rtype"], p["resource"], pending)
                    elif p["method"] == "PUT":
                        self._apply_update(p["rtype"], p["id"], p["resource"], p["if_match"],
                                           pending, commit=False)
                except FhirAnswer as answer:
                    self._prefix_expressions(answer, p["rtype"] + ".", prefix)
                    raise
            self._capacity(sum(1 for p in plan if p["method"] == "POST" and "existing" not in p))
            # all checks passed: commit everything (nothing above wrote to the store)
            out_entries = []
            for p in plan:
                if "existing" in p:
                    res, status = p["existing"], "200 OK"
                elif p["method"] == "POST":
                    res, status = self._put_version(p["rtype"], p["id"], p["resource"], 1), "201 Created"
                else:
                    current = self._store[p["rtype"]][p["id"]][-1]
                    res = self._put_version(p["rtype"], p["id"], p["resource"],
                                            int(current["meta"]["versionId"]) + 1)
                    status = "200 OK"
                ver = res["meta"]["versionId"]
                out_entries.append({
                    "fullUrl": f"{self.base_url}/{p['rtype']}/{p['id']}",
                    "response": {"status": status,
                                 "location": self._location(p["rtype"], p["id"], ver, False),
                                 "etag": f'W/"{ver}"', "lastModified": res["meta"]["lastUpdated"]}})
            self._count("transactions")
        return self._render(FhirAnswer(200, {"resourceType": "Bundle", "type": "transaction-response",
                                             "entry": out_entries}))

    @staticmethod
    def _prefix_expressions(answer: FhirAnswer, old: str, new: str) -> None:
        if isinstance(answer.body, dict):
            for item in answer.body.get("issue", []):
                if item.get("expression"):
                    item["expression"] = [e.replace(old, new, 1) if e.startswith(old) else new + e
                                          for e in item["expression"]]

    # ------------------------------------------------------------ /_sim controls (JSON)
    def _sim_control(self, request: Request, parts: list[str]) -> Response:
        what = parts[1] if len(parts) > 1 else ""
        method = request.method

        def payload() -> dict[str, Any]:
            try:
                data = json.loads(request.get_data() or b"{}")
            except ValueError:
                raise InputError("control body must be JSON", field="body") from None
            if not isinstance(data, dict):
                raise InputError("control body must be a JSON object", field="body")
            return data

        if what == "state" and method == "GET":
            return self._json(200, self.stats())
        if what == "reset" and method == "POST":
            self.reset(keep_seed=bool(payload().get("keep_seed", True)))
            return self._json(200, {"reset": True})
        if what == "faults":
            if method == "GET":
                return self._json(200, {"faults": self.faults.list()})
            if method == "DELETE":
                self.faults.clear()
                return self._json(200, {"faults": []})
            if method == "POST":
                data = payload()
                known = {"call", "status", "kind", "times", "retry_after", "delay_s",
                         "resource_type", "drop_connection"}
                unknown = sorted(set(data) - known)
                if unknown:
                    raise InputError("unknown fault field", field=unknown[0])
                fault = self.faults.add(**data)
                return self._json(201, fault.as_dict())
        if what == "patients" and method == "POST":
            return self._json(201, self.add_patient(payload().get("id")))
        if what == "encounters" and method == "POST":
            data = payload()
            return self._json(201, self.add_encounter(data.get("id"), data.get("patient_id")))
        if what == "clients" and method == "POST":
            data = payload()
            self.register_client(data.get("client_id"), data.get("jwks") or data.get("keys"),
                                 data.get("scopes", ()))
            return self._json(201, {"client_id": data.get("client_id")})
        if what == "expire_tokens" and method == "POST":
            return self._json(200, {"expired": self.expire_tokens()})
        if what == "documents" and method == "GET":
            return self._json(200, {"documents": self.documents(request.args.get("patient"))})
        if what == "calls" and method == "GET":
            return self._json(200, {"calls": self.calls(request.args.get("call")),
                                    "token_requests": self.token_log()})
        return self._json(404, {"error": "not_found", "detail": "unknown /_sim control"})


def serve(host: str = "127.0.0.1", port: int = 8090, *, profile: str = "us-core",
          patients: Iterable[str] = (), encounters: Iterable[tuple[str, str]] = (),
          clients: Iterable[Mapping[str, Any]] = (), stop: threading.Event | None = None,
          **options: Any) -> None:
    """Run the simulator in the foreground until interrupted (or `stop` is set). `clients`
    items are {"client_id", "jwks" | "keys", "scopes"}; more over POST /_sim/clients."""
    sim = FhirSimulator(profile, host=host, port=port, **options)
    for pid in patients:
        sim.add_patient(pid)
    for eid, pid in encounters:
        sim.add_encounter(eid, pid)
    for c in clients:
        sim.register_client(c["client_id"], c.get("jwks") or c.get("keys"), c.get("scopes", ()))
    base = sim.start()
    print(f"FHIR R4 simulator ({profile}) at {base} -- configure the org with "
          f"fhir base_url={base} token_url={base}/oauth2/token; register its client with "
          f"POST {base}/_sim/clients", flush=True)
    stop = stop or threading.Event()
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
