"""The Epic site without its HTTP server: configuration, Epic's keys and clients, its
sessions and what the clinician does in them (record, edit, sign), and the inbound events
Epic DELIVERS to the engine for them (``POST {engine}/orgs/{org}/epic/ambient/{Event}``, each
with a fresh bearer JWT), plus inspection for tests. ``server.EpicSimulator`` serves it."""
from __future__ import annotations

import copy
import itertools
import logging
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import quote

import httpx
from joserfc.jwk import ECKey, KeySet, RSAKey

from chartbridge.core.errors import InputError, NotFound, StateConflict

from .audio import cut_wav
from .auth import EpicAuth
from .faults import Faults
from .spec import (ALL_SECTIONS, CALLBACK_PATH, EXAMPLE_CARE_CONTEXT, EXAMPLE_ENCOUNTER_IDS,
                   EXAMPLE_NOTE_TYPE, EXAMPLE_PATIENT_IDS, EXAMPLE_SECTIONS, EXAMPLE_USER,
                   JWKS_PATH, MAX_ASSERTION_LIFETIME_S, SIGNING_ALGS, TOKEN_PATH)
from .store import CallRecord, Delivery, EpicStore, RecordResult, _Session
from .validation import _ids, b64url_json

log = logging.getLogger(__package__)  # the name it had as one module

_DEFAULT: Any = object()


class EpicSite:
    """Epic's side of /work/shared/vendors/epic-haiku-ambient.md, in process.

    :param engine_url: the engine's base URL (``{engine}/orgs/{org}/epic/ambient/{Event}``); may be set later.
    :param epic_client_id: ``iss`` of the JWTs Epic signs for inbound deliveries: one string for every org,
        or ``{org: client_id}``.
    :param clients: backend clients allowed at the token endpoint: ``{client_id: JWKS | JWK | PEM}``.
    :param epic_alg: ``RS384`` (default) or ``ES384`` for the simulator's own signing key.
    :param token_ttl: lifetime of issued access tokens in seconds (page: 5 minutes).
    :param default_allowed_sections: the set Epic enforces when ``AllowedNoteSections`` is absent.
    :param clock: seconds since the epoch (injectable so tests can age tokens without sleeping).
    """

    def __init__(self, *, engine_url: str | None = None, epic_client_id: str | dict[str, str] = "epic-sim-client",
                 clients: dict[str, Any] | None = None, epic_alg: str = "RS384", token_ttl: int = 300,
                 inbound_token_ttl: int = 120, default_allowed_sections: Iterable[str] = ALL_SECTIONS,
                 delivery_timeout: float = 10.0, delivery_retries: int = 0, epic_key: Any = None,
                 clock: Callable[[], float] = time.time) -> None:
        if epic_alg not in SIGNING_ALGS:
            raise InputError("epic_alg must be RS384 or ES384", field="epic_alg")
        if not 0 < inbound_token_ttl <= MAX_ASSERTION_LIFETIME_S:
            raise InputError("inbound_token_ttl must be 1..300 seconds", field="inbound_token_ttl")
        self.engine_url = engine_url.rstrip("/") if engine_url else None
        self.epic_client_id = epic_client_id
        self.epic_alg = epic_alg
        self.inbound_token_ttl = int(inbound_token_ttl)
        self.default_allowed_sections = tuple(default_allowed_sections)
        self.delivery_retries = int(delivery_retries)
        self.clock = clock
        self._lock = threading.RLock()
        self._store = EpicStore(self._lock)
        self._auth = EpicAuth(self._lock, lambda: self.clock(), alg=epic_alg, token_ttl=token_ttl,
                              key=epic_key)
        self.faults = Faults(lock=self._lock)
        for client_id, key in (clients or {}).items():
            self.register_client(client_id, key)
        self._http = httpx.Client(timeout=delivery_timeout)
        self.base_url: str | None = None
        self._seq = itertools.count(1)

    def reset(self) -> None:
        """Forget sessions, tokens, faults and logs (keys and registered clients stay)."""
        with self._lock:
            self._auth.reset()
            self.faults.clear()
            self._store.reset()

    @property
    def token_ttl(self) -> int:
        return self._auth.token_ttl

    @property
    def _key(self) -> RSAKey | ECKey:
        """Epic's private signing key (tests sign hostile tokens with it)."""
        return self._auth.key

    @property
    def _sessions(self) -> dict[str, _Session]:
        return self._store.sessions

    @property
    def _clients(self) -> dict[str, KeySet]:
        """Backend clients by id (tests make the site forget them)."""
        return self._auth.clients

    # ----------------------------------------------------------------- URLs and keys

    def _base(self) -> str:
        if not self.base_url:
            raise StateConflict("simulator is not started")
        return self.base_url

    @property
    def callback_url(self) -> str:
        return self._base() + CALLBACK_PATH

    @property
    def token_url(self) -> str:
        return self._base() + TOKEN_PATH

    @property
    def jwks_url(self) -> str:
        return self._base() + JWKS_PATH

    @property
    def jwks(self) -> dict[str, Any]:
        """The public JWKS Epic publishes for its inbound JWTs."""
        return self._auth.jwks

    def register_client(self, client_id: str, key: Any) -> None:
        """Allow ``client_id`` at the token endpoint, its assertions verified with ``key`` (JWKS/JWK/PEM)."""
        self._auth.register_client(client_id, key)

    def engine_event_url(self, org: str, event: str) -> str:
        if not self.engine_url:
            raise StateConflict("no engine URL configured; set engine_url first")
        return f"{self.engine_url}/orgs/{quote(org, safe='')}/epic/ambient/{event}"

    def _iss_for(self, org: str) -> str:
        if isinstance(self.epic_client_id, dict):
            if org not in self.epic_client_id:
                raise NotFound("no Epic client id configured for this org")
            return self.epic_client_id[org]
        return self.epic_client_id

    # ----------------------------------------------------------------- inbound JWTs

    def make_inbound_token(self, url: str, org: str, mode: str = "valid") -> str:
        """A bearer JWT for delivering to ``url``. ``mode`` builds bad ones for tests:
        valid | expired | wrong_aud | wrong_key | wrong_iss | too_long (exp > 5 min) | no_jti | alg_none."""
        return self._auth.inbound_token(url, self._iss_for(org), self.inbound_token_ttl, mode)

    # ----------------------------------------------------------------- delivery

    def deliver(self, org: str, event: str, body: dict[str, Any], *, token: str = "valid") -> Delivery:
        """POST one inbound event to the engine. ``token`` is a mode for make_inbound_token, or
        ``"missing"`` (no Authorization header). Returns (and records) the engine's answer."""
        url = self.engine_event_url(org, event)
        if event == "RecordingAvailable":
            self._store.mark_announced(body)
        attempts = 1 + max(0, self.delivery_retries) if token == "valid" else 1
        delivery = None
        for _ in range(attempts):
            bearer = None if token == "missing" else self.make_inbound_token(url, org, token)
            delivery = self._send(event, url, body, bearer)
            if delivery.status is not None and delivery.status < 500 and delivery.status != 429:
                break
        assert delivery is not None
        return delivery

    def replay(self, delivery: Delivery) -> Delivery:
        """Send ``delivery`` again with the SAME token (a replay: the engine must answer 401)."""
        return self._send(delivery.event, delivery.url, delivery.body, delivery.token)

    def redeliver(self, delivery: Delivery) -> Delivery:
        """Send ``delivery`` again with a fresh token (Epic's at-least-once retry)."""
        org = self._store.org_of(delivery.body.get("SessionID"))
        if org is None:
            raise NotFound("delivery belongs to no known session")
        return self.deliver(org, delivery.event, delivery.body)

    def _send(self, event: str, url: str, body: dict[str, Any], bearer: str | None) -> Delivery:
        jti = None
        if bearer:
            try:
                jti = b64url_json(bearer.split(".")[1]).get("jti")
            except (ValueError, IndexError):
                jti = None
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        delivery = Delivery(event=event, url=url, body=copy.deepcopy(body), token=bearer, jti=jti)
        try:
            resp = self._http.post(url, json=body, headers=headers)
            delivery.status = resp.status_code
            try:
                delivery.response = resp.json()
            except ValueError:
                delivery.response = resp.text[:500]
        except httpx.HTTPError as exc:
            delivery.error = type(exc).__name__
        log.info("epic-sim delivered %s -> %s", event, delivery.status or delivery.error)
        self._store.add_delivery(delivery)
        return delivery

    # ----------------------------------------------------------------- Epic-side actions

    def begin_session(self, org: str, *, session_id: str | None = None, user: Any = _DEFAULT,
                      patient_ids: Any = _DEFAULT, encounter_ids: Any = _DEFAULT,
                      allowed_sections: Any = _DEFAULT, note_type: Any = _DEFAULT, care_context: Any = _DEFAULT,
                      deliver: bool = True, token: str = "valid") -> Delivery | None:
        """Create an ambient session and deliver AmbientSessionBegin. Optional parts default to the
        page's example; pass ``None`` to omit CareContext / NoteType / AllowedNoteSections."""
        if not isinstance(org, str) or not org:
            raise InputError("org must be a non-empty string", field="org")
        sid = session_id or self.new_session_id()
        if not isinstance(sid, str) or not sid.strip():
            raise InputError("session_id must be a non-empty string", field="session_id")
        body: dict[str, Any] = {
            "SessionID": sid,
            "UserID": _ids([EXAMPLE_USER if user is _DEFAULT else user], "UserID")[0],
            "PatientIDs": _ids(EXAMPLE_PATIENT_IDS if patient_ids is _DEFAULT else patient_ids, "PatientIDs"),
            "EncounterIDs": _ids(EXAMPLE_ENCOUNTER_IDS if encounter_ids is _DEFAULT else encounter_ids,
                                 "EncounterIDs"),
            "CallbackURL": self.callback_url,
        }
        if care_context is not None:
            body["CareContext"] = dict(EXAMPLE_CARE_CONTEXT if care_context is _DEFAULT else care_context)
        if note_type is not None:
            body["NoteType"] = dict(EXAMPLE_NOTE_TYPE if note_type is _DEFAULT else note_type)
        if allowed_sections is not None:
            sections = list(EXAMPLE_SECTIONS if allowed_sections is _DEFAULT else allowed_sections)
            if not all(isinstance(s, str) and s for s in sections):
                raise InputError("allowed_sections must be LOINC code strings", field="allowed_sections")
            body["AllowedNoteSections"] = sections
            allowed = tuple(sections)
        else:
            allowed = self.default_allowed_sections
        self._store.begin(_Session(org=org, session_id=sid, begin_body=copy.deepcopy(body), allowed=allowed))
        if not deliver or not self.engine_url:
            return None
        return self.deliver(org, "AmbientSessionBegin", body, token=token)

    def new_session_id(self) -> str:
        return f"AMB-SIM-{next(self._seq):06d}"

    def record(self, session_id: str, wav: str | Path | bytes, *, recording_id: str = "R1",
               chunk_seconds: float = 30, status: str = "Stopped", duplicate: bool = False,
               reorder: bool = False, announce_chunks: Iterable[int] | None = None,
               announce_available: bool = True) -> RecordResult:
        """Add a recording version holding the earlier audio plus ``wav`` (the audio recorded since
        the last version), cut into ``chunk_seconds`` chunks, and announce it.

        Delivery options: ``duplicate`` sends every event twice (fresh token each); ``reorder`` sends
        RecordingAvailable before the last chunk announcement; ``announce_chunks`` (sequences) and
        ``announce_available`` choose a subset (the rest can be sent later with announce_chunk() /
        announce_recording())."""
        if status not in ("Paused", "Stopped"):
            raise InputError("status must be Paused or Stopped", field="status")
        if not isinstance(recording_id, str) or not recording_id:
            raise InputError("recording_id must be a non-empty string", field="recording_id")
        if isinstance(wav, (str, Path)):
            try:
                data = Path(wav).read_bytes()
            except OSError as exc:
                raise InputError("cannot read the WAV file", field="wav") from exc
        elif isinstance(wav, (bytes, bytearray)):
            data = bytes(wav)
        else:
            raise InputError("wav must be a path or bytes", field="wav")
        params, pieces = cut_wav(data, chunk_seconds)
        org, version, new_seqs, count = self._store.add_version(session_id, recording_id, params,
                                                                pieces, status)
        wanted = set(new_seqs if announce_chunks is None else announce_chunks)
        unknown = wanted - set(new_seqs)
        if unknown:
            raise InputError("announce_chunks names sequences not new in this version", field="announce_chunks")
        events: list[tuple[str, dict[str, Any]]] = [
            ("RecordingChunkAvailable", self._store.chunk_event(session_id, recording_id, seq)) for seq in new_seqs
            if seq in wanted]
        if announce_available:
            available = ("RecordingAvailable", self._store.available_event(session_id, recording_id, version))
            if reorder and events:
                events.insert(len(events) - 1, available)
            else:
                events.append(available)
        deliveries: list[Delivery] = []
        if self.engine_url:
            for event, body in events:
                for _ in range(2 if duplicate else 1):
                    deliveries.append(self.deliver(org, event, body))
        elif announce_available:
            self._store.mark_announced(events[-1][1] if not reorder else
                                 next(b for e, b in events if e == "RecordingAvailable"))
        return RecordResult(recording_id, version, new_seqs, count, deliveries)

    def _chunk_event(self, session_id: str, recording_id: str, seq: int) -> dict[str, Any]:
        return self._store.chunk_event(session_id, recording_id, seq)

    def _available_event(self, session_id: str, recording_id: str, version: int) -> dict[str, Any]:
        return self._store.available_event(session_id, recording_id, version)

    def announce_chunk(self, session_id: str, seq: int, *, recording_id: str = "R1") -> Delivery:
        """(Re)send RecordingChunkAvailable for one chunk (e.g. one left out of a subset)."""
        org = self._store.chunk_org(session_id, recording_id, seq)
        return self.deliver(org, "RecordingChunkAvailable", self._store.chunk_event(session_id, recording_id, seq))

    def announce_recording(self, session_id: str, *, recording_id: str = "R1", version: int | None = None) -> Delivery:
        """(Re)send RecordingAvailable for ``version`` (default: the newest)."""
        org, version = self._store.version_org(session_id, recording_id, version)
        return self.deliver(org, "RecordingAvailable", self._store.available_event(session_id, recording_id, version))

    def edit_sections(self, session_id: str, sections: Iterable[str], *, user: Any = _DEFAULT,
                      instant: str | None = None, token: str = "valid") -> Delivery | None:
        """A clinician edits ``sections`` in Epic: they are protected from now on; DocumentationUpdated."""
        codes = list(sections)
        if not codes or not all(isinstance(c, str) and c for c in codes):
            raise InputError("sections must be one or more section codes", field="sections")
        editor = _ids([EXAMPLE_USER if user is _DEFAULT else user], "user")[0]
        when = instant or datetime.now().astimezone().isoformat(timespec="seconds")
        entries = [{"SectionID": c, "EditedBy": editor, "EditedInstant": when} for c in codes]
        org = self._store.edit(session_id, entries)
        body = {"SessionID": session_id, "Sections": entries}
        return self.deliver(org, "DocumentationUpdated", body, token=token) if self.engine_url else None

    def complete(self, session_id: str, reason: str = "Signed", *, token: str = "valid") -> Delivery | None:
        """Close the session (Signed or Cancelled) and deliver AmbientSessionComplete."""
        if reason not in ("Signed", "Cancelled"):
            raise InputError("reason must be Signed or Cancelled", field="reason")
        org = self._store.close(session_id, reason)
        body = {"SessionID": session_id, "Reason": reason}
        return self.deliver(org, "AmbientSessionComplete", body, token=token) if self.engine_url else None

    def expire_tokens(self) -> int:
        """Expire every access token issued so far: the next outbound call with one gets 401."""
        return self._auth.expire_tokens()

    # ----------------------------------------------------------------- inspection

    @property
    def deliveries(self) -> list[Delivery]:
        return self._store.deliveries

    @property
    def calls(self) -> list[CallRecord]:
        return self._store.calls

    def call_log(self, call: str | None = None) -> list[tuple[str, int]]:
        """(call, status) pairs in arrival order, optionally for one call name."""
        return self._store.call_log(call)

    def call_count(self, call: str) -> int:
        return self._store.call_count(call)

    @property
    def token_requests(self) -> int:
        return self.call_count("token")

    def documentation(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """Every accepted DocumentationReady body, in acceptance order (one copy each)."""
        return self._store.documentation(session_id)

    def session_state(self, session_id: str) -> dict[str, Any]:
        return self._store.session_state(session_id)

    def haiku_launch_url(self, session_id: str, *, app_launch_url: str | None = None) -> str:
        """The URL Haiku opens for the app's embedded page in a session: the app's launch
        URL (default: the engine's, for the session's org) with `session`, `iss` and a fresh
        single-context `launch` handle for the session's FHIR patient and encounter."""
        state = self.session_state(session_id)
        if app_launch_url is None:
            if not self.engine_url:
                raise StateConflict("no engine URL is set for the app's launch URL")
            app_launch_url = f"{self.engine_url.rstrip('/')}/orgs/{state['org']}/epic/haiku/launch"
        patient, encounter = self.smart.fhir_ids_of(state["begin"])
        launch = self.smart.new_launch(patient=patient, encounter=encounter)
        return self.smart.launch_url(app_launch_url, launch, session=session_id)

    def haiku_open_url(self, session_id: str) -> str:
        """A link that plays Haiku opening the embedded page (each visit a fresh launch)."""
        return f"{self._base()}/_sim/sessions/{quote(session_id, safe='')}/haiku"

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Block until ``predicate()`` (evaluated under the simulator's lock) is true; TimeoutError otherwise."""
        self._store.wait_for(predicate, timeout)

    def wait_documentation(self, session_id: str, version: int, timeout: float = 10.0) -> dict[str, Any]:
        """Wait for an accepted DocumentationReady of ``version``; returns its body."""
        return self._store.wait_documentation(session_id, version, timeout)

    def wait_calls(self, call: str, count: int, timeout: float = 10.0) -> None:
        self._store.wait_calls(call, count, timeout)
