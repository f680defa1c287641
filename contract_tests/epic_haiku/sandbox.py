"""The Epic plugin's sandbox side (`org sandbox`, `AdapterSpec.sandbox`): an Epic simulator
on the org's token_url port; the org's `inbound.issuer` is the `iss` it signs with; the
org's client is registered with the public half of its key."""
from __future__ import annotations

from typing import Any

from chartbridge.onboarding.keys import public_jwk
from chartbridge.onboarding.sandbox import host_port, need_loopback, shared_sim


def register(sb: Any, keys: Any, org: Any, cfg: Any) -> None:
    host, port, _ = host_port(cfg.token_url)
    need_loopback(org, "epic_haiku", host)

    def make() -> Any:
        from contract_tests.epic_haiku.simulator import EpicSimulator
        sim = EpicSimulator(epic_client_id={})
        sim.start(host, port)
        sb.stack.callback(sim.stop)
        return sim
    sim = shared_sim(sb, "epic", host, port, make)
    sim.epic_client_id[org.org] = cfg.inbound.issuer
    pem = keys.get(cfg.private_key, "key", cfg.algorithm)
    if pem is not None:
        sim.register_client(cfg.client_id, {"keys": [public_jwk(pem, cfg.key_id, cfg.algorithm)]})
        sb.lines.append(f"  {org.org}: epic client {cfg.client_id} (kid {cfg.key_id}), iss {cfg.inbound.issuer}")
