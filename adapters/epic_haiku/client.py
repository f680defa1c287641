"""Calls to Epic: SMART Backend Services tokens and the three Ambient operations.

Error translation happens here, once, at the edge:
- 401 -> fetch a new token ONCE and retry ONCE; a second 401 is a PermanentError;
- 429 -> TransientError(maybe_delivered=False, retry_after=Retry-After);
- 5xx -> TransientError(maybe_delivered=True, retry_after=Retry-After if given);
- timeout -> TransientError(maybe_delivered=True) (a connect/pool timeout: False, nothing left us);
- refused connection -> TransientError(maybe_delivered=False);
- any other 4xx (400/403/404/409/410/422...) -> PermanentError(status, vendor_code=Epic's `Error`).
No other retry happens here: retries live in one place (the ledger and the worker queue).

authlib's RFC 7523 helpers are not used for the client assertion: its
`client_secret_jwt`/`private_key_jwt` sign `exp = iat + 3600` by default
(authlib/oauth2/rfc7523/assertion.py: `expires_in = kwargs.pop("expires_in", 3600)`),
which breaks SMART Backend Services' 5-minute cap. The assertion is built explicitly below
with a fresh `jti` each time.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from chartbridge.adapters.http import retry_after_seconds
from chartbridge.adapters.smart_backend import ASSERTION_TYPE, SmartBackendTokens  # noqa: F401 (re-exported)
from chartbridge.core.errors import PermanentError, TransientError
from chartbridge.core.ports import Clock, TokenCache

from . import schemas

log = logging.getLogger("chartbridge.epic_haiku.client")

MAX_DETAIL = 200                  # characters of Epic's Detail kept in an error message


def _vendor_error(resp: httpx.Response) -> tuple[str | None, str]:
    """(Epic's Error code, its Detail trimmed) from an error body, or (None, '')."""
    try:
        body = resp.json()
    except ValueError:
        return None, ""
    if not isinstance(body, dict):
        return None, ""
    code = body.get("Error") or body.get("error")
    detail = body.get("Detail") or body.get("error_description") or ""
    return (str(code)[:64] if code else None), str(detail)[:MAX_DETAIL]


def _transport_error(what: str, exc: httpx.TransportError) -> TransientError:
    """A call that got no HTTP answer. Did the request leave us? A refused connection or
    a connect/pool timeout: no. A read/write timeout or a dropped connection: maybe."""
    name = type(exc).__name__
    not_sent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    return TransientError(f"{what} {kind} ({name})", maybe_delivered=not not_sent)


class BackendTokenSource(SmartBackendTokens):
    """SMART Backend Services access tokens for one org's Epic client, shared by every
    worker through the TokenCache port (keyed per org and client id)."""

    vendor = "Epic"
    config_key = "targets.epic_haiku.private_key"

    def __init__(self, *, org_id: str, client_id: str, token_url: str, key_id: str,
                 algorithm: str, private_key: Callable[[], str] | str, cache: TokenCache,
                 clock: Clock, http: httpx.Client, timeout_s: float = 10.0,
                 scope: str | None = None) -> None:
        super().__init__(org_id=org_id, client_id=client_id, key_id=key_id,
                         algorithm=algorithm, private_key=private_key, cache=cache,
                         clock=clock, http=http, token_url=token_url,
                         cache_key=f"epic_haiku:{client_id}", scope=scope,
                         timeout_s=timeout_s)

    def _refusal(self, resp: httpx.Response) -> PermanentError:
        code, detail = _vendor_error(resp)
        return PermanentError(f"Epic token endpoint refused the client ({resp.status_code}"
                              f"{' ' + code if code else ''}){': ' + detail if detail else ''}",
                              status=resp.status_code, vendor_code=code)


class EpicClient:
    """The Ambient operations under one session's CallbackURL."""

    def __init__(self, callback_url: str, tokens: BackendTokenSource, http: httpx.Client,
                 timeout: float = 10.0, clock: Clock | None = None) -> None:
        self.base = callback_url if callback_url.endswith("/") else callback_url + "/"
        self.tokens, self.http, self.timeout = tokens, http, timeout
        self.clock = clock or tokens.clock

    # -- operations -------------------------------------------------------------------------
    def get_chunk(self, session_id: str, recording_id: str, version: int, sequence: int, *,
                  correlation_id: str | None = None) -> tuple[bytes, str | None]:
        body = schemas.GetAmbientRecordingChunk(SessionID=session_id, RecordingID=recording_id,
                                                RecordingVersion=version, ChunkSequence=sequence)
        resp = self._post("GetAmbientRecordingChunk", schemas.render(body), correlation_id)
        ctype = resp.headers.get("Content-Type")
        return resp.content, (ctype.split(";")[0].strip() if ctype else None)

    def recordings_processed(self, session_id: str, version: int, *,
                             correlation_id: str | None = None) -> dict[str, Any]:
        body = schemas.AmbientRecordingsProcessed(SessionID=session_id, RecordingVersion=version)
        return self._json(self._post("AmbientRecordingsProcessed", schemas.render(body),
                                     correlation_id))

    def documentation_ready(self, body: dict[str, Any] | schemas.DocumentationReady | bytes, *,
                            correlation_id: str | None = None) -> dict[str, Any]:
        if isinstance(body, dict):
            body = schemas.DocumentationReady.model_validate(body)
        data = body if isinstance(body, bytes) else schemas.render(body)
        return self._json(self._post("DocumentationReady", data, correlation_id))

    # -- one call, with the single 401 refresh --------------------------------------------
    def _post(self, call: str, data: bytes, correlation_id: str | None) -> httpx.Response:
        correlation_id = correlation_id or uuid.uuid4().hex
        token = self.tokens.token()
        resp = self._send(call, data, token, correlation_id)
        if resp.status_code == 401:
            log.info("epic 401; refreshing token once", extra={"call": call,
                                                             "correlation_id": correlation_id})
            token = self.tokens.refresh(token)
            resp = self._send(call, data, token, correlation_id)
            if resp.status_code == 401:
                code, _ = _vendor_error(resp)
                raise PermanentError(f"{call} refused a fresh access token (401)",
                                     status=401, vendor_code=code, call=call)
        if 200 <= resp.status_code < 300:
            return resp
        raise self._error(call, resp)

    def _send(self, call: str, data: bytes, token: str, correlation_id: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                   "X-Correlation-ID": correlation_id}
        try:
            return self.http.post(self.base + call, content=data, headers=headers,
                                  timeout=self.timeout)
        except httpx.TransportError as exc:
            raise _transport_error(call, exc) from None

    def _error(self, call: str, resp: httpx.Response) -> Exception:
        status = resp.status_code
        code, detail = _vendor_error(resp)
        retry_after = retry_after_seconds(resp.headers.get("Retry-After"), self.clock.now())
        what = f"{call} answered {status}{' ' + code if code else ''}"
        if detail:
            what += f": {detail}"
        if status == 429:
            return TransientError(what, status=status, vendor_code=code, retry_after=retry_after,
                                  maybe_delivered=False, call=call)
        if status >= 500:
            return TransientError(what, status=status, vendor_code=code, retry_after=retry_after,
                                  maybe_delivered=True, call=call)
        return PermanentError(what, status=status, vendor_code=code, call=call)

    @staticmethod
    def _json(resp: httpx.Response) -> dict[str, Any]:
        try:
            body = resp.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}
