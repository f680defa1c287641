"""The MDM receiver: one MLLP connection loop that files documents, dedupes on MSH-10,
answers original or enhanced acknowledgements and applies planned faults, plus its JSON
control plane over HTTP (``/_sim/...``) and the standalone ``serve``."""
from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
import socket
import ssl
import struct
import threading
import time
import urllib.parse
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from hl7.mllp import InvalidBlockError
from werkzeug.wrappers import Request

from chartbridge.core.errors import InputError
from contract_tests.support.http import BackgroundServer, json_response

from .acks import Acks, problem_or
from .faults import Fault, FaultPlan
from .mllp import MLLPEchoServer, MLLPServer, frame, server_ssl_context
from .store import DocumentStore
from .validation import _Header, _Problem, check_body, parse


@dataclass
class _Outgoing:
    """What to put on the wire for one received frame."""

    frames: list[bytes] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    fault: Fault | None = None


class HL7MDMSimulator(MLLPServer):
    """HL7 v2.5.1 MDM receiver with a document store, dedupe, enhanced acks and faults.

    application_ack: what to do with the application ACK in enhanced mode (MSH-16):
      "record"           compute it, keep it in ``app_acks()``, do not send it (the standard
                         has the receiver send it as a new message on its own link back to
                         the sender; tests read it here instead)
      "same_connection"  send it on the same connection right after the commit ACK
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 ssl_context: ssl.SSLContext | None = None,
                 certfile: str | None = None, keyfile: str | None = None,
                 control: bool = False, control_port: int = 0,
                 application: str = "EHRSIM", facility: str = "SIMHOSP",
                 application_ack: str = "record", encoding: str = "utf-8",
                 max_log: int = 10_000, max_documents: int = 10_000,
                 max_frame_bytes: int = 4 * 1024 * 1024) -> None:
        if ssl_context is None and certfile:
            ssl_context = server_ssl_context(certfile, keyfile)
        super().__init__(host, port, ssl_context=ssl_context, max_frame_bytes=max_frame_bytes)
        if application_ack not in ("record", "same_connection"):
            raise InputError("application_ack must be 'record' or 'same_connection'",
                             field="application_ack")
        self.application, self.facility = application, facility
        self.application_ack = application_ack
        self.encoding = encoding
        self.max_log, self.max_documents = max_log, max_documents
        self.faults = FaultPlan()
        self._control = (BackgroundServer(self._wsgi, host=host, port=control_port,
                                          name="hl7-sim-control") if control else None)
        self.control_url: str | None = None
        self._ack_builder = Acks(application, facility, encoding)
        self._reset_state()

    # state -----------------------------------------------------------------------------
    def _reset_state(self) -> None:
        with self._lock:
            self._processed: collections.OrderedDict[str, dict[str, Any]] = (
                collections.OrderedDict())
            self._received: collections.OrderedDict[str, int] = collections.OrderedDict()
            self._messages: collections.deque = collections.deque(maxlen=self.max_log)
            self._acks: collections.deque = collections.deque(maxlen=self.max_log)
            self._app_acks: collections.deque = collections.deque(maxlen=self.max_log)
            self._stats: collections.Counter = collections.Counter()
            self._store = DocumentStore(self.max_documents, self._stats)
            self._msg_seq = 0

    def reset(self) -> None:
        """Forget documents, messages, acks, counters and planned faults."""
        self.faults.clear()
        self._reset_state()

    # inspection ------------------------------------------------------------------------
    def documents(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return json.loads(json.dumps(self._store.documents))

    def document(self, unique_document_number: str) -> dict[str, Any] | None:
        with self._lock:
            doc = self._store.documents.get(unique_document_number)
            return json.loads(json.dumps(doc)) if doc else None

    def messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(m) for m in self._messages]

    def received_counts(self) -> dict[str, int]:
        """How many times each MSH-10 arrived."""
        with self._lock:
            return dict(self._received)

    def acks(self) -> list[dict[str, Any]]:
        """ACKs put on the wire (or withheld by a fault: ``delivered`` False)."""
        with self._lock:
            return [dict(a) for a in self._acks]

    def app_acks(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(a) for a in self._app_acks]

    def stats(self) -> dict[str, int]:
        with self._lock:
            out = dict(self._stats)
            out["connections"] = self._connections
            out["documents"] = len(self._store.documents)
            return out

    # lifecycle with the HTTP control plane -------------------------------------------------
    def start(self) -> str:
        url = super().start()
        if self._control is not None and not self._control.running:
            self.control_url = self._control.start()
        return url

    def stop(self) -> None:
        if self._control is not None and self._control.running:
            self._control.stop()
            self.control_url = None
        super().stop()

    # connection loop -------------------------------------------------------------------
    async def _serve_connection(self, reader, writer) -> None:
        while True:
            try:
                block = await reader.readblock()
            except InvalidBlockError:
                with self._lock:
                    self._stats["framing_errors"] += 1
                continue  # bytes up to the next <FS><CR> are dropped, as MLLP receivers do
            except ValueError:
                with self._lock:
                    self._stats["oversize_frames"] += 1
                continue
            except asyncio.IncompleteReadError:
                return
            out = self._handle_block(block)
            fault = out.fault
            if fault and fault.kind == "reset":
                self._record_delivery(out, delivered=False)
                sock = writer.get_extra_info("socket")
                if sock is not None:  # SO_LINGER 0: close sends RST, not FIN
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                    except OSError:
                        pass
                writer.transport.abort()
                return
            if fault and fault.kind == "late_ack":
                await asyncio.sleep(fault.delay_s)
            try:
                for data in out.frames:
                    writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError):
                self._record_delivery(out, delivered=False)
                return
            self._record_delivery(out, delivered=bool(out.frames))

    def _record_delivery(self, out: _Outgoing, delivered: bool) -> None:
        with self._lock:
            for rec in out.records:
                rec["delivered"] = delivered
                self._acks.append(rec)

    # one frame -------------------------------------------------------------------------
    def _handle_block(self, block: bytes) -> _Outgoing:
        with self._lock:
            self._msg_seq += 1
            self._stats["frames"] += 1
            digest = hashlib.sha256(block).hexdigest()
            msg, header, problem = parse(block, self.encoding)
            cid = header.control_id
            if cid:
                self._received[cid] = self._received.get(cid, 0) + 1
                self._received.move_to_end(cid)
                while len(self._received) > self.max_log:
                    self._received.popitem(last=False)
            log = {"seq": self._msg_seq, "control_id": cid, "event": header.event,
                   "mode": "enhanced" if header.enhanced else "original", "replay": False,
                   "conflict": False, "fault": None, "ack_code": None, "app_ack_code": None,
                   "document": None, "received_at": time.time()}
            self._messages.append(log)
            fault = self.faults.take(header.event)
            log["fault"] = fault.kind if fault else None

            if fault and fault.kind == "reject":
                self._stats["rejected_by_fault"] += 1
                frames, records = self._ack_builder.reject_for_retry(msg, header, fault)
                log["ack_code"] = "AR"
                return _Outgoing(frames, records, fault)

            done = self._processed.get(cid) if cid else None
            if done is not None:  # dedupe on MSH-10: same answer again, nothing changes
                log["replay"] = True
                self._stats["replays"] += 1
                if done["digest"] != digest:
                    log["conflict"] = True
                    self._stats["control_id_reused_with_different_body"] += 1
                log["ack_code"], log["app_ack_code"] = done["ack_code"], done["app_ack_code"]
                records = [dict(r, replay=True) for r in done["records"]]
                return self._apply_fault(fault, list(done["frames"]), records, header)

            if fault and not fault.process:
                self._stats["dropped_by_fault"] += 1
                return _Outgoing([], [], fault)

            frames, records, ack_code, app_code, doc_key = self._respond(msg, header, problem)
            log.update(ack_code=ack_code, app_ack_code=app_code, document=doc_key)
            if cid and msg is not None:
                self._processed[cid] = {"digest": digest, "frames": list(frames),
                                        "records": [dict(r) for r in records],
                                        "ack_code": ack_code, "app_ack_code": app_code}
                while len(self._processed) > self.max_log:
                    self._processed.popitem(last=False)
            return self._apply_fault(fault, frames, records, header)

    def _apply_fault(self, fault: Fault | None, frames: list[bytes],
                     records: list[dict[str, Any]], header: _Header) -> _Outgoing:
        if fault is None or fault.kind == "late_ack":
            for r in records:
                r["fault"] = fault.kind if fault else None
            return _Outgoing(frames, records, fault)
        if fault.kind == "no_ack":
            for r in records:
                r["fault"] = "no_ack"
                self._acks.append(dict(r, delivered=False))
            return _Outgoing([], [], fault)
        if fault.kind == "reset":
            for r in records:
                r["fault"] = "reset"
            return _Outgoing([], records, fault)
        if fault.kind == "garbage":
            junk = b"\x00\xffNOT-AN-ACK " + os.urandom(8) + b"\r\n"
            return _Outgoing([junk], [{"control_id": header.control_id, "ack_control_id": None,
                                       "code": None, "kind": "garbage", "fault": "garbage",
                                       "raw": junk.hex()}], fault)
        # wrong_control_id: the same ACK, but MSA-2 names a different message
        other = next((c for c in reversed(self._processed) if c != header.control_id),
                     None) or f"X{uuid.uuid4().hex[:12]}"
        out_frames, out_records = [], []
        for data, rec in zip(frames, records):
            text = data[1:-2].decode(self.encoding)
            segs = text.split("\r")
            fs = segs[0][3:4] or "|"
            for i, s in enumerate(segs):
                if s.startswith("MSA" + fs):
                    parts = s.split(fs)
                    if len(parts) > 2:
                        parts[2] = other
                    segs[i] = fs.join(parts)
            new = "\r".join(segs)
            out_frames.append(frame(new.encode(self.encoding)))
            out_records.append(dict(rec, acked_control_id=other, fault="wrong_control_id",
                                    raw=new))
        return _Outgoing(out_frames, out_records, fault)

    # parsing and checking --------------------------------------------------------------
    # acknowledgements --------------------------------------------------------------------
    def _respond(self, msg: Any, header: _Header, problem: _Problem | None):
        """Validate + apply; returns (frames, records, ack_code, app_ack_code, doc_key)."""
        facts = None
        if problem is None:
            try:
                facts = check_body(msg, header.event)
            except _Problem as p:
                problem = p
        if msg is None:  # unparseable: an original-mode AR is all we can say
            ack = self._ack_builder.fallback(header.control_id, problem)
            return [frame(ack.encode(self.encoding))], [self._ack_builder.record(ack, "original")], \
                "AR", None, None

        if not header.enhanced:
            code, text, key = self._run(header, problem, facts)
            ack = self._ack_builder.build(msg, code, text if code == "AA" else problem_or(text, code))
            return [frame(ack.encode(self.encoding))], [self._ack_builder.record(ack, "original")], \
                code, None, key

        # enhanced mode: commit ACK after "safe storage"; application result separately
        commit = "CA" if problem is None else ("CR" if problem.ack == "AR" else "CE")
        frames, records = [], []
        accept = header.accept_type or "AL"
        if accept == "AL" or (accept == "ER" and commit != "CA") or \
                (accept == "SU" and commit == "CA"):
            ack = self._ack_builder.build(msg, commit, problem)
            frames.append(frame(ack.encode(self.encoding)))
            records.append(self._ack_builder.record(ack, "commit"))
        app_code = key = None
        if commit == "CA":
            app_code, text, key = self._run(header, None, facts)
            app_ack = self._ack_builder.build(msg, app_code,
                                      text if app_code == "AA" else problem_or(text, app_code))
            rec = self._ack_builder.record(app_ack, "application")
            self._app_acks.append(rec)
            wanted = header.app_type or "NE"
            send = wanted == "AL" or (wanted == "ER" and app_code != "AA") or \
                (wanted == "SU" and app_code == "AA")
            rec["sent"] = send and self.application_ack == "same_connection"
            if rec["sent"]:
                frames.append(frame(app_ack.encode(self.encoding)))
                records.append(dict(rec))
        return frames, records, commit, app_code, key

    def _run(self, header: _Header, problem: _Problem | None, facts: dict[str, Any] | None):
        if problem is not None:
            self._stats[f"ack_{problem.ack}"] += 1
            return problem.ack, problem, None
        assert facts is not None
        try:
            text, key = self._store.apply(header.event, facts, header.control_id)
        except _Problem as p:
            self._stats["ack_AE"] += 1
            return "AE", p, None
        self._stats["ack_AA"] += 1
        return "AA", text, key

    # HTTP control plane ----------------------------------------------------------------
    def _wsgi(self, environ, start_response):
        req = Request(environ)
        try:
            status, body = self._route(req.method, req.path, req)
        except InputError as exc:
            status, body = 400, exc.as_dict()
        return json_response(body, status)(environ, start_response)

    def _route(self, method: str, path: str, req) -> tuple[int, Any]:
        routes = {
            "/_sim/documents": {"GET": lambda: {"documents": self.documents()}},
            "/_sim/messages": {"GET": lambda: {"messages": self.messages(),
                                               "counts": self.received_counts()}},
            "/_sim/acks": {"GET": lambda: {"acks": self.acks()}},
            "/_sim/app_acks": {"GET": lambda: {"app_acks": self.app_acks()}},
            "/_sim/stats": {"GET": self.stats},
            "/_sim/faults": {"GET": lambda: {"faults": self.faults.pending()},
                             "POST": lambda: self._http_add_fault(req),
                             "DELETE": lambda: (self.faults.clear(), {"faults": []})[1]},
            "/_sim/reset": {"POST": lambda: (self.reset(), {"reset": True})[1]},
        }
        if path.startswith("/_sim/documents/"):
            key = urllib.parse.unquote(path[len("/_sim/documents/"):])
            if method != "GET":
                return 405, {"error": "method_not_allowed"}
            doc = self.document(key)
            return (200, doc) if doc else (404, {"error": "not_found",
                                                 "detail": "no such document"})
        handlers = routes.get(path)
        if handlers is None:
            return 404, {"error": "not_found", "detail": "unknown control path"}
        if method not in handlers:
            return 405, {"error": "method_not_allowed"}
        return 200, handlers[method]()

    def _http_add_fault(self, req) -> dict[str, Any]:
        body = req.get_json(silent=True)
        if not isinstance(body, dict):
            raise InputError("body must be a JSON object", field="body")
        if "kind" not in body:
            raise InputError("kind is required", field="kind")
        opts = {k: v for k, v in body.items() if k not in ("kind", "times")}
        fault = self.faults.add(body["kind"], body.get("times", 1), **opts)
        return {"added": asdict(fault)}


def serve(host: str = "127.0.0.1", port: int = 2575, *, control_port: int = 0,
          certfile: str | None = None, keyfile: str | None = None, echo: bool = False,
          **options: Any) -> None:
    """Run until interrupted; prints one line with the address and how to point an org at it."""
    ctx = server_ssl_context(certfile, keyfile) if certfile else None
    if echo:
        server: MLLPServer = MLLPEchoServer(host, port, ssl_context=ctx)
    else:
        server = HL7MDMSimulator(host, port, ssl_context=ctx, control=True,
                                 control_port=control_port, **options)
    server.start()
    try:
        if echo:
            print(f"MLLP echo server on {server.base_url} (frames every payload back)",
                  flush=True)
        else:
            print(f"HL7 MDM simulator on {server.base_url}, controls at "
                  f"{server.control_url}/_sim/ - configure the org's hl7_mdm target with "
                  f"host {server.host}, port {server.port}, tls {'on' if ctx else 'off'}",
                  flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
