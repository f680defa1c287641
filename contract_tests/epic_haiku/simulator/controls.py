"""The simulator's own controls over HTTP, under ``/_sim/`` (JSON): what a test does in
process (begin a session, record, announce, edit, complete, faults, reset) for standalone
use; see README.md."""
from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, redirect, request

from chartbridge.core.errors import InputError
from contract_tests.support.http import json_response

from .audio import synth_wav
from .store import Delivery

if TYPE_CHECKING:
    from .server import EpicSimulator


def add_control_routes(app: Flask, sim: EpicSimulator) -> None:
    def payload() -> dict[str, Any]:
        body = request.get_json(silent=True, force=True)
        if body is None and not request.get_data():
            return {}
        if not isinstance(body, dict):
            raise InputError("body must be a JSON object", field="body")
        return body

    def deliveryjson_response(d: Delivery | None) -> Any:
        return d.as_dict() if d is not None else None

    @app.post("/_sim/reset")
    def _reset() -> Response:
        sim.reset()
        return json_response({"ok": True})

    @app.post("/_sim/engine")
    def _engine() -> Response:
        url = payload().get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InputError("url must be an http(s) URL", field="url")
        sim.engine_url = url.rstrip("/")
        return json_response({"engine_url": sim.engine_url})

    @app.post("/_sim/clients")
    def _clients() -> Response:
        body = payload()
        key = body.get("jwks") or body.get("pem")
        if key is None:
            raise InputError("give jwks or pem", field="jwks")
        sim.register_client(body.get("client_id"), key)
        return json_response({"ok": True})

    @app.post("/_sim/sessions")
    def _begin() -> Response:
        body = payload()
        org = body.get("org")
        kwargs: dict[str, Any] = {"session_id": body.get("session_id") or sim.new_session_id()}
        for name in ("session_id", "user", "patient_ids", "encounter_ids", "allowed_sections", "note_type",
                     "care_context", "token"):
            if name in body:
                kwargs[name] = body[name]
        d = sim.begin_session(org, **kwargs)
        return json_response({"SessionID": kwargs["session_id"], "delivery": deliveryjson_response(d)})

    @app.get("/_sim/sessions/<sid>")
    def _state(sid: str) -> Response:
        state = sim.session_state(sid)
        state["documentation"] = sim.documentation(sid)
        return json_response(state)

    @app.get("/_sim/sessions/<sid>/haiku")
    def _open_haiku(sid: str) -> Response:
        # What Haiku does when the clinician opens the app's web view in this session:
        # a fresh launch handle for the session's patient and encounter, then the app's
        # launch URL with iss and launch (SMART App Launch, EHR launch).
        return redirect(sim.haiku_launch_url(sid), code=302)

    @app.post("/_sim/sessions/<sid>/record")
    def _record(sid: str) -> Response:
        body = payload()
        if "wav_base64" in body:
            try:
                wav: Any = base64.b64decode(body["wav_base64"], validate=True)
            except (ValueError, TypeError):
                raise InputError("wav_base64 is not base64", field="wav_base64") from None
        elif "wav_path" in body:
            wav = str(body["wav_path"])
        elif "synth_seconds" in body:
            secs = body["synth_seconds"]
            if not isinstance(secs, (int, float)) or not 0 < secs <= 3600:
                raise InputError("synth_seconds must be 0..3600", field="synth_seconds")
            wav = synth_wav(secs)
        else:
            raise InputError("give wav_base64, wav_path or synth_seconds", field="wav_base64")
        kwargs = {k: body[k] for k in ("recording_id", "chunk_seconds", "status", "duplicate", "reorder",
                                       "announce_chunks", "announce_available") if k in body}
        result = sim.record(sid, wav, **kwargs)
        return json_response({"recording_id": result.recording_id, "version": result.version,
                              "new_sequences": result.new_sequences, "chunk_count": result.chunk_count,
                              "deliveries": [deliveryjson_response(d) for d in result.deliveries]})

    @app.post("/_sim/sessions/<sid>/announce")
    def _announce(sid: str) -> Response:
        body = payload()
        rid = body.get("recording_id", "R1")
        if "chunk" in body:
            return json_response({"delivery": deliveryjson_response(sim.announce_chunk(sid, body["chunk"], recording_id=rid))})
        return json_response({"delivery": deliveryjson_response(
            sim.announce_recording(sid, recording_id=rid, version=body.get("version")))})

    @app.post("/_sim/sessions/<sid>/edit")
    def _edit(sid: str) -> Response:
        body = payload()
        kwargs = {"user": body["user"]} if "user" in body else {}
        return json_response({"delivery": deliveryjson_response(sim.edit_sections(sid, body.get("sections") or [], **kwargs))})

    @app.post("/_sim/sessions/<sid>/complete")
    def _complete(sid: str) -> Response:
        return json_response({"delivery": deliveryjson_response(sim.complete(sid, payload().get("reason", "Signed")))})

    @app.get("/_sim/state")
    def _global_state() -> Response:
        counts, sessions = sim._store.overview()
        return json_response({"engine_url": sim.engine_url, "sessions": sessions, "counts": counts,
                              "token_requests": sim.token_requests,
                              "calls": [{"call": c, "status": s} for c, s in sim.call_log()],
                              "deliveries": [d.as_dict() for d in sim.deliveries],
                              "documentation": sim.documentation(), "faults": sim.faults.pending()})

    @app.post("/_sim/faults")
    def _add_fault() -> Response:
        body = payload()
        allowed = {"call", "status", "times", "retry_after", "delay_s", "after_processing"}
        extra = set(body) - allowed
        if extra:
            raise InputError("unknown fault option", field=sorted(extra)[0])
        if "call" not in body:
            raise InputError("call is required", field="call")
        return json_response(sim.faults.add(**body).as_dict())

    @app.delete("/_sim/faults")
    def _clear_faults() -> Response:
        sim.faults.clear()
        return json_response({"ok": True})

    @app.post("/_sim/expire_tokens")
    def _expire() -> Response:
        return json_response({"expired": sim.expire_tokens()})

