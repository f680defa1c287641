"""No event order is a failure (issue 12, items 4, 5 and 6): a chunk announced and heard
before the one it follows is transcribed at once, the version's final pass makes the
boundary whole, and an announcement whose claim lost the race with its last chunk still
gets its version finished. The generated histories in tests/properties cover every order;
these pin the cases that were observed to fail."""
from __future__ import annotations

import itertools

import pytest

from chartbridge.core import usecases as uc
from chartbridge.core.models import (ChunkState, Identifier, RecordingStatus, VersionState)
from chartbridge.core.ports import SpokenSegment
from chartbridge.ledger.store import SqlStore

ORG = "org-a"
WORDS = {b"c1": ("the right", "tympan-"), b"c2": ("-ic membrane is red", "your PHQ-9"),
         b"c3": ("score today is", "sixteen")}


class Boundary:
    """Pause-snapped handoff, exactly: a chunk keeps its words up to its last pause; the
    next chunk, given it as lead-in, says the tail first; a final chunk keeps its tail."""

    name, model_id = "boundary", "0"

    def transcribe(self, audio, *, offset_ms=0, hotwords=(), lead_in=None, final=False):
        kept, tail = WORDS[audio]
        said = ([WORDS[lead_in][1]] if lead_in else []) + [kept] + ([tail] if final else [])
        return [SpokenSegment(offset_ms, offset_ms + 900, " ".join(said), -0.1)]


IN_ORDER = "the right tympan- -ic membrane is red your PHQ-9 score today is sixteen"


@pytest.fixture
def store(db, clock):
    return SqlStore(db, clock)


def _session(store, clock):
    s, _ = uc.open_session(store, clock, org_id=ORG, source="epic_haiku",
                           external_id="AMB-ORDER", user=Identifier(value="U1", type="EXTERNAL"),
                           patient_ids=[Identifier(value="Z1", type="MRN")],
                           encounter_ids=[Identifier(value="E1", type="CSN")],
                           allowed_sections=["10164-2"])
    return s


def _heard(store, s, n=3):
    return " ".join(seg.text for seg in store.segments(ORG, s.id, "R1", up_to_chunk=n))


@pytest.mark.parametrize("order", list(itertools.permutations([1, 2, 3])))
def test_chunks_heard_in_any_order_give_the_in_order_transcript(store, clock, order):
    s = _session(store, clock)
    t = Boundary()
    ready = None
    for seq in order:            # announced, downloaded and transcribed in this order
        uc.announce_chunk(store, org_id=ORG, session=s, recording_id="R1", sequence=seq,
                          version=1, duration_ms=1000)
        store.store_audio(ORG, s.id, "R1", seq, f"c{seq}".encode(), "audio/wav")
        ready = uc.transcribe_chunk(store, t, org_id=ORG, session=s, recording_id="R1",
                                    sequence=seq, audio=f"c{seq}".encode()) or ready
    # no chunk failed for want of its neighbour
    assert all(c.state == ChunkState.TRANSCRIBED for c in store.chunks(ORG, s.id))
    ready = uc.recording_available(store, clock, org_id=ORG, session=s, recording_id="R1",
                                   version=1, chunk_count=3,
                                   status=RecordingStatus.STOPPED) or ready
    assert ready is not None and ready.state == VersionState.READY
    uc.finalize_recording(store, t, org_id=ORG, session=s, recording=ready)
    assert _heard(store, s) == IN_ORDER
    offsets = [c.offset_ms for c in store.chunks(ORG, s.id)]
    assert offsets == [0, 1000, 2000]


def test_a_chunk_before_its_predecessor_is_announced_is_heard_not_failed(store, clock):
    s = _session(store, clock)
    uc.announce_chunk(store, org_id=ORG, session=s, recording_id="R1", sequence=2, version=1)
    store.store_audio(ORG, s.id, "R1", 2, b"c2", "audio/wav")
    uc.transcribe_chunk(store, Boundary(), org_id=ORG, session=s, recording_id="R1",
                        sequence=2, audio=b"c2")
    chunk = store.get_chunk(ORG, s.id, "R1", 2)
    assert chunk.state == ChunkState.TRANSCRIBED and chunk.lead_in is False


def test_an_announcement_after_every_chunk_is_done_claims_the_version(store, clock):
    """The API path: all chunks transcribed before the Stop is committed (their claims saw
    no version) — the announcement itself claims, exactly once."""
    s = _session(store, clock)
    for seq in (1, 2):
        uc.announce_chunk(store, org_id=ORG, session=s, recording_id="R1", sequence=seq, version=1)
        store.store_audio(ORG, s.id, "R1", seq, f"c{seq}".encode(), "audio/wav")
        assert uc.transcribe_chunk(store, Boundary(), org_id=ORG, session=s, recording_id="R1",
                                   sequence=seq, audio=f"c{seq}".encode()) is None
    ready = uc.recording_available(store, clock, org_id=ORG, session=s, recording_id="R1",
                                   version=1, chunk_count=2, status=RecordingStatus.STOPPED)
    assert ready is not None and ready.version == 1
    again = uc.recording_available(store, clock, org_id=ORG, session=s, recording_id="R1",
                                   version=1, chunk_count=2, status=RecordingStatus.STOPPED)
    assert again is None                                    # claimed once


def test_the_sweeper_claims_a_complete_version_left_waiting(store, clock, db):
    """A version announced through the bare announce (no claim) is not left waiting."""
    from dramatiq.brokers.stub import StubBroker

    from chartbridge.bootstrap import bootstrap
    from chartbridge.jobs import Jobs, Sweeper

    s = _session(store, clock)
    uc.announce_chunk(store, org_id=ORG, session=s, recording_id="R1", sequence=1, version=1)
    store.store_audio(ORG, s.id, "R1", 1, b"c1", "audio/wav")
    uc.transcribe_chunk(store, Boundary(), org_id=ORG, session=s, recording_id="R1",
                        sequence=1, audio=b"c1")
    uc.announce_version(store, clock, org_id=ORG, session=s, recording_id="R1", version=1,
                        chunk_count=1, status=RecordingStatus.STOPPED)
    assert store.recordings(ORG, s.id)[0].state == VersionState.WAITING
    engine = bootstrap(db=db, clock=clock, migrate=False)
    jobs = Jobs(engine, StubBroker())
    sent = []
    jobs.enqueue = lambda job, *args, delay_s=None: sent.append((job, args))
    clock.advance(3600)
    Sweeper(jobs, stale_after_s=60).sweep_once()
    assert ("finish_version", (ORG, s.id, "R1", 1)) in sent
    assert store.recordings(ORG, s.id)[0].state == VersionState.READY
