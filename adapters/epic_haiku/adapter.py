"""The Epic Haiku EhrAdapter: DocumentationReady / AmbientRecordingsProcessed out, chunk
audio in, and the inbound caller check. Built per org by `build()`.

Reconcile: Epic offers no look-up of what it accepted, but it keeps ONE copy of an
identical DocumentationReady body (and an identical AmbientRecordingsProcessed is a
no-op), so resending the byte-identical body IS the reconcile. `reconcile()` therefore
returns None ("not known to be there: send again"), and `render()` is deterministic.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from chartbridge.core.errors import PermanentError
from chartbridge.core.models import WriteCommand, WriteKind, WriteOutcome
from chartbridge.core.ports import AdapterCapabilities, Clock, ReplayGuard, TokenCache

from . import schemas
from .auth import InboundVerifier
from .client import BackendTokenSource, EpicClient
from .config import EpicHaikuConfig

NAME = "epic_haiku"


class Services(Protocol):
    """What `build()` uses from the engine (chartbridge.bootstrap.Services has these)."""

    clock: Clock
    token_cache: TokenCache
    replay_guard: ReplayGuard
    http: Callable[..., httpx.Client] | httpx.Client
    secrets: Callable[[str, Path | None], str]


@dataclass(frozen=True)
class Rendered:
    call: str            # the Ambient operation
    body: bytes          # exact bytes sent
    session_id: str
    version: int


class EpicHaikuAdapter:
    name = NAME
    capabilities = AdapterCapabilities(reconcile_by_lookup=False, kinds=("handoff", "notice"),
                                       extra={"identical_body_dedupe": True})

    def __init__(self, *, org_id: str, config: EpicHaikuConfig, tokens: BackendTokenSource,
                 http: httpx.Client, clock: Clock, verifier: InboundVerifier | None = None,
                 section_id: Callable[[str], str] | None = None,
                 section_code: Callable[[str], str] | None = None) -> None:
        self.org_id, self.config, self.tokens = org_id, config, tokens
        self.http, self.clock, self.verifier = http, clock, verifier
        self.section_id = section_id or (lambda code: code)
        self.section_code = section_code or (lambda epic_id: epic_id)

    # -- outbound ---------------------------------------------------------------------------
    def client(self, callback_url: str | None) -> EpicClient:
        base = self.config.callback_url
        url = callback_url or base
        if not url:
            raise PermanentError("no CallbackURL for this Epic call (the session has none and "
                                 "targets.epic_haiku.callback_url is not set)")
        if base and callback_url:
            session_base = callback_url.rstrip("/")
            if not (session_base == base or session_base.startswith(base + "/")):
                raise PermanentError("session CallbackURL is outside the configured "
                                     "targets.epic_haiku.callback_url; refusing to send a token there")
        return EpicClient(url, self.tokens, self.http, timeout=self.config.timeout_s,
                          clock=self.clock)

    def render(self, command: WriteCommand) -> Rendered:
        """The exact bytes for a command: the same command always gives the same bytes."""
        extra = command.extra or {}
        session_id = extra.get("external_session_id")
        version = extra.get("recording_version")
        if not isinstance(session_id, str) or not session_id:
            raise PermanentError("write command lacks extra.external_session_id")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise PermanentError("write command lacks extra.recording_version")
        if command.kind == WriteKind.NOTICE:
            body = schemas.AmbientRecordingsProcessed(SessionID=session_id, RecordingVersion=version)
            return Rendered("AmbientRecordingsProcessed", schemas.render(body), session_id, version)
        if command.kind != WriteKind.HANDOFF:
            raise PermanentError(f"the Epic Haiku target cannot perform a {command.kind} write")
        draft = command.draft
        if draft is None or not draft.sections:
            raise PermanentError("DocumentationReady needs a draft with at least one section")
        sections = [schemas.DocumentationSection(SectionID=self.section_id(s.code), Text=s.text)
                    for s in draft.sections]
        body = schemas.DocumentationReady(SessionID=session_id, RecordingVersion=version,
                                          GeneratedInstant=schemas.instant(draft.created_at),
                                          Sections=sections)
        return Rendered("DocumentationReady", schemas.render(body), session_id, version)

    def send(self, command: WriteCommand) -> WriteOutcome:
        rendered = self.render(command)
        client = self.client((command.extra or {}).get("callback_url"))
        if rendered.call == "DocumentationReady":
            answer = client.documentation_ready(rendered.body, correlation_id=command.correlation_id)
        else:
            answer = client.recordings_processed(rendered.session_id, rendered.version,
                                                 correlation_id=command.correlation_id)
        detail: dict[str, Any] = {"status": 200, "call": rendered.call}
        if "Accepted" in answer:
            detail["accepted"] = answer["Accepted"]
        return WriteOutcome(external_id=f"{rendered.session_id}/v{rendered.version}", detail=detail)

    def reconcile(self, command: WriteCommand) -> WriteOutcome | None:
        """Epic has no look-up, but dedupes identical bodies: resending is the reconcile."""
        return None

    def earlier_handoff_delivered(self, outcome: dict[str, Any]) -> bool:
        """Epic's answer to a newer body for a version whose earlier handoff was never
        confirmed: 409 (documentation for this version is already there) means Epic holds
        the earlier body; the engine checks that the version is still the newest."""
        return outcome.get("status") == 409

    # -- audio ------------------------------------------------------------------------------
    def fetch_chunk(self, external_session_id: str, recording_id: str, version: int,
                    sequence: int, *, callback_url: str | None = None,
                    correlation_id: str | None = None) -> tuple[bytes, str | None]:
        """One chunk's audio and its Content-Type. `version` is the newest the engine knows."""
        return self.client(callback_url).get_chunk(external_session_id, recording_id, version,
                                                   sequence, correlation_id=correlation_id)

    # -- inbound ----------------------------------------------------------------------------
    def verify_inbound(self, authorization: str | None, url: str) -> dict[str, Any]:
        """Verified claims of Epic's bearer JWT for a call to `url` (Unauthorized -> 401)."""
        if self.verifier is None:
            raise PermanentError("inbound verification is not configured")
        return self.verifier.verify(authorization, url)


def _http_client(http: Callable[..., httpx.Client] | httpx.Client, timeout: float) -> httpx.Client:
    return http if isinstance(http, httpx.Client) else http(timeout=timeout)


def build(org_config: Any, target_config: EpicHaikuConfig, services: Services) -> EpicHaikuAdapter:
    """The adapter for one org. Secrets are read on first use, never at build time."""
    cfg = target_config
    org_id = getattr(org_config, "org", None) or str(org_config)
    http = _http_client(services.http, cfg.timeout_s)
    ref = cfg.private_key

    def private_key() -> str:
        return services.secrets(str(ref), getattr(ref, "base_dir", None))

    tokens = BackendTokenSource(org_id=org_id, client_id=cfg.client_id, token_url=cfg.token_url,
                                key_id=cfg.key_id, algorithm=cfg.algorithm,
                                private_key=private_key, cache=services.token_cache,
                                clock=services.clock, http=http, timeout_s=cfg.timeout_s,
                                scope=cfg.scope)
    verifier = InboundVerifier(org_id=org_id, issuer=cfg.inbound.issuer,
                               replay_guard=services.replay_guard, clock=services.clock,
                               jwks_url=cfg.inbound.jwks_url, jwks_file=cfg.inbound.jwks_file,
                               http=http, max_token_bytes=cfg.limits.max_token_bytes)
    section_id, section_code = _section_mapping(org_config)
    return EpicHaikuAdapter(org_id=org_id, config=cfg, tokens=tokens, http=http,
                            clock=services.clock, verifier=verifier, section_id=section_id,
                            section_code=section_code)


def _section_mapping(org_config: Any) -> tuple[Callable[[str], str], Callable[[str], str]]:
    """The site's Epic SectionIDs from chartbridge.mappings (LOINC codes when absent)."""
    try:
        from chartbridge.mappings import section_table
        table = section_table(org_config)
    except (ImportError, AttributeError, TypeError):
        return (lambda code: code), (lambda epic_id: epic_id)

    # `epic_section_id` is this plugin's code-table field (plugin.SECTION_FIELDS)
    ids = {e.code: e.epic_section_id or e.code for e in table.entries.values()}
    codes = {epic_id: code for code, epic_id in ids.items()}

    def section_id(code: str) -> str:
        return ids.get(code, code)

    def section_code(epic_id: str) -> str:
        return codes.get(epic_id, epic_id)      # not a mapped Epic id: kept as sent

    return section_id, section_code
