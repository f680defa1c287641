// The SMART ambient recorder page: records in the browser, uploads each chunk through the
// capture API as it is cut, and rebuilds itself from the engine's state when reopened.
// Nothing is logged to the console: no patient data leaves through it.
(() => {
  "use strict";
  const boot = JSON.parse(document.getElementById("recorder-boot").textContent);
  const $ = (id) => document.getElementById(id);
  const statusEl = $("status"), problemEl = $("problem"), progressEl = $("progress");
  const recordBtn = $("record"), stopBtn = $("stop"), saveBtn = $("save"), approveBtn = $("approve");
  const TERMINAL = new Set(["written", "failed", "stale", "needs_reconciliation", "cancelled"]);
  const WORDS = {
    pending: "waiting to be sent", in_flight: "being sent", written: "written",
    failed: "failed", stale: "not written: the note was changed in the EHR since",
    needs_reconciliation: "not known whether it arrived; a person will check",
    cancelled: "cancelled",
  };

  let sessionId = boot.session_id;
  let version = 1, nextSeq = 1, stream = null, current = null, timer = null;
  let recording = false, stopped = false, draft = null;
  const uploading = new Set();
  const storedSeqs = new Set();
  let stored = 0;

  const say = (text) => { statusEl.textContent = text; };
  const fail = (text) => { problemEl.textContent = text; problemEl.hidden = false; };
  const clearProblem = () => { problemEl.hidden = true; problemEl.textContent = ""; };
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  // How long a draft or a write may take before the page says it is stuck (and why),
  // instead of "being drafted…" forever.
  const DRAFT_WAIT_MS = boot.draft_wait_ms || 180000;
  const WRITES_WAIT_MS = boot.writes_wait_ms || 300000;
  const NO_WRITES_MS = boot.no_writes_ms || 20000;

  // -- the capture API -----------------------------------------------------------------------
  async function api(method, path, { json, body, type, key } = {}) {
    const headers = { "X-CSRF-Token": boot.csrf, "Accept": "application/json" };
    if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
    if (type) headers["Content-Type"] = type;
    if (key) headers["Idempotency-Key"] = key;
    const resp = await fetch(boot.api + path, { method, headers, body, credentials: "same-origin",
                                                cache: "no-store" });
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    return { status: resp.status, ok: resp.ok, data };
  }

  // Retries what may succeed later (network, 5xx, 429, 409 in flight: the API's
  // idempotency_key_in_flight, chartbridge/api/idempotency.py); returns the answer.
  async function persist(method, path, opts, what) {
    for (let attempt = 0; ; attempt++) {
      let answer;
      try { answer = await api(method, path, opts); } catch (e) { answer = { status: 0 }; }
      const retry = answer.status === 0 || answer.status >= 500 || answer.status === 429 ||
        (answer.status === 409 && answer.data && answer.data.error === "idempotency_key_in_flight");
      if (!retry || attempt >= 8) return answer;
      say(`Could not reach the server (${what}); trying again.`);
      await sleep(Math.min(500 * 2 ** attempt, 8000));
    }
  }

  const detail = (answer) => (answer.data && answer.data.detail) || `the server answered ${answer.status}`;
  const uuid = () => (crypto.randomUUID ? crypto.randomUUID()
    : Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join(""));

  // -- chunks kept until stored (IndexedDB) --------------------------------------------------
  const db = new Promise((resolve) => {
    try {
      const req = indexedDB.open("chartbridge-recorder", 1);
      req.onupgradeneeded = () => req.result.createObjectStore("chunks");
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => resolve(null);
    } catch (e) { resolve(null); }
  });
  async function idb(mode, fn) {
    const d = await db;
    if (!d) return null;
    return new Promise((resolve) => {
      const tx = d.transaction("chunks", mode);
      const out = fn(tx.objectStore("chunks"));
      tx.oncomplete = () => resolve(out && out.result);
      tx.onerror = () => resolve(null);
    });
  }
  const keep = (key, value) => idb("readwrite", (s) => s.put(value, key));
  const forget = (key) => idb("readwrite", (s) => s.delete(key));
  async function leftovers() {
    const all = await idb("readonly", (s) => s.getAll()) || [];
    return all.filter((c) => c.session === sessionId);
  }
  // The sequence numbers 1..count of this version the engine has not stored.
  const gaps = (count) => Array.from({ length: count }, (_, i) => i + 1).filter((q) => !storedSeqs.has(q));

  async function upload(chunk) {
    const key = `${chunk.session}/${chunk.version}/${chunk.seq}`;
    uploading.add(key);
    await keep(key, chunk);
    const answer = await persist("PUT", `/sessions/${chunk.session}/recordings/${chunk.version}/chunks/${chunk.seq}`,
      { body: chunk.blob, type: chunk.type.split(";")[0] }, `part ${chunk.seq}`);
    if (answer.ok) {
      await forget(key);
      storedSeqs.add(chunk.seq);
      stored = storedSeqs.size;
      progressEl.textContent = `Parts of the recording stored: ${stored}.`;
    } else if (answer.status === 422 && answer.data && answer.data.error === "not_audio" &&
               chunk.seq === nextSeq - 1 && !recording) {
      // the last part, cut at Stop, was too short to hold any sound: it is not a part
      await forget(key);
      nextSeq -= 1;
    } else {
      fail(`Part ${chunk.seq} of the recording could not be stored: ${detail(answer)}.`);
    }
    uploading.delete(key);
    return answer.ok;
  }

  // -- recording: a new MediaRecorder per chunk, so each chunk is a whole file ---------------
  function pickType() {
    for (const t of ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/mp4"]) {
      if (window.MediaRecorder && MediaRecorder.isTypeSupported(t)) return t;
    }
    return "";
  }

  function startRecorder() {
    const type = pickType();
    const rec = new MediaRecorder(stream, type ? { mimeType: type } : undefined);
    const parts = [];
    rec.done = new Promise((resolve) => {
      rec.ondataavailable = (e) => { if (e.data && e.data.size) parts.push(e.data); };
      rec.onstop = () => {
        const blob = new Blob(parts, { type: rec.mimeType || type });
        if (!blob.size) { resolve(null); return; }
        const chunk = { session: sessionId, version, seq: nextSeq++, blob, type: blob.type || "audio/webm" };
        resolve(upload(chunk));
      };
    });
    rec.start();
    return rec;
  }

  function cut() {
    const old = current;
    current = recording ? startRecorder() : null;
    if (old) { old.stop(); return old.done; }
    return Promise.resolve(null);
  }

  async function record() {
    clearProblem();
    if (!sessionId) {
      const opened = await openSession();
      if (!opened || !(await adopt(opened))) return;      // an earlier launch stopped it
    }
    try {
      stream = stream || await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (e) {
      fail("The microphone could not be opened. Allow the microphone for this page and try again.");
      return;
    }
    recording = true;
    cut();
    timer = setInterval(cut, boot.chunk_ms);
    recordBtn.disabled = true;
    recordBtn.classList.add("recording");
    recordBtn.textContent = "Recording…";
    stopBtn.disabled = false;
    $("consent").hidden = true;
    say("Recording. Each part is sent as it is cut.");
    stopBtn.focus();
  }

  async function stop() {
    stopBtn.disabled = true;
    recording = false;
    clearInterval(timer);
    say("Stopping: sending the last part of the recording.");
    await cut();
    recordBtn.classList.remove("recording");
    if (stream) { stream.getTracks().forEach((t) => t.stop()); stream = null; }
    while (uploading.size) await sleep(100);
    // parts whose upload gave up are still in IndexedDB: send them again before announcing
    for (const chunk of await leftovers()) {
      if (chunk.version === version && !storedSeqs.has(chunk.seq)) await upload(chunk);
    }
    const count = nextSeq - 1;
    if (count < 1) { say("Nothing was recorded yet."); recordBtn.disabled = false; return; }
    const missing = gaps(count);
    if (missing.length) {
      // announcing `count` parts now would leave the engine waiting for ever for these
      fail(`The recording cannot be stopped yet: part(s) ${missing.join(", ")} of ${count} ` +
           "are not stored. Check the connection, then press Stop again.");
      say("Not stopped: some parts of the recording are not stored yet.");
      stopBtn.disabled = false;
      stopBtn.focus();
      return;
    }
    const answer = await persist("POST", `/sessions/${sessionId}/recordings/${version}`,
      { json: { status: "Stopped", chunk_count: count }, key: `stop-${sessionId}-${version}-${count}` },
      "stopping");
    if (!answer.ok) { fail(`The recording could not be stopped: ${detail(answer)}.`); stopBtn.disabled = false; return; }
    stopped = true;
    recordBtn.textContent = "Recording stopped";
    say("Recording stopped. The note is being drafted…");
    pollDraft();
  }

  // -- the session -----------------------------------------------------------------------------
  async function openSession() {
    const body = JSON.parse(JSON.stringify(boot.open));
    // an unticked box is "not recorded" (null), not a refusal, where the org assumes consent
    const consent = (box, required) => ($(box).checked ? true : (required ? false : null));
    body.consent = { capture: consent("consent-capture", boot.consent_required.capture),
                     write_back: consent("consent-write", boot.consent_required.write_back) };
    if ((boot.consent_required.capture && !body.consent.capture) ||
        (boot.consent_required.write_back && !body.consent.write_back)) {
      fail("Record the patient's agreement first (both boxes).");
      $("consent-capture").focus();
      return false;
    }
    const answer = await persist("POST", "/sessions", { json: body, key: `open-${uuid()}` }, "opening the visit");
    if (!answer.ok) { fail(`The visit could not be opened: ${detail(answer)}.`); return null; }
    sessionId = answer.data.id;
    await fetch(boot.attach, { method: "POST", credentials: "same-origin",
      headers: { "X-CSRF-Token": boot.csrf, "Content-Type": "application/json" },
      body: JSON.stringify({ session_id: sessionId }) }).catch(() => null);
    return answer.data;
  }

  async function resume() {
    if (!sessionId) {
      // an earlier launch of this visit may have opened it: the same external id finds it
      $("consent").hidden = false;
      recordBtn.disabled = false;
      say("Ready. Record the patient's agreement, then start recording.");
      return;
    }
    const answer = await persist("GET", `/sessions/${sessionId}`, {}, "loading the visit");
    if (!answer.ok) { fail(`The visit could not be loaded: ${detail(answer)}.`); return; }
    if (!(await adopt(answer.data))) return;
    recordBtn.disabled = false;
    stopBtn.disabled = !stored;
    if (stored) {
      recordBtn.textContent = "Continue recording";
      say(`The recording was interrupted; ${stored} part(s) are stored. Continue recording, or stop to draft the note.`);
    } else {
      say("Ready. Start recording when the visit begins.");
    }
  }

  // The engine's state of the session: continue after the chunks it stored (sending first
  // what this browser still keeps), or, once stopped, show the draft. False when stopped.
  async function adopt(s) {
    const done = s.recordings.find((r) => r.status === "Stopped");
    const seqs = s.chunks.map((c) => c.sequence);
    seqs.forEach((q) => storedSeqs.add(q));
    stored = storedSeqs.size;
    const rest = await leftovers();
    nextSeq = Math.max(0, ...seqs, ...rest.map((c) => c.seq)) + 1;
    version = Math.max(1, ...s.chunks.map((c) => c.recording_version));
    for (const chunk of rest) await upload(chunk);           // what a killed tab had not sent
    progressEl.textContent = stored ? `Parts of the recording stored: ${stored}.` : "No audio recorded yet.";
    if (done) {
      stopped = true;
      recordBtn.textContent = "Recording stopped";
      recordBtn.disabled = true;
      stopBtn.disabled = true;
      $("consent").hidden = true;
      if (s.drafts.length) { await showDraft(s); } else { say("Recording stopped. The note is being drafted…"); pollDraft(); }
      return false;
    }
    return true;
  }

  async function pollDraft() {
    const until = Date.now() + DRAFT_WAIT_MS;
    let why = "the server did not answer";
    while (Date.now() < until) {
      const answer = await persist("GET", `/sessions/${sessionId}`, {}, "checking the draft");
      if (answer.ok) {
        const s = answer.data;
        const failed = s.recordings.find((r) => r.state === "failed");
        if (failed) {
          fail(`The recording could not be turned into a note${failed.error ? `: ${failed.error}` : ""}.`);
          say("No note: the recording failed.");
          return;
        }
        if (s.drafts.length) { await showDraft(s); return; }
        const rec = s.recordings.find((r) => r.status === "Stopped") || s.recordings[0];
        const have = new Set(s.chunks.filter((c) => !rec || c.recording_version === rec.version)
          .map((c) => c.sequence));
        const lost = rec ? Array.from({ length: rec.chunk_count }, (_, i) => i + 1).filter((q) => !have.has(q)) : [];
        const bad = s.chunks.filter((c) => c.error);
        if (lost.length) {
          why = `the server is still waiting for part(s) ${lost.join(", ")} of the recording`;
        } else if (bad.length) {
          why = `part(s) ${bad.map((c) => c.sequence).join(", ")} could not be read (${bad[0].error})`;
        } else {
          why = `the recording is ${rec ? rec.state : "not stopped"}`;
        }
      } else {
        why = detail(answer);
      }
      await sleep(1000);
    }
    fail(`The note has not been drafted: ${why}. Reload the page to check again.`);
    say("The note is not drafted yet.");
  }

  // -- the draft -----------------------------------------------------------------------------
  async function showDraft(s) {
    const newest = s.drafts.reduce((a, b) => (b.version > a.version ? b : a));
    const answer = await persist("GET", `/sessions/${sessionId}/drafts/${newest.version}`, {}, "loading the draft");
    if (!answer.ok) { fail(`The draft could not be loaded: ${detail(answer)}.`); return; }
    draft = answer.data;
    renderDraft();
    if (draft.state === "approved" || s.writes.length) {
      lockDraft();
      pollWrites();
    } else {
      say(`The draft note is ready (version ${draft.version}). Review it, edit it if needed, then approve it.`);
    }
  }

  function renderDraft() {
    const box = $("sections");
    box.replaceChildren();
    for (const section of draft.sections) {
      const id = `section-${section.code}`;
      const label = document.createElement("label");
      label.htmlFor = id;
      label.textContent = section.title || boot.section_names[section.code] || section.code;
      const area = document.createElement("textarea");
      area.id = id;
      area.dataset.code = section.code;
      area.dataset.original = section.text;
      area.value = section.text;
      box.append(label, area);
    }
    $("draft-version").textContent = `Version ${draft.version}.`;
    $("draft").hidden = false;
  }

  function lockDraft() {
    for (const area of document.querySelectorAll("#sections textarea")) area.readOnly = true;
    saveBtn.hidden = true;
    approveBtn.hidden = true;
  }

  async function saveEdits() {
    for (const area of document.querySelectorAll("#sections textarea")) {
      if (area.value === area.dataset.original) continue;
      if (!area.value.trim()) { fail("A section cannot be left empty."); area.focus(); return false; }
      const answer = await persist("POST", `/sessions/${sessionId}/drafts/${draft.version}/edits`,
        { json: { section: area.dataset.code, text: area.value }, key: `edit-${uuid()}` }, "saving the edit");
      if (!answer.ok) { fail(`The edit could not be saved: ${detail(answer)}.`); return false; }
      draft = answer.data;
    }
    renderDraft();
    return true;
  }

  async function save() {
    clearProblem();
    saveBtn.disabled = true;
    if (await saveEdits()) say(`Edits saved (version ${draft.version}).`);
    saveBtn.disabled = false;
  }

  async function approve() {
    clearProblem();
    approveBtn.disabled = true;
    saveBtn.disabled = true;
    if (!(await saveEdits())) { approveBtn.disabled = false; saveBtn.disabled = false; return; }
    const answer = await persist("POST", `/sessions/${sessionId}/drafts/${draft.version}/approval`,
      { json: { decision: "approved", content_hash: draft.content_hash },
        key: `approve-${sessionId}-${draft.version}` }, "approving");
    if (!answer.ok) {
      fail(`The note could not be approved: ${detail(answer)}.`);
      approveBtn.disabled = false; saveBtn.disabled = false;
      return;
    }
    lockDraft();
    say(`Version ${draft.version} approved. Sending it to the record…`);
    pollWrites();
  }

  // -- writes per target ---------------------------------------------------------------------
  async function pollWrites() {
    $("writes").hidden = false;
    const started = Date.now();
    let summary = "", reason = "the server did not answer";
    while (Date.now() - started < WRITES_WAIT_MS) {
      const answer = await persist("GET", `/sessions/${sessionId}/writes`, {}, "checking the record");
      if (answer.ok) {
        const writes = answer.data.writes;
        renderWrites(writes);
        summary = writes.map((w) => `${w.target}: ${WORDS[w.status] || w.status}` +
                                    (w.reason && w.status !== "written" ? ` (${w.reason})` : "")).join("; ");
        if (writes.length && writes.every((w) => TERMINAL.has(w.status))) {
          const all = writes.every((w) => w.status === "written");
          say(all ? `The note is written to every target (${writes.length}).` : `Finished sending: ${summary}.`);
          return;
        }
        if (!writes.length && Date.now() - started >= NO_WRITES_MS) {
          // approved, yet nothing is to be written: say so rather than wait for nothing
          fail("The note is approved, but no write to the record was scheduled for it (the " +
               "organization may have no target for this note, or write-back consent was not " +
               "recorded). Ask your administrator; the approved note is kept.");
          say("Approved; nothing is being sent to the record.");
          return;
        }
        reason = writes.length ? `still sending: ${summary}` : "no write has been scheduled yet";
      } else {
        reason = detail(answer);
      }
      await sleep(1000);
    }
    fail(`The note is not written yet: ${reason}. Reload the page to check again.`);
    say("Sending to the record is taking longer than it should.");
  }

  function renderWrites(writes) {
    const list = $("write-list");
    list.replaceChildren();
    for (const w of writes) {
      const li = document.createElement("li");
      li.dataset.target = w.target;
      li.dataset.status = w.status;
      const name = document.createElement("strong");
      name.textContent = w.target;
      const state = document.createElement("span");
      state.className = w.status === "written" ? "ok" : TERMINAL.has(w.status) ? "bad" : "warn";
      let words = WORDS[w.status] || w.status;
      if (w.status === "written" && w.external_id) words += ` (${w.external_id})`;
      if (w.reason && w.status !== "written") words += `: ${w.reason}`;
      state.textContent = ` ${words}`;
      li.append(name, state);
      list.append(li);
    }
  }

  recordBtn.addEventListener("click", record);
  stopBtn.addEventListener("click", stop);
  saveBtn.addEventListener("click", save);
  approveBtn.addEventListener("click", approve);
  $("draft-form").addEventListener("submit", (e) => e.preventDefault());
  resume();
})();
