"""The athenaOne plugin's simulator side: the org-config block for a running
AthenaSimulator (`demo_target_settings`, for the demo and the tests) and the sandbox
registration (`org sandbox`, `AdapterSpec.sandbox`): an athena simulator on the base_url's
port with the org's practice, department and client (its secret)."""
from __future__ import annotations

from typing import Any

from chartbridge.onboarding.sandbox import host_port, need_loopback, shared_sim


def demo_target_settings(sim: Any, *, secret_env: str = "ATHENA_CLIENT_SECRET",
                         payload: str = "text") -> dict:
    """The `targets.athenaone` block pointing at a running AthenaSimulator (its seeded
    practice 195900, department 1, client sim-client). The secret is by reference: set
    ATHENA_CLIENT_SECRET=sim-secret (simulator-only) in the environment."""
    base = sim.base_url
    return {"base_url": base, "token_url": f"{base}/oauth2/v1/token",
            "client_id": "sim-client", "client_secret": f"env:{secret_env}",
            "practice_id": "195900", "department_id": "1",
            "scopes": ["athena/service/Athenanet.MDP.*"], "payload": payload,
            "autoclose": False, "priority": 2, "requests_per_second": 5,
            "fallback_subclass": "CLINICALDOCUMENT_CONSULTNOTE", "timeout_s": 10}


def register(sb: Any, keys: Any, org: Any, cfg: Any) -> None:
    host, port, _ = host_port(cfg.base_url)
    need_loopback(org, "athenaone", host)

    def make() -> Any:
        from contract_tests.athenaone.simulator import AthenaSimulator
        sim = AthenaSimulator(host=host, port=port)
        sim.start()
        sb.stack.callback(sim.stop)
        return sim
    sim = shared_sim(sb, "athena", host, port, make)
    sim.add_practice(cfg.practice_id, departments=[cfg.department_id],
                     patients=[str(i) for i in range(1, 21)])
    secret = keys.get(cfg.client_secret, "secret")
    if secret is not None:
        sim.add_client(cfg.client_id, secret, cfg.practice_id, scopes=list(cfg.scopes))
        sb.lines.append(f"  {org.org}: athena client {cfg.client_id}, practice {cfg.practice_id}")
