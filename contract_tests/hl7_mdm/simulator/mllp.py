"""MLLP (HL7 v2 appendix C, "MLLP release 1"): <VT=0x0B> payload <FS=0x1C><CR=0x0D>, and
the asyncio server machinery both receivers here share: the MDM simulator and the echo
server the throughput benchmark uses. Framing is python-hl7's (``hl7.mllp``)."""
from __future__ import annotations

import asyncio
import ssl
import threading
from typing import Any

from hl7.mllp import InvalidBlockError, start_hl7_server

from chartbridge.core.errors import ConfigError

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"


def frame(payload: bytes) -> bytes:
    """Wrap one payload in MLLP framing."""
    return SB + payload + EB + CR


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


class MLLPServer:
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


class MLLPEchoServer(MLLPServer):
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

