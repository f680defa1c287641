"""The simulator's own rules, exercised over real MLLP sockets (and httpx for /_sim).

These prove the simulator enforces HL7 v2.5.1 ch.2/ch.9 as README.md describes; the
adapter's contract suite is written elsewhere. Messages here are hand-written from the
standard's segment definitions, not produced by the adapter.
"""
from __future__ import annotations

import socket
import ssl
import time

import hl7
import httpx
import pytest

from chartbridge.core.errors import InputError
from contract_tests.hl7_mdm.conftest import self_signed_cert
from contract_tests.hl7_mdm.simulator import HL7MDMSimulator, MLLPEchoServer

SB, EB = b"\x0b", b"\x1c\x0d"


def mdm(event: str, control_id: str, doc: str, *, availability: str = "UN",
        completion: str = "DO", parent: str = "", text: str | None = "Subjective: well",
        pid3: str = "MRN001^^^HOSP^MR", version: str = "2.5.1", msh15: str = "",
        msh16: str = "", structure: str | None = None) -> bytes:
    structure = structure or ("MDM_T01" if event == "T11" else "MDM_T02")
    txa = ["TXA", "1", "CN", "TX", "20240101120000"] + [""] * 7 + [doc, parent, "", "", "",
                                                                    completion, "", availability]
    assert txa[12] == doc and txa[17] == completion and txa[19] == availability
    segs = [f"MSH|^~\\&|CHARTBRIDGE|CLINIC|EHR|HOSP|20240101120000||MDM^{event}^{structure}"
            f"|{control_id}|P|{version}|||{msh15}|{msh16}",
            f"EVN|{event}|20240101120000",
            f"PID|1||{pid3}||DOE^JANE",
            "PV1|1|O",
            "|".join(txa)]
    if text is not None:
        segs.append(f"OBX|1|TX|11506-3^Progress note^LN||{text}||||||F")
    return ("\r".join(segs) + "\r").encode()


def read_frame(sock: socket.socket) -> bytes:
    """One MLLP frame's payload; raises socket.timeout at the socket's deadline."""
    buf = b""
    while not (buf.startswith(SB) and buf.endswith(EB)):
        chunk = sock.recv(1)  # byte by byte: never swallow the start of the next frame
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf[1:-2]


def send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(SB + payload + EB)


def exchange(sock: socket.socket, payload: bytes) -> hl7.Message:
    send(sock, payload)
    return hl7.parse(read_frame(sock).decode())


def msa(ack: hl7.Message) -> tuple[str, str]:
    seg = ack.segment("MSA")
    return str(seg[1]), str(seg[2])


@pytest.fixture()
def sim():
    with HL7MDMSimulator(control=True) as s:
        yield s


@pytest.fixture()
def conn(sim):
    sock = socket.create_connection((sim.host, sim.port), timeout=5)
    yield sock
    sock.close()


def test_t02_is_filed_acked_with_received_control_id_and_text_unescaped(sim, conn):
    # Given a T02 whose note text uses HL7 escapes
    text = r"Plan: A\F\B \S\ C\T\D \R\ E\E\F\.br\Line two"
    # When it is sent
    ack = exchange(conn, mdm("T02", "CTRL-1", "DOC-1", text=text))
    # Then AA echoes MSH-10 in MSA-2, the ACK has its own control id, and the text decodes
    assert msa(ack) == ("AA", "CTRL-1")
    assert str(ack.segment("MSH")[10]) not in ("", "CTRL-1")
    doc = sim.document("DOC-1")
    assert doc["text"] == "Plan: A|B ^ C&D ~ E\\F\nLine two"
    assert (doc["availability_status"], doc["completion_status"], doc["version"]) == \
        ("UN", "DO", 1)


def test_replayed_control_id_gets_same_ack_and_changes_nothing(sim, conn):
    # Given a filed T02
    first = exchange(conn, mdm("T02", "CTRL-1", "DOC-1"))
    # When the same MSH-10 arrives again (even with a different body)
    again = exchange(conn, mdm("T02", "CTRL-1", "DOC-1", text="changed"))
    # Then the identical ACK comes back, the store is unchanged, and the reuse is counted
    assert str(again) == str(first)
    assert sim.document("DOC-1")["text"] == "Subjective: well"
    assert sim.received_counts()["CTRL-1"] == 2
    assert sim.stats()["control_id_reused_with_different_body"] == 1


def test_t02_for_existing_document_is_not_filed_twice(sim, conn):
    # Given DOC-1 filed
    exchange(conn, mdm("T02", "C1", "DOC-1"))
    # When the same document comes with a new control id, then with different content
    same = exchange(conn, mdm("T02", "C2", "DOC-1"))
    other = exchange(conn, mdm("T02", "C3", "DOC-1", text="something else"))
    # Then it is filed once; a different body under the same TXA-12 is AE 205
    assert msa(same)[0] == "AA"
    assert msa(other)[0] == "AE"
    assert str(other.segment("ERR")[3]).startswith("205^")
    assert len(sim.documents()) == 1 and sim.document("DOC-1")["version"] == 1
    assert sim.stats()["t02_duplicates_not_filed"] == 1


@pytest.mark.parametrize("payload, code, err_code, location", [
    (mdm("T02", "C1", "D", pid3=""), "AE", "101", "PID^1^3"),
    (mdm("T02", "C1", ""), "AE", "101", "TXA^1^12"),
    (mdm("T02", "C1", "D", completion="XX"), "AE", "103", "TXA^1^17"),
    (mdm("T02", "C1", "D", availability=""), "AE", "101", "TXA^1^19"),
    (mdm("T02", "C1", "D", text=None), "AE", "100", "OBX"),
    (mdm("T10", "C1", "D"), "AE", "101", "TXA^1^13"),
    (mdm("T02", "C1", "D", version="2.3"), "AR", "203", "MSH^1^12"),
    (mdm("T02", "C1", "D", structure="MDM_T01"), "AR", "200", "MSH^1^9^1^3"),
    (mdm("T03", "C1", "D"), "AR", "201", "MSH^1^9^1^2"),
])
def test_bad_messages_get_error_ack_naming_the_field(sim, conn, payload, code, err_code,
                                                     location):
    # Given a message missing or misusing one required element; When it is sent
    ack = exchange(conn, payload)
    # Then MSA-1 is AE/AR, MSA-2 the control id, ERR-2 locates it, ERR-3 is the 0357 code
    assert msa(ack) == (code, "C1")
    err = ack.segment("ERR")
    assert str(err[2]) == location and str(err[3]).split("^")[0] == err_code
    assert str(err[8])  # human-readable text
    assert sim.documents() == {}


def test_t11_with_obx_is_refused(sim, conn):
    exchange(conn, mdm("T02", "C1", "D"))
    ack = exchange(conn, mdm("T11", "C2", "D"))  # T11 is MDM_T01: no OBX allowed
    assert msa(ack)[0] == "AE" and str(ack.segment("ERR")[2]) == "OBX"
    assert sim.document("D")["availability_status"] == "UN"


def test_unframed_garbage_is_answered_ar_and_connection_survives(sim, conn):
    # Given a frame that is not HL7; When sent; Then AR, and the next message still works
    ack = exchange(conn, b"hello")
    assert msa(ack) == ("AR", "")
    assert msa(exchange(conn, mdm("T02", "C1", "D")))[0] == "AA"


def test_document_lifecycle_edit_replace_addend_cancel(sim, conn):
    # Given an unavailable draft
    assert msa(exchange(conn, mdm("T02", "C1", "D1")))[0] == "AA"
    # When edited while unavailable (T08) -> same TXA-12, new text, version 2, made available
    assert msa(exchange(conn, mdm("T08", "C2", "D1", text="edited", availability="AV",
                                  completion="AU")))[0] == "AA"
    d1 = sim.document("D1")
    assert (d1["text"], d1["version"], d1["availability_status"]) == ("edited", 2, "AV")
    # Then a T08 on the now-available document is refused, and so is a T11
    assert msa(exchange(conn, mdm("T08", "C3", "D1", text="late edit")))[0] == "AE"
    assert msa(exchange(conn, mdm("T11", "C4", "D1", text=None)))[0] == "AE"
    assert sim.document("D1")["text"] == "edited"
    # An addendum to the available document links to it
    assert msa(exchange(conn, mdm("T06", "C5", "D1-A", parent="D1", text="addendum",
                                  availability="AV")))[0] == "AA"
    assert sim.document("D1")["addenda"] == ["D1-A"]
    assert sim.document("D1-A")["parent"] == "D1"
    # A replacement makes the parent obsolete
    assert msa(exchange(conn, mdm("T10", "C6", "D2", parent="D1", text="replacement",
                                  availability="AV")))[0] == "AA"
    assert sim.document("D1")["availability_status"] == "OB"
    assert sim.document("D1")["replaced_by"] == "D2"
    assert sim.document("D2")["parent"] == "D1"
    # A second replacement of the obsolete parent is refused
    assert msa(exchange(conn, mdm("T10", "C7", "D3", parent="D1", availability="AV")))[0] \
        == "AE"
    # A T11 cancels only an unavailable document
    exchange(conn, mdm("T02", "C8", "D9"))
    assert msa(exchange(conn, mdm("T11", "C9", "D9", text=None)))[0] == "AA"
    assert sim.document("D9")["availability_status"] == "CA"


def test_change_to_a_document_of_another_patient_is_refused(sim, conn):
    # Given D1 for one patient; When a T08 for D1 names another patient (wrong chart)
    exchange(conn, mdm("T02", "C1", "D1"))
    ack = exchange(conn, mdm("T08", "C2", "D1", pid3="MRN999^^^HOSP^MR", text="x"))
    # Then AE pointing at PID-3, and the document is untouched
    assert msa(ack)[0] == "AE" and str(ack.segment("ERR")[2]) == "PID^1^3"
    assert sim.document("D1")["text"] == "Subjective: well"


def test_enhanced_mode_commit_ack_and_recorded_application_ack(sim, conn):
    # Given MSH-15=AL, MSH-16=AL: When sent; Then one commit ACK CA on the wire
    ack = exchange(conn, mdm("T02", "C1", "D1", msh15="AL", msh16="AL"))
    assert msa(ack) == ("CA", "C1")
    # and the application ACK (AA) is recorded for the sender's own listener
    (app,) = sim.app_acks()
    assert (app["code"], app["acked_control_id"], app["sent"]) == ("AA", "C1", False)
    # An error condition: commit accepted, application ack AE (T08 on unknown document)
    ack = exchange(conn, mdm("T08", "C2", "NOPE", msh15="AL", msh16="ER"))
    assert msa(ack) == ("CA", "C2")
    assert sim.app_acks()[-1]["code"] == "AE"
    # A structural error is a commit error CE
    assert msa(exchange(conn, mdm("T02", "C3", "D3", pid3="", msh15="AL")))[0] == "CE"


def test_enhanced_mode_er_sends_nothing_on_success(sim, conn):
    # Given MSH-15=ER on a good message followed by MSH-15=AL on another
    send(conn, mdm("T02", "C1", "D1", msh15="ER", msh16="NE"))
    ack = exchange(conn, mdm("T02", "C2", "D2", msh15="AL", msh16="NE"))
    # Then the first frame back is for C2: nothing was sent for C1, yet C1 was filed
    assert msa(ack) == ("CA", "C2")
    assert sim.document("D1") is not None


def test_application_ack_on_same_connection_when_configured():
    with HL7MDMSimulator(application_ack="same_connection") as sim:
        with socket.create_connection((sim.host, sim.port), timeout=5) as sock:
            send(sock, mdm("T02", "C1", "D1", msh15="AL", msh16="AL"))
            commit = hl7.parse(read_frame(sock).decode())
            app = hl7.parse(read_frame(sock).decode())
    assert msa(commit) == ("CA", "C1") and msa(app) == ("AA", "C1")


def test_fault_no_ack_files_but_withholds_ack_then_resend_is_deduped(sim, conn):
    # Given the next message's ACK will be withheld
    sim.faults.add("no_ack")
    send(conn, mdm("T02", "C1", "D1"))
    # When another message follows on the same open connection
    ack2 = exchange(conn, mdm("T02", "C2", "D2"))
    # Then the first frame back is C2's (none for C1), C1 was filed anyway
    assert msa(ack2) == ("AA", "C2")
    assert sim.document("D1") is not None
    # and resending C1 returns its original ACK without filing twice
    assert msa(exchange(conn, mdm("T02", "C1", "D1"))) == ("AA", "C1")
    assert len(sim.documents()) == 2 and sim.document("D1")["version"] == 1


def test_fault_late_ack_still_names_the_original_control_id(sim, conn):
    # Given a late ACK (0.6 s) and a sender timeout of 0.2 s
    sim.faults.add("late_ack", delay_s=0.6)
    conn.settimeout(0.2)
    send(conn, mdm("T02", "C1", "D1"))
    # When the sender's timeout expires
    with pytest.raises(socket.timeout):
        read_frame(conn)
    # Then the late ACK arrives afterwards and carries MSA-2 = C1
    conn.settimeout(5)
    assert msa(hl7.parse(read_frame(conn).decode())) == ("AA", "C1")


def test_fault_wrong_control_id_garbage_reset_and_reject(sim):
    sim.faults.add("wrong_control_id")
    sim.faults.add("garbage")
    sim.faults.add("reset")
    sim.faults.add("reject", retry_after=7)
    with socket.create_connection((sim.host, sim.port), timeout=5) as sock:
        assert msa(exchange(sock, mdm("T02", "C1", "D1")))[1] != "C1"
        send(sock, mdm("T02", "C2", "D2"))
        junk = sock.recv(100)
        assert junk and not junk.startswith(SB)
    with socket.create_connection((sim.host, sim.port), timeout=5) as sock:
        send(sock, mdm("T02", "C3", "D3"))
        with pytest.raises(ConnectionError):  # RST (or at least EOF), no ACK
            read_frame(sock)
    with socket.create_connection((sim.host, sim.port), timeout=5) as sock:
        ack = exchange(sock, mdm("T02", "C4", "D4"))
        assert msa(ack) == ("AR", "C4")
        assert str(ack.segment("ERR")[7]) == "retry_after=7"
        assert sim.document("D4") is None  # rejected = not filed
        # the retry is accepted
        assert msa(exchange(sock, mdm("T02", "C4", "D4")))[0] == "AA"
    assert {d for d in sim.documents()} == {"D1", "D2", "D3", "D4"}
    assert sim.faults.pending() == []


def test_a_fault_for_one_trigger_waits_for_that_trigger(sim, conn):
    # Given a reject planned for T06 messages only
    sim.faults.add("reject", event="T06")
    # When a T02 arrives  Then it is filed as usual and the fault still waits
    assert msa(exchange(conn, mdm("T02", "C1", "D1", availability="AV"))) == ("AA", "C1")
    assert [(f["event"], f["times"], f["fired"]) for f in sim.faults.pending()] == [("T06", 1, 0)]
    # When the T06 arrives  Then it meets the fault (AR, not filed) and the plan is spent
    assert msa(exchange(conn, mdm("T06", "C2", "D2", parent="D1", availability="AV")))[0] == "AR"
    assert sim.document("D2") is None and sim.faults.pending() == []


def test_fault_options_are_validated():
    with pytest.raises(InputError) as err:
        HL7MDMSimulator().faults.add("explode")
    assert err.value.field == "kind"
    with pytest.raises(InputError) as err:
        HL7MDMSimulator().faults.add("late_ack", delay_s=-1)
    assert err.value.field == "delay_s"


def test_http_controls(sim, conn):
    base = sim.control_url + "/_sim"
    # Given a fault added over HTTP (bad ones refused naming the field)
    bad = httpx.post(f"{base}/faults", json={"kind": "no_ack", "times": 0})
    assert bad.status_code == 400 and bad.json()["field"] == "times"
    assert httpx.post(f"{base}/faults", json={"kind": "reject"}).status_code == 200
    assert httpx.get(f"{base}/faults").json()["faults"][0]["kind"] == "reject"
    # When messages flow
    assert msa(exchange(conn, mdm("T02", "C1", "D/1")))[0] == "AR"
    assert msa(exchange(conn, mdm("T02", "C1", "D/1")))[0] == "AA"
    # Then documents, messages and acks are inspectable, and reset clears them
    assert httpx.get(f"{base}/documents/D%2F1").json()["unique_document_number"] == "D/1"
    assert httpx.get(f"{base}/documents/none").status_code == 404
    assert httpx.get(f"{base}/messages").json()["counts"] == {"C1": 2}
    assert [a["code"] for a in httpx.get(f"{base}/acks").json()["acks"]] == ["AR", "AA"]
    assert httpx.post(f"{base}/reset").status_code == 200
    assert httpx.get(f"{base}/documents").json() == {"documents": {}}


def test_tls_mllp(tmp_path):
    # Given a simulator serving TLS with a self-signed certificate
    cert, key = self_signed_cert(tmp_path)
    with HL7MDMSimulator(certfile=cert, keyfile=key) as sim:
        assert sim.base_url.startswith("mllps://")
        ctx = ssl.create_default_context(cafile=cert)
        # When a client that trusts it sends a T02; Then AA over TLS
        with socket.create_connection((sim.host, sim.port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            assert msa(exchange(sock, mdm("T02", "C1", "D1"))) == ("AA", "C1")
        # and a plain-TCP client gets no ACK
        with socket.create_connection((sim.host, sim.port), timeout=5) as plain:
            send(plain, mdm("T02", "C2", "D2"))
            with pytest.raises((ConnectionError, socket.timeout)):
                read_frame(plain)
    assert sim.document("D2") is None


def test_echo_server_frames_back_payloads():
    with MLLPEchoServer() as echo:
        with socket.create_connection((echo.host, echo.port), timeout=5) as sock:
            for i in range(3):
                send(sock, b"payload-%d" % i)
                assert read_frame(sock) == b"payload-%d" % i
        deadline = time.monotonic() + 5
        while echo.frames_echoed < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert echo.frames_echoed == 3


def test_stop_closes_open_connections_promptly():
    sim = HL7MDMSimulator()
    sim.start()
    # Given a connection the simulator is serving
    sock = socket.create_connection((sim.host, sim.port), timeout=5)
    deadline = time.monotonic() + 5
    while sim.stats()["connections"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    # When it stops; Then it returns promptly and the client sees the connection end
    t0 = time.monotonic()
    sim.stop()
    assert time.monotonic() - t0 < 5
    with pytest.raises((ConnectionError, OSError)):
        send(sock, b"x")
        read_frame(sock)
    sock.close()


def test_note_text_never_reaches_logs(sim, conn, caplog):
    # Given note text with escape sequences python-hl7 warns about (with the whole field)
    caplog.set_level("DEBUG")
    ack = exchange(conn, mdm("T02", "C1", "D1", text=r"SECRET-NOTE \\ \Cxx\ end"))
    # Then the message is still filed, and no log record carries the text
    assert msa(ack)[0] == "AA"
    assert "SECRET-NOTE" not in caplog.text
