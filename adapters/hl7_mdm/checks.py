"""HL7 MDM go-live checks (`chartbridge org check`): the TLS files through
`client_ssl_context`, an MLLP connect and the TLS handshake. Not one byte is sent."""
from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from typing import Any

import httpx

from chartbridge.config.schema import OrgConfig
from chartbridge.core.errors import ConfigError
from chartbridge.onboarding.checks import Check, skipped


def check(org: OrgConfig, cfg: Any, http: httpx.Client, clock: Any) -> Iterator[Check]:
    from chartbridge.adapters.hl7_mdm.adapter import client_ssl_context

    t = "hl7_mdm"
    ctx: ssl.SSLContext | None = None
    files: Check | None = None
    if cfg.tls.enabled:
        try:
            ctx = client_ssl_context(cfg.tls)
            files = Check(t, "TLS files", True, "CA bundle and client certificate load")
        except ConfigError as exc:
            files = Check(t, "TLS files", False, exc.message,
                          "check targets.hl7_mdm.tls ca_file / cert_file / key_file exist and are PEM")
        yield files
    addr = f"{cfg.host}:{cfg.port}"
    try:
        sock = socket.create_connection((cfg.host, cfg.port), timeout=cfg.connect_timeout_s)
    except OSError as exc:
        connect = Check(t, "MLLP connect", False, f"cannot connect to {addr} ({type(exc).__name__})",
                        "check targets.hl7_mdm.host/port and that the interface engine's listener "
                        "is up and allows this host")
        yield connect
        if files is not None:
            yield skipped(t, "TLS handshake", *(c for c in (files, connect) if not c.ok))
        return
    try:
        if files is not None and not files.ok:
            yield Check(t, "MLLP connect", True, f"TCP connection to {addr}")
            yield skipped(t, "TLS handshake", files)
            return
        if ctx is None:
            yield Check(t, "MLLP connect", True, f"TCP connection to {addr} (nothing sent)")
            return
        yield Check(t, "MLLP connect", True, f"TCP connection to {addr}")
        try:
            tls = ctx.wrap_socket(sock, server_hostname=cfg.tls.server_name or cfg.host)
            tls.close()
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            yield Check(t, "TLS handshake", False, f"TLS handshake with {addr} failed ({reason})",
                        "check tls.ca_file trusts the receiver's certificate, tls.server_name matches "
                        "it, and (mutual TLS) the receiver trusts our cert_file")
            return
        yield Check(t, "TLS handshake", True, f"TLS handshake with {addr} (nothing sent)")
    finally:
        sock.close()
