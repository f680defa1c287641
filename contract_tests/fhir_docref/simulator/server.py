"""The FHIR simulator's HTTP server: routing, the interactions (create, read, vread,
update, search, transaction), the /_sim controls and `serve()`. What a profile allows is
its row in rules.py; tokens are auth.py's, resources and search store.py's, checks
validation.py's, injected failures faults.py's. The machinery (background server, quiet
handler, JSON answers, fault queue) is the shared contract_tests/support.
"""
from __future__ import annotations

import base64
import copy
import json
import re
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import unquote

from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from chartbridge.core.errors import InputError

from contract_tests.support.http import BackgroundServer, drop_connection, json_response

from .answers import FHIR_JSON, FhirAnswer, fail, issue, outcome
from .auth import SUPPORTED_ALGS, Token, TokenService
from .faults import Fault, Faults
from .launch import SmartLaunch
from .rules import PROFILES, RULES, ServerRules
from .store import ALL_TYPES, COMMON_SEARCH_PARAMS, REFERENCE_TARGETS, SEEDED_TYPES, \
    WRITABLE_TYPES, Store
from .validation import Validator
from .values import ID_RE, http_date, now_instant, parse_instant, walk_references


# ---------------------------------------------------------------- the simulator

class FhirSimulator:
    """In-process FHIR R4 server subset. Thread-safe (one lock over all state); bounded.
    What differs per profile is the row `self.rules` (rules.RULES), never its name."""

    def __init__(self, profile: str = "us-core", *, host: str = "127.0.0.1", port: int = 0,
                 token_ttl_s: int = 300, require_auth: bool = True,
                 require_if_match: bool = True, max_resources: int = 10_000,
                 max_calls: int = 2_000, max_jti: int = 100_000,
                 max_body_bytes: int = 10 * 1024 * 1024,
                 strict_references: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        if profile not in RULES:
            raise InputError(f"profile must be one of {', '.join(PROFILES)}", field="profile")
        if not isinstance(token_ttl_s, int) or token_ttl_s < 1:
            raise InputError("token_ttl_s must be a positive integer", field="token_ttl_s")
        self.profile = profile
        self.rules: ServerRules = RULES[profile]
        self.host, self.port = host, port
        self.require_auth = require_auth
        self.require_if_match = require_if_match
        self.max_body_bytes = max_body_bytes
        self.clock = clock
        self._lock = threading.RLock()
        self._background: BackgroundServer | None = None
        # set by callers that serve wsgi_app themselves (onboarding's sandbox): stop() ends it
        self._base_url: str | None = None
        self.store = Store(self.rules, lock=self._lock, clock=clock,
                           base_url=lambda: self._base_url, max_resources=max_resources)
        self.store.strict_references = strict_references
        self.auth = TokenService(self.rules, lock=self._lock, clock=clock,
                                 token_ttl_s=token_ttl_s, max_jti=max_jti, max_log=max_calls,
                                 count=self.store.count)
        self.validator = Validator(self.rules, self.store)
        self.faults = Faults(ALL_TYPES, lock=self._lock)
        # the SMART EHR launch (launch.py): /oauth2/authorize, the code grant, the id_token
        self.launch = SmartLaunch(lambda: self._base_url, clock=clock)
        self._calls: deque[dict[str, Any]] = deque(maxlen=max_calls)
        self._seq = 0
        self.reset(keep_seed=False)

    # ------------------------------------------------------------ state other code reads
    @property
    def _store(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Every version by type and id (tests reach in under `_lock` to play the EHR)."""
        return self.store.data

    @property
    def _clients(self) -> dict[str, Any]:
        return self.auth.clients

    @property
    def strict_references(self) -> bool:
        """A reference search value must name its type (`patient=Patient/p1`); a bare id
        then finds nothing. A plain attribute: set it any time."""
        return self.store.strict_references

    @strict_references.setter
    def strict_references(self, value: bool) -> None:
        self.store.strict_references = bool(value)

    @property
    def token_ttl_s(self) -> int:
        return self.auth.token_ttl_s

    # ------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        if not self._base_url:
            raise InputError("simulator not started", field="base_url")
        return self._base_url

    @property
    def token_url(self) -> str:
        return self.base_url + "/oauth2/token"

    def start(self, *, wrap: Callable[[Callable], Callable] | None = None,
              base_path: str = "") -> str:
        """Serve on a background thread. `wrap` wraps the WSGI app (e.g. to mount it under
        `base_path`, which then is part of base_url, the token audience and Locations)."""
        if self._background is not None:
            return self.base_url
        app = wrap(self.wsgi_app) if wrap else self.wsgi_app
        self._background = BackgroundServer(app, host=self.host, port=self.port, name="fhir-sim")
        self._background.start()
        self.port = self._background.port
        self._base_url = f"http://{self.host}:{self.port}{base_path.rstrip('/')}"
        return self._base_url

    def stop(self) -> None:
        background, self._background = self._background, None
        if background is not None:
            background.stop()

    def __enter__(self) -> "FhirSimulator":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def reset(self, keep_seed: bool = True) -> None:
        """Forget written resources, tokens, used jtis, faults, calls and counts. With
        keep_seed (default) registered clients and seeded Patients/Encounters stay."""
        with self._lock:
            self.store.reset(keep_seed)
            self.auth.reset(keep_clients=keep_seed)
            self._calls.clear()
            self.faults.clear()

    # ------------------------------------------------------------ seeding and clients
    def add_patient(self, patient_id: str) -> dict[str, Any]:
        if not isinstance(patient_id, str) or not ID_RE.match(patient_id):
            raise InputError("patient id must match [A-Za-z0-9-.]{1,64}", field="id")
        return self.store.seed("Patient", {"resourceType": "Patient", "id": patient_id,
                                           "active": True})

    def add_encounter(self, encounter_id: str, patient_id: str) -> dict[str, Any]:
        if not isinstance(encounter_id, str) or not ID_RE.match(encounter_id):
            raise InputError("encounter id must match [A-Za-z0-9-.]{1,64}", field="id")
        with self._lock:
            if patient_id not in self.store.data["Patient"]:
                raise InputError("encounter's patient is not seeded; add_patient first",
                                 field="patient_id")
            return self.store.seed("Encounter", {
                "resourceType": "Encounter", "id": encounter_id, "status": "in-progress",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                          "code": "AMB"},
                "subject": {"reference": f"Patient/{patient_id}"}})

    def register_client(self, client_id: str, keys: Any, scopes: Iterable[str] | str = (),
                        kid: str | None = None) -> None:
        """Register a backend-services client: `keys` is one JWK, a list of JWKs, a JWKS
        ({"keys": [...]}) or a cryptography public key (then `kid` is required)."""
        self.auth.register_client(client_id, keys, scopes, kid)

    def expire_tokens(self) -> int:
        """Expire every access token issued so far; the next FHIR call with one gets 401."""
        return self.auth.expire_tokens()

    # ------------------------------------------------------------ inspection
    def documents(self, patient_id: str | None = None) -> list[dict[str, Any]]:
        """Current versions of stored DocumentReferences, optionally for one patient."""
        with self._lock:
            docs = [v[-1] for v in self.store.data["DocumentReference"].values()]
            if patient_id is not None:
                docs = [d for d in docs
                        if (d.get("subject") or {}).get("reference") == f"Patient/{patient_id}"]
            return copy.deepcopy(docs)

    def document_text(self, doc: dict[str, Any]) -> str:
        """The first attachment's text, inline or (text_by_url) from the Binary it names."""
        att = ((doc.get("content") or [{}])[0] or {}).get("attachment") or {}
        data = att.get("data")
        if data is None and att.get("url"):
            ref = self.store.ref(att["url"])
            binary = self.get(*ref) if ref else None
            data = (binary or {}).get("data")
        return base64.b64decode(data or "").decode("utf-8")

    def resources(self, rtype: str) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy([v[-1] for v in self.store.data.get(rtype, {}).values()])

    def get(self, rtype: str, rid: str) -> dict[str, Any] | None:
        with self._lock:
            current = self.store.current(rtype, rid)
            return copy.deepcopy(current) if current else None

    def history(self, rtype: str, rid: str) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self.store.data.get(rtype, {}).get(rid, []))

    def ehr_update(self, rtype: str, rid: str, changes: dict[str, Any]) -> dict[str, Any]:
        """A change made at the EHR itself (a clinician editing the document in its own UI):
        a new version of the resource, as any update makes (FHIR R4 3.1.0.1.2 versioning)."""
        with self._lock:
            current = copy.deepcopy(self.store.data[rtype][rid][-1])
            current.update(changes)
            return copy.deepcopy(self.store.put_version(rtype, rid, current,
                                                        int(current["meta"]["versionId"]) + 1))

    def creates(self, rtype: str | None = "DocumentReference") -> int:
        """How many resources were created (all types when rtype is None)."""
        with self._lock:
            counts = self.store.counts
            if rtype is None:
                return sum(v for k, v in counts.items() if k.startswith("create:"))
            return counts.get(f"create:{rtype}", 0)

    @property
    def token_requests(self) -> int:
        with self._lock:
            return self.store.counts.get("token_requests", 0)

    def token_log(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(x) for x in self.auth.log]

    def calls(self, call: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(c) for c in self._calls if call is None or c["call"] == call]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"profile": self.profile, "counts": dict(self.store.counts),
                    "stored": {t: len(v) for t, v in self.store.data.items()},
                    "tokens_live": self.auth.live(),
                    "faults": self.faults.list(), "calls": len(self._calls)}

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
        return json_response(body, status, headers)

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
        if parts[:2] in (["oauth2", "authorize"], ["oauth2", "launch-jwks"]):
            return "launch", None, parts
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
                drop_connection(request.environ)
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
            if call == "launch":
                return self.launch.handle(request)
            if call == "token" and request.form.get("grant_type") == "authorization_code":
                return self.launch.token(request)
            if call == "token":
                status, body, headers = self.auth.issue(request.method, request.mimetype,
                                                        request.form, self.token_url)
                return self._json(status, body, headers)
            if call == "unknown":
                if rtype is not None and not parts[1:]:
                    raise fail(404, "not-supported", "resource type not supported by this server")
                if not parts and request.method == "GET":
                    raise fail(404, "not-supported", "no interaction at the base with GET")
                raise fail(404, "not-found", "no such endpoint")
            if call == "transaction":
                if not self.rules.transaction:
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
                self.auth.need(token, rtype, "s")
                return self._search_answer(request, rtype, parts)
            if call == "read":
                self.auth.need(token, rtype, "r")
                return self._read(rtype, parts[1], None)
            if call == "vread":
                self._only(request, "GET")
                self.auth.need(token, rtype, "r")
                return self._read(rtype, parts[1], parts[3])
            if call == "update":
                return self._update(request, rtype, parts[1], token)
            raise fail(404, "not-found", "no such endpoint")
        except FhirAnswer as answer:
            return self._render(answer)

    def _authenticate(self, request: Request) -> Token | None:
        if not self.require_auth:
            return None
        return self.auth.authenticate(request.headers.get("Authorization", ""))

    @staticmethod
    def _only(request: Request, *methods: str) -> None:
        if request.method not in methods:
            raise fail(405, "not-supported", f"method not allowed here; use {', '.join(methods)}",
                       headers={"Allow": ", ".join(methods)})

    # ------------------------------------------------------------ discovery
    def capability_statement(self) -> dict[str, Any]:
        base = self._base_url or ""
        rules = self.rules

        def res(rtype: str, interactions: list[str], params: tuple[str, ...] = ()) -> dict[str, Any]:
            entry: dict[str, Any] = {"type": rtype,
                                     "interaction": [{"code": c} for c in interactions],
                                     "versioning": "versioned-update" if rules.update
                                     else "no-version",
                                     "updateCreate": False,
                                     "conditionalCreate": rules.conditional_create
                                     and rtype in rules.creatable,
                                     "conditionalUpdate": False, "conditionalDelete": "not-supported"}
            if params:
                entry["searchParam"] = [
                    {"name": p, "type": "reference" if p in REFERENCE_TARGETS else
                     "date" if p in ("date", "period") else "token"} for p in params]
            return entry

        write = ["create", "read"] + (["vread", "update"] if rules.update else []) + [
            "search-type"]
        resources = [res("DocumentReference", write, rules.docref_search + ("_tag",)),
                     res("Patient", ["read"]), res("Encounter", ["read"])]
        if "Provenance" in rules.creatable:
            resources.append(res("Provenance", ["create", "read", "vread", "search-type"],
                                 COMMON_SEARCH_PARAMS))
        if "Binary" in rules.creatable:
            resources.append(res("Binary", ["create", "read", "vread"]))
        elif rules.text_by_url:
            resources.append(res("Binary", ["read"]))
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
                "interaction": [{"code": "transaction"}] if rules.transaction else [],
            }],
        }

    def smart_configuration(self) -> dict[str, Any]:
        base = self._base_url or ""
        doc = {
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
        return self._with_launch(doc)

    def _with_launch(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The EHR launch's members (launch.py) added; lists keep the Backend Services
        values first."""
        if not self._base_url:
            return doc
        for name, value in self.launch.configuration().items():
            if isinstance(value, list):
                doc[name] = doc.get(name, []) + [v for v in value if v not in doc.get(name, [])]
            else:
                doc.setdefault(name, value)
        return doc

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

    def _prepare_new(self, rtype: str, body: dict[str, Any]) -> dict[str, Any]:
        res = copy.deepcopy(body)
        res.pop("id", None)  # the server ignores a client id on create
        if rtype != "DocumentReference":
            return res
        rules = self.rules
        if rules.content_entries == "first-kept" and isinstance(res.get("content"), list):
            res["content"] = res["content"][:1]  # exactly one attachment is kept
        if rules.kept_fields is not None:   # unsupported fields are ignored (dropped)
            res = {k: v for k, v in res.items() if k in rules.kept_fields}
        return res

    def _store_text_by_url(self, res: dict[str, Any]) -> dict[str, Any]:
        """text_by_url: the attachment's bytes become a Binary the document points at."""
        for item in res.get("content") or []:
            att = item.get("attachment") if isinstance(item, dict) else None
            if not isinstance(att, dict) or "data" not in att:
                continue
            binary = self.store.put_version("Binary", self.store.new_id(), {
                "resourceType": "Binary", "contentType": att.get("contentType"),
                "data": att.pop("data")}, 1)
            att["url"] = f"{self.base_url}/Binary/{binary['id']}"
        if self.rules.kept_fields is not None and "date" not in res:
            res["date"] = now_instant(self.clock())     # the server's own created date
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
        rules = self.rules
        if rules.etag:
            headers["ETag"] = f'W/"{ver}"'
            updated = parse_instant(res["meta"].get("lastUpdated"))
            headers["Last-Modified"] = http_date(updated.timestamp() if updated else self.clock())
        if created or status in (200,) and request is not None and request.method in ("POST", "PUT"):
            if rules.location == "relative":
                if created:
                    headers["Location"] = self._location(rtype, rid, None, absolute=False)
            else:
                versioned = rules.location == "absolute-versioned"
                headers["Location"] = self._location(rtype, rid, ver if versioned else None,
                                                     absolute=True)
        if rules.create_body == "empty" and created:
            return self._render(FhirAnswer(status, None, headers=headers))
        if rules.create_body == "prefer-only":
            body = res if (not created or "return=representation" in prefer) else None
            return self._render(FhirAnswer(status, copy.deepcopy(body), headers=headers))
        if "return=minimal" in prefer:
            body: Any = None
        elif "return=OperationOutcome" in prefer:
            body = outcome(issue("informational", "ok", None, severity="information"))
        else:
            body = copy.deepcopy(res)
        return self._render(FhirAnswer(status, body, headers=headers))

    def _create(self, request: Request, rtype: str, token: Token | None,
                record: dict[str, Any]) -> Response:
        if rtype in SEEDED_TYPES:
            raise fail(405, "not-supported", f"{rtype} cannot be created here", headers={"Allow": "GET"})
        if rtype not in self.rules.creatable:
            raise fail(405, "not-supported", f"{rtype} create is not supported by this server")
        self.auth.need(token, rtype, "c")
        body = self._body(request)
        if body.get("resourceType") != rtype:
            raise fail(400, "invalid", f"resourceType must be {rtype}", "resourceType")
        condition = request.headers.get("If-None-Exist")
        with self._lock:
            if condition and not self.rules.conditional_create:
                record["if_none_exist_ignored"] = True
            elif condition:
                matches = self.store.search(rtype, self.store.condition_params(rtype, condition))
                if len(matches) == 1:
                    self.store.count(f"conditional_match:{rtype}")
                    existing = matches[0]
                    resp = self._resource_response(200, existing, request, created=False)
                    resp.headers["Location"] = self._location(rtype, existing["id"], None, True)
                    return resp
                if len(matches) > 1:
                    raise fail(412, "duplicate",
                               "If-None-Exist matched more than one resource")
            res = self._prepare_new(rtype, body)
            self.validator.validate(rtype, res, set())
            self.store.capacity(2 if self.rules.text_by_url else 1)
            if self.rules.text_by_url and rtype == "DocumentReference":
                res = self._store_text_by_url(res)
            stored = self.store.put_version(rtype, self.store.new_id(), res, 1)
        return self._resource_response(201, stored, request, created=True)

    def _read(self, rtype: str, rid: str, version: str | None) -> Response:
        with self._lock:
            versions = self.store.data.get(rtype, {}).get(rid)
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

    def _update(self, request: Request, rtype: str, rid: str, token: Token | None) -> Response:
        if not self.rules.update or rtype in SEEDED_TYPES:
            raise fail(405, "not-supported", "update is not supported by this server",
                       headers={"Allow": "GET"})
        if request.method != "PUT":
            raise fail(405, "not-supported", "only PUT updates are supported",
                       headers={"Allow": "GET, PUT"})
        self.auth.need(token, rtype, "u")
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
        versions = self.store.data[rtype].get(rid)
        if not versions:
            raise fail(404, "not-found",
                       f"{rtype} not found; this server does not support update-as-create")
        current = versions[-1]
        if if_match is None:
            if self.require_if_match:
                raise fail(400, "required", "If-Match is required for updates (versioned-update)",
                           "If-Match")
        else:
            m = re.fullmatch(r'\s*(W/)?"([^"]+)"\s*', if_match)
            if not m:
                raise fail(400, "invalid", 'If-Match must look like W/"<versionId>"', "If-Match")
            if m.group(2) != current["meta"]["versionId"]:
                raise fail(412, "conflict", "If-Match does not match the current version")
        self.validator.validate(rtype, body, pending, current=current)
        if not commit:
            return body
        if self.rules.text_by_url and rtype == "DocumentReference":
            body = self._store_text_by_url(copy.deepcopy(body))
        return self.store.put_version(rtype, rid, body, int(current["meta"]["versionId"]) + 1)

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
            matches = self.store.search(rtype, params)
        bundle = {
            "resourceType": "Bundle", "type": "searchset", "total": len(matches),
            "link": [{"relation": "self", "url": request.url}],
            "entry": [{"fullUrl": f"{self.base_url}/{rtype}/{r['id']}", "resource": r,
                       "search": {"mode": "match"}} for r in matches],
        }
        return self._render(FhirAnswer(200, bundle))

    # ------------------------------------------------------------ transaction (us-core)
    def _transaction(self, request: Request, token: Token | None) -> Response:
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
            self.auth.need(token, rtype, "c" if method == "POST" else "u")
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
                    matches = self.store.search(p["rtype"],
                                           self.store.condition_params(p["rtype"], p["if_none_exist"]))
                    if len(matches) > 1:
                        raise fail(412, "duplicate", "ifNoneExist matched more than one resource",
                                   f"Bundle.entry[{p['i']}].request.ifNoneExist")
                    if matches:
                        p["existing"] = matches[0]
                        p["id"] = matches[0]["id"]
                if p["id"] is None:
                    p["id"] = self.store.new_id()
                    pending.add((p["rtype"], p["id"]))
                if p["full_url"]:
                    id_map[p["full_url"]] = f"{p['rtype']}/{p['id']}"
            for p in plan:
                walk_references(p["resource"], id_map.get)
            for p in plan:
                prefix = f"Bundle.entry[{p['i']}].resource."
                try:
                    if p["method"] == "POST" and "existing" not in p:
                        p["resource"] = self._prepare_new(p["rtype"], p["resource"])
                        self.validator.validate(p["rtype"], p["resource"], pending)
                    elif p["method"] == "PUT":
                        self._apply_update(p["rtype"], p["id"], p["resource"], p["if_match"],
                                           pending, commit=False)
                except FhirAnswer as answer:
                    self._prefix_expressions(answer, p["rtype"] + ".", prefix)
                    raise
            self.store.capacity(sum(1 for p in plan if p["method"] == "POST" and "existing" not in p))
            # all checks passed: commit everything (nothing above wrote to the store)
            out_entries = []
            for p in plan:
                if "existing" in p:
                    res, status = p["existing"], "200 OK"
                elif p["method"] == "POST":
                    res, status = self.store.put_version(p["rtype"], p["id"], p["resource"], 1), "201 Created"
                else:
                    current = self.store.data[p["rtype"]][p["id"]][-1]
                    res = self.store.put_version(p["rtype"], p["id"], p["resource"],
                                            int(current["meta"]["versionId"]) + 1)
                    status = "200 OK"
                ver = res["meta"]["versionId"]
                out_entries.append({
                    "fullUrl": f"{self.base_url}/{p['rtype']}/{p['id']}",
                    "response": {"status": status,
                                 "location": self._location(p["rtype"], p["id"], ver, False),
                                 "etag": f'W/"{ver}"', "lastModified": res["meta"]["lastUpdated"]}})
            self.store.count("transactions")
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
