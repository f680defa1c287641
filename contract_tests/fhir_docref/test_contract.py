"""FHIR DocumentReference contract: the real adapter, through the WriteLedger, against the
FHIR simulator in every server profile (us-core, epic, oracle-health). What differs is asked
of the adapter's Profile (`fhir.profile_of`: what it sends) and the simulator's rules
(`sim.rules`: what the server does, from the vendor's docs) — never of the profile's name."""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from chartbridge.core.errors import OutcomeUnknown, TransientError
from chartbridge.core.models import WriteKind, WriteStatus
from contract_tests.fhir_docref.conftest import make_command

SAMPLES = Path(__file__).parent / "samples"


def _text(doc: dict) -> str:
    return base64.b64decode(doc["content"][0]["attachment"]["data"]).decode("utf-8")


def _creates(fhir) -> int:
    return fhir.sim.creates("DocumentReference")


def _write_call(fhir) -> str:
    """The simulator call a create/replace goes out as."""
    return "transaction" if fhir.profile_of.transaction else "create"


def _key(prefix: str) -> str:
    """An encounter key of its own per run (a live server keeps earlier runs' documents)."""
    import uuid
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


CONTENT_TYPE = {None: "text/plain; charset=utf-8", "text/plain": "text/plain; charset=utf-8",
                "xhtml": "application/xhtml+xml;charset=utf-8"}


# --------------------------------------------------------------------------- create
def test_create_files_one_r4_document(fhir, adapter, ledger):
    sim = fhir.need_sim("reads the simulator's store, calls and token log")
    # Given an approved two-section note
    command = make_command(fhir)
    # When it is written through the ledger
    record = ledger.execute(command, adapter)
    # Then one DocumentReference exists, shaped as R4 wants, in the right chart
    assert record.status == WriteStatus.SUCCEEDED
    assert record.external_id.startswith("DocumentReference/")
    docs = sim.documents(fhir.patient)
    assert len(docs) == 1 and f"DocumentReference/{docs[0]['id']}" == record.external_id
    doc = docs[0]
    assert doc["status"] == "current" and doc["docStatus"] == "final"
    assert doc["context"]["encounter"] == [{"reference": f"Encounter/{fhir.encounter}"}]
    if sim.rules.kept_fields is None or "identifier" in sim.rules.kept_fields:
        assert doc["identifier"] == [{"system": "urn:chartbridge:write",
                                      "value": command.idempotency_key()}]
    assert doc["type"]["coding"][0]["code"] == "11506-3"
    assert doc["authenticator"]["reference"] == "Practitioner/prac-1"
    prof = fhir.profile_of
    assert doc["content"][0]["attachment"]["contentType"] == CONTENT_TYPE[prof.note_format]
    assert "Cough for three days" in sim.document_text(doc)
    assert sim.documents(fhir.other_patient) == []
    token = sim.token_log()[0]
    if prof.send_scope:
        assert "system/DocumentReference.write" in token["scope_param"]
    else:       # Epic grants the registration's scopes: none is sent
        assert token["scope_param"] is None
    if not prof.conditional_create:
        assert all(not c.get("if_none_exist") for c in sim.calls("create"))
    if prof.provenance:
        provs = sim.resources("Provenance")
        assert len(provs) == 1 and provs[0]["target"] == [{"reference": record.external_id}]
        roles = [a["type"]["coding"][0]["code"] for a in provs[0]["agent"]]
        assert roles == ["verifier", "assembler"]
    else:
        assert sim.resources("Provenance") == []
    # the version comes from the ETag (or a versioned Location); none without either
    assert record.external_version == ("1" if sim.rules.etag else None)


def test_lost_response_after_201_never_files_twice(fhir, adapter, ledger):
    sim = fhir.need_sim("fault injection")
    # Given a server that stores the note and then loses its answer
    sim.faults.add(call=_write_call(fhir), kind="lose_response", times=1)
    command = make_command(fhir)
    with pytest.raises(TransientError) as exc:
        ledger.execute(command, adapter)
    assert exc.value.maybe_delivered is True
    assert len(sim.documents(fhir.patient)) == 1
    if not fhir.profile_of.search_by_identifier:
        # When retried where the server keeps no identifier and its search cannot show the
        # text (oracle-health): Then nothing is resent; a person checks the chart
        with pytest.raises(OutcomeUnknown):
            ledger.execute(command, adapter)
        assert ledger.get("fhir-org", command.idempotency_key()).status == \
            WriteStatus.NEEDS_RECONCILIATION
        assert len(sim.documents(fhir.patient)) == 1 and _creates(fhir) == 1
        return
    # When the write is retried
    record = ledger.execute(command, adapter)
    # Then the reconcile finds it by identifier and nothing is sent again
    assert record.status == WriteStatus.SUCCEEDED and record.outcome["reconciled"] is True
    assert record.outcome["found_by"] == "identifier"
    assert len(sim.documents(fhir.patient)) == 1
    assert record.external_id == f"DocumentReference/{sim.documents(fhir.patient)[0]['id']}"


def test_crash_after_201_before_ledger_commit(fhir, adapter, ledger, clock):
    sim = fhir.need_sim("fault injection (a worker dies between send and commit)")
    # Given the adapter delivered the note but the worker died before the ledger commit
    command = make_command(fhir)
    ledger.prepare(command)
    adapter.send(command)                              # the EHR has it; the ledger does not know
    assert _creates(fhir) == 1
    # When the sweeper drives the pending write again (a pending row without maybe_sent
    # would send; simulate the dead worker's expired lease instead)
    from chartbridge.ledger.tables import WriteRow
    with ledger.db.transaction() as tx:
        row = tx.get(WriteRow, command.idempotency_key())
        row.status, row.maybe_sent = WriteStatus.IN_FLIGHT, True
        row.lease_owner, row.lease_expires_at = "dead", clock.now()
    clock.advance(1)
    if not fhir.profile_of.search_by_identifier:
        # Then (no identifier kept, oracle-health) it is flagged for a person, not re-sent
        with pytest.raises(OutcomeUnknown):
            ledger.execute(command, adapter)
        assert _creates(fhir) == 1
        return
    record = ledger.execute(command, adapter)
    # Then it is matched, not re-sent
    assert record.status == WriteStatus.SUCCEEDED and record.outcome["reconciled"] is True
    assert _creates(fhir) == 1


def test_5xx_not_stored_us_core_resends_epic_needs_a_person(fhir, adapter, ledger):
    sim = fhir.need_sim("fault injection")
    # Given a 503 on the first write (nothing stored, but we cannot know that)
    sim.faults.add(call=_write_call(fhir), status=503, times=1)
    command = make_command(fhir)
    with pytest.raises(TransientError) as exc:
        ledger.execute(command, adapter)
    assert exc.value.maybe_delivered is True
    # When retried
    if fhir.profile_of.search_keeps_identifier:
        # Then us-core's identifier search proves absence: sent once more, one document
        record = ledger.execute(command, adapter)
        assert record.status == WriteStatus.SUCCEEDED and "reconciled" not in record.outcome
        assert len(sim.documents(fhir.patient)) == 1
    else:
        # Then the server's search is no proof of absence: flagged, never re-sent
        with pytest.raises(OutcomeUnknown):
            ledger.execute(command, adapter)
        assert ledger.get("fhir-org", command.idempotency_key()).status == \
            WriteStatus.NEEDS_RECONCILIATION
        assert _creates(fhir) == 0


def test_reconcile_by_content_when_the_identifier_is_dropped(fhir, adapter):
    sim = fhir.need_sim("fault injection (the server drops our identifier)")
    if not fhir.profile_of.reconcile_by_content:
        pytest.skip(f"{fhir.profile}: the identifier search proves absence; no content match")
    # Given a filed note whose identifier the server did not keep
    command = make_command(fhir)
    sent = adapter.send(command)
    rid = sent.external_id.split("/")[1]
    with sim._lock:                                    # the server "dropped" our identifier
        sim._store["DocumentReference"][rid][-1].pop("identifier", None)
    if sim.rules.text_by_url:
        # When reconciled where searches give the text only behind attachment.url: Then
        # the (valid) search finds candidates but no proof, so a person decides
        with pytest.raises(OutcomeUnknown):
            adapter.reconcile(command)
        assert [c["status"] for c in sim.calls("search")] == [200]
        return
    # When reconciled
    found = adapter.reconcile(command)
    # Then the type + date window + text hash finds it
    assert found.external_id == sent.external_id and found.detail["found_by"] == "content"
    # and a different text is not mistaken for it
    other = make_command(fhir, text="Different complaint entirely.")
    with pytest.raises(OutcomeUnknown):
        adapter.reconcile(other)


# --------------------------------------------------------------------------- versions
# preliminary -> final, corrections (relatesTo replaces/appends) and the stale If-Match are
# the shared scenarios (contract_tests/capabilities/scenarios.py, run by test_shared.py).
def test_a_profile_without_preliminary_refuses_it_before_sending(fhir, adapter, ledger):
    if fhir.profile_of.preliminary:
        pytest.skip(f"{fhir.profile}: files preliminary documents (test_shared.py)")
    # Given a server that files final documents only (oracle-health), When a preliminary
    # note is written, Then it is refused before anything is sent, naming why
    record = ledger.execute(make_command(fhir, approved=False, encounter_key=_key("CSN-pf")),
                            adapter)
    assert record.status == WriteStatus.FAILED and record.outcome["vendor_code"] == "unsupported_kind"
    if fhir.sim:
        assert fhir.sim.documents(fhir.patient) == [] and fhir.sim.calls("create") == []


def test_an_edit_is_refused_where_the_profile_has_no_update(fhir, adapter, ledger):
    if fhir.profile_of.update or not fhir.profile_of.preliminary:
        pytest.skip(f"{fhir.profile}: not a profile with preliminaries but no update")
    # Given a preliminary document (Epic: no update), When an edit of it is written,
    # Then it is refused before sending (the final is a new document: test_shared.py)
    key = _key("CSN-ed")
    r1 = ledger.execute(make_command(fhir, approved=False, encounter_key=key), adapter)
    assert r1.status == WriteStatus.SUCCEEDED, r1.last_error
    r2 = ledger.execute(make_command(fhir, version=2, kind=WriteKind.EDIT, parent=r1.external_id,
                                     encounter_key=key), adapter)
    assert r2.status == WriteStatus.FAILED and r2.outcome["vendor_code"] == "unsupported_kind"


# --------------------------------------------------------------------------- errors
def test_forbidden_scope_is_permanent_and_not_retried(fhir, adapter, ledger):
    sim = fhir.need_sim("fault injection")
    call = _write_call(fhir)
    sim.faults.add(call=call, kind="forbidden_scope", times=None)
    # When the write meets a 403
    record = ledger.execute(make_command(fhir), adapter)
    # Then it fails permanently, once
    assert record.status == WriteStatus.FAILED and record.outcome["status"] == 403
    assert record.outcome["vendor_code"] == "forbidden"
    assert len(sim.calls(call)) == 1


def test_empty_403_names_the_unregistered_api(fhir, adapter, ledger):
    sim = fhir.need_sim("fault injection")
    call = _write_call(fhir)
    sim.faults.add(call=call, kind="not_registered", times=1)
    record = ledger.execute(make_command(fhir), adapter)
    assert record.status == WriteStatus.FAILED
    assert record.outcome["vendor_code"] == "not_registered"
    assert "not registered" in record.last_error


def test_token_expiry_refreshes_once(fhir, adapter, ledger, clock):
    sim = fhir.need_sim("fault injection (expires the server's tokens)")
    # Given a cached token that the server has since expired
    ledger.execute(make_command(fhir), adapter)
    sim.expire_tokens()
    # When the next write goes
    record = ledger.execute(make_command(fhir), adapter)
    # Then one 401, one new token, one document more
    assert record.status == WriteStatus.SUCCEEDED
    assert sim.token_requests == 2 and len(sim.documents(fhir.patient)) == 2
    # and a token past its lifetime is not used at all (the shared cache drops it)
    clock.advance(400)
    ledger.execute(make_command(fhir), adapter)
    assert sim.token_requests == 3


def test_429_is_transient_not_delivered_and_resent_without_reconcile(fhir, adapter, ledger):
    sim = fhir.need_sim("fault injection")
    call = _write_call(fhir)
    sim.faults.add(call=call, status=429, retry_after=3, times=1)
    command = make_command(fhir)
    with pytest.raises(TransientError) as exc:
        ledger.execute(command, adapter)
    assert exc.value.maybe_delivered is False and exc.value.retry_after == 3
    record = ledger.execute(command, adapter)
    assert record.status == WriteStatus.SUCCEEDED
    assert sim.calls("search") == [] and len(sim.documents(fhir.patient)) == 1


def test_wrong_chart_encounter_rejected_with_operation_outcome(fhir, adapter, ledger):
    sim = fhir.need_sim("seeded other patient")
    # Given a note whose encounter belongs to another patient
    command = make_command(fhir, encounter=fhir.other_encounter)
    # When written
    record = ledger.execute(command, adapter)
    # Then 422 with the OperationOutcome's issues kept (element paths, no values)
    assert record.status == WriteStatus.FAILED and record.outcome["status"] == 422
    issues = record.outcome["issues"]
    assert any("context.encounter" in i.get("expression", "") for i in issues)
    assert sim.documents() == []


def test_unknown_patient_is_a_clear_permanent_error(fhir, adapter, ledger):
    # Given a note for a patient and encounter the server does not have
    record = ledger.execute(make_command(fhir, patient="cb-contract-nobody",
                                         encounter="cb-contract-nowhere"), adapter)
    if fhir.live and record.status == WriteStatus.SUCCEEDED:
        pytest.skip("the server accepted references to an unknown Patient/Encounter (it does "
                    f"not enforce referential integrity); created {record.external_id}")
    # Then the server's validation error is a permanent failure, its issues kept, no PHI
    assert record.status == WriteStatus.FAILED, record.last_error
    assert 400 <= record.outcome["status"] < 500
    if fhir.sim:
        assert record.outcome["status"] == fhir.sim.rules.unknown_reference_status
        assert any(i["code"] == "not-found" for i in record.outcome["issues"])
    assert "cb-contract-nobody" not in (record.last_error or "")


# --------------------------------------------------------------------------- payloads
def _sample_cases(fhir):
    return {
        "create-final": (make_command(fhir, encounter_key="CSN-golden"), None),
        "create-preliminary": (make_command(fhir, approved=False, encounter_key="CSN-golden"), None),
        "replace": (make_command(fhir, version=2, kind=WriteKind.REPLACE, encounter_key="CSN-golden",
                                 parent="DocumentReference/golden-parent"),
                    {"resourceType": "DocumentReference", "id": "golden-parent",
                     "meta": {"versionId": "1"}, "status": "current", "docStatus": "final",
                     "subject": {"reference": "Patient/p1"},
                     "content": [{"attachment": {"contentType": "text/plain", "data": "eA=="}}]}),
        "append": (make_command(fhir, version=2, kind=WriteKind.APPEND, encounter_key="CSN-golden",
                                parent="DocumentReference/golden-parent"), None),
    }


def test_payloads_parse_as_r4b_and_match_golden_samples(fhir, adapter):
    if fhir.sim is None:
        pytest.skip("golden samples are rendered for the simulator's ids")
    from fhir.resources.R4B import get_fhir_model_class
    for name, (command, parent) in _sample_cases(fhir).items():
        if not fhir.profile_of.preliminary and not command.approval:
            continue                    # refused before rendering (see the test above)
        if not fhir.profile_of.transaction and parent is not None:
            parent = None
        payload = adapter.payload(command, parent)
        # deterministic: rendered twice, identical
        assert adapter.payload(command, parent) == payload
        # parses back with fhir.resources R4B, every entry too
        model = get_fhir_model_class(payload["resourceType"]).model_validate(payload)
        assert model.get_resource_type() == payload["resourceType"]
        docs = [e["resource"] for e in payload.get("entry", [])] or [payload]
        for res in docs:
            get_fhir_model_class(res["resourceType"]).model_validate(res)
            if res["resourceType"] == "DocumentReference" and "id" not in res:   # ours, not the PUT parent
                assert isinstance(res["context"]["encounter"], list)
                assert res["docStatus"] in ("preliminary", "final")
        # the base URL and the port vary per run: compare without them
        text = json.dumps(payload, indent=2, sort_keys=True).replace(fhir.sim.base_url, "{base}")
        path = SAMPLES / f"{fhir.profile}-{name}.json"
        if os.environ.get("CHARTBRIDGE_WRITE_SAMPLES") == "1":
            SAMPLES.mkdir(exist_ok=True)
            path.write_text(text + "\n", encoding="utf-8")
        assert path.exists(), f"golden sample missing: {path.name} (CHARTBRIDGE_WRITE_SAMPLES=1)"
        assert json.loads(path.read_text()) == json.loads(text), path.name


# --------------------------------------------------------------------------- auth and edges
def _jwt_part(token: str, i: int) -> dict:
    part = token.split(".")[i]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_client_assertion_claims(fhir, adapter, clock):
    tokens = adapter.client.tokens
    # Given no token_url in config: it is discovered from .well-known/smart-configuration
    token_url = fhir.target.discover() if fhir.live else fhir.sim.token_url
    if "token_url" not in fhir.settings:
        assert tokens.token_url == token_url
    # When two assertions are signed
    a, b = tokens.assertion(), tokens.assertion()
    header, claims = _jwt_part(a, 0), _jwt_part(a, 1)
    # Then each: our algorithm and kid, iss = sub = client, aud = token URL, exp <= 5 min, new jti
    assert header == {"alg": fhir.settings["algorithm"], "kid": fhir.settings["key_id"], "typ": "JWT"}
    assert claims["iss"] == claims["sub"] == fhir.settings["client_id"]
    assert claims["aud"] == tokens.token_url
    assert claims["iat"] == int(clock.now().timestamp()) or fhir.live
    assert 0 < claims["exp"] - claims["iat"] <= 300
    assert claims["jti"] != _jwt_part(b, 1)["jti"]
    # and the server grants a token for it
    assert tokens.token()


def test_authlib_defaults_would_break_smart():
    # Why auth.py overrides authlib: its PrivateKeyJWT signs exp = iat + 3600 and stores the
    # jti it generates in the claims dict it keeps, so the next assertion reuses it.
    from authlib.oauth2.rfc7523 import PrivateKeyJWT
    from joserfc.jwk import RSAKey

    class Auth:
        client_id, client_secret = "c", RSAKey.generate_key(2048)
    method = PrivateKeyJWT("https://t.example/token", claims={}, alg="RS384")
    one, two = _jwt_part(method.sign(Auth, "https://t.example/token"), 1), \
        _jwt_part(method.sign(Auth, "https://t.example/token"), 1)
    assert one["exp"] - one["iat"] == 3600 and one["jti"] == two["jti"]


def test_the_profile_format_wins_over_the_org_content_type(fhir, services, tmp_path):
    fhir.need_sim("renders for the simulator")
    from chartbridge.adapters.registry import registry
    from contract_tests.fhir_docref.conftest import org_config
    org = org_config(tmp_path, {**fhir.settings, "content_type": "text/html"})
    adapter = registry.get("fhir_docref").factory(org, org.targets["fhir_docref"], services)
    payload = adapter.payload(make_command(fhir))
    doc = payload["entry"][0]["resource"] if payload["resourceType"] == "Bundle" else payload
    att = doc["content"][0]["attachment"]
    text = _text(doc)
    fmt = fhir.profile_of.note_format
    if fmt == "xhtml":
        import xml.etree.ElementTree as ET
        assert att["contentType"] == "application/xhtml+xml;charset=utf-8"
        root = ET.fromstring(text.encode("utf-8"))               # well-formed XHTML
        assert root.tag == "{http://www.w3.org/1999/xhtml}html"
        assert "&lt;3 days&gt;" in text and "<h3>" in text
    elif fmt == "text/plain":
        assert att["contentType"] == "text/plain; charset=utf-8"
        assert "<" not in text.replace("<3 days>", "")           # markup gone, the note's own text kept
        assert "History of present illness:\nCough for three days" in text
        assert "fluids & rest <3 days>." in text
    else:
        assert att["contentType"] == "text/html; charset=utf-8"
        assert "&lt;3 days&gt;" in text and "<h3>" in text
    adapter.client.http.close()


def test_site_quirks_in_the_org_file_change_what_is_sent(fhir, services, tmp_path):
    sim = fhir.need_sim("inspects the calls")
    if not fhir.profile_of.conditional_create:
        pytest.skip(f"{fhir.profile}: sends no If-None-Exist, so there is no quirk to record")
    from chartbridge.adapters.registry import registry
    from contract_tests.fhir_docref.conftest import org_config
    # Given a us-core site whose server ignores If-None-Exist and takes no transaction,
    # recorded in the org file
    settings = {**fhir.settings, "transaction": False,
                "quirks": {"conditional_create": False}}
    org = org_config(tmp_path, settings)
    adapter = registry.get("fhir_docref").factory(org, org.targets["fhir_docref"], services)
    # When a note is sent
    adapter.send(make_command(fhir))
    adapter.client.http.close()
    # Then one plain create went out, without the condition
    creates = sim.calls("create")
    assert len(creates) == 1 and creates[0]["if_none_exist"] is False
    assert sim.calls("transaction") == []


def test_a_non_fhir_answer_is_permanent():
    import httpx

    from chartbridge.adapters.fhir_docref.client import FhirClient
    from chartbridge.core.errors import PermanentError

    class Tokens:
        org_id = "o"
        def token(self):
            return "t"
        def refresh(self, rejected):
            return "t2"
    http = httpx.Client(transport=httpx.MockTransport(
        lambda req: httpx.Response(201, content=b"<html>ok</html>",
                                   headers={"Content-Type": "text/html"})))
    client = FhirClient(base_url="http://fhir.invalid", tokens=Tokens(), http=http)
    with pytest.raises(PermanentError) as exc:
        client.create({"resourceType": "DocumentReference"})
    assert exc.value.vendor_code == "not_fhir"
    http = httpx.Client(transport=httpx.MockTransport(
        lambda req: httpx.Response(400, content=b"bad gateway page")))
    client = FhirClient(base_url="http://fhir.invalid", tokens=Tokens(), http=http)
    with pytest.raises(PermanentError) as exc:
        client.create({"resourceType": "DocumentReference"})
    assert exc.value.vendor_code == "not_fhir" and exc.value.status == 400
