"""Seeds one ledger row through the real ledger (reuses the ledger tests' fakes)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "ledger"))

from command_factory import make_command  # noqa: E402
from fake_ehr import FileEhr  # noqa: E402

from chartbridge.core.clock import SystemClock  # noqa: E402
from chartbridge.ledger.db import Database  # noqa: E402
from chartbridge.ledger.writes import WriteLedger  # noqa: E402


def seeded_ledger(url: str) -> None:
    import tempfile
    db = Database.from_url(url)
    WriteLedger(db, SystemClock()).execute(make_command(), FileEhr(Path(tempfile.mkdtemp()) / "ehr"))
    db.dispose()
