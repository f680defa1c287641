"""The domain rules and use cases, driven end to end without Flask or a broker."""
from __future__ import annotations

import threading

import pytest

from chartbridge.core import usecases as uc
from chartbridge.core.errors import InputError, RuleViolation, StateConflict
from chartbridge.core.models import (ChunkState, Consent, ConsentScope, Decision, Identifier,
                                     NoteSection, Protection, RecordingStatus, SessionStatus,
                                     VersionState)
from chartbridge.core.ports import GeneratedNote, SpokenSegment
from chartbridge.core.rules import (check_transition, sendable_sections, version_complete)
from chartbridge.ledger.store import SqlStore

ORG = "org-a"


class WordsTranscriber:
    name, model_id = "fake-words", "v0"

    def __init__(self):
        self.calls = 0

    def transcribe(self, audio, *, offset_ms=0, hotwords=(), lead_in=None, final=False):
        self.calls += 1
        return [SpokenSegment(offset_ms, offset_ms + 1000, audio.decode(), -0.2)]


class KeywordGenerator:
    """Puts every segment mentioning 'plan' in A&P and every other one in HPI."""

    name, version = "keyword", "1"

    def generate(self, segments, *, allowed_sections, note_type=None, settings=None):
        out = []
        for code, pick in (("10164-2", lambda t: "plan" not in t), ("51847-2", lambda t: "plan" in t)):
            chosen = [s for s in segments if pick(s.text)]
            if chosen and code in allowed_sections:
                out.append(NoteSection(code=code, text=" ".join(s.text for s in chosen),
                                       segment_ids=[s.id for s in chosen]))
        return GeneratedNote(out, "progress", "1")


@pytest.fixture
def store(db, clock):
    return SqlStore(db, clock)


def begin(store, clock, external_id="AMB-1", patient="Z1", sections=("10164-2", "51847-2")):
    return uc.open_session(
        store, clock, org_id=ORG, source="epic_haiku", external_id=external_id,
        user=Identifier(value="E1", type="EXTERNAL"),
        patient_ids=[Identifier(value=patient, type="MRN"), Identifier(value="eX", type="FHIR")],
        encounter_ids=[Identifier(value="300012345", type="CSN")],
        allowed_sections=list(sections), event_body={"SessionID": external_id, "p": patient})


def test_rules_as_plain_functions():
    assert version_complete({1: ChunkState.TRANSCRIBED, 2: ChunkState.TRANSCRIBED}, 2)
    assert not version_complete({1: ChunkState.TRANSCRIBED, 3: ChunkState.TRANSCRIBED}, 3)
    assert not version_complete({}, 0)
    with pytest.raises(RuleViolation) as err:
        check_transition(SessionStatus.SIGNED, SessionStatus.CANCELLED)
    assert err.value.rule == "session_transition"
    kept = sendable_sections([NoteSection(code="10164-2", text="a"), NoteSection(code="51847-2", text="b"),
                              NoteSection(code="10187-3", text="c")],
                             allowed=["10164-2", "51847-2"], protected=["51847-2"])
    assert [s.code for s in kept] == ["10164-2"]


def test_open_session_keeps_every_identifier_and_is_idempotent(store, clock):
    s1, created = begin(store, clock)
    s2, again = begin(store, clock)
    assert created and not again and s1.id == s2.id
    assert [(i.value, i.type) for i in store.get_session(ORG, s1.id).patient_ids] == [("Z1", "MRN"), ("eX", "FHIR")]
    with pytest.raises(StateConflict):                       # same SessionID, other context
        begin(store, clock, patient="Z999")
    with pytest.raises(InputError) as err:
        begin(store, clock, external_id="AMB-2", sections=["99999-9"])
    assert err.value.field == "allowed_sections[0]"


def test_sessions_are_scoped_by_org(store, clock):
    s, _ = begin(store, clock)
    with pytest.raises(Exception) as err:
        store.get_session("org-b", s.id)
    assert err.value.http_status == 404
    assert store.list_sessions("org-b") == []


def _announce_and_transcribe(store, clock, session, transcriber, n, *, order, status=RecordingStatus.STOPPED,
                             version=1, announce_first=False):
    ready = []
    if announce_first:
        uc.announce_version(store, clock, org_id=ORG, session=session, recording_id="R1",
                            version=version, chunk_count=n, status=status)
    for seq in order:
        assert uc.announce_chunk(store, org_id=ORG, session=session, recording_id="R1", sequence=seq,
                                 version=version, duration_ms=1000)
        store.store_audio(ORG, session.id, "R1", seq, f"words {seq}".encode(), "audio/wav")
    if not announce_first:
        uc.announce_version(store, clock, org_id=ORG, session=session, recording_id="R1",
                            version=version, chunk_count=n, status=status)
    for seq in order:
        got = uc.transcribe_chunk(store, transcriber, org_id=ORG, session=session, recording_id="R1",
                                  sequence=seq, audio=store.get_audio(ORG, session.id, "R1", seq))
        if got:
            ready.append(got)
    return ready


@pytest.mark.parametrize("announce_first", [True, False])
def test_version_ready_exactly_once_whatever_the_order(store, clock, announce_first):
    s, _ = begin(store, clock)
    ready = _announce_and_transcribe(store, clock, s, WordsTranscriber(), 3, order=[3, 1, 2],
                                     announce_first=announce_first)
    assert [(r.version, r.chunk_count) for r in ready] == [(1, 3)]
    assert [seg.start_ms for seg in store.segments(ORG, s.id)] == [0, 1000, 2000]


def test_concurrent_last_chunks_claim_the_version_once(store, clock):
    s, _ = begin(store, clock)
    t = WordsTranscriber()
    uc.announce_version(store, clock, org_id=ORG, session=s, recording_id="R1", version=1,
                        chunk_count=8, status=RecordingStatus.STOPPED)
    for seq in range(1, 9):
        uc.announce_chunk(store, org_id=ORG, session=s, recording_id="R1", sequence=seq, version=1)
    results, barrier = [], threading.Barrier(8)

    def run(seq):
        barrier.wait()
        results.append(uc.transcribe_chunk(store, t, org_id=ORG, session=s, recording_id="R1",
                                           sequence=seq, audio=b"x"))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(1, 9)]
    [th.start() for th in threads]
    [th.join(30) for th in threads]
    assert len([r for r in results if r is not None]) == 1


def test_only_newest_version_is_documented(store, clock):
    s, _ = begin(store, clock)
    t = WordsTranscriber()
    _announce_and_transcribe(store, clock, s, t, 2, order=[1, 2], status=RecordingStatus.PAUSED)
    # version 2 announced while nothing of it is processed yet; then version 1's late duplicate
    uc.announce_version(store, clock, org_id=ORG, session=s, recording_id="R1", version=2,
                        chunk_count=3, status=RecordingStatus.STOPPED)
    assert store.claim_ready_version(ORG, s.id, "R1") is None
    uc.announce_chunk(store, org_id=ORG, session=s, recording_id="R1", sequence=3, version=2)
    got = uc.transcribe_chunk(store, t, org_id=ORG, session=s, recording_id="R1", sequence=3, audio=b"plan")
    assert got.version == 2 and got.status == RecordingStatus.STOPPED


def test_protected_section_is_never_drafted_again(store, clock):
    s, _ = begin(store, clock)
    (rec,) = _announce_and_transcribe(store, clock, s, WordsTranscriber(), 2, order=[1, 2])
    store.store_audio(ORG, s.id, "R1", 9, b"", "audio/wav")
    draft = uc.draft_note(store, clock, KeywordGenerator(), WordsTranscriber(), org_id=ORG, session=s, recording=rec)
    assert [x.code for x in draft.sections] == ["10164-2"]
    uc.protect_sections(store, org_id=ORG, session=s, protections=[Protection(section="10164-2")])
    again = uc.draft_note(store, clock, KeywordGenerator(), WordsTranscriber(), org_id=ORG, session=s, recording=rec)
    assert again.sections == [] and again.version == 2
    with pytest.raises(RuleViolation) as err:            # an old draft holding it cannot be sent
        uc.handoff_command(s, draft, rec, target="epic_haiku", resource_kind="DocumentationReady",
                           protected=["10164-2"])
    assert err.value.rule == "section_protected"
    assert all(seg_id in {x.id for x in store.segments(ORG, s.id)} for seg_id in draft.sections[0].segment_ids)


def test_write_needs_approval_of_exact_draft_unless_staged(store, clock):
    s, _ = begin(store, clock)
    (rec,) = _announce_and_transcribe(store, clock, s, WordsTranscriber(), 1, order=[1])
    draft = uc.draft_note(store, clock, KeywordGenerator(), WordsTranscriber(), org_id=ORG, session=s, recording=rec)
    kw = dict(target="fhir_docref", resource_kind="DocumentReference", needs_approval=True)
    with pytest.raises(RuleViolation) as err:
        uc.write_command(s, draft, stage_preliminary=False, **kw)
    assert err.value.rule == "approval_required"
    staged = uc.write_command(s, draft, stage_preliminary=True, **kw)
    assert staged.approval_state == "preliminary"
    # an edit makes a new version: an approval of the old content does not carry over
    edited = uc.edit_draft(store, clock, org_id=ORG, draft_id=draft.id, section_code="10164-2",
                           text="Cough for four days.", editor="E1")
    with pytest.raises(StateConflict):
        uc.decide(store, clock, org_id=ORG, draft_id=draft.id, content_hash=draft.content_hash(),
                  approver=Identifier(value="E1", type="EXTERNAL"), role="physician", decision=Decision.APPROVED)
    approval = uc.decide(store, clock, org_id=ORG, draft_id=edited.id, content_hash=edited.content_hash(),
                         approver=Identifier(value="E1", type="EXTERNAL"), role="physician",
                         decision=Decision.APPROVED)
    cmd = uc.write_command(s, edited, approval=approval, stage_preliminary=False, **kw)
    assert cmd.approval_state == "approved" and cmd.note_version == 2
    with pytest.raises(RuleViolation) as err:
        uc.write_command(s, draft, approval=approval, stage_preliminary=False, **kw)
    assert err.value.rule == "approval_mismatch"


def test_missing_consent_stops_audio_processing_with_a_visible_reason(store, clock):
    s, _ = begin(store, clock)
    uc.announce_chunk(store, org_id=ORG, session=s, recording_id="R1", sequence=1, version=1)
    t = WordsTranscriber()
    with pytest.raises(RuleViolation) as err:
        uc.transcribe_chunk(store, t, org_id=ORG, session=s, recording_id="R1", sequence=1, audio=b"x",
                            consent_required=True)
    assert err.value.rule == "consent_missing" and t.calls == 0
    store.set_consent(ORG, Consent(session_id=s.id, scope=ConsentScope.CAPTURE, granted=True, at=clock.now()))
    uc.transcribe_chunk(store, t, org_id=ORG, session=s, recording_id="R1", sequence=1, audio=b"x",
                        consent_required=True)
    assert t.calls == 1


def test_failed_chunk_fails_its_version_with_reason(store, clock):
    s, _ = begin(store, clock)
    uc.announce_chunk(store, org_id=ORG, session=s, recording_id="R1", sequence=1, version=1)
    uc.announce_version(store, clock, org_id=ORG, session=s, recording_id="R1", version=1,
                        chunk_count=1, status=RecordingStatus.STOPPED)
    store.chunk_failed(ORG, s.id, "R1", 1, "audio is not a WAV file")
    (rec,) = store.recordings(ORG, s.id)
    assert rec.state == VersionState.FAILED
    assert store.chunks(ORG, s.id)[0].error == "audio is not a WAV file"


def test_closed_session_ignores_late_events(store, clock):
    s, _ = begin(store, clock)
    assert uc.complete_session(store, org_id=ORG, session=s, signed=True, event_body={"r": "Signed"})
    assert not uc.complete_session(store, org_id=ORG, session=s, signed=True, event_body={"r": "Signed"})
    assert not uc.announce_chunk(store, org_id=ORG, session=s, recording_id="R1", sequence=1, version=1)
    assert store.get_session(ORG, s.id).status == SessionStatus.SIGNED


class CallLog(WordsTranscriber):
    def __init__(self):
        super().__init__()
        self.log = []

    def transcribe(self, audio, *, offset_ms=0, hotwords=(), lead_in=None, final=False):
        self.log.append((audio.decode(), lead_in, final))
        return super().transcribe(audio, offset_ms=offset_ms)


def test_last_chunk_of_a_stopped_recording_is_transcribed_final_exactly_once(store, clock):
    s, _ = begin(store, clock)
    t = CallLog()
    # Given chunks transcribed before the Stop was announced (the usual order)
    for seq in (1, 2):
        uc.announce_chunk(store, org_id=ORG, session=s, recording_id="R1", sequence=seq, version=1)
        store.store_audio(ORG, s.id, "R1", seq, f"c{seq}".encode(), "audio/wav")
        uc.transcribe_chunk(store, t, org_id=ORG, session=s, recording_id="R1", sequence=seq,
                            audio=f"c{seq}".encode())
    rec, _ = uc.announce_version(store, clock, org_id=ORG, session=s, recording_id="R1", version=1,
                                 chunk_count=2, status=RecordingStatus.STOPPED)
    ready = store.claim_ready_version(ORG, s.id, "R1")
    # When the version is finished
    assert uc.finalize_recording(store, t, org_id=ORG, session=s, recording=ready) == 1
    assert uc.finalize_recording(store, t, org_id=ORG, session=s, recording=ready) == 0
    # Then chunk 2 was heard once more as final, with chunk 1 as its lead-in
    assert t.log == [("c1", None, False), ("c2", b"c1", False), ("c2", b"c1", True)]
    # And a chunk after a final one gets no lead-in (its tail was already kept)
    uc.announce_chunk(store, org_id=ORG, session=s, recording_id="R1", sequence=3, version=2)
    uc.transcribe_chunk(store, t, org_id=ORG, session=s, recording_id="R1", sequence=3, audio=b"c3")
    assert t.log[-1] == ("c3", None, False)


def test_approval_turns_into_one_write_per_target_only_with_write_back_consent(store, clock):
    s, _ = begin(store, clock)
    (rec,) = _announce_and_transcribe(store, clock, s, WordsTranscriber(), 1, order=[1])
    draft = uc.draft_note(store, clock, KeywordGenerator(), WordsTranscriber(), org_id=ORG, session=s, recording=rec)
    approval = uc.decide(store, clock, org_id=ORG, draft_id=draft.id, content_hash=draft.content_hash(),
                         approver=Identifier(value="E1", type="EXTERNAL"), role="physician",
                         decision=Decision.APPROVED)
    targets = [("fhir_docref", "DocumentReference"), ("hl7_mdm", "MDM")]
    with pytest.raises(RuleViolation) as err:
        uc.approved_write_commands(s, draft, approval, targets=targets, stage_preliminary=False,
                                   write_back_consent=None, consent_required=True)
    assert err.value.rule == "consent_missing"
    cmds = uc.approved_write_commands(s, draft, approval, targets=targets, stage_preliminary=False,
                                      write_back_consent=True, consent_required=True)
    assert [(c.target, c.resource_kind, c.approval_state) for c in cmds] == [
        ("fhir_docref", "DocumentReference", "approved"), ("hl7_mdm", "MDM", "approved")]
    assert len({c.idempotency_key() for c in cmds}) == 2
    assert cmds[0].patient_ids == s.patient_ids              # identifiers travel with the write


def test_approved_writes_carry_their_lineage_policy_and_an_identity_made_of_immutable_facts(store, clock):
    from chartbridge.core.models import ApprovalState, WriteKind
    s, _ = begin(store, clock)
    (rec,) = _announce_and_transcribe(store, clock, s, WordsTranscriber(), 1, order=[1])
    draft = uc.draft_note(store, clock, KeywordGenerator(), WordsTranscriber(), org_id=ORG, session=s, recording=rec)
    approval = uc.decide(store, clock, org_id=ORG, draft_id=draft.id, content_hash=draft.content_hash(),
                         approver=Identifier(value="E1", type="EXTERNAL"), role="physician",
                         decision=Decision.APPROVED)
    targets = [("fhir_docref", "DocumentReference"), ("hl7_mdm", "MDM"), ("athenaone", "clinicaldocument")]
    policy = {"fhir_docref": "replace", "hl7_mdm": "append", "athenaone": "append"}
    cmds = uc.approved_write_commands(s, draft, approval, targets=targets, stage_preliminary=False,
                                      correction=policy)
    again = uc.approved_write_commands(s, draft, approval, targets=targets, stage_preliminary=False,
                                       correction=policy)
    # kind and parent are left to the ledger, which decides them once when it records each
    assert all(c.kind == WriteKind.CREATE and c.parent_key is None for c in cmds)
    assert {c.target: c.correction_policy for c in cmds} == policy
    # the same approval computed twice is the same writes
    assert [c.idempotency_key() for c in cmds] == [c.idempotency_key() for c in again]
    assert [c.request_hash() for c in cmds] == [c.request_hash() for c in again]
    # and what the ledger decides (kind, parent) does not change "the same request"
    decided = cmds[0].model_copy(update={"kind": WriteKind.REPLACE, "parent_key": "k",
                                         "parent_external_id": "DocumentReference/1",
                                         "extra": dict(cmds[0].extra, parent_available=True)})
    assert decided.idempotency_key() == cmds[0].idempotency_key()
    assert decided.request_hash() == cmds[0].request_hash()
    # a staged preliminary and the approved note of the same draft are two writes
    assert uc.correction_kind(ApprovalState.PRELIMINARY, policy="append") == WriteKind.EDIT
    assert uc.correction_kind(ApprovalState.APPROVED, policy="append") == WriteKind.APPEND


class RecordingQueue:
    """A JobQueue that keeps what it was given, and what the ledger held when it was."""

    def __init__(self, ledger):
        self.ledger, self.sent = ledger, []

    def enqueue(self, job, *args, delay_s=None):
        org_id, key = args
        self.sent.append((job, org_id, key, self.ledger.get(org_id, key).status.value))


def test_submit_approved_records_every_write_pending_before_enqueueing_it_once(store, clock,
                                                                                ledger):
    # Given an approved draft, a session without write-back consent, and a queue port
    s, _ = begin(store, clock)
    (rec,) = _announce_and_transcribe(store, clock, s, WordsTranscriber(), 1, order=[1])
    draft = uc.draft_note(store, clock, KeywordGenerator(), WordsTranscriber(), org_id=ORG,
                          session=s, recording=rec)
    uc.decide(store, clock, org_id=ORG, draft_id=draft.id, content_hash=draft.content_hash(),
              approver=Identifier(value="E1", type="EXTERNAL"), role="physician",
              decision=Decision.APPROVED)
    queue = RecordingQueue(ledger)
    targets = [("ehr_a", "DocumentReference"), ("ehr_b", "MDM")]
    submit = dict(org_id=ORG, draft_id=draft.id, targets=targets, stage_preliminary=False,
                  consent_required=True, correction={"ehr_a": "replace"})
    # When consent is required and missing: nothing is recorded, nothing enqueued
    with pytest.raises(RuleViolation) as err:
        uc.submit_approved(store, ledger, queue, **submit)
    assert err.value.rule == "consent_missing"
    assert ledger.list(ORG, session_id=s.id) == [] and queue.sent == []
    # When consent is given and the approval is submitted twice
    store.set_consent(ORG, Consent(session_id=s.id, scope=ConsentScope.WRITE_BACK, granted=True,
                                   at=clock.now()))
    keys = uc.submit_approved(store, ledger, queue, **submit)
    again = uc.submit_approved(store, ledger, None, **submit)
    # Then one write per target, each already pending in the ledger when it was enqueued
    assert again == keys and len(set(keys)) == 2
    assert queue.sent == [("execute_write", ORG, k, "pending") for k in keys]
    assert {(w.target, w.key) for w in ledger.list(ORG, session_id=s.id)} == {
        (t, k) for (t, _), k in zip(targets, keys)}
    assert ledger.command_of(ORG, keys[0]).correction_policy == "replace"
