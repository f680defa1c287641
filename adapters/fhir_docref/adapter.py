"""The FHIR R4 DocumentReference EhrAdapter.

send(command): what is sent is decided by the Profile's attributes (profiles.py), never by
its name.
  create / replace / append -> `transaction` (us-core): a transaction Bundle
      [DocumentReference with ifNoneExist identifier=<system>|<key>, its Provenance] (or a
      single conditional create when `transaction: false`); a replace also PUTs the replaced
      document as `superseded` with If-Match. 200 on a conditional match = already there.
      Otherwise one POST, with If-None-Exist only where `conditional_create`; the answer's
      Location may be relative (epic) or absolute and unversioned (oracle-health).
  edit   -> `update` only: PUT of our own preliminary document with If-Match; 412 = "stale".
  cancel -> `update` only: PUT of our own not-yet-final document as entered-in-error.
reconcile(command):
  `search_by_identifier`: search the patient's DocumentReferences by our identifier; where
  `search_keeps_identifier` no match means "not there" (None). Otherwise (epic,
  oracle-health) match type + time window + the text's hash among the encounter's
  documents; no match -> OutcomeUnknown (a person checks; the ledger marks the write
  needs_reconciliation), because such a search is no proof of absence.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
from chartbridge.core.errors import ChartbridgeError, OutcomeUnknown, PermanentError
from chartbridge.core.models import WriteCommand, WriteKind, WriteOutcome
from chartbridge.core.ports import AdapterCapabilities
from chartbridge.mappings import section_titles

from .auth import SmartBackendTokens
from .client import FhirClient, FhirResponse
from .config import FhirDocRefConfig
from .mapping import (
    content_hash,
    fhir_id,
    identifier_query,
    parent_reference,
    render,
    transaction_bundle,
    write_identifier,
)
from .profiles import Profile, for_config

log = logging.getLogger("chartbridge.fhir_docref")

NAME = "fhir_docref"
_LOC = re.compile(r"(?:^|/)(DocumentReference)/([A-Za-z0-9\-.]{1,64})(?:/_history/([A-Za-z0-9\-.]{1,64}))?/?$")


def parse_location(location: str | None) -> tuple[str | None, str | None]:
    """("DocumentReference/<id>", version or None) from an absolute or relative Location."""
    if not location:
        return None, None
    m = _LOC.search(location.split("?")[0])
    if not m:
        return None, None
    return f"{m.group(1)}/{m.group(2)}", m.group(3)


def _body_version(body: object) -> str | None:
    if isinstance(body, dict):
        version = (body.get("meta") or {}).get("versionId")
        return str(version) if version else None
    return None


def _etag_version(etag: str | None) -> str | None:
    if not etag:
        return None
    m = re.fullmatch(r'\s*(?:W/)?"([^"]+)"\s*', etag)
    return m.group(1) if m else None


class FhirDocRefAdapter:
    name = NAME
    capabilities = AdapterCapabilities(reconcile_by_lookup=True,
                                       kinds=("create", "replace", "append", "edit", "cancel"))

    def __init__(self, *, org_id: str, config: FhirDocRefConfig, client: FhirClient,
                 note_type_for: Callable[[str | None], dict | None] | None = None,
                 titles: Callable[[str], str] | None = None) -> None:
        self.org_id, self.config, self.client = org_id, config, client
        self.profile: Profile = for_config(config)
        self.note_type_for = note_type_for or (lambda code: None)
        self.titles = titles

    # -- rendering ----------------------------------------------------------------------
    def _check(self, command: WriteCommand) -> None:
        if command.org_id != self.org_id:
            raise PermanentError("this fhir_docref adapter belongs to another organization",
                                 vendor_code="wrong_org")
        if command.kind not in (WriteKind.CREATE, WriteKind.REPLACE, WriteKind.APPEND,
                                WriteKind.EDIT, WriteKind.CANCEL):
            raise PermanentError(f"fhir_docref does not do {command.kind} writes",
                                 vendor_code="unsupported_kind", field="kind")
        if command.kind in (WriteKind.EDIT, WriteKind.CANCEL) and not self.profile.update:
            raise PermanentError(f"the {self.profile.name} profile has no update, so a "
                                 f"{command.kind} cannot be filed; file a new version instead",
                                 vendor_code="unsupported_kind", field="kind")

    def render(self, command: WriteCommand):
        self._check(command)
        return render(command, self.config, profile=self.profile,
                      note_type=self.note_type_for(command.extra.get("note_type")),
                      titles=self.titles)

    def payload(self, command: WriteCommand, parent: dict | None = None) -> dict:
        """Exactly what send() would POST for a create/replace/append (for samples/tests)."""
        rendered = self.render(command)
        if self.profile.transaction and self.config.transaction:
            updates = []
            if parent is not None:
                updates = [self._superseded(parent)]
            return transaction_bundle(rendered, conditional=self.profile.conditional_create,
                                      updates=updates)
        return rendered.document

    # -- send ---------------------------------------------------------------------------
    def send(self, command: WriteCommand) -> WriteOutcome:
        self._check(command)
        if command.kind == WriteKind.EDIT:
            return self._edit(command)
        if command.kind == WriteKind.CANCEL:
            return self._cancel(command)
        rendered = self.render(command)
        detail = {"profile": self.profile.name, "identifier": rendered.identifier["value"],
                  "docStatus": rendered.document["docStatus"]}
        if self.profile.transaction and self.config.transaction:
            updates = []
            if command.kind == WriteKind.REPLACE:
                parent, version = self._read_own(parent_reference(command))
                updates = [self._superseded(parent, self._expected_version(command, version))]
            resp = self.client.transaction(transaction_bundle(
                rendered, conditional=self.profile.conditional_create, updates=updates))
            return self._from_transaction(resp, detail)
        if self.profile.conditional_create:
            resp = self.client.create(rendered.document,
                                      if_none_exist=identifier_query(rendered.identifier),
                                      prefer="return=representation")
        else:
            resp = self.client.create(rendered.document)
        return self._from_create(resp, detail)

    def _from_create(self, resp: FhirResponse, detail: dict) -> WriteOutcome:
        ref, version = parse_location(resp.location)
        body = resp.body if isinstance(resp.body, dict) else None
        if ref is None and body and body.get("resourceType") == "DocumentReference" and body.get("id"):
            ref = f"DocumentReference/{body['id']}"
        if ref is None:
            raise PermanentError("the server accepted the create but named no DocumentReference "
                                 "(no Location, no body)", status=resp.status,
                                 vendor_code="no_location")
        version = version or _etag_version(resp.etag) or (
            ((body or {}).get("meta") or {}).get("versionId"))
        if resp.status == 200:
            detail = {**detail, "already_there": True}
        return WriteOutcome(external_id=ref, external_version=version, detail=detail)

    def _from_transaction(self, resp: FhirResponse, detail: dict) -> WriteOutcome:
        body = resp.body or {}
        entries = body.get("entry") if body.get("type") == "transaction-response" else None
        if not isinstance(entries, list) or not entries:
            raise PermanentError("the transaction answer is not a transaction-response",
                                 status=resp.status, vendor_code="not_fhir")
        first = (entries[0] or {}).get("response") or {}
        ref, version = parse_location(first.get("location"))
        if ref is None:
            raise PermanentError("the transaction answer names no DocumentReference",
                                 status=resp.status, vendor_code="no_location")
        # the version: a versioned location, else the entry's etag, else the returned
        # resource's meta.versionId (all three are 0..1 in R4 bundle.html; Medplum gives only
        # the last). Without it a later edit could not send the If-Match that protects an
        # EHR-side change (contract_tests/fhir_docref/simulator/README.md, live findings).
        version = version or _etag_version(first.get("etag")) or \
            (((entries[0] or {}).get("resource") or {}).get("meta") or {}).get("versionId")
        if str(first.get("status", "")).startswith("200"):
            detail = {**detail, "already_there": True}
        if len(entries) > 1:
            prov_ref = ((entries[1] or {}).get("response") or {}).get("location")
            if prov_ref and "Provenance/" in str(prov_ref):
                detail["provenance"] = str(prov_ref).split("/_history")[0]
        return WriteOutcome(external_id=ref, external_version=version, detail=detail)

    # -- updates of our own documents (us-core) ------------------------------------------
    def _read_own(self, ref: str) -> tuple[dict, str]:
        rtype, rid = ref.split("/", 1)
        resp = self.client.read(rtype, rid)
        doc = resp.body
        if not isinstance(doc, dict) or doc.get("resourceType") != "DocumentReference":
            raise PermanentError("the parent document read is not a DocumentReference",
                                 vendor_code="not_fhir")
        version = _etag_version(resp.etag) or (doc.get("meta") or {}).get("versionId")
        if not version:
            raise PermanentError("the server gives no version for the parent document, so it "
                                 "cannot be updated safely", vendor_code="no_version")
        return doc, str(version)

    @staticmethod
    def _superseded(parent: dict, version: str | None = None) -> tuple[dict, str]:
        doc = {k: v for k, v in parent.items() if k not in ("meta", "text")}
        doc["status"] = "superseded"
        version = version or str((parent.get("meta") or {}).get("versionId") or "1")
        return doc, f'W/"{version}"'

    def _ours(self, doc: dict) -> bool:
        system = str(self.config.identifier_system)
        return any(isinstance(i, dict) and i.get("system") == system
                   for i in doc.get("identifier") or [])

    def _expected_version(self, command: WriteCommand, current: str) -> str:
        """The version the engine's own parent write got (the ledger stored it and hands it
        over as `parent_version`), so a change made at the EHR since answers 412 (stale)
        and is never overwritten. The version just read only where the engine has none (a
        correction of a document it did not write through the ledger)."""
        known = command.parent_version or command.extra.get("parent_version")
        return str(known) if known else current

    def _edit(self, command: WriteCommand) -> WriteOutcome:
        ref = parent_reference(command)
        current, version = self._read_own(ref)
        if not self._ours(current):
            raise PermanentError("the document to edit was not filed by Chartbridge",
                                 vendor_code="not_ours", field="parent_external_id")
        if current.get("docStatus") not in (None, "preliminary"):
            raise PermanentError("the document is no longer preliminary at the server; file "
                                 "a new version instead", vendor_code="stale", status=412)
        rendered = self.render(command)
        doc = dict(rendered.document)
        doc["id"] = ref.split("/", 1)[1]
        ours = rendered.identifier
        doc["identifier"] = [i for i in current.get("identifier") or [] if i != ours] + [ours]
        resp = self.client.update(doc, if_match=f'W/"{self._expected_version(command, version)}"')
        _, new_version = parse_location(resp.location)
        return WriteOutcome(external_id=ref,
                            external_version=new_version or _etag_version(resp.etag)
                            or _body_version(resp.body),
                            detail={"profile": self.profile.name, "identifier": ours["value"],
                                    "docStatus": doc.get("docStatus"), "updated": True})

    def _cancel(self, command: WriteCommand) -> WriteOutcome:
        ref = parent_reference(command)
        current, version = self._read_own(ref)
        if not self._ours(current):
            raise PermanentError("the document to withdraw was not filed by Chartbridge",
                                 vendor_code="not_ours", field="parent_external_id")
        doc = {k: v for k, v in current.items() if k not in ("meta", "text")}
        doc["status"] = "entered-in-error"
        if "docStatus" in doc:
            doc["docStatus"] = "entered-in-error"
        resp = self.client.update(doc, if_match=f'W/"{self._expected_version(command, version)}"')
        _, new_version = parse_location(resp.location)
        return WriteOutcome(external_id=ref,
                            external_version=new_version or _etag_version(resp.etag)
                            or _body_version(resp.body),
                            detail={"profile": self.profile.name, "status": "entered-in-error"})

    # -- reconcile ----------------------------------------------------------------------
    def reconcile(self, command: WriteCommand) -> WriteOutcome | None:
        self._check(command)
        if command.kind in (WriteKind.EDIT, WriteKind.CANCEL):
            return self._reconcile_update(command)
        rendered = self.render(command)
        ident = rendered.identifier
        patient = fhir_id(command.patient_ids, "patient")
        # typed references: the spec also allows a bare id, but servers that match
        # references strictly only find `Patient/<id>`, and every server accepts it
        found: list[dict] = []
        if self.profile.search_by_identifier:
            params = {"patient": f"Patient/{patient}",
                      "identifier": f"{ident['system']}|{ident['value']}"}
            found = [d for d in self.client.search("DocumentReference", params)
                     if any(i == ident or (isinstance(i, dict) and i.get("system") == ident["system"]
                                           and i.get("value") == ident["value"])
                            for i in d.get("identifier") or [])]
        if len(found) > 1:
            raise OutcomeUnknown("several documents carry this write's identifier; a person "
                                 "must retire the extra ones")
        if found:
            return self._found(found[0], "identifier")
        if not self.profile.reconcile_by_content:
            return None
        match = self._match_by_content(command, rendered.document, patient)
        if match is not None:
            return self._found(match, "content")
        raise OutcomeUnknown("the server's search cannot prove the note was not filed; check "
                             "the encounter's notes before resending")

    def _match_by_content(self, command: WriteCommand, doc: dict, patient: str) -> dict | None:
        encounter = fhir_id(command.encounter_ids, "encounter", required=False)
        when = datetime.fromisoformat(doc["date"].replace("Z", "+00:00"))
        window = timedelta(seconds=self.config.reconcile_window_s)
        type_code = doc["type"]["coding"][0]
        params = [("patient", f"Patient/{patient}"),
                  ("type", f"{type_code['system']}|{type_code['code']}"),
                  *self.profile.window_params(when, window)]
        if encounter:
            params.append(("encounter", f"Encounter/{encounter}"))
        want = content_hash(doc["content"][0]["attachment"]["data"])
        hits = []
        for cand in self.client.search("DocumentReference", params):
            try:
                cand_when = datetime.fromisoformat(str(cand.get("date")).replace("Z", "+00:00"))
            except ValueError:
                continue
            if abs(cand_when - when) > window:
                continue
            # a server that keeps the text behind attachment.url (no inline data) gives no
            # proof here: no match, so the write goes to a person (OutcomeUnknown)
            att = ((cand.get("content") or [{}])[0] or {}).get("attachment") or {}
            if att.get("data") and content_hash(att["data"]) == want:
                hits.append(cand)
        if len(hits) > 1:
            raise OutcomeUnknown("several documents of the encounter have this note's text; a "
                                 "person must retire the extra ones")
        return hits[0] if hits else None

    def _reconcile_update(self, command: WriteCommand) -> WriteOutcome | None:
        ref = parent_reference(command)
        current, version = self._read_own(ref)
        ident = write_identifier(command, self.config)
        done = (ident in (current.get("identifier") or []) if command.kind == WriteKind.EDIT
                else current.get("status") == "entered-in-error")
        if not done:
            return None
        return WriteOutcome(external_id=ref, external_version=version,
                            detail={"profile": self.profile.name, "found_by": "read"})

    def _found(self, doc: dict, how: str) -> WriteOutcome:
        return WriteOutcome(external_id=f"DocumentReference/{doc.get('id')}",
                            external_version=(doc.get("meta") or {}).get("versionId"),
                            detail={"profile": self.profile.name, "found_by": how,
                                    "docStatus": doc.get("docStatus")})


# --------------------------------------------------------------------------- factory
def _note_type_resolver(org_config: Any) -> Callable[[str | None], dict | None]:
    def resolve(code: str | None) -> dict | None:
        try:
            from chartbridge.mappings import note_type
            entry = note_type(org_config, code)
        except (ChartbridgeError, AttributeError, TypeError):  # no tables / unknown type
            return None
        if entry.fhir_type is None:
            return None
        coding = entry.fhir_type.model_dump(exclude_none=True)
        coding["system"] = str(coding["system"])
        return coding
    return resolve


def build(org_config: Any, target_config: FhirDocRefConfig, services: Any) -> FhirDocRefAdapter:
    """The adapter of ONE org. The private key is read when a token is needed."""
    cfg = target_config
    org_id = getattr(org_config, "org", None) or str(org_config)
    http: httpx.Client = services.http(timeout=cfg.timeout_s, follow_redirects=False)
    ref = cfg.private_key

    def private_key() -> str:
        return services.secrets(str(ref), getattr(ref, "base_dir", None))

    prof = for_config(cfg)
    tokens = SmartBackendTokens(
        org_id=org_id, client_id=cfg.client_id, key_id=cfg.key_id, algorithm=cfg.algorithm,
        private_key=private_key, cache=services.token_cache, clock=services.clock, http=http,
        base_url=str(cfg.base_url), token_url=str(cfg.token_url) if cfg.token_url else None,
        scopes=list(cfg.scopes), send_scope=prof.send_scope, timeout_s=cfg.timeout_s)
    client = FhirClient(base_url=str(cfg.base_url), tokens=tokens, http=http,
                        timeout_s=cfg.timeout_s)
    return FhirDocRefAdapter(org_id=org_id, config=cfg, client=client,
                             note_type_for=_note_type_resolver(org_config),
                             titles=section_titles(org_config))
