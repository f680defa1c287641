"""`chartbridge sessions show`, typed as a user would: a chunk that failed, the version it
failed and a stale write each show with their reason, in the table and as JSON."""
from __future__ import annotations

import json

from chartbridge.cli import main
from chartbridge.core import usecases as uc
from chartbridge.core.clock import SystemClock
from chartbridge.core.models import Identifier, RecordingStatus, SessionSource
from chartbridge.ledger.db import Database
from chartbridge.ledger.store import SqlStore


def test_sessions_show_names_what_failed_and_why(database_url, capsys):
    db = Database.from_url(database_url)
    store = SqlStore(db, SystemClock())
    s, _ = uc.open_session(store, SystemClock(), org_id="org-a", source=SessionSource.API,
                           external_id="API-1", user=Identifier(value="U1", type="EXTERNAL"),
                           patient_ids=[Identifier(value="Z1", type="MRN")],
                           encounter_ids=[Identifier(value="E1", type="CSN")],
                           allowed_sections=["10164-2"])
    uc.announce_chunk(store, org_id="org-a", session=s, recording_id="R1", sequence=1, version=1)
    uc.announce_version(store, SystemClock(), org_id="org-a", session=s, recording_id="R1",
                        version=1, chunk_count=1, status=RecordingStatus.STOPPED)
    store.chunk_failed("org-a", s.id, "R1", 1, "the audio is not a WAV file")
    db.dispose()

    assert main(["sessions", "show", "--org", "org-a", "--json",
                 "--database-url", database_url]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert report["chunks"][0]["state"] == "failed"
    assert report["chunks"][0]["error"] == "the audio is not a WAV file"
    assert report["versions"][0]["state"] == "failed"
    assert "chunk 1: the audio is not a WAV file" in report["versions"][0]["error"]

    assert main(["sessions", "show", "--org", "org-a", "--database-url", database_url]) == 0
    table = capsys.readouterr().out
    assert "failed" in table and "the audio is not a WAV file" in table
    # another org sees nothing of it
    assert main(["sessions", "show", "--org", "org-b", "--database-url", database_url]) == 0
    assert "no sessions in org-b" in capsys.readouterr().out
