"""Run as a separate process: execute one write against the shared database and file EHR.

usage: claimant.py DB_URL EHR_FILE MODE LEASE_SECONDS N_THREADS
MODE: normal | hang (file the document, then hang until killed) | die (killed right
      after the claim, before anything reaches the EHR)
Prints one line per thread: "ok <status> <external_id>" or "busy" or "error <class>".
"""
import sys
import threading

sys.path.insert(0, __file__.rsplit("/", 1)[0])

from fake_ehr import FileEhr  # noqa: E402

from chartbridge.core.clock import SystemClock  # noqa: E402
from chartbridge.core.errors import WriteInProgress  # noqa: E402
from chartbridge.ledger.db import Database  # noqa: E402
from chartbridge.ledger.writes import WriteLedger  # noqa: E402
from command_factory import make_command  # noqa: E402


def main() -> None:
    url, ehr_file, mode, lease, n = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
    db = Database.from_url(url)
    ledger = WriteLedger(db, SystemClock(), lease_seconds=lease)
    ehr = FileEhr(ehr_file, hang_after_filing=(mode == "hang"), die_before_filing=(mode == "die"))
    barrier = threading.Barrier(n)
    out, lock = [], threading.Lock()

    def run():
        barrier.wait()
        try:
            rec = ledger.execute(make_command(), ehr)
            line = f"ok {rec.status.value} {rec.external_id}"
        except WriteInProgress:
            line = "busy"
        except Exception as exc:  # noqa: BLE001 - reported to the parent test
            line = f"error {type(exc).__name__}"
        with lock:
            out.append(line)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("\n".join(out), flush=True)


if __name__ == "__main__":
    main()
