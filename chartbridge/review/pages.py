"""The pages: the org's drafts awaiting review, one draft with each section and its
supporting transcript excerpts, and the live write status per target."""
from __future__ import annotations

from flask import Blueprint, jsonify, redirect, render_template, request, url_for

from chartbridge.core.errors import ChartbridgeError
from chartbridge.core.models import SECTION_CODES, WriteStatus

from .common import STATUS_WORDS, Review


def register(bp: Blueprint, ctx: Review) -> None:
    engine, render, audit = ctx.engine, ctx.render, ctx.audit
    approval_targets, need_user = ctx.approval_targets, ctx.need_user

    # -- the list ----------------------------------------------------------------------------
    @bp.get("/orgs/<org>/review/")
    def drafts(org: str):
        data = need_user(org)
        if data is None:
            return redirect(url_for(".login", org=org), code=303)
        targets = approval_targets(org)
        items = []
        if targets:
            for draft, _state in engine.store.drafts(org, state="draft"):
                session = engine.store.get_session(org, draft.session_id)
                items.append({"draft": draft, "session": session,
                              "patient": session.patient_ids[0],
                              "sections": [SECTION_CODES.get(s.code, s.code) for s in draft.sections]})
        audit(org, "review.list_viewed", data["user"], count=len(items))
        return render("review/list.html", org=org, user=data["user"], csrf=data["csrf"],
                      items=items, targets=targets)

    # -- one draft ---------------------------------------------------------------------------
    @bp.get("/orgs/<org>/review/drafts/<draft_id>")
    def draft(org: str, draft_id: str):
        data = need_user(org)
        if data is None:
            return redirect(url_for(".login", org=org), code=303)
        draft, state = engine.store.get_draft(org, draft_id)
        session = engine.store.get_session(org, draft.session_id)
        segments = {s.id: s for s in engine.store.segments(org, session.id)}
        sections = [{"code": s.code, "name": SECTION_CODES.get(s.code, s.title or s.code),
                     "text": s.text, "untraced": [t.replace("_", " ") for t in s.untraced],
                     "excerpts": [{"text": segments[i].text, "at": _clock(segments[i].start_ms),
                                   "end": _clock(segments[i].end_ms),
                                   "recording": segments[i].recording_id}
                                  for i in s.segment_ids if i in segments]}
                    for s in draft.sections]
        newest = None
        if state == "superseded":
            newest = next((d for d, st in engine.store.drafts(org, session_id=session.id)
                           if st != "superseded"), None)
        approval = engine.store.approval(org, draft.id)
        audit(org, "review.draft_viewed", data["user"], session=session, draft_id=draft.id,
              version=draft.version)
        return render("review/draft.html", org=org, user=data["user"], csrf=data["csrf"],
                      draft=draft, state=state, session=session, sections=sections,
                      content_hash=draft.content_hash(), approval=approval, newest=newest,
                      writes=write_rows(org, draft), notice=request.args.get("notice"),
                      writes_url=url_for(".writes", org=org, draft_id=draft.id))

    def write_rows(org: str, draft) -> list[dict]:
        targets = set(approval_targets(org))
        rows = []
        for w in engine.ledger.list(org, session_id=draft.session_id):
            if w.target not in targets:
                continue
            try:
                command = engine.ledger.command_of(org, w.key)
            except ChartbridgeError:
                continue
            if command.draft is None or command.draft.id != draft.id:
                continue
            rows.append({"target": w.target, "status": w.status.value,
                         "words": STATUS_WORDS.get(w.status, w.status.value),
                         "external_id": w.external_id if w.status == WriteStatus.SUCCEEDED else None,
                         "reason": _reason(w), "attempts": w.attempts})
        return rows

    @bp.get("/orgs/<org>/review/drafts/<draft_id>/writes.json")
    def writes(org: str, draft_id: str):
        data = need_user(org)
        if data is None:
            return jsonify(error="unauthorized", detail="sign in again"), 401
        draft, _state = engine.store.get_draft(org, draft_id)
        rows = write_rows(org, draft)
        resp = jsonify(writes=rows, html=render_template("review/_writes.html", writes=rows),
                       settled=bool(rows) and all(r["status"] in ("succeeded", "failed",
                                                                   "needs_reconciliation")
                                                  for r in rows))
        resp.headers["Cache-Control"] = "no-store"
        return resp


def _clock(ms: int) -> str:
    seconds = max(0, ms) // 1000
    return f"{seconds // 60}:{seconds % 60:02d}"


def _reason(w) -> str | None:
    if w.status == WriteStatus.FAILED:
        return w.last_error or "the EHR refused the write"
    if w.status == WriteStatus.STALE:
        return ("the note was changed in the EHR after Chartbridge wrote it; nothing was "
                "overwritten — review it in the EHR")
    if w.status == WriteStatus.PENDING and w.last_error_class == "WaitingForParent":
        return "waiting for the earlier version of this note to be written first"
    if w.status == WriteStatus.NEEDS_RECONCILIATION:
        return "the EHR may or may not hold this note; a person must check before it is sent again"
    if w.status == WriteStatus.PENDING and w.last_error_class:
        return "retrying after a temporary failure"
    return None
