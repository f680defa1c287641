"""What every live contract run shares: the count of what was sent to the target, the
summary at the end, and the rules that make a live run fail closed.

A suite in live mode (CHARTBRIDGE_CONTRACT_BASE_URL set) registers one `LiveRun` as a pytest
plugin from its conftest. It counts the requests that leave this process for the target by
wrapping the transports themselves (httpx's HTTPTransport, asyncio's StreamWriter for MLLP),
not by asking the code under test; it records the artifacts the target created (a 201's
Location, an MLLP message's MSH-10) so the site can clean them up; and at the end it prints
and stores the summary (terminal, JUnit XML properties, and the JSON file named by
CHARTBRIDGE_CONTRACT_SUMMARY, which `chartbridge contract-test` reads).

A live run fails (exit status 1, one reason) when it sent the target no request, or when no
scenario applied. A preflight (connect + credentials) runs before any scenario; when it fails
the run stops with that one reason.
"""
from __future__ import annotations

import asyncio
import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

SUMMARY_ENV = "CHARTBRIDGE_CONTRACT_SUMMARY"
FAULTS = "simulator-only: fault injection"
INSPECTION = "simulator-only: reads the simulator's store"


def live_base_url() -> str | None:
    url = os.environ.get("CHARTBRIDGE_CONTRACT_BASE_URL", "").strip()
    return url or None


def simulator_only(what: str = FAULTS):
    """Skip a scenario in a live run: it needs the simulator (fault injection, inspection)."""
    pytest.skip(what)


class PreflightFailed(Exception):
    """The target is unreachable or refuses our credentials: nothing else can run."""


@dataclass
class LiveRun:
    vendor: str
    base_url: str
    credentials: dict[str, str] = field(default_factory=dict)   # names/refs, never secrets
    preflight: Callable[[], None] | None = None
    # the vendor's reading of a 2xx write answer: what it created (e.g. an id in the body)
    created: Callable[[Any, Any], list[str]] | None = None
    requests: Counter = field(default_factory=Counter)
    artifacts: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    fatal: str | None = None
    deselected: int = 0

    def __post_init__(self) -> None:
        url = urlsplit(self.base_url)
        self.host = url.hostname or ""
        self.port = url.port or {"https": 443, "http": 80}.get(url.scheme, 0)
        self._lock = threading.Lock()
        self._undo: list[Callable[[], None]] = []

    # ----------------------------------------------------------------- counting
    def is_target(self, host: str | None, port: int | None) -> bool:
        return (host or "").strip("[]") in (self.host, ) and int(port or 0) == self.port

    def count(self, what: str) -> None:
        with self._lock:
            self.requests[what] += 1

    def artifact(self, ref: str) -> None:
        with self._lock:
            if ref not in self.artifacts:
                self.artifacts.append(ref)

    def _wrap_httpx(self) -> None:
        import httpx

        original = httpx.HTTPTransport.handle_request
        run = self

        def handle_request(transport, request):
            target = run.is_target(request.url.host, request.url.port or
                                   (443 if request.url.scheme == "https" else 80))
            response = original(transport, request)
            if target:
                run.count(f"{request.method} {_route(request.url.path, run.base_url)}")
                if request.method in ("POST", "PUT") and response.status_code in (200, 201):
                    refs = _created(response) or (run.created(request, response) if run.created else [])
                    for ref in refs:
                        run.artifact(ref)
            return response

        httpx.HTTPTransport.handle_request = handle_request
        self._undo.append(lambda: setattr(httpx.HTTPTransport, "handle_request", original))

    def _wrap_mllp(self) -> None:
        original = asyncio.StreamWriter.write
        run = self

        def write(writer, data):
            peer = writer.get_extra_info("peername") or ("", 0)
            if run.is_target(peer[0], peer[1]):
                for frame in bytes(data).split(b"\x0b")[1:]:
                    run.count("MLLP message")
                    control = _msh10(frame)
                    if control:
                        run.artifact(f"MSH-10 {control}")
            return original(writer, data)

        asyncio.StreamWriter.write = write
        self._undo.append(lambda: setattr(asyncio.StreamWriter, "write", original))

    # ----------------------------------------------------------------- pytest hooks
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session) -> None:
        self._wrap_httpx()
        self._wrap_mllp()
        if self.preflight is not None:
            try:
                self.preflight()
            except Exception as exc:  # noqa: BLE001 - one readable line, never a traceback
                why = str(exc) if isinstance(exc, PreflightFailed) else \
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                self.fatal = f"preflight against {self.base_url} failed: {why}"
                self._write()
                pytest.exit(self.fatal, returncode=3)

    def pytest_deselected(self, items) -> None:
        self.deselected += len(items)

    def pytest_runtest_logreport(self, report) -> None:
        name = report.nodeid.split("::", 1)[-1]
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skipped[name] = reason.removeprefix("Skipped: ")
        elif report.when == "call":
            (self.ran if report.passed else self.failed).append(name)
        elif report.failed:
            self.failed.append(name)

    def summary(self) -> dict[str, Any]:
        return {"vendor": self.vendor, "target": self.base_url,
                "requests": sum(self.requests.values()), "requests_by_route": dict(self.requests),
                "scenarios_run": len(self.ran) + len(set(self.failed)),
                "passed": len(self.ran), "failed": sorted(set(self.failed)),
                "skipped": self.skipped, "artifacts": self.artifacts,
                "not_live_scenarios": self.deselected,
                "credentials": self.credentials, "fatal": self.fatal}

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session, exitstatus) -> None:
        for undo in reversed(self._undo):
            undo()
        if self.fatal is None:
            if not self.ran and not self.failed:
                self.fatal = f"no scenario applies to {self.base_url} (all {len(self.skipped)} skipped)"
            elif not self.requests:
                self.fatal = f"the run sent no request to {self.base_url}"
            if self.fatal:
                session.exitstatus = 1
        self._write()
        xml = _junit(session.config)
        if xml is not None:
            s = self.summary()
            for key in ("target", "requests", "scenarios_run", "passed"):
                xml.add_global_property(f"live.{key}", str(s[key]))
            xml.add_global_property("live.skipped", json.dumps(s["skipped"], sort_keys=True))
            xml.add_global_property("live.artifacts", json.dumps(s["artifacts"]))
            if self.fatal:
                xml.add_global_property("live.fatal", self.fatal)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        tr, s = terminalreporter, self.summary()
        tr.section(f"live contract run: {self.vendor} against {self.base_url}")
        tr.line(f"requests sent to the target: {s['requests']}")
        for route, n in sorted(self.requests.items()):
            tr.line(f"  {n:4d}  {route}")
        tr.line(f"scenarios run: {s['scenarios_run']} (passed {s['passed']}, "
                f"failed {len(s['failed'])}); skipped: {len(self.skipped)}")
        for name, why in sorted(self.skipped.items()):
            tr.line(f"  skipped {name}: {why}")
        tr.line(f"not collected (other profiles, simulator self-tests, offline checks): "
                f"{self.deselected}")
        tr.line(f"artifacts created at the target ({len(self.artifacts)}; clean up after the run):")
        for ref in self.artifacts:
            tr.line(f"  {ref}")
        if self.fatal:
            tr.line(f"LIVE RUN FAILED: {self.fatal}", red=True, bold=True)

    def _write(self) -> None:
        path = os.environ.get(SUMMARY_ENV)
        if path:
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(self.summary(), fh, indent=2)


def _junit(config) -> Any:
    try:
        from _pytest.junitxml import xml_key
    except ImportError:                                    # pragma: no cover
        return None
    return config.stash.get(xml_key, None)


def _route(path: str, base_url: str) -> str:
    """`/fhir/R4/DocumentReference/123` -> `DocumentReference/{id}` (no ids in the counts)."""
    base = urlsplit(base_url).path.rstrip("/")
    rel = path[len(base):] if base and path.startswith(base) else path
    parts = [p for p in rel.split("/") if p]
    if not parts:
        return "/"
    if parts[0].startswith(".") or parts[0] in ("oauth2", "auth", "token"):
        return "/".join(parts)
    return "/".join([parts[0]] + ["{id}" if i == 0 else p for i, p in enumerate(parts[1:])])


def _created(response) -> list[str]:
    """What a write answer says the server created: a 201's Location (or the body's id), or
    a transaction-response Bundle's 201 entries."""
    loc = response.headers.get("Location") or response.headers.get("Content-Location")
    if response.status_code == 201 and loc:
        return [_resource_ref(loc)]
    if "json" not in response.headers.get("Content-Type", ""):
        return []
    try:
        body = json.loads(response.read())
    except ValueError:
        return []
    if not isinstance(body, dict):
        return []
    if response.status_code == 201 and body.get("resourceType") and body.get("id"):
        return [f"{body['resourceType']}/{body['id']}"]
    if body.get("resourceType") == "Bundle" and str(body.get("type", "")).startswith("transaction"):
        return [_resource_ref(e["response"]["location"]) for e in body.get("entry", [])
                if str(e.get("response", {}).get("status", "")).startswith("201")
                and e["response"].get("location")]
    return []


def _resource_ref(location: str) -> str:
    """`https://x/fhir/DocumentReference/5/_history/1` -> `DocumentReference/5`."""
    parts = urlsplit(location).path.split("/")
    if "_history" in parts:
        parts = parts[:parts.index("_history")]
    parts = [p for p in parts if p]
    return "/".join(parts[-2:]) if len(parts) >= 2 else location


def _msh10(frame: bytes) -> str | None:
    text = frame.split(b"\x1c")[0].decode("utf-8", "replace")
    for seg in text.replace("\n", "\r").split("\r"):
        if seg.startswith("MSH") and len(seg) > 4:
            fields = seg.split(seg[3])
            return fields[9] if len(fields) > 9 else None
    return None


class DropResponse:
    """An httpx transport that sends the request to the target and then loses the answer
    client-side (the server did the work; we never hear it), `times` times."""

    def __init__(self, inner: Any, *, times: int = 1, methods: tuple[str, ...] = ("POST", "PUT"),
                 match: Callable[[Any], bool] = lambda request: True):
        self.inner, self.left, self.methods, self.dropped = inner, times, methods, []
        self.match = match

    def handle_request(self, request):
        import httpx
        response = self.inner.handle_request(request)
        if self.left and request.method in self.methods and self.match(request):
            self.left -= 1
            response.read()
            self.dropped.append((request.method, response.status_code))
            raise httpx.ReadError("answer lost after sending (contract test)", request=request)
        return response

    def close(self) -> None:
        self.inner.close()
