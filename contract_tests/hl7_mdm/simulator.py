"""An HL7 v2.5.1 MDM receiver over MLLP, for contract tests and local runs.

Written from the standard, not from any adapter:
- HL7 v2.5.1 chapter 2: MSH, MSA, ERR; original acknowledgement (AA/AE/AR) and enhanced
  acknowledgement (commit CA/CE/CR per MSH-15; application ack per MSH-16); tables 0008,
  0155, 0357.
- HL7 v2.5.1 chapter 9: MDM T02 original + content, T06 addendum + content, T08 edit +
  content, T10 replacement + content (all MDM_T02 structure, OBX required) and T11 cancel
  (MDM_T01 structure, no OBX); TXA; tables 0271 (completion) and 0273 (availability).
- MLLP (HL7 v2 appendix C / "MLLP release 1"): <VT=0x0B> payload <FS=0x1C><CR=0x0D>.

Parsing uses python-hl7 (``hl7.parse``, ``hl7.mllp.start_hl7_server``, ``Message.create_ack``,
``Message.unescape``); the adapter builds with hl7apy, so the two libraries check each other.

In-process use::

    with HL7MDMSimulator() as sim:          # sim.host, sim.port; sim.control_url if control=True
        sim.faults.add("no_ack", times=1)
        ...send MLLP frames...
        sim.document("DOC-1")["availability_status"]

Nothing here logs message content: documents and messages are only kept in memory for
inspection by the test that owns the simulator.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import json
import logging
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

import hl7
import hl7.util
from hl7.mllp import InvalidBlockError, start_hl7_server

from chartbridge.core.errors import ConfigError, InputError

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"


class _NoFieldValues(logging.Filter):
    """python-hl7's unescape warns with the whole field (note text = PHI) in the message;
    drop those records so the simulator never puts message content in a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Error ")


_HL7_UTIL_LOG = logging.getLogger(hl7.util.__file__)  # python-hl7 names it by file path
if not any(isinstance(f, _NoFieldValues) for f in _HL7_UTIL_LOG.filters):
    _HL7_UTIL_LOG.addFilter(_NoFieldValues())

# HL7 v2.5.1 chapter 9 trigger events this receiver accepts -> required MSH-9.3 structure.
EVENTS = {"T02": "MDM_T02", "T06": "MDM_T02", "T08": "MDM_T02", "T10": "MDM_T02", "T11": "MDM_T01"}
CONTENT_EVENTS = {"T02", "T06", "T08", "T10"}
TABLE_0271 = {  # document completion status
    "AU": "Authenticated", "DI": "Dictated", "DO": "Documented", "IN": "Incomplete",
    "IP": "In progress", "LA": "Legally authenticated", "PA": "Pre-authenticated",
}
TABLE_0273 = {  # document availability status
    "AV": "Available for patient care", "CA": "Deleted", "OB": "Obsolete",
    "UN": "Unavailable for patient care",
}
TABLE_0155 = {"AL", "ER", "NE", "SU"}  # accept/application acknowledgment conditions
PROCESSING_IDS = {"P", "T", "D"}  # table 0103
TABLE_0357 = {  # message error condition codes used here
    100: "Segment sequence error", 101: "Required field missing", 102: "Data type error",
    103: "Table value not found", 200: "Unsupported message type",
    201: "Unsupported event code", 202: "Unsupported processing id",
    203: "Unsupported version id", 204: "Unknown key identifier",
    205: "Duplicate key identifier", 206: "Application record locked",
    207: "Application internal error",
}
FAULT_KINDS = ("no_ack", "late_ack", "wrong_control_id", "garbage", "reset", "reject")


def frame(payload: bytes) -> bytes:
    """Wrap one payload in MLLP framing."""
    return SB + payload + EB + CR


# ---------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------
@dataclass
class Fault:
    """One planned misbehaviour, applied to the next ``times`` matching messages.

    kind:
      no_ack            process the message, send nothing, keep the connection open
      late_ack          process, wait ``delay_s``, then send the true ACK (MSA-2 = the
                        ORIGINAL MSH-10, so a correct sender does not credit it elsewhere)
      wrong_control_id  process, answer an ACK whose MSA-2 names another control id
      garbage           process, answer unframed non-HL7 bytes instead of an ACK
      reset             process, then reset the TCP connection (RST, no ACK)
      reject            do NOT process; answer AR with a retry hint in ERR-7/ERR-8
    process=False makes the first four drop the message instead of filing it (lost on
    the wire rather than lost ACK).
    """

    kind: str
    times: int = 1
    delay_s: float = 2.0
    retry_after: int = 30
    event: str | None = None  # only messages of this trigger (e.g. "T02")
    process: bool = True

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise InputError(f"kind must be one of {', '.join(FAULT_KINDS)}", field="kind")
        if not isinstance(self.times, int) or isinstance(self.times, bool) or self.times < 1:
            raise InputError("times must be a positive integer", field="times")
        if not isinstance(self.delay_s, (int, float)) or not 0 <= self.delay_s <= 3600:
            raise InputError("delay_s must be a number of seconds in 0..3600", field="delay_s")
        if not isinstance(self.retry_after, int) or self.retry_after < 0:
            raise InputError("retry_after must be a non-negative integer", field="retry_after")
        if self.event is not None and self.event not in EVENTS:
            raise InputError(f"event must be one of {', '.join(EVENTS)}", field="event")
        if not isinstance(self.process, bool):
            raise InputError("process must be true or false", field="process")


class FaultPlan:
    """Thread-safe queue of planned faults; the first matching one is consumed per message."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, kind: str, times: int = 1, **options: Any) -> Fault:
        unknown = set(options) - {"delay_s", "retry_after", "event", "process"}
        if unknown:
            raise InputError("unknown fault option", field=sorted(unknown)[0])
        fault = Fault(kind=kind, times=times, **options)
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, event: str | None) -> Fault | None:
        with self._lock:
            for f in self._faults:
                if f.event is None or f.event == event:
                    f.times -= 1
                    if f.times <= 0:
                        self._faults.remove(f)
                    return Fault(**{**asdict(f), "times": 1})
        return None

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(f) for f in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()


# ---------------------------------------------------------------------------------------
# Message checking
# ---------------------------------------------------------------------------------------
class _Problem(InputError):
    """Why a message is refused; becomes MSA-1 + ERR in the ACK. Never carries values."""

    def __init__(self, ack: str, hl7_code: int, text: str, location: str = "",
                 diagnostic: str = "") -> None:
        super().__init__(text, field=location or None)
        self.ack, self.hl7_code, self.text = ack, hl7_code, text
        self.location, self.diagnostic = location, diagnostic


def _f(seg: Any, n: int) -> str:
    """Field n of a python-hl7 segment as its raw (still escaped) string, '' if absent.
    For MSH, python-hl7 numbers fields so that seg[n] is MSH-n."""
    try:
        return str(seg[n]) if len(seg) > n else ""
    except (IndexError, KeyError):
        return ""


def _comp(raw: str, n: int, seps: str) -> str:
    """Component n (1-based) of the first repetition of a raw field."""
    first = raw.split(seps[2])[0]
    parts = first.split(seps[3])
    return parts[n - 1] if len(parts) >= n else ""


def _key(raw: str, seps: str) -> str:
    """Canonical key for an EI/CX field: first repetition, trailing empty components dropped."""
    parts = raw.split(seps[2])[0].split(seps[3])
    while parts and not parts[-1]:
        parts.pop()
    return seps[3].join(parts)


@dataclass
class _Header:
    control_id: str = ""
    event: str | None = None
    accept_type: str = ""  # MSH-15
    app_type: str = ""  # MSH-16

    @property
    def enhanced(self) -> bool:
        return bool(self.accept_type or self.app_type)


@dataclass
class _Outgoing:
    """What to put on the wire for one received frame."""

    frames: list[bytes] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    fault: Fault | None = None


# ---------------------------------------------------------------------------------------
# The MLLP server machinery (asyncio loop in a background thread)
# ---------------------------------------------------------------------------------------
def server_ssl_context(certfile: str, keyfile: str | None = None,
                       cafile: str | None = None) -> ssl.SSLContext:
    """TLS server context from a PEM cert/key; ``cafile`` turns on client-cert checking."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(certfile, keyfile)
        if cafile:
            ctx.load_verify_locations(cafile)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS material ({type(exc).__name__})",
                          key="certfile") from None
    return ctx


class _MLLPServer:
    """Owns the event loop thread, the listening socket and live connections."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 ssl_context: ssl.SSLContext | None = None,
                 max_frame_bytes: int = 4 * 1024 * 1024) -> None:
        self.host, self._want_port = host, port
        self.port: int | None = None
        self.ssl_context = ssl_context
        self.max_frame_bytes = max_frame_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[Any] = set()
        self._lock = threading.RLock()
        self._connections = 0
        self._closing = False

    # lifecycle -------------------------------------------------------------------------
    def start(self) -> str:
        if self._thread is not None:
            return self.base_url
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._closing = False
        self._thread = threading.Thread(target=loop.run_forever, name=type(self).__name__,
                                        daemon=True)
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._open(), loop)
        try:
            self._server = fut.result(timeout=10)
        except BaseException:
            self._halt_loop()
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        return self.base_url

    async def _open(self) -> asyncio.AbstractServer:
        return await start_hl7_server(self._on_client, self.host, self._want_port,
                                      ssl=self.ssl_context, limit=self.max_frame_bytes)

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        finally:
            self._halt_loop()

    async def _close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        # Connections accepted just before close finish their handshake a few loop turns
        # later; keep aborting until none is left so no client is left hanging.
        for _ in range(5):
            await asyncio.sleep(0.01)
            for w in list(self._writers):
                w.transport.abort()
            for t in list(self._tasks):
                t.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)
            except asyncio.TimeoutError:
                pass

    def _halt_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        if loop is not None and not loop.is_running():
            loop.close()
        self._loop = self._thread = self._server = None
        self._tasks.clear()
        self._writers.clear()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        scheme = "mllps" if self.ssl_context else "mllp"
        return f"{scheme}://{self.host}:{self.port}"

    # connections -----------------------------------------------------------------------
    async def _on_client(self, reader, writer) -> None:
        if self._closing:
            writer.transport.abort()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        with self._lock:
            self._connections += 1
        try:
            await self._serve_connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.transport.abort() if writer.transport.is_closing() else writer.close()

    async def _serve_connection(self, reader, writer) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class MLLPEchoServer(_MLLPServer):
    """Frames back every payload it receives, unchanged: the lead's throughput benchmark."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **kw: Any) -> None:
        super().__init__(host, port, **kw)
        self.frames_echoed = 0

    async def _serve_connection(self, reader, writer) -> None:
        while True:
            try:
                block = await reader.readblock()
            except InvalidBlockError:
                continue
            except asyncio.IncompleteReadError:
                return
            writer.writeblock(self.reply(block))
            await writer.drain()
            with self._lock:
                self.frames_echoed += 1

    def reply(self, block: bytes) -> bytes:
        """What goes back for one received frame: the frame itself (a subclass may answer
        otherwise over the same framing loop)."""
        return block


# ---------------------------------------------------------------------------------------
# The MDM receiver
# ---------------------------------------------------------------------------------------
class HL7MDMSimulator(_MLLPServer):
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
        self._control_wanted, self._control_port = control, control_port
        self._http = None
        self._http_thread: threading.Thread | None = None
        self.control_url: str | None = None
        self._ack_seq = itertools.count(1)
        self._reset_state()

    # state -----------------------------------------------------------------------------
    def _reset_state(self) -> None:
        with self._lock:
            self._documents: dict[str, dict[str, Any]] = {}
            self._processed: collections.OrderedDict[str, dict[str, Any]] = (
                collections.OrderedDict())
            self._received: collections.OrderedDict[str, int] = collections.OrderedDict()
            self._messages: collections.deque = collections.deque(maxlen=self.max_log)
            self._acks: collections.deque = collections.deque(maxlen=self.max_log)
            self._app_acks: collections.deque = collections.deque(maxlen=self.max_log)
            self._stats = collections.Counter()
            self._msg_seq = 0

    def reset(self) -> None:
        """Forget documents, messages, acks, counters and planned faults."""
        self.faults.clear()
        self._reset_state()

    # inspection ------------------------------------------------------------------------
    def documents(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return json.loads(json.dumps(self._documents))

    def document(self, unique_document_number: str) -> dict[str, Any] | None:
        with self._lock:
            doc = self._documents.get(unique_document_number)
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
            out["documents"] = len(self._documents)
            return out

    # lifecycle with the HTTP control plane -------------------------------------------------
    def start(self) -> str:
        url = super().start()
        if self._control_wanted and self._http is None:
            self._start_control()
        return url

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            if self._http_thread is not None:
                self._http_thread.join(timeout=10)
            self._http = self._http_thread = None
            self.control_url = None
        super().stop()

    def _start_control(self) -> None:
        from werkzeug.serving import WSGIRequestHandler, make_server

        class _Quiet(WSGIRequestHandler):
            def log_request(self, *args: Any, **kwargs: Any) -> None:  # no access log lines
                pass

        self._http = make_server(self.host, self._control_port, self._wsgi, threaded=True,
                                 request_handler=_Quiet)
        self._http_thread = threading.Thread(target=self._http.serve_forever, args=(0.05,),
                                             name="hl7-sim-control", daemon=True)
        self._http_thread.start()
        self.control_url = f"http://{self.host}:{self._http.server_port}"

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
            msg, header, problem = self._parse(block)
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
                frames, records = self._reject_for_retry(msg, header, fault)
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
    def _parse(self, block: bytes) -> tuple[Any, _Header, _Problem | None]:
        header = _Header()
        try:
            text = block.decode(self.encoding)
        except UnicodeDecodeError:
            text = block.decode("latin-1")
            header.control_id = self._crude_control_id(text)
            return None, header, _Problem("AR", 102, f"message is not valid {self.encoding}")
        header.control_id = self._crude_control_id(text)
        try:
            msg = hl7.parse(text)
            msh = msg.segment("MSH")
        except (hl7.ParseException, KeyError, IndexError, ValueError):
            return None, header, _Problem("AR", 100, "message must begin with an MSH segment",
                                          "MSH")
        seps = msg.separators
        header.control_id = _f(msh, 10)
        header.accept_type = _comp(_f(msh, 15), 1, seps)
        header.app_type = _comp(_f(msh, 16), 1, seps)
        header.event = _comp(_f(msh, 9), 2, seps) or None
        return msg, header, self._check_header(msg, header)

    @staticmethod
    def _crude_control_id(text: str) -> str:
        if not text.startswith("MSH") or len(text) < 4:
            return ""
        fields = text.split("\r", 1)[0].split(text[3])
        return fields[9] if len(fields) > 9 else ""

    def _check_header(self, msg: Any, header: _Header) -> _Problem | None:
        msh, seps = msg.segment("MSH"), msg.separators
        if not header.control_id:
            return _Problem("AR", 101, "MSH-10 message control id is required", "MSH^1^10")
        if _comp(_f(msh, 12), 1, seps) != "2.5.1":
            return _Problem("AR", 203, "MSH-12 version id must be 2.5.1", "MSH^1^12")
        if _comp(_f(msh, 11), 1, seps) not in PROCESSING_IDS:
            return _Problem("AR", 202, "MSH-11 processing id must be P, T or D", "MSH^1^11")
        msg9 = _f(msh, 9)
        if _comp(msg9, 1, seps) != "MDM":
            return _Problem("AR", 200, "MSH-9.1 message code must be MDM", "MSH^1^9^1^1")
        if header.event not in EVENTS:
            return _Problem("AR", 201, "MSH-9.2 trigger event must be one of "
                            + ", ".join(EVENTS), "MSH^1^9^1^2")
        if _comp(msg9, 3, seps) != EVENTS[header.event]:
            return _Problem("AR", 200, f"MSH-9.3 message structure must be "
                            f"{EVENTS[header.event]} for {header.event}", "MSH^1^9^1^3")
        for n, value in ((15, header.accept_type), (16, header.app_type)):
            if value and value not in TABLE_0155:
                return _Problem("AR", 103, f"MSH-{n} must be AL, ER, NE or SU", f"MSH^1^{n}")
        return None

    def _check_body(self, msg: Any, event: str) -> dict[str, Any]:
        """Required segments/fields of the trigger; returns the extracted TXA/PID facts."""
        seps = msg.separators
        names = [str(s[0]) for s in msg]
        for seg in ("EVN", "PID", "PV1", "TXA"):
            if names.count(seg) != 1:
                raise _Problem("AE", 100, f"exactly one {seg} segment is required", seg)
        order = [names.index(s) for s in ("EVN", "PID", "PV1", "TXA")]
        if order != sorted(order):
            raise _Problem("AE", 100, "segments must be in the order MSH EVN PID PV1 TXA",
                           "TXA")
        obx_at = [i for i, n in enumerate(names) if n == "OBX"]
        if event in CONTENT_EVENTS and not obx_at:
            raise _Problem("AE", 100, f"{event} requires at least one OBX segment", "OBX")
        if event == "T11" and obx_at:
            raise _Problem("AE", 100, "T11 (MDM_T01) must not carry OBX segments", "OBX")
        if obx_at and min(obx_at) < names.index("TXA"):
            raise _Problem("AE", 100, "OBX segments must follow TXA", "OBX")
        evn, pid, txa = msg.segment("EVN"), msg.segment("PID"), msg.segment("TXA")
        if not _f(evn, 2):
            raise _Problem("AE", 101, "EVN-2 recorded date/time is required", "EVN^1^2")
        patient = _key(_f(pid, 3), seps)
        if not _comp(_f(pid, 3), 1, seps):
            raise _Problem("AE", 101, "PID-3 patient identifier list is required", "PID^1^3")
        if not _comp(_f(txa, 2), 1, seps):
            raise _Problem("AE", 101, "TXA-2 document type is required", "TXA^1^2")
        doc_key = _key(_f(txa, 12), seps)
        if not _comp(_f(txa, 12), 1, seps):
            raise _Problem("AE", 101, "TXA-12 unique document number is required", "TXA^1^12")
        completion = _comp(_f(txa, 17), 1, seps)
        if not completion:
            raise _Problem("AE", 101, "TXA-17 document completion status is required",
                           "TXA^1^17")
        if completion not in TABLE_0271:
            raise _Problem("AE", 103, "TXA-17 is not a table 0271 value", "TXA^1^17")
        availability = _comp(_f(txa, 19), 1, seps)
        if not availability:
            raise _Problem("AE", 101, "TXA-19 document availability status is required",
                           "TXA^1^19")
        if availability not in TABLE_0273:
            raise _Problem("AE", 103, "TXA-19 is not a table 0273 value", "TXA^1^19")
        parent = _key(_f(txa, 13), seps)
        if event in ("T06", "T10") and not _comp(_f(txa, 13), 1, seps):
            raise _Problem("AE", 101, f"TXA-13 parent document number is required on {event}",
                           "TXA^1^13")
        obx = []
        for i in obx_at:
            seg = msg[i]
            texts = [msg.unescape(rep, app_map={".br": "\n"})
                     for rep in _f(seg, 5).split(seps[2])]
            obx.append({"set_id": _f(seg, 1), "value_type": _f(seg, 2),
                        "observation_id": _comp(_f(seg, 3), 1, seps),
                        "text": "\n".join(texts)})
        if event in CONTENT_EVENTS and not any(o["text"] for o in obx):
            raise _Problem("AE", 101, "OBX-5 observation value (the note text) is empty",
                           "OBX^1^5")
        return {"key": doc_key, "parent": parent or None, "patient": patient,
                "document_type": _comp(_f(txa, 2), 1, seps), "completion": completion,
                "availability": availability, "obx": obx,
                "text": "\n".join(o["text"] for o in obx)}

    # document rules (chapter 9) ----------------------------------------------------------
    def _apply(self, event: str, facts: dict[str, Any], control_id: str) -> tuple[str, str]:
        """Change the store; returns (ack text, document key). Raises _Problem (AE)."""
        docs, key = self._documents, facts["key"]
        stamp = {"event": event, "control_id": control_id, "at": time.time()}

        def new_doc(parent: str | None) -> dict[str, Any]:
            if len(docs) >= self.max_documents:
                raise _Problem("AE", 207, "document store is full")
            if facts["availability"] not in ("AV", "UN"):
                raise _Problem("AE", 103, "TXA-19 of a new document must be AV or UN",
                               "TXA^1^19")
            return {"unique_document_number": key, "document_type": facts["document_type"],
                    "completion_status": facts["completion"],
                    "availability_status": facts["availability"], "parent": parent,
                    "replaced_by": None, "addenda": [], "patient_id": facts["patient"],
                    "text": facts["text"], "obx": facts["obx"], "version": 1,
                    "created_by": event, "history": [stamp]}

        def existing(k: str, where: str) -> dict[str, Any]:
            doc = docs.get(k)
            if doc is None:
                raise _Problem("AE", 204, f"{where} names no known document",
                               "TXA^1^" + where.split("-")[1])
            if doc["patient_id"] != facts["patient"]:
                raise _Problem("AE", 207, f"PID-3 does not match the patient of the document "
                               f"named in {where}", "PID^1^3")
            return doc

        if event == "T02":
            if key in docs:
                old = docs[key]
                same = (old["text"] == facts["text"] and old["patient_id"] == facts["patient"]
                        and old["document_type"] == facts["document_type"])
                if not same:
                    raise _Problem("AE", 205, "TXA-12 already names a different document",
                                   "TXA^1^12")
                self._stats["t02_duplicates_not_filed"] += 1
                return "document already filed; not filed twice", key
            docs[key] = new_doc(None)
            return "document filed", key

        if event == "T08":
            doc = existing(key, "TXA-12")
            if doc["availability_status"] != "UN":
                raise _Problem("AE", 207, "T08 edit is only valid while the document is "
                               "unavailable (TXA-19 UN); use T10 or T06", "TXA^1^19")
            doc.update(text=facts["text"], obx=facts["obx"],
                       completion_status=facts["completion"],
                       availability_status=facts["availability"],
                       document_type=facts["document_type"], version=doc["version"] + 1)
            doc["history"].append(stamp)
            return "document edited", key

        if event == "T11":
            doc = existing(key, "TXA-12")
            if doc["availability_status"] != "UN":
                raise _Problem("AE", 207, "T11 cancel is only valid while the document is "
                               "unavailable (TXA-19 UN)", "TXA^1^19")
            doc["availability_status"] = "CA"
            doc["history"].append(stamp)
            return "document cancelled", key

        # T06 addendum, T10 replacement: a new document linked to its parent by TXA-13
        parent_key = facts["parent"]
        if parent_key == key:
            raise _Problem("AE", 205, "TXA-12 must differ from TXA-13", "TXA^1^12")
        parent = existing(parent_key, "TXA-13")
        if key in docs:
            raise _Problem("AE", 205, "TXA-12 already names a document", "TXA^1^12")
        if event == "T10":
            if parent["availability_status"] in ("OB", "CA"):
                raise _Problem("AE", 207, "the parent document is already obsolete or "
                               "cancelled", "TXA^1^13")
            docs[key] = new_doc(parent_key)
            parent["availability_status"] = "OB"
            parent["replaced_by"] = key
            parent["history"].append(stamp)
            return "replacement filed; parent obsolete", key
        if parent["availability_status"] != "AV":
            raise _Problem("AE", 207, "T06 addendum needs an available parent (TXA-19 AV)",
                           "TXA^1^13")
        docs[key] = new_doc(parent_key)
        parent["addenda"].append(key)
        parent["history"].append(stamp)
        return "addendum filed", key

    # acknowledgements --------------------------------------------------------------------
    def _respond(self, msg: Any, header: _Header, problem: _Problem | None):
        """Validate + apply; returns (frames, records, ack_code, app_ack_code, doc_key)."""
        facts = None
        if problem is None:
            try:
                facts = self._check_body(msg, header.event)
            except _Problem as p:
                problem = p
        if msg is None:  # unparseable: an original-mode AR is all we can say
            ack = self._fallback_ack(header.control_id, problem)
            return [frame(ack.encode(self.encoding))], [self._rec(ack, "original")], \
                "AR", None, None

        if not header.enhanced:
            code, text, key = self._run(header, problem, facts)
            ack = self._build_ack(msg, code, text if code == "AA" else problem_or(text, code))
            return [frame(ack.encode(self.encoding))], [self._rec(ack, "original")], \
                code, None, key

        # enhanced mode: commit ACK after "safe storage"; application result separately
        commit = "CA" if problem is None else ("CR" if problem.ack == "AR" else "CE")
        frames, records = [], []
        accept = header.accept_type or "AL"
        if accept == "AL" or (accept == "ER" and commit != "CA") or \
                (accept == "SU" and commit == "CA"):
            ack = self._build_ack(msg, commit, problem)
            frames.append(frame(ack.encode(self.encoding)))
            records.append(self._rec(ack, "commit"))
        app_code = key = None
        if commit == "CA":
            app_code, text, key = self._run(header, None, facts)
            app_ack = self._build_ack(msg, app_code,
                                      text if app_code == "AA" else problem_or(text, app_code))
            rec = self._rec(app_ack, "application")
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
            text, key = self._apply(header.event, facts, header.control_id)
        except _Problem as p:
            self._stats["ack_AE"] += 1
            return "AE", p, None
        self._stats["ack_AA"] += 1
        return "AA", text, key

    def _next_ack_id(self) -> str:
        return f"SIM{next(self._ack_seq):09d}{uuid.uuid4().hex[:8]}"  # 20 chars, ST max

    def _build_ack(self, msg: Any, code: str, detail: Any) -> str:
        fs = msg.separators[1]
        try:
            ack = msg.create_ack(code, message_id=self._next_ack_id(),
                                 application=self.application, facility=self.facility)
            msh_line = str(ack).split("\r")[0]
        except (IndexError, KeyError, ValueError, AttributeError, TypeError):
            ts = time.strftime("%Y%m%d%H%M%S", time.gmtime())
            msh_line = fs.join(["MSH", _f(msg.segment("MSH"), 2), self.application,
                                self.facility,
                                "", "", ts, "", "ACK", self._next_ack_id(), "P", "2.5.1"])
        msa = ["MSA", code, _f(msg.segment("MSH"), 10)]
        lines = [msh_line]
        if isinstance(detail, _Problem):
            msa.append(msg.escape(detail.text))
            lines.append(fs.join(msa))
            lines.append(self._err_segment(detail, fs, msg.separators[3], msg.escape))
        else:
            if detail:
                msa.append(msg.escape(str(detail)))
            lines.append(fs.join(msa))
        return "\r".join(lines) + "\r"

    @staticmethod
    def _err_segment(p: _Problem, fs: str, cs: str, esc) -> str:
        name = TABLE_0357.get(p.hl7_code, "")
        code = cs.join([str(p.hl7_code), esc(name), "HL70357"])
        # ERR-1 (B) empty | ERR-2 location | ERR-3 code | ERR-4 severity | 5 | 6 | ERR-7 | ERR-8
        return fs.join(["ERR", "", p.location, code, "E", "", "", esc(p.diagnostic),
                        esc(p.text)])

    def _fallback_ack(self, control_id: str, problem: _Problem | None) -> str:
        p = problem or _Problem("AR", 100, "unreadable message")
        ts = time.strftime("%Y%m%d%H%M%S", time.gmtime())
        esc = hl7.parse("MSH|^~\\&\r").escape
        cid = control_id if control_id and all(c not in control_id for c in "|^~\\&\r") else ""
        return "\r".join([
            f"MSH|^~\\&|{self.application}|{self.facility}|||{ts}||ACK|{self._next_ack_id()}"
            "|P|2.5.1",
            f"MSA|AR|{cid}|{esc(p.text)}",
            self._err_segment(p, "|", "^", esc)]) + "\r"

    def _reject_for_retry(self, msg: Any, header: _Header, fault: Fault):
        p = _Problem("AR", 207, f"receiver temporarily unavailable; retry after "
                     f"{fault.retry_after} seconds",
                     diagnostic=f"retry_after={fault.retry_after}")
        if msg is None:
            ack = self._fallback_ack(header.control_id, p)
        else:
            ack = self._build_ack(msg, "CR" if header.enhanced else "AR", p)
        rec = self._rec(ack, "commit" if header.enhanced and msg is not None else "original")
        rec["fault"] = "reject"
        return [frame(ack.encode(self.encoding))], [rec]

    def _rec(self, ack: str, kind: str) -> dict[str, Any]:
        segs = {s.split("|", 1)[0]: s for s in ack.split("\r") if s}
        msh = segs.get("MSH", "").split("|")
        msa = segs.get("MSA", "").split("|")
        return {"kind": kind, "code": msa[1] if len(msa) > 1 else None,
                "acked_control_id": msa[2] if len(msa) > 2 else None,
                "ack_control_id": msh[9] if len(msh) > 9 else None, "raw": ack,
                "fault": None}

    # HTTP control plane ----------------------------------------------------------------
    def _wsgi(self, environ, start_response):
        from werkzeug.wrappers import Request, Response

        req = Request(environ)
        try:
            status, body = self._route(req.method, req.path, req)
        except InputError as exc:
            status, body = 400, exc.as_dict()
        resp = Response(json.dumps(body), status=status, mimetype="application/json")
        return resp(environ, start_response)

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


def problem_or(text: Any, code: str) -> Any:
    """Pass a _Problem through; anything else becomes a generic problem for ``code``."""
    if isinstance(text, _Problem):
        return text
    return _Problem(code, 207, str(text))


# ---------------------------------------------------------------------------------------
# Standalone
# ---------------------------------------------------------------------------------------
def serve(host: str = "127.0.0.1", port: int = 2575, *, control_port: int = 0,
          certfile: str | None = None, keyfile: str | None = None, echo: bool = False,
          **options: Any) -> None:
    """Run until interrupted; prints one line with the address and how to point an org at it."""
    ctx = server_ssl_context(certfile, keyfile) if certfile else None
    if echo:
        server: _MLLPServer = MLLPEchoServer(host, port, ssl_context=ctx)
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
