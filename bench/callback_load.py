"""Epic callback acknowledgements under load, on the production WSGI setup (waitress with
`chartbridge serve`'s 8 threads, Flask, PostgreSQL, a Redis broker; the jobs wait in the
broker for `chartbridge worker`, which is not started: this measures the acknowledgement).

    .venv/bin/python bench/callback_load.py [--rate 200] [--seconds 5] [--clients 8]
                                            [--serve N]

Epic's side is the Epic simulator: sessions are begun through it and it signs every
inbound JWT (RS384, `aud` = the URL, a fresh `jti`); the tokens are made before the clock
starts. The load runs in its own process (loopback, keep-alive connections):
1. trivial: GET /healthz on the same server, --clients threads back to back (req/s);
2. callbacks: POST RecordingChunkAvailable (each a new chunk: JWT verified against the
   cached JWKS; jti, chunk row and inbox row in one transaction; job enqueued after it),
   --clients threads back to back (req/s);
3. open loop: --rate callbacks a second for --seconds on a fixed schedule; latency from each
   request's scheduled time to its answer (a late start counts), p50/p95/p99.
--serve N: instead of the in-process waitress, N `chartbridge serve` processes (each its own
GIL: the deployment docs/deploy.md describes, several web processes behind the proxy), each
with `--public-url` the one URL Epic's tokens name; every phase spreads its connections
over them round-robin, as the proxy would (the proxy itself is not in the loop).
Targets: p99 < 100 ms at 200/s; callbacks >= 0.3 x trivial req/s. Every request is bounded
(--seconds, a fixed number of tokens). Writes docs/bench/callback_load.png; prints the
ratio last.
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REDIS, PgDatabases, bar_plot, purge_queue  # noqa: E402



# -- the load (its own process) --------------------------------------------------------------
def _conn(base: str) -> http.client.HTTPConnection:
    u = urlsplit(base)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=10)


def _post(conn, path: str, body: bytes, token: str) -> int:
    conn.request("POST", path, body=body, headers={"Authorization": f"Bearer {token}",
                                                   "Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.status


def _get(conn, path: str) -> int:
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    return response.status


def closed_loop(bases: list[str], clients: int, seconds: float,
                requests=None) -> tuple[float, int]:
    """clients threads back to back for `seconds` (or until `requests` run out), thread i on
    bases[i % len(bases)]: (req/s, non-2xx answers)."""
    lock, done, bad = threading.Lock(), [0], [0]
    items = iter(requests) if requests is not None else None
    stop = time.perf_counter() + seconds

    def loop(base):
        conn = _conn(base)
        while time.perf_counter() < stop:
            if items is None:
                status = _get(conn, "/healthz")
            else:
                with lock:
                    item = next(items, None)
                if item is None:
                    break
                status = _post(conn, *item)
            with lock:
                done[0] += 1
                bad[0] += status >= 300
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(bases[i % len(bases)],))
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0] / (time.perf_counter() - start), bad[0]


def open_loop(bases: list[str], rate: float, requests: list,
              threads: int = 32) -> tuple[list[float], int]:
    """Send requests[i] at start + i/rate from a pool of threads (thread j on
    bases[j % len(bases)]); latency from the scheduled time (ms)."""
    lock, latencies, bad = threading.Lock(), [], [0]
    index = iter(range(len(requests)))
    start = time.perf_counter() + 0.2

    def loop(base):
        conn = _conn(base)
        while True:
            with lock:
                i = next(index, None)
            if i is None:
                break
            due = start + i / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            status = _post(conn, *requests[i])
            took = (time.perf_counter() - due) * 1000
            with lock:
                latencies.append(took)
                bad[0] += status >= 300
        conn.close()

    pool = [threading.Thread(target=loop, args=(bases[j % len(bases)],))
            for j in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return latencies, bad[0]


def _load(bases: list[str], args: dict, closed: list, opened: list, out) -> None:
    trivial, _ = closed_loop(bases, args["clients"], args["seconds"])
    callbacks, bad_closed = closed_loop(bases, args["clients"], args["seconds"], closed)
    latencies, bad_open = open_loop(bases, args["rate"], opened)
    out.put({"trivial": trivial, "callbacks": callbacks, "latencies": latencies,
             "bad": bad_closed + bad_open})


# -- the server side (this process) -------------------------------------------------------
def requests_for(stack, org: str, sessions: list[str], n: int, seq_from: int) -> list:
    """n RecordingChunkAvailable deliveries (path, body, token) for new chunks."""
    sim, out = stack.sim, []
    for i in range(n):
        sid = sessions[i % len(sessions)]
        seq = seq_from + i // len(sessions)
        url = sim.engine_event_url(org, "RecordingChunkAvailable")
        body = {"SessionID": sid, "RecordingID": "R1", "RecordingVersion": 1,
                "ChunkSequence": seq, "ContentType": "audio/wav", "DurationMs": 10000}
        out.append((urlsplit(url).path, json.dumps(body).encode(),
                    sim.make_inbound_token(url, org)))
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--sessions", type=int, default=40)
    ap.add_argument("--serve", type=int, default=0, metavar="N",
                    help="N `chartbridge serve` processes instead of the in-process waitress")
    args = ap.parse_args()
    from contract_tests.epic_haiku.stack import ORG, EpicStack, serve_processes, stop_processes

    queue = f"bench-callbacks-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp, PgDatabases(n=1) as (url,), \
            EpicStack(Path(tmp), url, broker_url=REDIS, queue=queue,
                      in_process_worker=False, sweep_interval_s=3600) as stack:
        sessions = [f"AMB-LOAD-{i:04d}" for i in range(args.sessions)]
        for sid in sessions:
            delivery = stack.sim.begin_session(ORG, session_id=sid)
            assert delivery.status in (200, 202), delivery.status
        # enough tokens that the closed loop cannot run out within --seconds at 3x the rate
        closed = requests_for(stack, ORG, sessions, int(args.rate * args.seconds * 3), 1)
        opened = requests_for(stack, ORG, sessions, int(args.rate * args.seconds),
                              10_000)
        warm = requests_for(stack, ORG, sessions, 50 * max(1, args.serve), 50_000)
        procs, bases = [], [stack.engine_url]
        log = open(Path(tmp) / "serve.log", "w")
        if args.serve:
            procs, bases = serve_processes(stack, args.serve, log)
        try:
            closed_loop(bases, 4 * len(bases), 5, warm)
            ctx = multiprocessing.get_context("spawn")
            out = ctx.Queue()
            load = ctx.Process(target=_load, args=(bases, vars(args), closed, opened, out))
            load.start()
            result = out.get(timeout=args.seconds * 10 + 120)
            load.join(timeout=30)
        finally:
            stop_processes(procs)
            log.close()
            purge_queue(queue)
    lat = result["latencies"]
    p50, p95, p99 = pct(lat, 0.5), pct(lat, 0.95), pct(lat, 0.99)
    ratio = result["callbacks"] / result["trivial"]
    print(f"trivial GET /healthz        {result['trivial']:7.0f} req/s ({args.clients} clients)")
    print(f"callbacks, back to back     {result['callbacks']:7.0f} req/s ({args.clients} clients)")
    print(f"callbacks at {args.rate:.0f}/s for {args.seconds:.0f} s   p50 {p50:.1f} ms   "
          f"p95 {p95:.1f} ms   p99 {p99:.1f} ms   max {max(lat):.1f} ms   "
          f"(target p99 < 100 ms; {len(lat)} requests, {result['bad']} not 2xx)")
    setup = (f"{args.serve} x chartbridge serve" if args.serve else "waitress") + ", 8 threads"
    print(f"server                      {setup}")
    plot = bar_plot("callback_load", f"Epic callback acknowledgements ({setup}, "
                    "PostgreSQL, Redis broker)",
                    {"GET /healthz req/s": result["trivial"],
                     "callbacks req/s": result["callbacks"],
                     f"p50 ms at {args.rate:.0f}/s": p50, f"p95 ms at {args.rate:.0f}/s": p95,
                     f"p99 ms at {args.rate:.0f}/s": p99},
                    "req/s  |  ms", "targets: p99 < 100 ms at 200/s; callbacks >= 0.3 x trivial")
    print(f"plot                        {plot}")
    print(f"median latency              {statistics.median(lat):.1f} ms")
    print(f"ratio callbacks/trivial     {ratio:.3f}")


if __name__ == "__main__":
    main()
