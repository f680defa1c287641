"""athenaOne HTTP edge: OAuth 2.0 client-credentials tokens, a per-org throttle, and the one
translation of athena's answers into Chartbridge errors.

- Tokens: POST {token_url} with HTTP Basic client authentication, grant_type=
  client_credentials and the configured scopes. A token is cached until shortly before
  `expires_in` in the engine's shared token cache (database), keyed per (org, practice), so
  every worker uses one token; athena rate-limits token requests (50/min in production).
  A 401 on an API call invalidates it and fetches one new token, once.
- Every API path is /v1/{practice_id}/... with this org's practice id; the client is built
  per org from that org's config and has no way to address another practice.
- Throttle: requests to /v1 are limited to requests_per_second per (org, practice) across
  every process of the engine when a Redis store is configured (chartbridge.adapters.
  ratelimit: CHARTBRIDGE_RATE_LIMIT_URL, or a Redis broker URL), so N workers together stay
  under the site's quota; without one (the embedded single-process engine) they are spaced
  at 1/requests_per_second in this process (a token bucket of depth 1).
- Errors: 429 -> TransientError(maybe_delivered=False, retry_after); 5xx, timeouts and lost
  answers after the body went out -> TransientError(maybe_delivered=True); 401 twice, 400,
  403, 404 and other 4xx -> PermanentError keeping athena's `error` text; a 2xx read whose
  body is not the documented shape (HTML, not JSON, other fields) -> AthenaUnexpectedAnswer,
  a PermanentError (asking again gets the same answer). Nothing logged carries ids, names
  or note text.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
from chartbridge.adapters.http import retry_after_seconds
from chartbridge.core.errors import PermanentError, TransientError
from chartbridge.core.ports import Clock, TokenCache

log = logging.getLogger("chartbridge.athenaone")

MAX_ERROR_TEXT = 300


# --------------------------------------------------------------------------- throttle
class Throttle:
    """Spaces calls at least 1/rate seconds apart (a token bucket holding one token).
    Thread-safe; `sleep`/`monotonic` are injectable for tests."""

    def __init__(self, rate: float, *, monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = rate
        self._monotonic, self._sleep = monotonic, sleep
        self._lock = threading.Lock()
        self._next = 0.0

    def acquire(self) -> float:
        """Wait for this call's slot; returns the seconds waited."""
        with self._lock:
            now = self._monotonic()
            slot = max(now, self._next)
            self._next = slot + 1.0 / self.rate
        wait = slot - now
        if wait > 0:
            self._sleep(wait)
        return wait

    def hold(self, seconds: float) -> None:
        """The vendor asked us to wait (Retry-After): no slot before then."""
        with self._lock:
            self._next = max(self._next, self._monotonic() + seconds)


_THROTTLES: dict[tuple[str, str], Throttle] = {}
_THROTTLES_LOCK = threading.Lock()


def throttle_for(org_id: str, practice_id: str, rate: float):
    """The throttle of one (org, practice): shared by every process through Redis when a
    store is configured (see the module doc), else process-wide; every adapter instance
    built for that org (a config reload builds a new one) shares it."""
    from chartbridge.adapters.ratelimit import shared_limit_url, shared_throttle

    url = shared_limit_url()
    if url:
        return shared_throttle(f"athenaone:{org_id}:{practice_id}", rate, url)
    with _THROTTLES_LOCK:
        found = _THROTTLES.get((org_id, practice_id))
        if found is None:
            found = _THROTTLES[(org_id, practice_id)] = Throttle(rate)
        found.rate = rate
        return found


# --------------------------------------------------------------------------- errors
def _retry_after(response: httpx.Response) -> float | None:
    return retry_after_seconds(response.headers.get("Retry-After"))


def _error_text(response: httpx.Response) -> tuple[str, list[str]]:
    """athena's `error` (meant for users) and `missingfields`, if any; never the body."""
    try:
        body = response.json()
    except ValueError:
        return "", []
    if not isinstance(body, dict):
        return "", []
    text = body.get("error") or body.get("errormessage") or ""
    missing = body.get("missingfields") or []
    text = str(text)[:MAX_ERROR_TEXT]
    return text, [str(m)[:60] for m in missing if isinstance(m, str)][:20]


def _permanent(what: str, response: httpx.Response) -> PermanentError:
    text, missing = _error_text(response)
    msg = f"athena refused the {what} (HTTP {response.status_code})"
    if text:
        msg += f": {text}"
    if missing:
        msg += f" (missing fields: {', '.join(missing)})"
    return PermanentError(msg, status=response.status_code, vendor_code=text or None,
                          missingfields=missing or None)


class AthenaAuthError(PermanentError):
    """The token endpoint refused our client credentials or scopes."""

    code = "athena_auth"


class AthenaUnexpectedAnswer(PermanentError):
    """athena answered a read with a success status but a body this client cannot read:
    not JSON (an HTML page from a proxy), or JSON of a shape the API reference does not
    describe (another wrapper key, entries that are not documents, a document without an
    id). Asking again gets the same answer, so it is never a TransientError; the adapter
    decides what it means (reconcile: the outcome is unknown)."""

    code = "athena_unexpected_answer"


def _media_type(response: httpx.Response) -> str:
    """The answer's media type for a message (no parameters, bounded), never the body."""
    media = response.headers.get("Content-Type", "").split(";")[0].strip()[:60]
    return media or "no content type"


def _document_page(response: httpx.Response) -> tuple[list[dict[str, Any]], int | None, bool]:
    """(documents, totalcount, has next) of one page of a clinical document list, or
    AthenaUnexpectedAnswer naming what was wrong with it (never echoing a value)."""
    what = "athena's clinical document list"
    try:
        body = response.json()
    except ValueError:
        raise AthenaUnexpectedAnswer(f"{what} was not JSON ({_media_type(response)}, HTTP "
                                     f"{response.status_code})", status=response.status_code,
                                     vendor_code="unexpected_answer") from None
    total: Any = None
    if isinstance(body, list):                # the single-document answer's shape
        page, has_next = body, False
    elif isinstance(body, dict):
        total, has_next = body.get("totalcount"), "next" in body
        if "clinicaldocuments" in body:
            page = body["clinicaldocuments"]
        elif total in (0, "0"):               # an empty list may omit the array
            page = []
        else:
            raise AthenaUnexpectedAnswer(f"{what} had no clinicaldocuments field",
                                         status=response.status_code,
                                         vendor_code="unexpected_answer")
    else:
        raise AthenaUnexpectedAnswer(f"{what} was a JSON {type(body).__name__}, not an "
                                     f"object or a list", status=response.status_code,
                                     vendor_code="unexpected_answer")
    if not isinstance(page, list):
        raise AthenaUnexpectedAnswer(f"{what}'s clinicaldocuments field was a JSON "
                                     f"{type(page).__name__}, not a list",
                                     status=response.status_code,
                                     vendor_code="unexpected_answer")
    odd = sum(1 for d in page if not isinstance(d, dict))
    if odd:
        raise AthenaUnexpectedAnswer(f"{odd} of the {len(page)} entries of {what} were not "
                                     f"documents (JSON objects)", status=response.status_code,
                                     vendor_code="unexpected_answer")
    unnamed = sum(1 for d in page
                  if d.get("clinicaldocumentid") is None and d.get("documentid") is None)
    if unnamed:
        raise AthenaUnexpectedAnswer(f"{unnamed} of the {len(page)} documents in {what} had "
                                     f"neither clinicaldocumentid nor documentid",
                                     status=response.status_code,
                                     vendor_code="unexpected_answer")
    if total is not None:
        try:
            total = int(total)
        except (TypeError, ValueError):
            raise AthenaUnexpectedAnswer(f"{what}'s totalcount was not a number",
                                         status=response.status_code,
                                         vendor_code="unexpected_answer") from None
    return page, total, has_next


# --------------------------------------------------------------------------- tokens
class TokenSource:
    """Client-credentials tokens for one org's practice, shared through `cache`."""

    def __init__(self, *, org_id: str, practice_id: str, client_id: str, token_url: str,
                 scopes: list[str], secret: Callable[[], str], cache: TokenCache, clock: Clock,
                 http: httpx.Client, timeout_s: float) -> None:
        self.org_id, self.practice_id = org_id, practice_id
        self.client_id, self.token_url, self.scopes = client_id, token_url, scopes
        self._secret, self.cache, self.clock = secret, cache, clock
        self.http, self.timeout_s = http, timeout_s
        self.key = f"athenaone:{practice_id}:{client_id}"
        self._lock = threading.Lock()
        self._refused = False

    def token(self) -> str:
        found = self.cache.get(self.org_id, self.key)
        if found:
            return found
        with self._lock:                      # one fetch per process at a time
            found = self.cache.get(self.org_id, self.key)
            if found:
                return found
            from chartbridge.metrics import counted_token_request    # issue 17
            with counted_token_request(self.org_id, "athenaone",
                                       "refresh" if self._refused else "fetch"):
                self._refused = False
                return self._fetch()

    def invalidate(self, stale: str) -> None:
        """Drop the cached token if it is still the one that was refused."""
        if self.cache.get(self.org_id, self.key) == stale:
            self.cache.invalidate(self.org_id, self.key)
            self._refused = True            # the next fetch is a refresh (a metric's label)

    def _fetch(self) -> str:
        try:
            response = self.http.post(
                self.token_url, auth=(self.client_id, self._secret()),
                data={"grant_type": "client_credentials", "scope": " ".join(self.scopes)},
                headers={"Accept": "application/json"}, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise TransientError(f"athena token endpoint unreachable ({type(exc).__name__})",
                                 maybe_delivered=False) from None
        if response.status_code == 429:
            raise TransientError("athena token endpoint rate limit (HTTP 429)", status=429,
                                 retry_after=_retry_after(response), maybe_delivered=False)
        if response.status_code >= 500:
            raise TransientError(f"athena token endpoint error (HTTP {response.status_code})",
                                 status=response.status_code, maybe_delivered=False,
                                 retry_after=_retry_after(response))
        if response.status_code != 200:
            try:
                body = response.json()
                error = str(body.get("error") or "")[:80] if isinstance(body, dict) else ""
            except ValueError:
                error = ""
            raise AthenaAuthError(f"athena token endpoint refused the client (HTTP "
                                  f"{response.status_code}{': ' + error if error else ''})",
                                  status=response.status_code, vendor_code=error or None)
        try:
            body = response.json()
            token = body["access_token"]
            ttl = float(body.get("expires_in", 3600))
            assert isinstance(token, str) and token
        except (ValueError, KeyError, TypeError, AssertionError):
            raise TransientError("athena token answer was not a token", status=200,
                                 maybe_delivered=False) from None
        self.cache.put(self.org_id, self.key, token,
                       self.clock.now() + timedelta(seconds=max(0.0, ttl)))
        log.info("athena token fetched", extra={"org_id": self.org_id, "expires_in": ttl})
        return token


# --------------------------------------------------------------------------- API client
class AthenaClient:
    """The athenaOne API of ONE practice, for one org."""

    def __init__(self, *, base_url: str, practice_id: str, tokens: TokenSource,
                 http: httpx.Client, throttle: Throttle, timeout_s: float) -> None:
        self.base_url, self.practice_id = base_url.rstrip("/"), practice_id
        self.tokens, self.http, self.throttle, self.timeout_s = tokens, http, throttle, timeout_s

    def _url(self, path: str) -> str:
        return f"{self.base_url}/v1/{self.practice_id}/{path.lstrip('/')}"

    def _call(self, method: str, path: str, *, what: str, writes: bool,
              **kwargs: Any) -> httpx.Response:
        """One logical call: at most two HTTP requests (the second after one token refresh
        on 401). `writes` says whether the request may create something at athena."""
        refreshed = False
        while True:
            token = self.tokens.token()
            # encode the request (a multipart PDF) before taking the slot, so the slot is
            # taken right before the bytes go out: the practice counts arrivals
            request = self.http.build_request(
                method, self._url(path), timeout=self.timeout_s,
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                **kwargs)
            self.throttle.acquire()
            try:
                response = self.http.send(request)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise TransientError(f"athena unreachable ({type(exc).__name__})",
                                     maybe_delivered=False) from None
            except httpx.HTTPError as exc:
                # the request may have reached athena: timeouts, dropped connections
                raise TransientError(f"athena {what}: no answer ({type(exc).__name__})",
                                     maybe_delivered=writes) from None
            status = response.status_code
            if status == 401 and not refreshed:
                refreshed = True
                self.tokens.invalidate(token)
                log.info("athena answered 401; refreshing the token once",
                         extra={"org_id": self.tokens.org_id})
                continue
            if status == 429:
                retry = _retry_after(response)
                if retry:
                    self.throttle.hold(min(retry, 60.0))
                raise TransientError(f"athena rate limit on the {what} (HTTP 429)", status=429,
                                     retry_after=retry, maybe_delivered=False)
            if status >= 500:
                raise TransientError(f"athena {what} failed (HTTP {status})", status=status,
                                     retry_after=_retry_after(response), maybe_delivered=writes)
            if status >= 400:
                raise _permanent(what, response)
            return response

    # -- the calls ---------------------------------------------------------------------
    def upload_clinical_document(self, patient_id: str, form: dict[str, str]) -> int:
        response = self._call("POST", f"patients/{patient_id}/documents/clinicaldocument",
                              what="clinical document upload", writes=True, data=form)
        try:
            body = response.json()
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            raise TransientError("athena upload answer was not JSON; the document may exist",
                                 status=response.status_code, maybe_delivered=True) from None
        if body.get("success") in (False, "false"):
            text = str(body.get("errormessage") or body.get("error") or "")[:MAX_ERROR_TEXT]
            raise PermanentError(f"athena did not create the clinical document"
                                 f"{': ' + text if text else ''}", status=response.status_code,
                                 vendor_code="success_false")
        docid = body.get("clinicaldocumentid")
        try:
            return int(docid)
        except (TypeError, ValueError):
            raise TransientError("athena upload answer had no clinicaldocumentid; the "
                                 "document may exist", status=response.status_code,
                                 maybe_delivered=True) from None

    def list_clinical_documents(self, patient_id: str, department_id: str, *,
                                subclass: str | None = None, page_size: int = 1000,
                                max_pages: int = 50) -> list[dict[str, Any]]:
        """Every clinical document of the patient in the department (deleted ones too)."""
        docs: list[dict[str, Any]] = []
        offset = 0
        for _ in range(max_pages):
            params = {"departmentid": department_id, "showdeleted": "true",
                      "limit": str(page_size), "offset": str(offset)}
            if subclass:
                params["documentsubclass"] = subclass
            response = self._call("GET", f"patients/{patient_id}/documents/clinicaldocument",
                                  what="clinical document list", writes=False, params=params)
            page, total, has_next = _document_page(response)
            docs.extend(page)
            offset += len(page)
            if not page or (not has_next and (total is None or offset >= total)):
                return docs
        raise AthenaUnexpectedAnswer(f"athena's clinical document list did not end within "
                                     f"{max_pages} pages of {page_size}",
                                     vendor_code="unexpected_answer")

    def ping(self) -> bool:
        response = self._call("GET", "ping", what="ping", writes=False)
        try:
            return str(response.json().get("pong")).lower() == "true"
        except (ValueError, AttributeError):
            return False
