"""How WriteLedger.prepare places a note's versions in their lineage at one target, once:
the first is the original, each later one corrects the newest write that may have reached
the EHR — never one that failed or went stale — and recording it again changes nothing."""
from __future__ import annotations

from chartbridge.core.errors import PermanentError
from chartbridge.core.models import ApprovalState, WriteKind, WriteOutcome, WriteStatus
from chartbridge.ledger.writes import WriteLedger

from command_factory import make_command


class Ehr:
    """Files every write it is sent, except the ones told to refuse."""

    def __init__(self):
        self.refuse: set[int] = set()
        self.filed: list[tuple[str, str | None]] = []

    def send(self, command):
        if command.note_version in self.refuse:
            raise PermanentError("refused by the EHR", status=422)
        self.filed.append((command.kind, command.parent_external_id))
        return WriteOutcome(external_id=f"DOC-{command.note_version}", external_version="1")

    def reconcile(self, command):
        return None


def _version(n, state=ApprovalState.APPROVED):
    cmd = make_command(version=n, text=f"version {n}")
    return cmd.model_copy(update={"correction_policy": "append", "approval_state": state})


def test_each_version_corrects_the_newest_write_that_reached_the_ehr(db, clock):
    ledger, ehr = WriteLedger(db, clock), Ehr()
    first = ledger.execute(_version(1), ehr)
    ehr.refuse.add(2)
    second = ledger.execute(_version(2), ehr)              # the addendum is refused
    third = ledger.execute(_version(3), ehr)
    assert (first.kind, first.status) == (WriteKind.CREATE, WriteStatus.SUCCEEDED)
    assert second.status == WriteStatus.FAILED
    # the third corrects the original, not the addendum that never reached the EHR
    assert ledger.command_of("org-a", third.key).parent_key == first.key
    assert ehr.filed == [(WriteKind.CREATE, None), (WriteKind.APPEND, "DOC-1")]


def test_a_staged_preliminary_is_edited_and_recording_a_version_again_changes_nothing(db, clock):
    ledger, ehr = WriteLedger(db, clock), Ehr()
    staged = ledger.execute(_version(1, ApprovalState.PRELIMINARY), ehr)
    key = ledger.prepare(_version(1))
    assert ledger.prepare(_version(1)) == key              # the same approval again
    approved = ledger.command_of("org-a", key)
    assert (approved.kind, approved.parent_key) == (WriteKind.EDIT, staged.key)
    assert approved.extra["parent_available"] is False
    # a later version recorded after it chains to it, not to the preliminary
    later = ledger.command_of("org-a", ledger.prepare(_version(2)))
    assert (later.kind, later.parent_key) == (WriteKind.APPEND, key)
