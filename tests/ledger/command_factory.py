from datetime import datetime, timezone

from chartbridge.core.models import (ApprovalState, NoteDraft, NoteSection, Provenance,
                                     WriteCommand)


def make_command(*, org="org-a", text="Community acquired pneumonia.", version=1,
                 target="fake") -> WriteCommand:
    draft = NoteDraft(
        id="d1", session_id="s1", version=version, recording_version=1,
        sections=[NoteSection(code="51847-2", text=text, segment_ids=["R1/1/0"])],
        provenance=Provenance(transcriber="t", transcriber_model="m", generator="g",
                              generator_version="1", template_id="progress", template_version="1"),
        created_at=datetime(2026, 11, 21, 15, 0, tzinfo=timezone.utc))
    return WriteCommand(org_id=org, target=target, session_id="s1", encounter_key="300012345",
                        note_version=version, resource_kind="DocumentReference",
                        approval_state=ApprovalState.APPROVED, correlation_id="corr-1",
                        draft=draft)
