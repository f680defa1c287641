"""The FHIR suite's side of a live run: the target as the site's own tools see it.

`FhirTarget` talks to the server with plain httpx and its own SMART backend token (signed
here with joserfc, not with the adapter's code): it is how a scenario reads what the adapter
filed (read, search by identifier: the vendor's own read API), how it plays the EHR side (an
update made by someone else), and the preflight (discovery + token) that runs before any
scenario. Settings come from the generic variables `chartbridge contract-test` sets
(CHARTBRIDGE_CONTRACT_BASE_URL / _CLIENT_ID / _KEY / _KEY_ID / _TOKEN_URL) and the FHIR ones
(CHARTBRIDGE_FHIR_PROFILE, _ALGORITHM, _PATIENT_ID, _ENCOUNTER_ID); the older
CHARTBRIDGE_FHIR_CLIENT_ID / _KEY_REF / _KEY_ID are read where the generic ones are unset.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from contract_tests.support.live import PreflightFailed

FHIR_JSON = "application/fhir+json"


def env(*names: str, default: str = "") -> str:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return default


def live_settings() -> dict[str, Any]:
    base = env("CHARTBRIDGE_CONTRACT_BASE_URL").rstrip("/")
    settings = {"base_url": base,
                "client_id": env("CHARTBRIDGE_CONTRACT_CLIENT_ID", "CHARTBRIDGE_FHIR_CLIENT_ID"),
                "private_key": env("CHARTBRIDGE_CONTRACT_KEY", "CHARTBRIDGE_FHIR_KEY_REF",
                                   default="env:CHARTBRIDGE_CONTRACT_KEY_MISSING"),
                "key_id": env("CHARTBRIDGE_CONTRACT_KEY_ID", "CHARTBRIDGE_FHIR_KEY_ID"),
                "algorithm": env("CHARTBRIDGE_FHIR_ALGORITHM", default="RS384"),
                "profile": env("CHARTBRIDGE_FHIR_PROFILE", default="us-core"),
                "identifier_system": "urn:chartbridge:contract-test",
                "timeout_s": 15}
    token_url = env("CHARTBRIDGE_CONTRACT_TOKEN_URL", "CHARTBRIDGE_FHIR_TOKEN_URL")
    if token_url:
        settings["token_url"] = token_url
    return settings


def read_secret(ref: str) -> str:
    scheme, _, rest = ref.partition(":")
    if scheme == "env":
        value = os.environ.get(rest)
        if not value:
            raise PreflightFailed(f"the key reference {ref} names an unset variable")
        return value
    if scheme == "file":
        try:
            return Path(rest).read_text(encoding="utf-8")
        except OSError as exc:
            raise PreflightFailed(f"the key file {rest} cannot be read ({exc.strerror})") from None
    raise PreflightFailed("the key must be a reference: env:NAME or file:PATH")


def _is_ec(pem: str) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    try:
        return isinstance(load_pem_private_key(pem.encode(), None), ec.EllipticCurvePrivateKey)
    except (ValueError, TypeError):
        return False


class FhirTarget:
    """The FHIR server under test, reached the way the site's tools reach it."""

    def __init__(self, settings: dict[str, Any], *, send_scope: bool = True,
                 scopes: list[str] | None = None) -> None:
        self.settings, self.base = settings, settings["base_url"]
        self.send_scope = send_scope
        self.http = httpx.Client(timeout=settings.get("timeout_s", 15), follow_redirects=False)
        self._token: str | None = None
        self.token_url: str | None = settings.get("token_url")
        self.patient = env("CHARTBRIDGE_FHIR_PATIENT_ID")
        self.encounter = env("CHARTBRIDGE_FHIR_ENCOUNTER_ID")
        self.scopes = scopes or ["system/DocumentReference.write", "system/DocumentReference.read"]
        if not (self.patient and self.encounter):
            self.scopes += ["system/Patient.write", "system/Encounter.write"]

    # ----------------------------------------------------------------- auth
    def discover(self) -> str:
        if self.token_url:
            return self.token_url
        url = f"{self.base}/.well-known/smart-configuration"
        try:
            resp = self.http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise PreflightFailed(f"cannot reach {self.base} ({type(exc).__name__})") from None
        if resp.status_code != 200:
            raise PreflightFailed(f"{url} answered HTTP {resp.status_code}; "
                                  "give the token URL (CHARTBRIDGE_CONTRACT_TOKEN_URL)")
        try:
            self.token_url = resp.json()["token_endpoint"]
        except (ValueError, KeyError, TypeError):
            raise PreflightFailed(f"{url} names no token_endpoint") from None
        return self.token_url

    def assertion(self) -> str:
        from joserfc import jwt
        from joserfc.jwk import import_key

        s = self.settings
        if not s["client_id"]:
            raise PreflightFailed("no client id (--client-id)")
        if not s["key_id"]:
            raise PreflightFailed("no key id (--key-id)")
        pem = read_secret(s["private_key"])
        if not os.environ.get("CHARTBRIDGE_FHIR_ALGORITHM"):     # the key says which
            s["algorithm"] = "ES384" if "EC PRIVATE" in pem or _is_ec(pem) else "RS384"
        try:
            key = import_key(pem, "EC" if s["algorithm"].startswith("ES") else "RSA")
        except Exception:  # noqa: BLE001 - any unreadable key is the same answer
            raise PreflightFailed(f"the key at {s['private_key']} is not a "
                                  f"{s['algorithm']} private key") from None
        now = int(time.time())
        claims = {"iss": s["client_id"], "sub": s["client_id"], "aud": self.discover(),
                  "iat": now, "exp": now + 240, "jti": uuid.uuid4().hex}
        return jwt.encode({"alg": s["algorithm"], "kid": s["key_id"], "typ": "JWT"}, claims, key,
                          algorithms=[s["algorithm"]])

    def token(self) -> str:
        if self._token:
            return self._token
        self.discover()                     # connect first: a closed port says so
        form = {"grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": self.assertion()}
        if self.send_scope:
            form["scope"] = " ".join(self.scopes)
        try:
            resp = self.http.post(self.discover(), data=form)
        except httpx.HTTPError as exc:
            raise PreflightFailed(f"cannot reach the token endpoint ({type(exc).__name__})") from None
        if resp.status_code != 200:
            try:
                why = resp.json().get("error") or ""
            except (ValueError, AttributeError):
                why = ""
            answer = f"HTTP {resp.status_code}" + (f" {why}" if why else "")
            raise PreflightFailed(f"the token endpoint refused client {self.settings['client_id']} "
                                  f"({answer}); check --client-id, --key and --key-id")
        self._token = resp.json().get("access_token")
        return self._token

    def preflight(self) -> None:
        """Connect, discover, get a token; make a test patient and encounter if none given."""
        self.token()
        if not self.patient:
            self.patient = self._create({"resourceType": "Patient", "active": True,
                                         "name": [{"family": "Contracttest", "given": ["Chartbridge"]}]})
        if not self.encounter:
            self.encounter = self._create({"resourceType": "Encounter", "status": "finished",
                                           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                                     "code": "AMB"},
                                           "subject": {"reference": f"Patient/{self.patient}"}})

    def _create(self, resource: dict) -> str:
        resp = self.request("POST", resource["resourceType"], json=resource)
        if resp.status_code != 201:
            raise PreflightFailed(f"the server did not create a test {resource['resourceType']} "
                                  f"(HTTP {resp.status_code}); set CHARTBRIDGE_FHIR_PATIENT_ID and "
                                  "CHARTBRIDGE_FHIR_ENCOUNTER_ID to the sandbox's test patient")
        return resp.json()["id"]

    # ----------------------------------------------------------------- the read API
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token()}", "Accept": FHIR_JSON,
                   **kwargs.pop("headers", {})}
        if "json" in kwargs:
            headers["Content-Type"] = FHIR_JSON
        return self.http.request(method, f"{self.base}/{path}", headers=headers, **kwargs)

    def read(self, ref: str) -> dict:
        resp = self.request("GET", ref)
        assert resp.status_code == 200, (ref, resp.status_code)
        return resp.json()

    def search(self, rtype: str, **params: str) -> list[dict]:
        resp = self.request("GET", rtype, params=params)
        assert resp.status_code == 200, (rtype, resp.status_code)
        return [e["resource"] for e in resp.json().get("entry", [])
                if e.get("resource", {}).get("resourceType") == rtype]

    def count_by_identifier(self, system: str, value: str) -> int:
        return len(self.search("DocumentReference", identifier=f"{system}|{value}"))

    def update_elsewhere(self, ref: str, change: dict) -> dict:
        """Someone at the site edits our document (the EHR side): a plain PUT of the
        current version with `change` merged in. Returns the new version."""
        doc = self.read(ref)
        doc.update(change)
        version = doc.get("meta", {}).get("versionId")
        headers = {"If-Match": f'W/"{version}"'} if version else {}
        resp = self.request("PUT", ref, json=doc, headers=headers)
        assert resp.status_code == 200, (ref, resp.status_code, resp.text[:300])
        return resp.json()

    def close(self) -> None:
        self.http.close()
