"""Start the independent peers (../../peers/README.md) for a test or a live contract run:
an open-source FHIR R4 server (peers/fhir/server.mjs) and an MLLP receiver
(peers/mllp/server.mjs), named and explained in peers/README.md, both installed from the
npm registry by peers/install at the versions their package-lock.json pins.

    with start_fhir_peer() as fhir:         # a fresh key pair, client, patients, encounters
        fhir.base_url, fhir.token_url, fhir.client_id, fhir.key_id, fhir.private_key_pem
        fhir.patient_id, fhir.encounter_id  # seeded; other_patient_id / other_encounter_id too
        fhir.live_env("CHARTBRIDGE_FHIR_PEER_KEY")   # the env of the suite's live mode

    with start_mllp_peer() as mllp:
        mllp.host, mllp.port, mllp.messages()         # messages() reads its JSONL record
        mllp.live_env()                               # the env of the MDM suite's live mode

Each peer is a node process in its own process group, started on a port it picks itself
(port 0: no race for a "free" port) and announced on its first stdout line, which is
waited for with a deadline; the group is killed on exit, also when the test fails.
"""
from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEERS_DIR = Path(__file__).resolve().parents[2] / "peers"
START_TIMEOUT_S = 60.0
DEFAULT_SCOPES = ("system/DocumentReference.*", "system/Patient.read",
                  "system/Encounter.read", "system/Binary.*", "system/Provenance.*")


class PeerError(RuntimeError):
    """A peer could not be installed or started; the message says which and why."""


@dataclass
class FhirPeer:
    base_url: str
    token_url: str
    client_id: str
    key_id: str
    algorithm: str
    private_key_pem: str
    public_jwks: dict
    scopes: tuple[str, ...]
    patient_id: str
    encounter_id: str
    other_patient_id: str
    other_encounter_id: str
    pid: int

    def live_env(self, key_env: str = "CHARTBRIDGE_FHIR_PEER_KEY") -> dict[str, str]:
        """The environment of the FHIR suite's live mode (contract_tests/fhir_docref/
        conftest.py) against this peer; the PEM goes in `key_env`, referenced by env:."""
        return {"CHARTBRIDGE_CONTRACT_BASE_URL": self.base_url,
                "CHARTBRIDGE_FHIR_PROFILE": "us-core",
                "CHARTBRIDGE_FHIR_TOKEN_URL": self.token_url,
                "CHARTBRIDGE_FHIR_CLIENT_ID": self.client_id,
                "CHARTBRIDGE_FHIR_KEY_REF": f"env:{key_env}",
                "CHARTBRIDGE_FHIR_KEY_ID": self.key_id,
                "CHARTBRIDGE_FHIR_ALGORITHM": self.algorithm,
                "CHARTBRIDGE_FHIR_PATIENT_ID": self.patient_id,
                "CHARTBRIDGE_FHIR_ENCOUNTER_ID": self.encounter_id,
                key_env: self.private_key_pem}


@dataclass
class MllpPeer:
    host: str
    port: int
    record_path: Path
    pid: int
    rules: list[dict] = field(default_factory=list)

    def live_env(self) -> dict[str, str]:
        """The environment of the MDM suite's live mode (contract_tests/hl7_mdm/conftest.py)
        against this receiver."""
        return {"CHARTBRIDGE_CONTRACT_BASE_URL": f"mllp://{self.host}:{self.port}"}

    def messages(self) -> list[dict]:
        """What the receiver recorded so far: one {"at", "control_id", "type", "ack_code",
        "message"} per message it ACKed (a test aid; the suites must not need it)."""
        if not self.record_path.exists():
            return []
        with self.record_path.open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]


def install(*peers: str) -> None:
    """`peers/install` (npm ci at the pinned versions; quick when already installed)."""
    if shutil.which("node") is None:
        raise PeerError("node is not installed (the peers need node >= 20.19)")
    done = subprocess.run(["bash", str(PEERS_DIR / "install"), *peers], capture_output=True,
                          text=True, timeout=600)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise PeerError(f"peers/install {' '.join(peers)} failed: " + " | ".join(tail))


def _generate_key(algorithm: str, kid: str) -> tuple[str, dict]:
    """A fresh signing key: (PEM private key, public JWK with kid and alg)."""
    from joserfc.jwk import ECKey, RSAKey

    if algorithm == "RS384":
        key = RSAKey.generate_key(2048, parameters={"kid": kid, "alg": algorithm})
    elif algorithm == "ES384":
        key = ECKey.generate_key("P-384", parameters={"kid": kid, "alg": algorithm})
    else:
        raise ValueError("algorithm must be RS384 or ES384")
    pem = key.as_pem(private=True).decode("ascii")
    return pem, key.as_dict(private=False)


def _seed(patients: Sequence[str], encounters: Sequence[tuple[str, str]]) -> list[dict]:
    out: list[dict] = [{"resourceType": "Patient", "id": p, "active": True,
                        "name": [{"family": "Peer", "given": ["Test"]}]} for p in patients]
    out += [{"resourceType": "Encounter", "id": e, "status": "in-progress",
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                       "code": "AMB"},
             "subject": {"reference": f"Patient/{p}"}} for e, p in encounters]
    return out


def _read_ready(proc: subprocess.Popen, stderr_path: Path, what: str,
                timeout_s: float) -> dict:
    """The peer's first stdout line ({"ready": true, ...}), waited for with a deadline."""
    deadline = time.monotonic() + timeout_s
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerError(f"{what} not ready within {timeout_s:.0f}s")
            if not sel.select(timeout=min(left, 0.5)):
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
    finally:
        sel.close()
    line = buf.split(b"\n", 1)[0]
    try:
        ready = json.loads(line)
    except ValueError:
        ready = None
    if not isinstance(ready, dict) or not ready.get("ready"):
        try:
            proc.wait(timeout=2)            # it is exiting: let stderr be complete
        except subprocess.TimeoutExpired:
            pass                            # still running: the caller's _stop() ends it
        err = stderr_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        raise PeerError(f"{what} did not start (exit {proc.poll()}): "
                        + (" | ".join(err[-5:]) or "no output"))
    return ready


def _stop(proc: subprocess.Popen) -> None:
    """Kill the peer's process group: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()


@contextmanager
def _node(script: Path, args: list[str], what: str, workdir: Path,
          timeout_s: float) -> Iterator[tuple[subprocess.Popen, dict]]:
    stderr_path = workdir / f"{script.parent.name}.stderr"
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(["node", str(script), *args], cwd=script.parent,
                                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        yield proc, _read_ready(proc, stderr_path, what, timeout_s)
    finally:
        _stop(proc)


@contextmanager
def start_fhir_peer(*, client_id: str = "chartbridge-peer", algorithm: str = "RS384",
                    jwks: dict | None = None, scopes: Sequence[str] = DEFAULT_SCOPES,
                    patients: Sequence[str] = ("peer-patient-1", "peer-patient-2"),
                    encounters: Sequence[tuple[str, str]] = (
                        ("peer-encounter-1", "peer-patient-1"),
                        ("peer-encounter-2", "peer-patient-2")),
                    resources: Sequence[dict] = (), token_ttl_s: int = 300,
                    validate: bool = True, timeout_s: float = START_TIMEOUT_S,
                    ) -> Iterator[FhirPeer]:
    """The FHIR R4 peer on 127.0.0.1, one client registered. Without `jwks` a key pair is
    generated (its PEM is `private_key_pem`); with `jwks` (a public JWKS) the caller holds
    the private key and `private_key_pem` is empty. `resources` are seeded as given."""
    install("fhir")
    pem = ""
    if jwks is None:
        kid = f"peer-{uuid.uuid4().hex[:8]}"
        pem, jwk = _generate_key(algorithm, kid)
        jwks = {"keys": [jwk]}
    else:
        first = jwks["keys"][0]
        algorithm = first.get("alg") or ("ES384" if first.get("kty") == "EC" else "RS384")
    kid = str(jwks["keys"][0].get("kid", ""))
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fhir-peer-")))
        (work / "clients.json").write_text(json.dumps(
            [{"client_id": client_id, "jwks": jwks, "scopes": list(scopes)}]), "utf-8")
        (work / "seed.json").write_text(
            json.dumps(_seed(patients, encounters) + list(resources)), "utf-8")
        args = ["--port", "0", "--host", "127.0.0.1", "--clients", str(work / "clients.json"),
                "--seed", str(work / "seed.json"), "--token-ttl", str(token_ttl_s)]
        if not validate:
            args.append("--no-validate")
        proc, ready = stack.enter_context(
            _node(PEERS_DIR / "fhir" / "server.mjs", args, "FHIR peer", work, timeout_s))
        yield FhirPeer(base_url=ready["base_url"], token_url=ready["token_url"],
                       client_id=client_id, key_id=kid, algorithm=algorithm,
                       private_key_pem=pem, public_jwks=jwks, scopes=tuple(scopes),
                       patient_id=patients[0], encounter_id=encounters[0][0],
                       other_patient_id=patients[1] if len(patients) > 1 else "",
                       other_encounter_id=encounters[1][0] if len(encounters) > 1 else "",
                       pid=proc.pid)


@contextmanager
def start_mllp_peer(*, rules: Sequence[dict[str, Any]] = (), enhanced: bool = False,
                    timeout_s: float = START_TIMEOUT_S) -> Iterator[MllpPeer]:
    """The MLLP receiver on 127.0.0.1: every message ACKed AA by the library, except where
    a rule {"control_id": REGEX, "ack": "AE"|"AR"} matches the message's MSH-10. With
    `enhanced`, each message first gets a commit ACK (CA), then that application ACK."""
    install("mllp")
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mllp-peer-")))
        record = work / "received.jsonl"
        args = ["--port", "0", "--host", "127.0.0.1", "--record", str(record)]
        if rules:
            (work / "rules.json").write_text(json.dumps(list(rules)), "utf-8")
            args += ["--rules", str(work / "rules.json")]
        if enhanced:
            args.append("--enhanced")
        proc, ready = stack.enter_context(
            _node(PEERS_DIR / "mllp" / "server.mjs", args, "MLLP peer", work, timeout_s))
        yield MllpPeer(host="127.0.0.1", port=int(ready["port"]), record_path=record,
                       pid=proc.pid, rules=list(rules))
