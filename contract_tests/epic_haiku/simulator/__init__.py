"""Epic Haiku ambient simulator: plays Epic's side of /work/shared/vendors/epic-haiku-ambient.md.

Written from that page only (never from the adapter). It

* keeps Epic's ambient sessions and DELIVERS Epic's inbound events to an engine
  (``POST {engine}/orgs/{org}/epic/ambient/{Event}``), each with a fresh bearer JWT signed by the
  simulator's own Epic key (RS384 default, ES384 option), published at ``/.well-known/jwks.json``;
* cuts WAV recordings into chunk WAVs and announces them (``RecordingChunkAvailable`` then
  ``RecordingAvailable``), version after version, with duplicate / reorder / subset options;
* serves Epic's outbound API under the session ``CallbackURL`` (``GetAmbientRecordingChunk``,
  ``AmbientRecordingsProcessed``, ``DocumentationReady``) enforcing every rule on the page, behind a
  SMART Backend Services token endpoint (``POST /oauth2/token``);
* injects faults per call (5xx, 429 + Retry-After, delay, 403, 401) and exposes what it saw.

Everything is also reachable over HTTP under ``/_sim/`` (JSON) for standalone use, see README.md.

Modules: ``server`` (EpicSimulator: the HTTP routes, per-call faults, start/stop, ``serve``),
``controls`` (the ``/_sim`` routes), ``site`` (EpicSite: sessions, Epic-side actions and the
deliveries to the engine), ``auth`` (Epic's key, backend clients, the token endpoint,
inbound JWTs), ``validation`` (request checks), ``store`` (sessions, recordings, accepted
documentation and the outbound calls' rules), ``faults`` (what may be injected; queued by
contract_tests.support.faults), ``audio`` (WAV cutting) and ``spec`` (names from the page).
The SMART EHR-launch side is ``contract_tests.epic_haiku.smart``.
"""
from .audio import cut_wav, synth_wav
from .faults import Fault, Faults
from .server import EpicSimulator, serve
from .site import EpicSite
from .spec import (ALL_SECTIONS, ASSERTION_TYPE, CALLBACK_PATH, CLOCK_SKEW_S, EVENTS,
                   EXAMPLE_CARE_CONTEXT, EXAMPLE_ENCOUNTER_IDS, EXAMPLE_NOTE_TYPE,
                   EXAMPLE_PATIENT_IDS, EXAMPLE_SECTIONS, EXAMPLE_USER, FAULTABLE_CALLS, JWKS_PATH,
                   MAX_ASSERTION_LIFETIME_S, MAX_LOG, MAX_SESSIONS, MAX_TOKENS, OUTBOUND_CALLS,
                   SIGNING_ALGS, TOKEN_PATH)
from .store import CallRecord, Delivery, RecordResult

__all__ = ["ALL_SECTIONS", "ASSERTION_TYPE", "CALLBACK_PATH", "CLOCK_SKEW_S", "CallRecord",
           "Delivery", "EVENTS", "EXAMPLE_CARE_CONTEXT", "EXAMPLE_ENCOUNTER_IDS",
           "EXAMPLE_NOTE_TYPE", "EXAMPLE_PATIENT_IDS", "EXAMPLE_SECTIONS", "EXAMPLE_USER",
           "EpicSimulator", "EpicSite", "FAULTABLE_CALLS", "Fault", "Faults", "JWKS_PATH",
           "MAX_ASSERTION_LIFETIME_S", "MAX_LOG", "MAX_SESSIONS", "MAX_TOKENS", "OUTBOUND_CALLS",
           "RecordResult", "SIGNING_ALGS", "TOKEN_PATH", "cut_wav", "serve", "synth_wav"]
