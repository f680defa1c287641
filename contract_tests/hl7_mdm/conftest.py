"""Fixtures for the HL7 MDM contract suite.

By default every test runs against the in-process MLLP simulator (simulator/). To point
the suite at a real interface engine's test port instead, set
    CHARTBRIDGE_CONTRACT_BASE_URL=mllp://HOST:PORT      (or mllps:// with
    CHARTBRIDGE_HL7_CA_FILE=path/to/ca.pem)
    CHARTBRIDGE_HL7_RECEIVING_APPLICATION, CHARTBRIDGE_HL7_RECEIVING_FACILITY (MSH-5/6)
    CHARTBRIDGE_HL7_SENDING_FACILITY (MSH-4)
(or CHARTBRIDGE_CONTRACT_HOST and _PORT). That is a LIVE run: a preflight (connect, and
the TLS handshake for mllps) runs first; what left the client is read off the wire (`wire`,
every MLLP frame written to the receiver, wrapped at asyncio's StreamWriter); each test's
messages get control ids of their own (a real receiver keeps earlier runs'); tests that need
fault injection or the receiver's store skip as "simulator-only: ..."; the run ends with
the summary of contract_tests/support/live.py.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from urllib.parse import urlsplit

import pytest

from chartbridge.adapters.hl7_mdm.adapter import Hl7MdmAdapter, client_ssl_context
from chartbridge.adapters.hl7_mdm.builder import Vocabulary
from chartbridge.adapters.hl7_mdm.config import Hl7MdmConfig
from chartbridge.core.models import (Approval, ApprovalState, Identifier, NoteDraft,
                                     NoteSection, Provenance, WriteCommand, WriteKind,
                                     WriteStatus)

from contract_tests.support.live import FAULTS, INSPECTION, LiveRun, PreflightFailed

from .simulator import HL7MDMSimulator

REMOTE = os.environ.get("CHARTBRIDGE_CONTRACT_BASE_URL", "").strip()
if not REMOTE and os.environ.get("CHARTBRIDGE_CONTRACT_HOST"):
    REMOTE = (f"mllp://{os.environ['CHARTBRIDGE_CONTRACT_HOST']}:"
              f"{os.environ.get('CHARTBRIDGE_CONTRACT_PORT', '2575')}")
_run_tag = {"n": 0}


def _preflight() -> None:
    import socket
    import ssl

    cfg = make_config(None)
    try:
        sock = socket.create_connection((cfg.host, cfg.port), timeout=cfg.connect_timeout_s)
    except OSError as exc:
        raise PreflightFailed(f"cannot connect to {cfg.host}:{cfg.port} "
                              f"({exc.strerror or type(exc).__name__})") from None
    try:
        if cfg.tls.enabled:
            try:
                client_ssl_context(cfg.tls).wrap_socket(sock, server_hostname=cfg.host).close()
            except (ssl.SSLError, OSError) as exc:
                raise PreflightFailed(f"TLS handshake with {cfg.host}:{cfg.port} failed "
                                      f"({type(exc).__name__})") from None
    finally:
        sock.close()


def pytest_configure(config):
    if not REMOTE or config.pluginmanager.has_plugin("chartbridge-live-run"):
        return
    if urlsplit(REMOTE).scheme not in ("mllp", "mllps") or not urlsplit(REMOTE).port:
        raise pytest.UsageError(f"the MDM suite needs mllp://HOST:PORT (or mllps://), got {REMOTE!r}")
    config.pluginmanager.register(LiveRun("hl7_mdm", REMOTE, preflight=_preflight),
                                  "chartbridge-live-run")


def pytest_collection_modifyitems(config, items):
    """Live: the simulator's own tests and the offline checks (golden samples: no adapter)
    are not scenarios of this receiver."""
    if not REMOTE:
        return
    keep = [i for i in items if "test_simulator" not in i.nodeid
            and "test_non_deduping_receiver" not in i.nodeid
            and {"adapter", "make_adapter", "driver"} & set(getattr(i, "fixturenames", ()))]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


@pytest.fixture(autouse=True)
def _own_control_ids():
    """Live: every test's messages get an encounter key (so a control id) of their own."""
    if REMOTE:
        import uuid
        _run_tag["n"] = uuid.uuid4().hex[:10]
    yield
    _run_tag["n"] = 0


class Wire:
    """Every MLLP frame this process writes to the receiver during one test, decoded."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port, self.frames = host, port, []

    def control_ids(self) -> list[str]:
        out = []
        for frame in self.frames:
            msh = frame.split("\r", 1)[0]
            fields = msh.split(msh[3]) if len(msh) > 3 else []
            out.append(fields[9] if len(fields) > 9 else "")
        return out

    def sent(self, control_id: str) -> list[str]:
        return [f for f, c in zip(self.frames, self.control_ids()) if c == control_id]


@pytest.fixture
def wire(sim, monkeypatch):
    import asyncio

    cfg = make_config(sim)
    w = Wire(cfg.host, cfg.port)
    original = asyncio.StreamWriter.write

    def write(writer, data):
        peer = writer.get_extra_info("peername") or ("", 0)
        if peer[1] == w.port:
            for frame in bytes(data).split(b"\x0b")[1:]:
                w.frames.append(frame.split(b"\x1c")[0].decode("utf-8", "replace"))
        return original(writer, data)

    monkeypatch.setattr(asyncio.StreamWriter, "write", write)
    return w

TITLES = {"10164-2": "History of present illness", "51847-2": "Assessment and plan",
          "29545-1": "Physical findings"}
VOCAB = Vocabulary(txa2=lambda code: {"11488-4": "CN"}.get(code or "", "PR"),
                   obx3=lambda code: (code, TITLES.get(code, code), "LN"),
                   title=lambda code: TITLES.get(code, code),
                   note_type=lambda code: (code or "11506-3", "Progress note"))

PATIENT = [Identifier(value="MRN0001", type="MRN", system="urn:oid:1.2.840.114350.1.13.0"),
           Identifier(value="E4711", type="EXTERNAL", system="HOSP")]
ENCOUNTER = [Identifier(value="CSN-77", type="CSN")]
T0 = datetime(2026, 11, 21, 15, 0, tzinfo=timezone.utc)


def needs_simulator(sim, why: str = INSPECTION):
    if sim is None:
        pytest.skip(why)
    return sim


def needs_faults(sim):
    return needs_simulator(sim, FAULTS)


@pytest.fixture
def sim():
    if REMOTE:
        yield None
        return
    with HL7MDMSimulator() as s:
        yield s


def make_config(sim, **overrides) -> Hl7MdmConfig:
    if sim is None:
        url = urlsplit(REMOTE)
        base = {"host": url.hostname, "port": url.port,
                "receiving_application": os.environ.get(
                    "CHARTBRIDGE_HL7_RECEIVING_APPLICATION", "EHR"),
                "receiving_facility": os.environ.get("CHARTBRIDGE_HL7_RECEIVING_FACILITY",
                                                     "HOSP"),
                "sending_facility": os.environ.get("CHARTBRIDGE_HL7_SENDING_FACILITY",
                                                   "CHARTBRIDGE_TEST"),
                "timeout_s": 10, "processing_id": "T"}
        if url.scheme == "mllps":
            base["tls"] = {"enabled": True, "ca_file": os.environ.get("CHARTBRIDGE_HL7_CA_FILE")}
    else:
        base = {"host": sim.host, "port": sim.port, "receiving_application": sim.application,
                "receiving_facility": sim.facility, "sending_facility": "CLINIC",
                "timeout_s": 2.0, "max_resends": 2}
    base.update(overrides)
    return Hl7MdmConfig.model_validate(base)


@pytest.fixture
def make_adapter(sim):
    made: list[Hl7MdmAdapter] = []

    def factory(**overrides) -> Hl7MdmAdapter:
        cfg = make_config(sim, **overrides)
        adapter = Hl7MdmAdapter(cfg, VOCAB, org_id="org-a",
                                ssl_context=client_ssl_context(cfg.tls))
        made.append(adapter)
        return adapter

    yield factory
    for a in made:
        a.close()


@pytest.fixture
def adapter(make_adapter):
    return make_adapter()


def self_signed_cert(directory) -> tuple[str, str]:
    """A throwaway EC certificate for 127.0.0.1 (cert.pem, key.pem in `directory`), made at
    test time so no key lives in git."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def draft(text: str = "Community acquired pneumonia.\nStart amoxicillin.", *, version: int = 1,
          sections: list[tuple[str, str]] | None = None) -> NoteDraft:
    secs = sections or [("10164-2", "Cough for three days."), ("51847-2", text)]
    return NoteDraft(id=f"d{version}", session_id="s1", version=version,
                     sections=[NoteSection(code=c, text=t) for c, t in secs],
                     provenance=Provenance(transcriber="t", transcriber_model="m",
                                           generator="g", generator_version="1",
                                           template_id="progress", template_version="1"),
                     created_at=T0)


def approval(d: NoteDraft) -> Approval:
    return Approval(draft_id=d.id, draft_version=d.version, content_hash=d.content_hash(),
                    approver=Identifier(value="1234567890", type="NPI",
                                        system="2.16.840.1.113883.4.6"),
                    approver_name="Jane Doe", role="physician", decision="approved",
                    at=T0.replace(minute=5))


def command(*, kind: WriteKind = WriteKind.CREATE, version: int = 1, approved: bool = True,
            parent: str | None = None, parent_available: bool | None = None,
            text: str | None = None, patient_ids=None, sections=None,
            encounter_key: str = "CSN-77") -> WriteCommand:
    if _run_tag["n"]:
        encounter_key = f"{encounter_key}-{_run_tag['n']}"
    d = draft(text, version=version, sections=sections) if text or sections else \
        draft(version=version)
    extra = {} if parent_available is None else {"parent_available": parent_available}
    return WriteCommand(
        org_id="org-a", target="hl7_mdm", session_id="s1", encounter_key=encounter_key,
        note_version=version, resource_kind="MDM",
        approval_state=ApprovalState.APPROVED if approved else ApprovalState.PRELIMINARY,
        kind=kind, correlation_id="corr-1", patient_ids=patient_ids or PATIENT,
        encounter_ids=ENCOUNTER, user=Identifier(value="U77", type="EPIC"), draft=d,
        approval=approval(d) if approved else None, parent_external_id=parent, extra=extra)


class MdmDriver:
    """The shared scenarios' view of this suite (contract_tests/capabilities/scenarios.py):
    a command's artifacts are the messages that left the client with its control id."""

    name = "hl7_mdm"
    losing_the_answer = None
    why_no_lost_answer = ("hl7_mdm: a lost ACK is resent with the same MSH-10 "
                          "(test_crash_after_receiver_ack..., test_late_ack_resend...)")

    # preliminary -> final is T02 (IP/UN) then T08 (AU/AV) on the same TXA-12; a
    # correction of an available document is T10 (replace, the original OB) or T06 (addendum)
    # with TXA-13 naming the original
    updates_in_place = True
    shows_parent_link = True
    lacks = {"stale_check": "hl7_mdm: MDM has no version check on T08 (no If-Match): a "
                            "receiver cannot refuse a stale edit"}

    def __init__(self, adapter, wire: Wire, sim) -> None:
        self.adapter, self.wire, self.sim = adapter, wire, sim
        self._n = 0

    def command(self, **kw):
        # an encounter key (so a control id) of its own per command
        self._n += 1
        kw.setdefault("encounter_key", f"CSN-{self._n}")
        return command(**kw)

    def filed(self, ref: str):
        """The receiver's document (simulator); a real receiver keeps its store to itself."""
        from contract_tests.capabilities.scenarios import Filed
        if self.sim is None:
            return None
        doc = self.sim.document(ref)
        return Filed(final=doc["completion_status"] == "AU",
                     replaced=doc["availability_status"] == "OB"
                     and doc.get("replaced_by") is not None,
                     in_the_right_chart=doc["patient_id"].split("^")[0] == PATIENT[0].value)

    def final_after(self, prelim, cmd):
        return command(kind=WriteKind.EDIT, version=2, parent=prelim.external_id,
                       parent_available=False, text="Pneumonia, improving.",
                       encounter_key=cmd.encounter_key.removesuffix(f"-{_run_tag['n']}"))

    def correction(self, parent, cmd, kind):
        return command(kind=kind, version=2, parent=parent.external_id, parent_available=True,
                       text="Correction: allergy to penicillin.",
                       encounter_key=cmd.encounter_key.removesuffix(f"-{_run_tag['n']}"))

    def parent_of(self, record) -> str | None:
        """TXA-13 as the receiver filed it (simulator), else as its ACK'd message carried it."""
        assert record.outcome["event"] in ("T10", "T06"), record.outcome
        if self.sim is not None:
            assert self.sim.document(record.external_id)["parent"] == \
                record.outcome["parent_document_number"]
        return record.outcome.get("parent_document_number")

    def refusal(self, ledger):
        """An edit naming a document the receiver does not know: the simulator's rule answers
        AE (ERR-3 204); a real receiver's rules are its own, so this is simulator-only."""
        from contract_tests.capabilities.scenarios import Refusal
        needs_simulator(self.sim, "simulator-only: a receiver rule that answers AE "
                                  "(TXA-12 unknown); a real receiver's rules are its own")
        record = ledger.execute(command(kind=WriteKind.EDIT, version=2, parent="CBUNKNOWN",
                                        parent_available=False), self.adapter)
        assert record.status == WriteStatus.FAILED, record.status
        assert record.outcome["vendor_code"] == "204" and record.outcome["ack"] == "AE"
        return Refusal(permanent=record.last_error_class == "PermanentError",
                       text=record.last_error or "", names="TXA-12")

    def count(self, cmd) -> int:
        from chartbridge.adapters.hl7_mdm.builder import control_id_for
        return len(self.wire.sent(control_id_for(cmd.idempotency_key())))


@pytest.fixture
def driver(adapter, wire, sim):
    return MdmDriver(adapter, wire, sim)
