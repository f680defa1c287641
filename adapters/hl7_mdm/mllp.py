"""A synchronous MLLP client over python-hl7's asyncio streams (hl7.mllp).

One client owns one persistent connection and a private event loop thread; callers in any
thread use `exchange()`, which sends one framed message and waits for the ACK whose MSA-2
equals that message's MSH-10. ACKs for other control ids (a late ACK of an earlier message
that timed out, a receiver's mistake) are discarded and counted, never credited. Bytes that
are not an MLLP block are dropped the way python-hl7's `readblock` drops them.

Failures are reported as the small exceptions below; the adapter turns them into the
engine's error hierarchy. Nothing here logs message content: only control ids (derived
from a hash of the ledger key) and counts.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import hl7
from hl7.mllp import InvalidBlockError, open_hl7_connection

log = logging.getLogger("chartbridge.adapters.hl7_mdm")


class MllpFailure(Exception):
    """Base of the client's own failures. `maybe_delivered`: the frame may have reached
    the receiver (written in full, or partly)."""

    maybe_delivered = True


class NotConnected(MllpFailure):
    """Connecting (or the TLS handshake) failed: nothing was written."""

    maybe_delivered = False


class AckTimeout(MllpFailure):
    """The frame was written; no matching ACK arrived in time."""


class ConnectionLost(MllpFailure):
    """The connection broke after (or while) the frame was written."""


@dataclass
class Ack:
    message: hl7.Message
    raw: str

    def field(self, segment: str, n: int) -> str:
        try:
            seg = self.message.segment(segment)
        except KeyError:
            return ""
        try:
            return str(seg[n]) if len(seg) > n else ""
        except (IndexError, KeyError):
            return ""

    def component(self, segment: str, n: int, c: int = 1) -> str:
        raw = self.field(segment, n)
        seps = self.message.separators
        parts = raw.split(seps[2])[0].split(seps[3])
        return parts[c - 1] if len(parts) >= c else ""

    @property
    def code(self) -> str:
        return self.component("MSA", 1)

    @property
    def acked_control_id(self) -> str:
        return self.field("MSA", 2)

    def text(self, segment: str, n: int) -> str:
        raw = self.field(segment, n)
        return self.message.unescape(raw) if raw else ""


def _parse_ack(block: bytes, encoding: str) -> Ack | None:
    try:
        text = block.decode(encoding)
        msg = hl7.parse(text)
        msg.segment("MSA")
    except (UnicodeDecodeError, hl7.ParseException, KeyError, IndexError, ValueError):
        return None
    return Ack(msg, text)


class MllpClient:
    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                 connect_timeout: float = 10.0, encoding: str = "utf-8",
                 limit: int = 4 * 1024 * 1024) -> None:
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.encoding = encoding
        self.limit = limit
        self.discarded_acks = 0          # ACKs whose MSA-2 named another message
        self.unreadable_frames = 0
        self._lock = threading.Lock()    # one exchange at a time on the connection
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._reader = self._writer = None

    # lifecycle -----------------------------------------------------------------------
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="mllp-client", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        return self._loop

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None:
                return
            try:
                asyncio.run_coroutine_threadsafe(self._disconnect(), loop).result(timeout=5)
            except (TimeoutError, RuntimeError, OSError):
                pass
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(timeout=5)
            loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> "MllpClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # the one operation -----------------------------------------------------------------
    def exchange(self, payload: bytes, control_id: str, *, timeout: float,
                 accept: Callable[[Ack], bool] | None = None) -> Ack:
        """Send one framed payload and return the first ACK with MSA-2 == control_id (and,
        if given, `accept(ack)` true: e.g. an application ACK after a commit ACK).
        Raises NotConnected, AckTimeout or ConnectionLost."""
        with self._lock:
            loop = self._ensure_loop()
            fut = asyncio.run_coroutine_threadsafe(
                self._exchange(payload, control_id, timeout, accept), loop)
            try:
                return fut.result(timeout=timeout + self.connect_timeout + 5)
            except TimeoutError:
                fut.cancel()
                raise AckTimeout("no acknowledgement before the timeout") from None

    async def _connect(self) -> None:
        if self._writer is not None and not self._writer.transport.is_closing():
            return
        await self._disconnect()
        kwargs = {}
        if self.ssl_context is not None:
            kwargs = {"ssl": self.ssl_context, "server_hostname": self.host}
        try:
            self._reader, self._writer = await asyncio.wait_for(
                open_hl7_connection(self.host, self.port, limit=self.limit,
                                    encoding=self.encoding, **kwargs),
                timeout=self.connect_timeout)
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
            self._reader = self._writer = None
            raise NotConnected(f"cannot connect to the MLLP receiver ({type(exc).__name__})") \
                from None

    async def _disconnect(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.transport.abort()

    async def _exchange(self, payload: bytes, control_id: str, timeout: float,
                        accept: Callable[[Ack], bool] | None) -> Ack:
        await self._connect()
        reader, writer = self._reader, self._writer
        try:
            writer.writeblock(payload)
            await writer.drain()
        except (OSError, ConnectionError, ssl.SSLError) as exc:
            await self._disconnect()
            raise ConnectionLost(f"connection lost while sending ({type(exc).__name__})") \
                from None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # keep the connection: a late ACK will be read (and discarded) next time
                raise AckTimeout("no acknowledgement before the timeout")
            try:
                block = await asyncio.wait_for(reader.readblock(), timeout=remaining)
            except asyncio.TimeoutError:
                raise AckTimeout("no acknowledgement before the timeout") from None
            except InvalidBlockError:
                self.unreadable_frames += 1
                log.warning("mllp: dropped bytes that were not an MLLP block",
                            extra={"control_id": control_id})
                continue
            except ValueError:             # a frame over the size limit
                self.unreadable_frames += 1
                continue
            except (asyncio.IncompleteReadError, OSError, ConnectionError,
                    ssl.SSLError) as exc:
                await self._disconnect()
                raise ConnectionLost(f"connection lost before the acknowledgement "
                                     f"({type(exc).__name__})") from None
            ack = _parse_ack(block, self.encoding)
            if ack is None:
                self.unreadable_frames += 1
                log.warning("mllp: dropped a frame that is not an HL7 ACK",
                            extra={"control_id": control_id})
                continue
            if ack.acked_control_id != control_id:
                self.discarded_acks += 1
                log.warning("mllp: discarded an ACK for another message",
                            extra={"control_id": control_id,
                                   "acked_control_id": ack.acked_control_id[:40]})
                continue
            if accept is not None and not accept(ack):
                continue
            return ack


class MllpPool:
    """Several MllpClients to one receiver (`connections` in the target config), for a
    receiver that accepts more than one connection from us. Each connection stays
    stop-and-wait, so nothing on one connection is reordered; an exchange takes whichever
    connection is free. Messages in flight at the same time on different connections are
    independent writes (a correction names its parent's TXA-12, which exists only after the
    parent's ACK came back), so the order the standard requires — a document before its
    edits, replacements and addenda — is kept."""

    def __init__(self, host: str, port: int, connections: int, **kwargs) -> None:
        import queue

        self.host, self.port = host, port
        self.clients = [MllpClient(host, port, **kwargs) for _ in range(connections)]
        self._free: "queue.SimpleQueue[MllpClient]" = queue.SimpleQueue()
        for client in self.clients:
            self._free.put(client)

    @property
    def discarded_acks(self) -> int:
        return sum(c.discarded_acks for c in self.clients)

    @property
    def unreadable_frames(self) -> int:
        return sum(c.unreadable_frames for c in self.clients)

    def exchange(self, payload: bytes, control_id: str, *, timeout: float,
                 accept: Callable[[Ack], bool] | None = None) -> Ack:
        client = self._free.get()
        try:
            return client.exchange(payload, control_id, timeout=timeout, accept=accept)
        finally:
            self._free.put(client)

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def __enter__(self) -> "MllpPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_client(host: str, port: int, *, connections: int = 1,
                **kwargs) -> "MllpClient | MllpPool":
    """One client, or a pool when the receiver takes several connections."""
    if connections > 1:
        return MllpPool(host, port, connections, **kwargs)
    return MllpClient(host, port, **kwargs)
