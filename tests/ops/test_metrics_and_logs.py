"""`/metrics` after whole visits, and one correlation id across a request and its jobs.

The engine runs for real (waitress + Flask + the in-process dramatiq worker + SQLite)
against the Epic simulator: one visit Paused then Stopped (a notice and a handoff), one
whose DocumentationReady Epic refuses (a failed write). The scrape is the app's own test
client, parsed with prometheus-client's parser."""
from __future__ import annotations

import io
import json
import logging
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chartbridge.core.models import WriteStatus
from chartbridge.logs import configure_logging
from chartbridge.web import create_app
from contract_tests.epic_haiku.simulator import (EXAMPLE_ENCOUNTER_IDS, EXAMPLE_PATIENT_IDS,
                                                 EXAMPLE_USER, synth_wav)
from contract_tests.epic_haiku.stack import ORG, ChunkTranscriber, EpicStack
from contract_tests.epic_haiku.test_contract import ThreeSections, wait_until

AUDIO = synth_wav(25)           # three chunks of 10 s
PHI = ([i["ID"] for i in EXAMPLE_PATIENT_IDS + EXAMPLE_ENCOUNTER_IDS] + [EXAMPLE_USER["ID"]]
       + ["words at", "AMB-M1", "AMB-M2"])    # ids, the transcript, Epic's session ids


@pytest.fixture
def captured():
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    handler = configure_logging(stream=stream)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def stack(tmp_path, captured):
    with EpicStack(tmp_path, f"sqlite:///{tmp_path / 'e.db'}",
                   transcriber_factory=lambda org: ChunkTranscriber(),
                   generator_factory=lambda org: ThreeSections(), sweep_interval_s=0.5) as s:
        yield s


def scrape(app, **headers) -> tuple[str, dict]:
    resp = app.test_client().get("/metrics", headers=headers)
    assert resp.status_code == 200, resp.data[:200]
    text = resp.get_data(as_text=True)
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def samples(family, suffix="") -> list:
    return [s for s in family.samples if s.name == family.name + suffix]


def visits(stack):
    sim = stack.sim
    # one visit paused, then stopped: a notice and a handoff, both accepted
    sim.begin_session(ORG, session_id="AMB-M1")
    sim.record("AMB-M1", AUDIO, chunk_seconds=10, status="Paused")
    sim.wait_calls("AmbientRecordingsProcessed", 1, timeout=30)
    sim.record("AMB-M1", synth_wav(5), chunk_seconds=10, status="Stopped")
    sim.wait_documentation("AMB-M1", 2, timeout=30)
    # one whose handoff Epic refuses: a failed write
    sim.faults.add("DocumentationReady", status=403, times=5)
    sim.begin_session(ORG, session_id="AMB-M2")
    sim.record("AMB-M2", AUDIO, chunk_seconds=10, status="Stopped")
    wait_until(lambda: [r.status for r in stack.ledger_rows("AMB-M2")] == [WriteStatus.FAILED],
               what="the refused write failing")
    wait_until(lambda: all(r.status in (WriteStatus.SUCCEEDED, WriteStatus.FAILED)
                           for r in stack.ledger_rows()), what="every write settled")
    # and a call for an org the engine does not have
    sim.deliver("no-such-org", "RecordingAvailable", {"SessionID": "x"})


def test_metrics_after_whole_visits_match_the_ledger_and_carry_no_phi(stack):
    # Given two visits run through the engine, one write refused
    visits(stack)
    app = create_app(stack.engine, jobs=stack.rt.jobs)
    # When /metrics is scraped
    text, families = scrape(app)
    # Then the write counts per org/target/kind/status are the ledger's rows
    ledger = Counter((r.org_id, r.target, r.kind, r.status.value)
                     for r in stack.engine.ledger.list(ORG))
    scraped = {(s.labels["org"], s.labels["target"], s.labels["kind"], s.labels["status"]):
               s.value for s in samples(families["chartbridge_writes"])
               if s.labels["org"] == ORG}
    assert scraped == {k: float(v) for k, v in ledger.items()}
    assert ledger[(ORG, "epic_haiku", "handoff", "succeeded")] == 1
    assert ledger[(ORG, "epic_haiku", "handoff", "failed")] == 1
    assert ledger[(ORG, "epic_haiku", "notice", "succeeded")] == 1
    # the observed metrics saw the same work
    sends = {(s.labels["kind"], s.labels["result"]): s.value
             for s in samples(families["chartbridge_write_duration_seconds"], "_count")
             if s.labels["org"] == ORG and s.labels["call"] == "send"}
    assert sends[("handoff", "ok")] >= 1 and sends[("notice", "ok")] >= 1, sends
    assert any(kind == "handoff" and result != "ok" for kind, result in sends), sends
    handoff = [s for s in samples(families["chartbridge_stop_to_handoff_seconds"], "_count")
               if s.labels["org"] == ORG]
    assert handoff and handoff[0].value >= 1
    asr = [s for s in samples(families["chartbridge_asr_duration_seconds"], "_count")
           if s.labels["org"] == ORG]
    assert sum(s.value for s in asr) >= 7          # 3 + 1 + 3 chunks, plus final passes
    inbound = {(s.labels["org"], s.labels["event"], s.labels["status"]): s.value
               for s in samples(families["chartbridge_inbound_events"], "_total")}
    assert inbound[(ORG, "AmbientSessionBegin", "200")] >= 2
    assert inbound[(ORG, "RecordingAvailable", "200")] >= 3
    assert inbound[("unknown", "unknown", "404")] >= 1    # no label minted from the path
    tokens = [s for s in samples(families["chartbridge_token_requests"], "_total")
              if s.labels["org"] == ORG and s.labels["reason"] == "fetch"]
    assert tokens and tokens[0].labels["result"] == "ok"
    jobs = {s.labels["job"] for s in samples(families["chartbridge_job_duration_seconds"],
                                             "_count")}
    assert {"process_chunk", "finish_version"} <= jobs
    depth = {s.labels["queue"]: s.value for s in samples(families["chartbridge_queue_depth"])}
    assert stack.rt.jobs.queue in depth and stack.rt.jobs.after_stop_queue in depth
    # And no label or value anywhere holds a patient, encounter or user id or transcript
    for needle in PHI:
        assert needle not in text, needle
    allowed = {"org", "target", "kind", "status", "call", "result", "final", "event", "job",
               "queue", "action", "reason", "le", "quantile"}
    for family in families.values():
        if family.name.startswith("chartbridge_"):
            for s in family.samples:
                assert set(s.labels) <= allowed, (family.name, s.labels)


def test_a_request_and_the_jobs_it_enqueued_log_one_correlation_id(stack, captured):
    # Given a visit through the engine
    sim = stack.sim
    sim.begin_session(ORG, session_id="AMB-C1")
    # When the clinician records and stops
    sim.record("AMB-C1", AUDIO, chunk_seconds=10, status="Stopped")
    sim.wait_documentation("AMB-C1", 1, timeout=30)
    session = stack.session("AMB-C1")
    wait_until(lambda: any(r.get("job") == "finish_version" for r in lines(captured)),
               what="the finishing job's log line")
    records = lines(captured)
    # Then the requests' lines and the jobs' lines carry the session's correlation id
    inbound = [r for r in records if r["msg"] == "inbound event" and r.get("org_id") == ORG]
    job_lines = [r for r in records if r.get("job") in ("process_chunk", "process_last_chunk",
                                                        "finish_version")]
    assert inbound and job_lines
    assert {r["correlation_id"] for r in inbound} == {session.correlation_id}
    assert {r["correlation_id"] for r in job_lines} == {session.correlation_id}
    # every line the engine wrote has one, and the PHI allow-list held
    assert all(r.get("correlation_id") for r in records if r["logger"].startswith("chartbridge"))
    out = captured.getvalue()
    for needle in PHI[:-2]:
        assert needle not in out, needle


def test_a_request_answers_its_correlation_id_and_refuses_free_text_as_one(stack, captured):
    app = create_app(stack.engine, jobs=stack.rt.jobs)
    client = app.test_client()
    good = client.get("/healthz", headers={"X-Correlation-ID": "0f3c9a4e-77aa-4bd0-9d2b-5d1e"})
    assert good.headers["X-Correlation-ID"] == "0f3c9a4e-77aa-4bd0-9d2b-5d1e"
    bad = client.get("/healthz", headers={"X-Correlation-ID": "MRN Z4481 Jane Doe"})
    assert bad.headers["X-Correlation-ID"] != "MRN Z4481 Jane Doe"
    assert len(bad.headers["X-Correlation-ID"]) == 32        # a new id of the engine's
    assert client.get("/healthz").headers["X-Correlation-ID"] not in (
        bad.headers["X-Correlation-ID"], good.headers["X-Correlation-ID"])


def test_metrics_token_when_configured_is_required(stack, monkeypatch):
    monkeypatch.setenv("METRICS_SECRET_FOR_TEST", "s3cret-scrape-token")
    monkeypatch.setenv("CHARTBRIDGE_METRICS_TOKEN", "env:METRICS_SECRET_FOR_TEST")
    app = create_app(stack.engine, jobs=stack.rt.jobs)
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape-token"})
    assert ok.status_code == 200 and b"chartbridge_writes" in ok.data


def lines(stream) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_multiprocess_mode_adds_up_what_every_process_counted(tmp_path):
    """A worker and a sweeper process count into PROMETHEUS_MULTIPROC_DIR; the web
    process's registry reports their sum."""
    import os
    import subprocess
    import sys

    folder = tmp_path / "prom"
    folder.mkdir()
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(folder))
    count = ("from chartbridge.metrics import sweep_counted; "
             "sweep_counted({'chunks': 2, 'writes': 0})")
    for _ in range(2):          # two processes, each counting two chunks
        subprocess.run([sys.executable, "-c", count], env=env, check=True, timeout=120)
    scrape_it = (
        "from prometheus_client import generate_latest\n"
        "from chartbridge.bootstrap import bootstrap\n"
        "from chartbridge.metrics import make_registry\n"
        f"engine = bootstrap(database_url='sqlite:///{tmp_path / 'm.db'}', config_dir='.')\n"
        "print(generate_latest(make_registry(engine, None)).decode())\n")
    out = subprocess.run([sys.executable, "-c", scrape_it], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    families = {f.name: f for f in text_string_to_metric_families(out.stdout)}
    (chunks,) = [s for s in families["chartbridge_sweeper_actions"].samples
                 if s.name.endswith("_total") and s.labels["action"] == "chunks"]
    assert chunks.value == 4.0
    assert not [s for s in families["chartbridge_sweeper_actions"].samples
                if s.labels.get("action") == "writes"]         # nothing counted, no sample
    assert "chartbridge_writes" in families                     # the ledger's, at scrape time
