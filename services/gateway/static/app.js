// Darkroom's page: sign in, submit a prompt, follow the job's events, show its images.
// Plain script, no dependencies: nothing is fetched from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
// The event kinds the page renders; others (added to the contract later) are ignored.
const KINDS = ["snapshot", "queued", "position", "started", "progress", "retrying",
  "succeeded", "failed", "cancelled"];
const TERMINAL_KINDS = new Set(["succeeded", "failed", "cancelled"]);
const TERMINAL_STATES = new Set(["JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"]);
const RECONNECT_MS = 1000;

let csrf = "";
let watch = null;  // the job followed now: {jobId, lastEventId, source, done, timer}
// Every event received, for whoever checks the page (tests): kind and id.
window.darkroomEvents = [];

class ApiError extends Error {
  constructor(status, info) {
    super((info && info.message) || `HTTP ${status}`);
    this.status = status;
    this.info = info || {};
  }
}

async function api(method, path, body, headers = {}) {
  const options = { method, credentials: "same-origin", headers: { Accept: "application/json", ...headers } };
  if (method !== "GET") options.headers["X-CSRF-Token"] = csrf;
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (!response.ok) throw new ApiError(response.status, data && data.error);
  return data;
}

function newKey() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function stateName(state) {
  return (state || "").replace(/^JOB_STATE_/, "").toLowerCase() || "unknown";
}

function show(signedIn) {
  $("sign-in-section").hidden = signedIn;
  for (const id of ["create-section", "recent-section", "sign-out"]) $(id).hidden = !signedIn;
  if (!signedIn) $("job-section").hidden = true;
}

async function loadSession() {
  const session = await api("GET", "/v1/session");
  csrf = session.csrf_token || "";
  show(session.signed_in);
  if (session.signed_in) {
    refreshRecent();
    const match = location.hash.match(/^#job=(.+)$/);
    if (match) openJob(decodeURIComponent(match[1]));
  } else {
    $("token").focus();
  }
}

$("sign-in").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("token-error").textContent = "";
  try {
    const session = await api("POST", "/v1/session", { token: $("token").value });
    csrf = session.csrf_token;
    $("token").value = "";
    show(true);
    refreshRecent();
    $("prompt").focus();
  } catch (error) {
    $("token-error").textContent = error.status === 401 ? "That token is not valid." : error.message;
    $("token").focus();
  }
});

$("sign-out").addEventListener("click", async () => {
  stopWatch();
  await api("DELETE", "/v1/session");
  csrf = "";
  show(false);
  $("token").focus();
});

function clearFieldErrors() {
  for (const element of document.querySelectorAll("#create .error")) element.textContent = "";
  for (const element of document.querySelectorAll("#create [aria-invalid]")) element.removeAttribute("aria-invalid");
}

function readSpec() {
  const spec = { prompt: $("prompt").value };
  for (const name of ["width", "height", "steps", "seed", "num_images"]) {
    const value = $(name).value.trim();
    if (value !== "") spec[name] = Number(value);
  }
  return spec;
}

$("create").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearFieldErrors();
  $("submit").disabled = true;
  try {
    const job = await api("POST", "/v1/jobs", { spec: readSpec() }, { "Idempotency-Key": newKey() });
    followJob(job);
    refreshRecent();
  } catch (error) {
    showCreateError(error);
  } finally {
    $("submit").disabled = false;
  }
});

function showCreateError(error) {
  const violations = error.info.field_violations || [];
  let first = null;
  for (const violation of violations) {
    const slot = document.querySelector(`#create .error[data-field="${CSS.escape(violation.field)}"]`);
    if (slot) {
      slot.textContent = slot.textContent ? `${slot.textContent} ${violation.description}` : violation.description;
      const input = $(slot.id.replace(/^error-/, ""));
      input.setAttribute("aria-invalid", "true");
      first = first || input;
    } else {
      $("create-error").textContent += `${violation.field}: ${violation.description} `;
    }
  }
  if (!violations.length) $("create-error").textContent = error.message;
  if (first) first.focus();
}

// Words for a wait reason when the server sends no `detail` of its own.
const WAIT_WORDS = {
  WAIT_REASON_NO_WORKER: "waiting for a worker",
  WAIT_REASON_OWNER_LIMIT: "waiting for one of your running jobs to end",
  WAIT_REASON_RETRY_BACKOFF: "retrying soon",
};

function secondsUntil(time) {
  return Math.max(0, Math.round((Date.parse(time) - Date.now()) / 1000));
}

// A queued job's QueueStatus (Job.queue, or a `position` event): where it stands and when
// it should start and end. Proto JSON leaves zero values out: no `jobs_ahead` means 0.
function renderQueue(queue) {
  if (!queue) { $("job-queue").textContent = ""; return; }
  const parts = [];
  const reason = queue.reason || "";
  if (reason === "WAIT_REASON_QUEUED" || (!reason && queue.jobs_ahead !== undefined)) {
    parts.push(`position ${(queue.jobs_ahead || 0) + 1}`);
  }
  if (queue.estimated_start_time) parts.push(`starts in about ${secondsUntil(queue.estimated_start_time)} s`);
  const end = queue.estimated_end_time || queue.estimated_finish_time;
  if (end) parts.push(`done in about ${secondsUntil(end)} s`);
  const words = queue.detail || WAIT_WORDS[reason];
  if (words) parts.push(words);
  $("job-queue").textContent = parts.length ? `(${parts.join(", ")})` : "";
}

function renderProgress(progress) {
  if (!progress || !progress.total_steps) return;
  const bar = $("job-progress");
  bar.max = progress.total_steps;
  bar.value = progress.step || 0;
  $("job-status").textContent = `Step ${progress.step || 0} of ${progress.total_steps}`;
}

function setState(name) {
  $("job-state").textContent = name;
  $("cancel").hidden = !["queued", "running", "retrying"].includes(name);
  if (name !== "queued") renderQueue(null);
}

function renderImages(job) {
  const box = $("job-images");
  box.replaceChildren();
  const outputs = (job.outputs || []).slice().sort((a, b) => (a.index || 0) - (b.index || 0));
  for (const output of outputs) {
    const image = document.createElement("img");
    image.src = `/v1/jobs/${encodeURIComponent(job.id)}/outputs/${output.index || 0}`;
    image.alt = `Image ${(output.index || 0) + 1} for: ${(job.spec && job.spec.prompt) || ""}`;
    if (output.width) image.width = output.width;
    if (output.height) image.height = output.height;
    box.append(image);
  }
}

function renderJob(job) {
  $("job-id").textContent = job.id;
  setState(stateName(job.state));
  if (stateName(job.state) === "queued") renderQueue(job.queue);
  renderProgress(job.progress);
  $("job-error").textContent = job.error && job.error.message ? `Failed: ${job.error.message}` : "";
  if (job.state === "JOB_STATE_SUCCEEDED") {
    const bar = $("job-progress");
    bar.value = bar.max;
    $("job-status").textContent = "Done.";
    renderImages(job);
  } else if (job.state === "JOB_STATE_CANCELLED") {
    $("job-status").textContent = "Cancelled.";
  }
}

function render(kind, event) {
  const body = event[kind] || {};
  switch (kind) {
    case "snapshot": renderJob(body.job || {}); break;
    case "queued": setState("queued"); $("job-status").textContent = "Waiting for a worker."; break;
    case "position": setState("queued"); renderQueue(body.queue); break;
    case "started":
      setState("running");
      $("job-status").textContent = `Started (attempt ${body.attempt || 1}).`;
      break;
    case "progress": setState("running"); renderProgress(body.progress); break;
    case "retrying":
      setState("retrying");
      $("job-status").textContent = `Attempt ${body.attempt || 1} failed: ${body.reason || ""}; retrying.`;
      break;
    default: renderJob(body.job || {});
  }
}

function stopWatch() {
  if (!watch) return;
  watch.done = true;
  clearTimeout(watch.timer);
  if (watch.source) watch.source.close();
  watch = null;
}

function ends(kind, event) {
  if (TERMINAL_KINDS.has(kind)) return true;
  return kind === "snapshot" && TERMINAL_STATES.has(((event.snapshot || {}).job || {}).state);
}

function onEvent(w, kind, message) {
  if (watch !== w || w.done) return;
  const event = JSON.parse(message.data);
  // An event without an id leaves the resume point where it was, as EventSource does.
  if (event.event_id) w.lastEventId = event.event_id;
  window.darkroomEvents.push({ job: w.jobId, kind, id: event.event_id || "" });
  render(kind, event);
  if (ends(kind, event)) {
    w.done = true;
    w.source.close();
    refreshRecent();
  }
}

function open(w) {
  // EventSource resends Last-Event-ID by itself when it reconnects; when it gives up
  // (the gateway answered with an error while restarting), a new one resumes from `after`.
  const after = w.lastEventId ? `?after=${encodeURIComponent(w.lastEventId)}` : "";
  const source = new EventSource(`/v1/jobs/${encodeURIComponent(w.jobId)}/events${after}`);
  w.source = source;
  for (const kind of KINDS) source.addEventListener(kind, (message) => onEvent(w, kind, message));
  source.addEventListener("stream_error", (message) => {
    const body = JSON.parse(message.data);
    $("job-error").textContent = `Lost the job's events: ${body.error.message}`;
  });
  source.onopen = () => { if (!w.done) $("job-error").textContent = ""; };
  source.onerror = () => {
    if (w.done || watch !== w) return;
    if (source.readyState === EventSource.CLOSED) {
      clearTimeout(w.timer);
      w.timer = setTimeout(() => { if (!w.done && watch === w) open(w); }, RECONNECT_MS);
    }
  };
}

function followJob(job) {
  stopWatch();
  $("job-section").hidden = false;
  $("job-images").replaceChildren();
  $("job-progress").value = 0;
  $("job-status").textContent = "";
  renderJob(job);
  history.replaceState(null, "", `#job=${encodeURIComponent(job.id)}`);
  watch = { jobId: job.id, lastEventId: "", source: null, done: false, timer: null };
  open(watch);
}

async function openJob(jobId) {
  try {
    followJob(await api("GET", `/v1/jobs/${encodeURIComponent(jobId)}`));
  } catch (error) {
    $("create-error").textContent = error.message;
  }
}

$("cancel").addEventListener("click", async () => {
  if (!watch) return;
  try {
    renderJob(await api("POST", `/v1/jobs/${encodeURIComponent(watch.jobId)}:cancel`));
  } catch (error) {
    $("job-error").textContent = error.message;
  }
});

async function refreshRecent() {
  let page;
  try { page = await api("GET", "/v1/jobs?page_size=10"); } catch (_) { return; }
  const list = $("recent");
  list.replaceChildren();
  for (const job of page.jobs || []) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `${(job.spec && job.spec.prompt) || job.id} — ${stateName(job.state)}`;
    button.addEventListener("click", () => openJob(job.id));
    item.append(button);
    list.append(item);
  }
}

$("refresh").addEventListener("click", refreshRecent);
loadSession().catch((error) => { $("token-error").textContent = error.message; show(false); });
