"""The actions: edit a section (a new draft version), approve or reject the exact content
seen (its hash), and after an approval submit one write per target that needs it
(core.usecases.submit_approved through the engine) and hand them to the queue."""
from __future__ import annotations

import logging
import re
import threading

from flask import Blueprint, redirect, request, url_for

from chartbridge.core import usecases as uc
from chartbridge.core.errors import ChartbridgeError, InputError
from chartbridge.core.models import Decision, Identifier

from .common import MAX_TEXT, Review
from .websession import csrf_ok

log = logging.getLogger("chartbridge.review")


def register(bp: Blueprint, ctx: Review) -> None:
    engine, jobs, audit = ctx.engine, ctx.jobs, ctx.audit
    approval_targets, need_user = ctx.approval_targets, ctx.need_user

    # -- actions -----------------------------------------------------------------------------
    def checked(org: str, form: str) -> dict:
        data = need_user(org)
        if data is None:
            raise InputError("sign in again to continue", field="session")
        if not csrf_ok(data):
            audit(org, "review.csrf_refused", data["user"], outcome="failure", form=form)
            raise InputError("the form expired; reload the page and try again",
                             field="csrf_token")
        return data

    @bp.post("/orgs/<org>/review/drafts/<draft_id>/sections/<code>")
    def edit(org: str, draft_id: str, code: str):
        data = checked(org, "edit")
        text = request.form.get("text", "")
        if not text.strip():
            raise InputError("the section text cannot be empty", field="text")
        if len(text) > MAX_TEXT:
            raise InputError(f"the section text is longer than {MAX_TEXT} characters",
                             field="text")
        text = text.replace("\r\n", "\n")
        new = uc.edit_draft(engine.store, engine.clock, org_id=org, draft_id=draft_id,
                            section_code=code, text=text, editor=data["user"]["id"])
        audit(org, "review.section_edited", data["user"],
              session=engine.store.get_session(org, new.session_id), draft_id=new.id,
              previous=draft_id, section=code, version=new.version)
        return redirect(url_for(".draft", org=org, draft_id=new.id, notice="edited")
                        + f"#section-{code}", code=303)

    @bp.post("/orgs/<org>/review/drafts/<draft_id>/decision")
    def decision(org: str, draft_id: str):
        data = checked(org, "decision")
        user = data["user"]
        choice = request.form.get("decision", "")
        if choice not in (Decision.APPROVED.value, Decision.REJECTED.value):
            raise InputError("choose approve or reject", field="decision")
        content_hash = request.form.get("content_hash", "")
        if not re.fullmatch(r"[0-9a-f]{64}", content_hash):
            raise InputError("the form lost the draft's content hash; reload the page",
                             field="content_hash")
        reason = request.form.get("reason", "").strip()[:2000] or None
        if choice == Decision.REJECTED.value and not reason:
            raise InputError("give a reason for the rejection", field="reason")
        if not approval_targets(org):
            raise InputError("no target of this organization needs an approval", field="decision")
        uc.decide(engine.store, engine.clock, org_id=org, draft_id=draft_id,
                  content_hash=content_hash,
                  approver=Identifier(value=user["id"], type="USER", system=user.get("issuer")),
                  approver_name=user.get("name"), role=user["role"], decision=Decision(choice),
                  reason=reason)
        notice = choice
        if choice == Decision.APPROVED.value:
            try:
                trigger_writes(org, draft_id)
            except ChartbridgeError as exc:
                log.warning("approved but not written", extra={"error_class": type(exc).__name__})
                audit(org, "review.writes_refused", user, outcome="failure",
                      draft_id=draft_id, error=exc.code)
                notice = "approved_not_written:" + exc.message
        return redirect(url_for(".draft", org=org, draft_id=draft_id, notice=notice), code=303)

    def trigger_writes(org: str, draft_id: str) -> list[str]:
        keys = engine.submit_approved(org, draft_id)        # prepared (pending) first
        if engine.queue is not None:
            return keys                                     # enqueued on the engine's queue
        if jobs is not None:
            for key in keys:
                jobs.enqueue("execute_write", org, key)
            return keys
        for key in keys:                                    # no queue at all: run it here
            command = engine.ledger.command_of(org, key)
            threading.Thread(target=_execute, args=(engine, command), daemon=True,
                             name="review-write").start()
        return keys


def _execute(engine, command) -> None:
    try:
        engine.ledger.execute(command, engine.adapter(command.org_id, command.target))
    except ChartbridgeError as exc:     # recorded in the ledger; the sweeper drives it on
        log.info("write deferred", extra={"error_class": type(exc).__name__})
