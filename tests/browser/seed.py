"""A draft with transcript excerpts, stored through the use cases: what the review pages
show. Shared by the browser tests and the route fuzz test (no browser needed here)."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

from chartbridge.core import usecases as uc
from chartbridge.core.models import (Identifier, NoteDraft, NoteSection, Provenance,
                                     SessionSource, TranscriptSegment)


def seed_draft(engine, org: str) -> NoteDraft:
    store, clock = engine.store, engine.clock
    session, _ = uc.open_session(
        store, clock, org_id=org, source=SessionSource.API, external_id=f"VISIT-{uuid.uuid4().hex[:6]}",
        user=Identifier(value="U1", type="EXTERNAL"),
        patient_ids=[Identifier(value="Z4481", type="MRN")],
        encounter_ids=[Identifier(value="300012345", type="CSN")],
        allowed_sections=["10164-2", "51848-0"])
    uc.announce_chunk(store, org_id=org, session=session, recording_id="R1", sequence=1, version=1,
                      duration_ms=30_000)
    segs = [TranscriptSegment(id="R1/1/0", session_id=session.id, recording_id="R1",
                              chunk_sequence=1, start_ms=3_200, end_ms=7_900,
                              text="The cough started three days ago.", confidence=-0.1),
            TranscriptSegment(id="R1/1/1", session_id=session.id, recording_id="R1",
                              chunk_sequence=1, start_ms=65_000, end_ms=69_400,
                              text="Likely a viral bronchitis.", confidence=-0.2)]
    store.chunk_transcribed(org, session.id, "R1", 1, segs, offset_ms=0)
    draft = NoteDraft(id=uuid.uuid4().hex, session_id=session.id, version=1,
                      sections=[NoteSection(code="10164-2", text="Cough for three days.",
                                            segment_ids=["R1/1/0"]),
                                NoteSection(code="51848-0", text="Viral bronchitis. Azithromycin.",
                                            segment_ids=["R1/1/1"],
                                            untraced=["azithromycin"])],
                      provenance=Provenance(transcriber="fake", transcriber_model="0",
                                            generator="fake", generator_version="1",
                                            template_id="default", template_version="1"),
                      created_at=datetime.now(timezone.utc))
    return store.save_draft(org, draft)
