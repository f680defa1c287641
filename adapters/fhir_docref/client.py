"""The FHIR REST edge: one HTTP call per method, and the one translation of a FHIR server's
answers into Chartbridge errors (FHIR R4 http.html; SMART Backend Services).

    401                      -> one token refresh and one retry; a second 401 -> PermanentError
    403                      -> PermanentError (scope/permission; never retried). An EMPTY 403
                                body is Epic's "API not registered for this client"
    404 on the target        -> PermanentError naming the resource kind
    400 / 422 / 409 / other  -> PermanentError carrying the OperationOutcome's issues
                                (severity, code, diagnostics, expression; never the body)
    412                      -> PermanentError code "stale" (If-Match) or "duplicate" (If-None-Exist)
    429                      -> TransientError(maybe_delivered=False, retry_after)
    5xx / read timeout / dropped connection
                             -> TransientError(maybe_delivered=True for writes)
    refused connection       -> TransientError(maybe_delivered=False)
    2xx that is not FHIR JSON where a body is needed -> PermanentError
No other retry happens here: retries live in the ledger and the worker queue. Nothing logged
carries ids, names or note text (FHIR paths carry patient ids: they are not logged either).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
from chartbridge.adapters.http import retry_after_seconds
from chartbridge.core.errors import PermanentError, TransientError

from .auth import SmartBackendTokens

log = logging.getLogger("chartbridge.fhir_docref.client")

FHIR_JSON = "application/fhir+json"
MAX_ISSUES = 20
MAX_TEXT = 200
Params = dict[str, str] | list[tuple[str, str]]


@dataclass
class FhirResponse:
    status: int
    headers: httpx.Headers
    body: dict[str, Any] | None = None
    raw: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def location(self) -> str | None:
        return self.headers.get("Location") or self.headers.get("Content-Location")

    @property
    def etag(self) -> str | None:
        return self.headers.get("ETag")


def outcome_issues(body: Any) -> list[dict[str, str]]:
    """The issues of an OperationOutcome, trimmed: severity, code, diagnostics, expression.
    (A server may echo a value in diagnostics; these go to the ledger row, not to logs.)"""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return []
    issues = []
    for raw in (body.get("issue") or [])[:MAX_ISSUES]:
        if not isinstance(raw, dict):
            continue
        item = {"severity": str(raw.get("severity") or "")[:20],
                "code": str(raw.get("code") or "")[:40]}
        if isinstance(raw.get("diagnostics"), str):
            item["diagnostics"] = raw["diagnostics"][:MAX_TEXT]
        elif isinstance((raw.get("details") or {}).get("text"), str):
            # operationoutcome.html: details.text is the human text as much as diagnostics
            # (Medplum writes only details.text)
            item["diagnostics"] = raw["details"]["text"][:MAX_TEXT]
        expr = raw.get("expression") or raw.get("location")
        if isinstance(expr, list):
            item["expression"] = ", ".join(str(e)[:120] for e in expr[:5])
        issues.append(item)
    return issues


def _describe(issues: list[dict[str, str]]) -> str:
    parts = []
    for i in issues[:5]:
        where = i.get("expression")
        parts.append(f"{i.get('code') or 'issue'}{' at ' + where if where else ''}")
    return "; ".join(parts)


class FhirClient:
    """One FHIR R4 server for one org. Profile-free: what a server allows is decided by the
    adapter from its Profile; this class only speaks HTTP and translates answers."""

    def __init__(self, *, base_url: str, tokens: SmartBackendTokens, http: httpx.Client,
                 timeout_s: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokens, self.http, self.timeout = tokens, http, timeout_s

    # -- one logical call ---------------------------------------------------------------
    def call(self, method: str, path: str, *, what: str, writes: bool,
             json_body: Any = None, headers: dict[str, str] | None = None,
             params: Params | None = None, target: str | None = None) -> FhirResponse:
        url = self.base_url + "/" + path.lstrip("/") if path else self.base_url + "/"
        if params:
            url += "?" + urlencode(params)
        send_headers = {"Accept": FHIR_JSON, **(headers or {})}
        content = None
        if json_body is not None:
            import json
            content = json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode()
            send_headers["Content-Type"] = FHIR_JSON + "; charset=utf-8"
        token = self.tokens.token()
        refreshed = False
        while True:
            try:
                resp = self.http.request(method, url, content=content, timeout=self.timeout,
                                         headers={**send_headers,
                                                  "Authorization": f"Bearer {token}"})
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                raise TransientError(f"FHIR {what}: server unreachable ({type(exc).__name__})",
                                     maybe_delivered=False) from None
            except httpx.HTTPError as exc:
                raise TransientError(f"FHIR {what}: no answer ({type(exc).__name__})",
                                     maybe_delivered=writes) from None
            if resp.status_code == 401 and not refreshed:
                refreshed = True
                log.info("fhir answered 401; refreshing the token once",
                         extra={"org_id": self.tokens.org_id, "call": what})
                token = self.tokens.refresh(token)
                continue
            return self._answer(resp, what=what, writes=writes, target=target)

    def _answer(self, resp: httpx.Response, *, what: str, writes: bool,
                target: str | None) -> FhirResponse:
        status = resp.status_code
        body: Any = None
        if resp.content:
            try:
                body = resp.json()
            except ValueError:
                body = None
        if status == 429:
            raise TransientError(f"FHIR {what}: rate limited (HTTP 429)", status=429,
                                 retry_after=retry_after_seconds(resp.headers.get("Retry-After")),
                                 maybe_delivered=False)
        if status >= 500:
            raise TransientError(f"FHIR {what}: server error (HTTP {status})", status=status,
                                 retry_after=retry_after_seconds(resp.headers.get("Retry-After")),
                                 maybe_delivered=writes)
        if status >= 400:
            raise self._refusal(resp, body, what=what, target=target)
        if body is not None and not (isinstance(body, dict) and isinstance(body.get("resourceType"), str)):
            raise PermanentError(f"FHIR {what}: the answer is not a FHIR resource (HTTP {status})",
                                 status=status, vendor_code="not_fhir")
        if resp.content and body is None:
            raise PermanentError(f"FHIR {what}: the answer is not FHIR JSON (HTTP {status})",
                                 status=status, vendor_code="not_fhir")
        return FhirResponse(status, resp.headers, body, resp.content)

    def _refusal(self, resp: httpx.Response, body: Any, *, what: str,
                 target: str | None) -> PermanentError:
        status = resp.status_code
        issues = outcome_issues(body)
        desc = _describe(issues)
        suffix = f": {desc}" if desc else ""
        if status == 401:
            return PermanentError(f"FHIR {what}: access token refused twice (HTTP 401)",
                                  status=401, vendor_code="unauthorized", issues=issues or None)
        if status == 403:
            if not resp.content:
                return PermanentError(
                    f"FHIR {what}: forbidden with an empty body (HTTP 403) - the API is not "
                    "registered/enabled for this client at the site", status=403,
                    vendor_code="not_registered")
            return PermanentError(f"FHIR {what}: forbidden (HTTP 403), the token lacks the "
                                  f"scope or permission{suffix}", status=403,
                                  vendor_code="forbidden", issues=issues or None)
        if status == 404:
            kind = target or "resource"
            return PermanentError(f"FHIR {what}: {kind} not found at the server (HTTP 404)"
                                  f"{suffix}", status=404, vendor_code="not-found",
                                  issues=issues or None)
        if status == 412:
            dup = any(i.get("code") == "duplicate" for i in issues) or what.endswith("create")
            code = "duplicate" if dup else "stale"
            msg = ("several documents already carry this write's identifier (HTTP 412)"
                   if dup else "the document changed at the server since our version (HTTP 412)")
            return PermanentError(f"FHIR {what}: {msg}", status=412, vendor_code=code,
                                  issues=issues or None)
        if status in (400, 422) and not issues and resp.content and body is None:
            return PermanentError(f"FHIR {what}: refused (HTTP {status}) with a non-FHIR body",
                                  status=status, vendor_code="not_fhir")
        code = "invalid" if status in (400, 422) else f"http_{status}"
        return PermanentError(f"FHIR {what}: refused (HTTP {status}){suffix}", status=status,
                              vendor_code=code, issues=issues or None)

    # -- the interactions ---------------------------------------------------------------
    def create(self, resource: dict[str, Any], *, if_none_exist: str | None = None,
               prefer: str | None = None) -> FhirResponse:
        headers = {}
        if if_none_exist:
            headers["If-None-Exist"] = if_none_exist
        if prefer:
            headers["Prefer"] = prefer
        return self.call("POST", resource["resourceType"], what=f"{resource['resourceType']} create",
                         writes=True, json_body=resource, headers=headers, target="patient or encounter")

    def update(self, resource: dict[str, Any], *, if_match: str) -> FhirResponse:
        rtype, rid = resource["resourceType"], resource["id"]
        return self.call("PUT", f"{rtype}/{rid}", what=f"{rtype} update", writes=True,
                         json_body=resource, headers={"If-Match": if_match},
                         target=f"the {rtype} to update")

    def read(self, rtype: str, rid: str) -> FhirResponse:
        return self.call("GET", f"{rtype}/{rid}", what=f"{rtype} read", writes=False,
                         target=rtype)

    def transaction(self, bundle: dict[str, Any]) -> FhirResponse:
        return self.call("POST", "", what="transaction", writes=True, json_body=bundle,
                         target="patient or encounter")

    def search(self, rtype: str, params: Params) -> list[dict[str, Any]]:
        """The matching resources of a searchset (first page; follows `next` links for up to
        ten pages). `params` is a dict, or (name, value) pairs where a name repeats."""
        resp = self.call("GET", rtype, what=f"{rtype} search", writes=False, params=params)
        found: list[dict[str, Any]] = []
        body = resp.body
        for _ in range(10):
            if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
                raise PermanentError(f"FHIR {rtype} search: the answer is not a Bundle",
                                     vendor_code="not_fhir")
            for entry in body.get("entry") or []:
                res = entry.get("resource") if isinstance(entry, dict) else None
                mode = ((entry.get("search") or {}).get("mode") if isinstance(entry, dict) else None)
                if isinstance(res, dict) and res.get("resourceType") == rtype and mode in (None, "match"):
                    found.append(res)
            nxt = next((link.get("url") for link in body.get("link") or []
                        if isinstance(link, dict) and link.get("relation") == "next"), None)
            if not nxt or not str(nxt).startswith(self.base_url):
                return found
            body = self.call("GET", str(nxt)[len(self.base_url):], what=f"{rtype} search",
                             writes=False).body
        return found
