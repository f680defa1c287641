"""The athenaOne EhrAdapter: one clinical document per approved draft.

send():      render the form (mapping.py) and POST it once.
reconcile(): list the patient's clinical documents in that department and look for the
             write id in `internalnote`; athena takes no client idempotency key, so this
             look-up is what keeps a resend after a lost answer from filing a second copy.
             A list that fails transiently (5xx, 429, timeout) is retried; a list answer
             that cannot be read (AthenaUnexpectedAnswer) cannot tell whether the note is
             filed, so it raises OutcomeUnknown and the write waits at
             needs_reconciliation for a person — never a retry loop, never a resend.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from chartbridge.core.errors import ChartbridgeError, OutcomeUnknown, PermanentError
from chartbridge.core.models import WriteCommand, WriteOutcome
from chartbridge.core.ports import AdapterCapabilities
from chartbridge.mappings import section_titles

from .client import AthenaClient, AthenaUnexpectedAnswer, TokenSource, throttle_for
from .config import AthenaOneConfig
from .mapping import find_written, render_form, target_of, write_id

NAME = "athenaone"
CLINICAL = "clinicaldocument"


class AthenaOneAdapter:
    name = NAME
    capabilities = AdapterCapabilities(reconcile_by_lookup=True, kinds=("create",))

    def __init__(self, *, org_id: str, config: AthenaOneConfig, client: AthenaClient,
                 timezone: str, subclass_for: Callable[[str | None], str],
                 titles: Callable[[str], str] | None = None) -> None:
        self.org_id, self.config, self.client = org_id, config, client
        self.timezone, self.subclass_for, self.titles = timezone, subclass_for, titles

    def _check_org(self, command: WriteCommand) -> None:
        # The instance is built from ONE org's config (credentials + practice); a command
        # of another org must never be written with them.
        if command.org_id != self.org_id:
            raise PermanentError("this athenaone adapter belongs to another organization",
                                 vendor_code="wrong_org")

    def render(self, command: WriteCommand) -> tuple[str, dict[str, str]]:
        """(patient id, form fields) of the upload; deterministic for the same command."""
        self._check_org(command)
        subclass = self.subclass_for(command.extra.get("note_type"))
        form = render_form(command, self.config, subclass=subclass, timezone=self.timezone,
                           titles=self.titles)
        return target_of(command, self.config).patient_id, form

    def send(self, command: WriteCommand) -> WriteOutcome:
        patient_id, form = self.render(command)
        docid = self.client.upload_clinical_document(patient_id, form)
        return WriteOutcome(external_id=str(docid),
                            detail={"practice_id": self.config.practice_id,
                                    "write_id": write_id(command),
                                    "documentsubclass": form["documentsubclass"],
                                    "payload": self.config.payload})

    def reconcile(self, command: WriteCommand) -> WriteOutcome | None:
        self._check_org(command)
        target = target_of(command, self.config)
        wid = write_id(command)
        try:
            docs = self.client.list_clinical_documents(target.patient_id, target.department_id)
        except AthenaUnexpectedAnswer as exc:
            raise OutcomeUnknown(
                f"{exc.message}, so whether athena holds this note cannot be told; it is not "
                f"resent: look for the write id in the internal note of the patient's "
                f"clinical documents, then resolve the write", vendor_code=exc.vendor_code
            ) from None
        found = find_written(docs, wid)
        if found is None:
            return None
        docid = found.get("clinicaldocumentid") or found.get("documentid")
        return WriteOutcome(external_id=str(docid),
                            detail={"practice_id": self.config.practice_id, "write_id": wid,
                                    "documentsubclass": found.get("documentsubclass"),
                                    "status": found.get("status"), "found_by": "internalnote"})


# --------------------------------------------------------------------------- factory
def _subclass_resolver(org_config: Any, cfg: AthenaOneConfig) -> Callable[[str | None], str]:
    def resolve(note_type_code: str | None) -> str:
        entry = None
        try:
            from chartbridge.mappings import note_type
            entry = note_type(org_config, note_type_code)
        except (ImportError, AttributeError, TypeError):
            entry = None
        except ChartbridgeError as exc:     # a note type the tables do not know
            if cfg.fallback_subclass:
                return cfg.fallback_subclass
            raise PermanentError(f"note type has no athena mapping ({exc})",
                                 vendor_code="unmapped_note_type", field="note_type") from None
        if entry is not None and entry.athena_class == CLINICAL and entry.athena_subclass:
            return entry.athena_subclass
        if cfg.fallback_subclass:
            return cfg.fallback_subclass
        mapped = entry.athena_class if entry is not None else None
        raise PermanentError(
            f"the note type maps to athena class {mapped or 'none'}, not {CLINICAL}; map it "
            f"to a CLINICALDOCUMENT_* subclass (mappings.overrides.note_types) or set "
            f"targets.athenaone.fallback_subclass", vendor_code="unmapped_note_type",
            field="note_type")
    return resolve


def build(org_config: Any, target_config: AthenaOneConfig, services: Any, *,
          throttle=None) -> AthenaOneAdapter:
    """The adapter of ONE org: its credentials, its practice, its token cache entry. The
    secret is read when a token is needed, never at build time."""
    cfg = target_config
    org_id = getattr(org_config, "org", None) or str(org_config)
    timezone = cfg.timezone or getattr(org_config, "timezone", None) or "UTC"
    http: httpx.Client = services.http(timeout=cfg.timeout_s, follow_redirects=False)
    ref = cfg.client_secret

    def secret() -> str:
        return services.secrets(str(ref), getattr(ref, "base_dir", None))

    tokens = TokenSource(org_id=org_id, practice_id=cfg.practice_id, client_id=cfg.client_id,
                         token_url=cfg.token_url, scopes=list(cfg.scopes), secret=secret,
                         cache=services.token_cache, clock=services.clock, http=http,
                         timeout_s=cfg.timeout_s)
    client = AthenaClient(base_url=cfg.base_url, practice_id=cfg.practice_id, tokens=tokens,
                          http=http, timeout_s=cfg.timeout_s,
                          throttle=throttle or throttle_for(org_id, cfg.practice_id,
                                                            cfg.requests_per_second))
    return AthenaOneAdapter(org_id=org_id, config=cfg, client=client, timezone=timezone,
                            subclass_for=_subclass_resolver(org_config, cfg),
                            titles=section_titles(org_config))
