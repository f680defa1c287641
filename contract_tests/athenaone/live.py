"""The athenaOne suite's side of a live run: the practice as the site's own tools see it.

`AthenaTarget` gets its own token (HTTP Basic client credentials, plain httpx) and lists a
patient's clinical documents through athena's read API, so a scenario counts what the
adapter filed (by the write id in `internalnote`) without asking the adapter. Its `preflight`
(connect + token) runs before any scenario. Settings: the generic CHARTBRIDGE_CONTRACT_BASE_URL
/ _CLIENT_ID / _KEY (a secret reference) that `contract-test` sets, else the older
CHARTBRIDGE_ATHENA_* names; CHARTBRIDGE_ATHENA_PRACTICE_ID / _DEPARTMENT_ID / _PATIENT_ID /
_FALLBACK_SUBCLASS (a CLINICALDOCUMENT subclass the practice accepts).
"""
from __future__ import annotations

import os
from typing import Any

import httpx

from contract_tests.support.live import PreflightFailed


def env(*names: str, default: str = "") -> str:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return default


def secret(ref: str) -> str:
    scheme, _, rest = ref.partition(":")
    if scheme == "env":
        return os.environ.get(rest, "")
    if scheme == "file":
        try:
            with open(rest, encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError:
            return ""
    return ""


class AthenaTarget:
    def __init__(self, settings: dict[str, Any], secret_value: str) -> None:
        self.settings, self._secret = settings, secret_value
        self.http = httpx.Client(timeout=15)
        self._token: str | None = None

    def token(self) -> str:
        if self._token:
            return self._token
        s = self.settings
        try:
            resp = self.http.post(s["token_url"], auth=(s["client_id"], self._secret),
                                  data={"grant_type": "client_credentials",
                                        "scope": "athena/service/Athenanet.MDP.*"})
        except httpx.HTTPError as exc:
            raise PreflightFailed(f"cannot reach {s['token_url']} ({type(exc).__name__})") from None
        if resp.status_code != 200:
            raise PreflightFailed(f"the token endpoint refused client {s['client_id']} "
                                  f"(HTTP {resp.status_code}); check --client-id and --key")
        self._token = resp.json().get("access_token")
        return self._token

    def preflight(self) -> None:
        if not self.settings["client_id"]:
            raise PreflightFailed("no client id (--client-id)")
        if not self._secret:
            raise PreflightFailed("no client secret (--key env:NAME or file:PATH)")
        self.token()

    def documents(self, patient_id: str) -> list[dict]:
        s = self.settings
        resp = self.http.get(f"{s['base_url']}/v1/{s['practice_id']}/patients/{patient_id}"
                             "/documents/clinicaldocument",
                             params={"departmentid": s["department_id"], "showdeleted": "true",
                                     "limit": "1000"},
                             headers={"Authorization": f"Bearer {self.token()}"})
        assert resp.status_code == 200, resp.status_code
        body = resp.json()
        return body.get("clinicaldocuments") or body.get("documents") or []

    def count_write(self, patient_id: str, write: str) -> int:
        return sum(1 for d in self.documents(patient_id) if write in str(d.get("internalnote", "")))
