// Afterview's web app: sign-in, the consultation flow, history and the operators' monitor.
// It uses only the public API (/api/...), with the user's bearer token; no framework, no build.

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "afterview.token";
/// How the stored token was obtained: "google" (Firebase's ID token, which the SDK refreshes)
/// or "token" (an access token or sign-in link, which nothing may replace).
const VIA_KEY = "afterview.via";
/// The Google user (Firebase uid) a Google session belongs to: a token of another Google user
/// (signed in in another tab of this browser, say) never replaces it.
const UID_KEY = "afterview.uid";
const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  me: null,
  config: { firebase: null },
  procedures: [],
  image: null, // {id, width, height}
  noFace: false, // the photo shown has no face the previews could work on
  face: null, // where the face is in it: {imageId, width, height, face: {x, y, width, height}}
  objectUrls: [],
  resultUrls: [], // the shown result's pictures, let go when the next result is shown
  resultSeq: 0, // bumped for each result shown and each photo let go: a late one is dropped
  reporting: false, // the photo generation whose report's request is on its way: one at a time
  task: null, // {id, socket}
  photoGen: 0, // bumped each time the shown photo is let go: late answers for an older one are dropped
  uploading: false,
  submitting: false, // a preview's request is on its way: Generate waits for its answer
  result: null, // the visualization or comparison shown
  pages: {},
  monitorTimer: null,
  placeFace: null, // places the face box over the photo as shown now
  session: 0, // bumped at each sign-in and sign-out: answers for an earlier session are dropped
};

/// Whether the session's token came from Google's sign-in (only then may Firebase's SDK, and
/// whatever Google user it keeps in this browser, replace it).
const viaGoogle = () => sessionStorage.getItem(VIA_KEY) === "google";

// ------------------------------------------------------------------------------ API calls

class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter; // seconds, when the server said when to come back
  }
}

/// What a person can do when the server is busy (the API's own words are for developers).
const BUSY_TEXTS = {
  unavailable: "Afterview is busy or restarting. Please try again in a moment.",
  busy: "Afterview is busy with other photos. Please try again in a moment.",
  too_many_requests: "Another of your requests is still being answered: wait until it is, then try again.",
  too_many_tasks: "You have the most previews and reports under way at once: wait until one is done.",
};

/// Answers the page asks again for by itself, after their `Retry-After` (2 s without one).
const RETRIED = new Set(["unavailable", "busy", "too_many_requests"]);

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

/// A random Idempotency-Key (crypto.randomUUID exists only on https and localhost).
function newKey() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/// The session's token, refreshed first when it came from Google sign-in: Firebase ID tokens
/// live an hour, and `getIdToken()` answers the cached one or a new one when it is near its end.
async function freshToken() {
  const fb = window.firebase;
  const user = fb && fb.apps && fb.apps.length && viaGoogle() ? fb.auth().currentUser : null;
  if (user && state.token) {
    const session = state.session;
    try {
      const t = await user.getIdToken();
      adoptGoogleToken(user, t, session);
    } catch (e) { /* offline: the request says so */ }
  }
  return state.token;
}

/// Takes Google's fresh ID token `t` of `user` as the session's, when the session is still the
/// one that asked (`session`), began with Google, and is this Google user's. Another Google
/// user's token ends the session instead: this tab is not silently someone else's.
function adoptGoogleToken(user, t, session) {
  if (session !== state.session || !viaGoogle() || !state.token || t === state.token) return;
  const uid = sessionStorage.getItem(UID_KEY);
  if (uid && user.uid !== uid) {
    signOut("You signed in as another Google user elsewhere in this browser. Please sign in again.", true);
    return;
  }
  state.token = t;
  sessionStorage.setItem(TOKEN_KEY, t);
}

/// One API call, asked again up to 3 times when the server is busy or restarting (a person
/// would otherwise press the button again). A JSON POST carries an Idempotency-Key, the same
/// on every try: a task the server sent before it answered 503 is the one the next try waits
/// for, not a second one (a second report, a second Gemini call).
async function api(method, path, body) {
  const session = state.session;
  const key = method === "POST" && !(body instanceof FormData) ? newKey() : null;
  for (let attempt = 0; ; attempt++) {
    try {
      return await apiOnce(method, path, body, key);
    } catch (e) {
      if (!RETRIED.has(e.code) || attempt >= 3 || session !== state.session) throw e;
      await sleep(Math.min(e.retryAfter ?? 2, 5) * 1000);
      if (session !== state.session) throw e;
    }
  }
}

async function apiOnce(method, path, body, key) {
  const session = state.session;
  await freshToken();
  // The session ended while its token was refreshed (another Google user took the browser's
  // sign-in): nothing is sent without a token, and there is nothing more to say.
  if (session !== state.session) throw new ApiError(0, "session_ended", "");
  const headers = {};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (key) headers["Idempotency-Key"] = key;
  let payload;
  if (body instanceof FormData) payload = body;
  else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, { method, headers, body: payload });
  } catch (e) {
    throw new ApiError(0, "network", "Afterview cannot be reached. Check the connection and try again.");
  }
  if (r.status === 204) return null;
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (e) {
    data = null;
  }
  if (!r.ok) {
    const err = data && data.error ? data.error : {};
    const code = err.code || `http_${r.status}`;
    const retry = Number.parseInt(r.headers.get("Retry-After") || "", 10);
    const after = Number.isFinite(retry) ? retry : null;
    let msg = BUSY_TEXTS[code] || err.message || `The server answered ${r.status}.`;
    if (after !== null && !BUSY_TEXTS[code]) msg += ` Try again in ${after} s.`;
    throw new ApiError(r.status, code, msg, after);
  }
  return data;
}

/// Fetches a picture or file with the token; an object URL for it (revoked on the next photo).
async function fileUrl(path) {
  const url = URL.createObjectURL(await fileBlob(path));
  state.objectUrls.push(url);
  return url;
}

/// A picture's small copy (the API's JPEG of at most 256 px a side, a few KB), as a data URL:
/// nothing to revoke, however long the page lives.
async function thumbnail(path) {
  const blob = await fileBlob(path);
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(blob);
  });
}

/// A stored file's bytes, fetched with the token. Asks for the bytes: with presigned downloads
/// on, the API would otherwise redirect to the object store, which this page's `fetch` may not
/// reach (its CSP, the bucket's CORS).
async function fileBlob(path) {
  await freshToken();
  const bytes = `${path}${path.includes("?") ? "&" : "?"}redirect=false`;
  let r;
  try {
    r = await fetch(bytes, { headers: { Authorization: `Bearer ${state.token}` } });
  } catch (e) {
    throw new ApiError(0, "network", "Afterview cannot be reached. Check the connection and try again.");
  }
  if (!r.ok) {
    let msg = `The file could not be loaded (${r.status}).`;
    try {
      const d = await r.json();
      if (d.error) msg = d.error.message;
    } catch (e) { /* not JSON */ }
    throw new ApiError(r.status, "file", msg);
  }
  return r.blob();
}

function forgetFiles() {
  for (const u of state.objectUrls.concat(state.resultUrls)) URL.revokeObjectURL(u);
  state.objectUrls = [];
  state.resultUrls = [];
  state.resultSeq += 1; // a result still loading is not shown over the next photo
}

// ------------------------------------------------------------------------------- messages

let toastTimer = null;
function show(message, kind = "error") {
  const t = $("toast");
  t.textContent = message;
  t.className = kind === "error" ? "" : "info";
  t.hidden = false;
  clearTimeout(toastTimer);
  if (kind !== "error") toastTimer = setTimeout(() => { t.hidden = true; }, 4000);
}

function clearToast() {
  $("toast").hidden = true;
}

/// Runs an action; an API error becomes a readable message (and a lost session, sign-in).
async function guard(fn) {
  try {
    clearToast();
    return await fn();
  } catch (e) {
    if (e instanceof ApiError && e.code === "session_ended") return undefined;
    if (e instanceof ApiError && e.status === 401) {
      signOut("Your session has ended. Please sign in again.");
      return undefined;
    }
    show(e instanceof ApiError ? e.message : `Something went wrong: ${e.message}`);
    return undefined;
  }
}

// --------------------------------------------------------------------------------- views

const VIEWS = ["signin", "consult", "history", "monitor"];

function viewFromPath() {
  if (location.pathname === "/monitor") return "monitor";
  if (location.pathname === "/history") return "history";
  return "consult";
}

function setView(name) {
  for (const v of VIEWS) $(`view-${v}`).hidden = v !== name;
  $("nav").hidden = name === "signin";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.view === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  clearInterval(state.monitorTimer);
  state.monitorTimer = null;
  if (name === "consult" && state.placeFace && !$("face-box").hidden) state.placeFace();
  if (name === "history") loadHistory();
  if (name === "monitor") startMonitor();
  document.title = name === "signin" ? "Sign in · Afterview" : `${name[0].toUpperCase()}${name.slice(1)} · Afterview`;
}

function navigate(path) {
  history.pushState({}, "", path);
  setView(viewFromPath());
  $("main").focus();
}

// ------------------------------------------------------------------------------- sign-in

async function signIn(token, via = "token") {
  state.session += 1;
  state.token = token;
  sessionStorage.setItem(VIA_KEY, via);
  const me = await api("GET", "/api/me").catch((e) => {
    state.token = null;
    throw e;
  });
  state.me = me;
  // The token the request went with: Google's sign-in may have refreshed it meanwhile.
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $("nav-monitor").hidden = !me.operator;
  if (state.procedures.length === 0) await loadProcedures();
  setView(viewFromPath());
}

function signOut(message, keepGoogle = false) {
  // Google's session too: else the next request would refresh the token again. Only when it
  // is this session's Google user: not another tab's (who signed in since), whoever asks.
  const fb = window.firebase;
  const uid = sessionStorage.getItem(UID_KEY);
  const current = fb && fb.apps && fb.apps.length ? fb.auth().currentUser : null;
  if (!keepGoogle && current && uid && current.uid === uid) fb.auth().signOut().catch(() => {});
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(VIA_KEY);
  sessionStorage.removeItem(UID_KEY);
  state.session += 1;
  state.token = null;
  state.me = null;
  // An upload still on its way belongs to the session that started it.
  state.uploading = false;
  $("upload-status").textContent = "";
  $("photo").disabled = false;
  if (state.task && state.task.socket) state.task.socket.close();
  resetPhoto();
  for (const i of document.querySelectorAll("#procedures input")) i.checked = false;
  // The form's own default (moderate, the API's), not the first option.
  for (const o of $("intensity").options) o.selected = o.defaultSelected;
  forgetLists();
  updateGenerate();
  setView("signin");
  if (message) show(message, "info");
  $("token").focus();
}

/// Empties history and the monitor: the next person to sign in on this page must not see the
/// previous one's photos, tasks or (an operator's) every user's tasks.
function forgetLists() {
  clearHistory();
  document.querySelector("#m-queues tbody").replaceChildren();
  $("m-workers").replaceChildren();
  document.querySelector("#m-tasks tbody").replaceChildren();
}

/// Google's sign-in (Firebase's SDK), loaded once, its session kept fresh: ID tokens live an
/// hour, and the SDK refreshes them (`onIdTokenChanged`).
async function loadFirebase() {
  const load = (src) => new Promise((ok, fail) => {
    const s = document.createElement("script");
    s.src = src;
    s.onload = ok;
    s.onerror = () => fail(new Error("Google sign-in could not be loaded."));
    document.head.append(s);
  });
  const v = "10.14.1";
  if (!window.firebase) {
    await load(`https://www.gstatic.com/firebasejs/${v}/firebase-app-compat.js`);
    await load(`https://www.gstatic.com/firebasejs/${v}/firebase-auth-compat.js`);
  }
  const fb = window.firebase;
  if (!fb.apps.length) {
    fb.initializeApp(state.config.firebase);
    fb.auth().onIdTokenChanged(async (u) => {
      if (!u || !viaGoogle()) return;
      const session = state.session;
      adoptGoogleToken(u, await u.getIdToken(), session);
    });
  }
  return fb;
}

async function firebaseSignIn() {
  const fb = await loadFirebase();
  const cred = await fb.auth().signInWithPopup(new fb.auth.GoogleAuthProvider());
  sessionStorage.setItem(UID_KEY, cred.user.uid);
  await signIn(await cred.user.getIdToken(), "google");
}

/// After a reload, a session that Google's sign-in began: the SDK again, and the user it kept
/// (it restores its session asynchronously), so that the stored token is refreshed rather
/// than used until it expires. Without it (offline, blocked), the stored token as it is.
async function resumeFirebase() {
  try {
    const fb = await loadFirebase();
    await new Promise((ok) => {
      const stop = fb.auth().onAuthStateChanged(() => { stop(); ok(); });
      setTimeout(ok, 5000);
    });
  } catch (e) { /* the stored token is tried as it is */ }
}

// ----------------------------------------------------------------------------- procedures

function money(v, currency) {
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency, maximumFractionDigits: 0 }).format(v);
  } catch (e) {
    return `${v} ${currency}`;
  }
}

async function loadProcedures() {
  const list = await api("GET", "/api/procedures");
  state.procedures = list.items;
  const box = $("procedures");
  box.replaceChildren();
  for (const p of list.items) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = p.id;
    input.name = "procedure";
    input.addEventListener("change", updateGenerate);
    const text = document.createElement("span");
    text.textContent = p.name;
    const small = document.createElement("small");
    const t = p.costs && p.costs.total;
    const cur = (p.costs && p.costs.currency) || list.currency || "USD";
    small.textContent = t ? `${p.category} · ${money(t.low, cur)}–${money(t.high, cur)}` : p.category;
    text.append(small);
    label.append(input, text);
    box.append(label);
  }
}

function chosen() {
  return [...document.querySelectorAll('#procedures input:checked')].map((i) => i.value);
}

function updateGenerate() {
  const n = chosen().length;
  const busy = Boolean(state.task) || state.submitting;
  for (const i of document.querySelectorAll("#procedures input")) i.disabled = busy || (!i.checked && n >= 4);
  let hint = "";
  if (!state.image) hint = "Upload a photo first.";
  else if (state.noFace) hint = "No face was found in this photo: choose another photo.";
  else if (n === 0) hint = "Pick a procedure (or 2–4 to compare).";
  else if (n === 1) hint = "One procedure: a before/after preview.";
  else hint = `${n} procedures: a side-by-side comparison (at most 4).`;
  $("generate-hint").textContent = hint;
  $("generate").disabled = busy || !state.image || state.noFace || n === 0;
  $("generate").textContent = n > 1 ? "Generate comparison" : "Generate preview";
}

// ---------------------------------------------------------------------------------- photo

/// Stops following the running task (its socket closes; late messages are ignored).
function dropTask() {
  const t = state.task;
  state.task = null;
  if (t && t.socket) t.socket.close();
  // Abandoned for another photo: cancel it too, so it does not hold a worker (not on
  // sign-out, where the token is already gone).
  if (t && state.token) api("POST", `/api/tasks/${t.id}/cancel`).catch(() => {});
  $("progress-box").hidden = true;
}

/// Clears everything shown for the current photo, the patient's details in the report form
/// included (the next photo may be another patient's), and lets go of a running task.
function resetPhoto() {
  state.photoGen += 1;
  dropTask();
  forgetFiles();
  state.image = null;
  state.noFace = false;
  state.face = null;
  state.result = null;
  $("report-form").reset();
  // A report still on its way for the photo let go does not hold the next photo's.
  state.reporting = false;
  $("report-form").querySelector('button[type="submit"]').disabled = false;
  $("face-caption").textContent = "";
  $("photo-view").hidden = true;
  $("photo-actions").hidden = true;
  $("face-box").hidden = true;
  if (state.placeFace) window.removeEventListener("resize", state.placeFace);
  state.placeFace = null;
  $("result").hidden = true;
  $("after-result").hidden = true;
  $("report-link").hidden = true;
  $("infographic").hidden = true;
  $("infographic-full").hidden = true;
  $("report-status").textContent = "";
  $("photo").value = "";
  updateGenerate();
}

async function upload(file) {
  if (!file) return;
  // One upload at a time: a second photo dropped meanwhile would race the first to the screen.
  if (state.uploading) {
    show("One photo at a time: wait until this one is uploaded.", "info");
    return;
  }
  if (!/^image\/(jpeg|png|webp)$/.test(file.type)) {
    show("Please choose a JPEG, PNG or WebP photo.");
    return;
  }
  // Refused here rather than after minutes of sending it on a slow connection.
  const limit = state.config.max_upload_bytes;
  if (limit && file.size > limit) {
    show(PHOTO_ERRORS.file_too_large);
    return;
  }
  const session = state.session;
  const status = $("upload-status");
  $("photo").disabled = true;
  state.uploading = true;
  status.textContent = "Uploading the photo…";
  try {
    await guard(async () => {
      const form = new FormData();
      form.append("file", file, file.name || "photo");
      let img;
      try {
        img = await api("POST", "/api/images", form);
      } catch (e) {
        if (session !== state.session) return;
        throw PHOTO_ERRORS[e.code] ? new ApiError(e.status, e.code, PHOTO_ERRORS[e.code]) : e;
      }
      // Signed out meanwhile: the photo is the previous person's, not this screen's.
      if (session !== state.session) return;
      // Only now is the shown photo (and what was made from it) replaced.
      resetPhoto();
      await openPhoto(img);
    });
  } finally {
    if (session === state.session) {
      state.uploading = false;
      status.textContent = "";
      $("photo").disabled = false;
    }
  }
}

/// What a person can do about a photo the server refused.
const PHOTO_ERRORS = {
  corrupt_image: "This photo could not be read (the file is damaged or incomplete). Please choose another photo.",
  unsupported_format: "This file is not a JPEG, PNG or WebP photo. Please choose another photo.",
  empty_file: "This file is empty. Please choose another photo.",
  file_too_large: "This photo is too large. Please choose a smaller photo.",
  payload_too_large: "This photo is too large. Please choose a smaller photo.",
  image_too_large: "This photo has too many pixels (over 40 megapixels). Please choose a smaller photo.",
};

/// Whether the photo shown is still the one of generation `gen` (an answer for a photo let go
/// meanwhile must not land on the next one).
function stillShowing(gen) {
  return gen === state.photoGen;
}

async function openPhoto(img) {
  const gen = state.photoGen;
  state.image = img;
  const src = await fileUrl(img.url);
  if (!stillShowing(gen)) return;
  $("photo-img").src = src;
  $("photo-view").hidden = false;
  $("photo-actions").hidden = false;
  updateGenerate();
  $("face-caption").textContent = "Finding the face…";
  // Not awaited: the upload is done once the photo shows, and another photo may be chosen
  // while the face is found (its answer is then dropped).
  findFace(img, gen);
}

/// Finds the face of the photo shown (generation `gen`). Generate stays available meanwhile
/// (detection waits for a worker, as the preview would); a preview of a photo without a face
/// then fails with the same advice.
async function findFace(img, gen) {
  try {
    const face = await detectFace(img.id);
    if (!stillShowing(gen)) return;
    state.face = { imageId: img.id, ...face };
    placeFace(face);
    $("face-caption").textContent = "Face found: previews change only the marked area.";
  } catch (e) {
    if (!stillShowing(gen) || e.code === SUPERSEDED) return;
    $("face-box").hidden = true;
    if (e.code === "no_face_detected") {
      state.noFace = true;
      updateGenerate();
    }
    $("face-caption").textContent = e.code === "no_face_detected"
      ? NO_FACE
      : e.message;
  }
}

/// Face detection answers synchronously, and the server holds one of the user's two
/// synchronous slots until the detection ends, even after the page stopped waiting for it. So
/// the page asks for one face at a time; when photos change faster than faces are found, only
/// the latest photo's face is asked for next (the ones between would be dropped unread), and
/// nothing is asked for a session that has ended.
const faces = { busy: false, waiting: null };
const SUPERSEDED = "superseded";

function detectFace(imageId) {
  return new Promise((resolve, reject) => {
    if (faces.waiting) faces.waiting.reject(superseded());
    faces.waiting = { imageId, session: state.session, resolve, reject };
    pumpFaces();
  });
}

function superseded() {
  return Object.assign(new Error("Another photo was chosen."), { code: SUPERSEDED });
}

async function pumpFaces() {
  if (faces.busy) return;
  faces.busy = true;
  while (faces.waiting) {
    const job = faces.waiting;
    faces.waiting = null;
    if (job.session !== state.session) {
      job.reject(superseded());
      continue;
    }
    try {
      job.resolve(await api("GET", `/api/images/${job.imageId}/face`));
    } catch (e) {
      job.reject(e);
    }
  }
  faces.busy = false;
}

const NO_FACE = "No face was found. Choose a clear, front-facing photo where the face fills at least a tenth of the width.";

function placeFace(face) {
  const box = $("face-box");
  const img = $("photo-img");
  const place = () => {
    const k = img.clientWidth / face.width;
    box.style.left = `${face.face.x * k}px`;
    box.style.top = `${face.face.y * k}px`;
    box.style.width = `${face.face.width * k}px`;
    box.style.height = `${face.face.height * k}px`;
  };
  box.hidden = false;
  if (img.complete) place();
  img.onload = place;
  window.removeEventListener("resize", state.placeFace || place);
  window.addEventListener("resize", place);
  // Measured while the consultation shows: found while another view was open, the picture
  // had no size, so the box is placed again when the consultation comes back.
  state.placeFace = place;
}

async function deletePhoto() {
  if (!state.image) return;
  if (!confirm("Delete this photo, its previews and its reports?")) return;
  await guard(async () => {
    await api("DELETE", `/api/images/${state.image.id}`);
    resetPhoto();
    show("The photo and everything made from it were deleted.", "info");
  });
}

// ---------------------------------------------------------------------------- generating

async function generate() {
  const ids = chosen();
  if (!state.image || ids.length === 0 || state.task || state.submitting) return;
  const options = { intensity: $("intensity").value };
  const gen = state.photoGen;
  // A second click (or tap on a slow connection) before the answer sends nothing more.
  state.submitting = true;
  updateGenerate();
  await guard(async () => {
    const single = ids.length === 1;
    let accepted;
    try {
      accepted = single
        ? await api("POST", "/api/visualizations?async_processing=true", { image_id: state.image.id, procedure_id: ids[0], options })
        : await api("POST", "/api/visualizations/compare?async_processing=true", { image_id: state.image.id, procedure_ids: ids, options });
    } finally {
      state.submitting = false;
      updateGenerate();
    }
    // Another photo was opened while this was sent: its preview is not wanted any more.
    if (!stillShowing(gen)) {
      api("POST", `/api/tasks/${accepted.task_id}/cancel`).catch(() => {});
      return;
    }
    follow(accepted.task_id, single);
  });
}

const TERMINAL = ["SUCCESS", "FAILURE", "REVOKED"];

/// Follows a task over its WebSocket; when the connection drops before the end, reads the
/// task's state and follows again, retrying with backoff while Afterview cannot be reached.
/// `silent` counts the sockets in a row that closed before their first message (refused at
/// the handshake, say): each waits longer before the next, so a socket that can never open
/// does not become a tight loop of requests.
async function follow(taskId, single, reconnect = false, silent = 0) {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  // Held from now on, so a photo let go while the token is refreshed cancels the task.
  if (!reconnect) state.task = { id: taskId, socket: null };
  await freshToken();
  if (!(state.task && state.task.id === taskId)) return; // let go meanwhile
  const socket = new WebSocket(`${proto}//${location.host}/api/ws/tasks/${taskId}?token=${encodeURIComponent(state.token)}`);
  state.task = { id: taskId, socket };
  const current = () => state.task && state.task.socket === socket;
  updateGenerate();
  $("progress-box").hidden = false;
  if (!reconnect) {
    $("progress").value = 0;
    $("progress-label").textContent = "Waiting for a worker…";
    $("cancel").disabled = false;
    $("progress-box").scrollIntoView({ behavior: "smooth", block: "nearest" });
  }
  let done = false;
  const finish = () => {
    done = true;
    state.task = null;
    $("progress-box").hidden = true;
    updateGenerate();
  };
  const ended = async (d) => {
    finish();
    if (d.state === "SUCCESS") {
      await guard(() => showResult(d.result, single));
    } else {
      const e = d.error || {};
      const text = e.code === "no_face_detected" ? NO_FACE : (e.message || "The preview failed.");
      show(d.state === "REVOKED" ? "The preview was cancelled." : text, d.state === "REVOKED" ? "info" : "error");
    }
  };
  let heard = false;
  socket.onmessage = async (ev) => {
    if (!current()) return;
    heard = true;
    const msg = JSON.parse(ev.data);
    const d = msg.data || {};
    if (msg.type === "progress") {
      $("progress").value = d.progress || 0;
      $("progress-label").textContent = `${d.status || d.state} (${d.progress || 0}%)`;
    } else if ((msg.type === "complete" || msg.type === "error") && TERMINAL.includes(d.state)) {
      await ended(d);
    }
    // An error without a final state is the server losing its result store, not the task
    // ending: the close that follows reconnects.
  };
  const recover = async (attempt) => {
    if (!current()) return;
    try {
      const st = await api("GET", `/api/tasks/${taskId}/status`);
      if (!current()) return;
      clearToast(); // Afterview answers again: an error shown while it did not is stale.
      if (TERMINAL.includes(st.state)) await ended(st);
      else if (heard) follow(taskId, single, true);
      else {
        const wait = Math.min(250 * 2 ** silent, 15000);
        setTimeout(() => { if (current()) follow(taskId, single, true, silent + 1); }, wait);
      }
    } catch (e) {
      if (!current()) return;
      if (e instanceof ApiError && e.status === 401) {
        finish();
        signOut("Your session has ended. Please sign in again.");
      } else if (attempt >= 8) {
        finish();
        show("Afterview cannot be reached. The preview may still finish: see History once the connection is back.");
      } else {
        $("progress-label").textContent = "Connection lost. Reconnecting…";
        setTimeout(() => recover(attempt + 1), Math.min(1000 * 2 ** attempt, 15000));
      }
    }
  };
  socket.onclose = () => {
    if (!done && current()) recover(0);
  };
}

async function cancelTask() {
  if (!state.task) return;
  $("cancel").disabled = true;
  const id = state.task.id;
  const sent = await guard(async () => { await api("POST", `/api/tasks/${id}/cancel`); return true; });
  // Not sent (the connection, say): the person can try again.
  if (!sent && state.task && state.task.id === id) $("cancel").disabled = false;
}

/// The part of a picture the previews are about: the face box grown to take in hair, ears and
/// chin, within the photo; `null` (the whole photo) when the face is unknown or fills it.
function faceWindow(imageId) {
  const f = state.face;
  if (!f || f.imageId !== imageId) return null;
  const b = f.face;
  const w = Math.min(f.width, b.width * 2.2);
  const h = Math.min(f.height, b.height * 2.0);
  if (w >= f.width * 0.85 && h >= f.height * 0.85) return null;
  const x = Math.max(0, Math.min(f.width - w, b.x + b.width / 2 - w / 2));
  const y = Math.max(0, Math.min(f.height - h, b.y + b.height / 2 - h / 2));
  return { x, y, w, h, W: f.width };
}

/// Shows `win` of each of `imgs` (same-sized pictures) in `box`, which takes the window's
/// shape; the whole pictures when `win` is null.
function crop(box, imgs, win) {
  box.classList.toggle("cropped", Boolean(win));
  box.style.aspectRatio = win ? `${win.w} / ${win.h}` : "";
  for (const img of imgs) {
    img.style.width = win ? `${(win.W / win.w) * 100}%` : "";
    img.style.left = win ? `${(-win.x / win.w) * 100}%` : "";
    img.style.top = win ? `${(-win.y / win.h) * 100}%` : "";
  }
}

/// Shows a preview or comparison. Its pictures are fetched together first, then shown, if it
/// is still the result to show (a later one, another photo or a History entry may have come
/// meanwhile: a picture landing late would sit under another result's title). The previous
/// result's pictures are let go once these are on screen.
async function showResult(result, single) {
  const seq = ++state.resultSeq;
  const paths = single
    ? [result.before_image_url, result.after_image_url]
    : [result.before_image_url, ...result.items.map((it) => it.after_image_url)];
  const got = await Promise.allSettled(paths.map((p) => fileBlob(p)));
  const failed = got.find((g) => g.status === "rejected");
  if (failed || seq !== state.resultSeq) {
    if (failed && seq === state.resultSeq) throw failed.reason;
    return;
  }
  const urls = got.map((g) => URL.createObjectURL(g.value));
  // Only now is it the result shown (a report or cost breakdown asked for meanwhile is the
  // previous one's, still on screen).
  state.result = result;
  const previous = state.resultUrls;
  state.resultUrls = urls;
  // Zoomed to the face (a small face in a large photo would be a few pixels on a phone);
  // each picture opens whole.
  const win = faceWindow(result.image_id);
  $("result").hidden = false;
  $("after-result").hidden = false;
  $("report-link").hidden = true;
  $("infographic").hidden = true;
  $("infographic-full").hidden = true;
  $("report-status").textContent = "";
  if (single) {
    $("comparison").hidden = true;
    $("single").hidden = false;
    const name = procName(result.procedure_id);
    $("result-title").textContent = `Preview: ${name}`;
    $("before-img").src = urls[0];
    $("after-img").src = urls[1];
    $("after-img").alt = `After ${name} (simulation)`;
    crop($("compare"), [$("before-img"), $("after-img")], win);
    setSlider(50);
  } else {
    $("single").hidden = true;
    $("comparison").hidden = false;
    $("result-title").textContent = "Comparison";
    const tiles = [{ label: "Before" }]
      .concat(result.items.map((it) => ({ label: `${procName(it.procedure_id)} (simulation)`, after: true })));
    $("comparison-grid").replaceChildren(...tiles.map((t, i) => tile(t, urls[i], win)));
  }
  previous.forEach((u) => URL.revokeObjectURL(u));
  $("result-status").textContent = single ? "The preview is ready." : "The comparison is ready.";
  $("result").scrollIntoView({ behavior: "smooth", block: "start" });
}

/// One tile of a comparison: the picture at `url`, zoomed to `win`, opening full size.
function tile(t, url, win) {
  const fig = document.createElement("figure");
  const img = document.createElement("img");
  img.alt = t.label;
  img.src = url;
  // A tile opens the picture full size (a phone's screen leaves each tile small).
  const link = document.createElement("a");
  link.href = url;
  link.target = "_blank";
  link.rel = "noopener";
  link.title = `${t.label}: open full size`;
  link.append(img);
  crop(link, [img], win);
  if (win && t.after) {
    // The zoom leaves out the corner where the picture carries its SIMULATION mark.
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = "SIMULATION";
    link.append(badge);
  }
  const cap = document.createElement("figcaption");
  cap.textContent = t.label;
  fig.append(link, cap);
  return fig;
}

function procName(id) {
  const p = state.procedures.find((x) => x.id === id);
  return p ? p.name : id;
}

// -------------------------------------------------------------------- before/after slider

function setSlider(v) {
  const value = Math.max(0, Math.min(100, Math.round(v)));
  const h = $("handle");
  h.style.left = `${value}%`;
  h.setAttribute("aria-valuenow", String(value));
  h.setAttribute("aria-valuetext", `${100 - value}% after`);
  $("after-clip").style.clipPath = `inset(0 0 0 ${value}%)`;
  // A tag names the picture under it: hidden when the other picture covers its corner.
  document.querySelector(".compare .tag.left").hidden = value < 15;
  document.querySelector(".compare .tag.right").hidden = value > 85;
}

function sliderEvents() {
  const h = $("handle");
  const box = $("compare");
  const at = (x) => {
    const r = box.getBoundingClientRect();
    setSlider(((x - r.left) / r.width) * 100);
  };
  let dragging = false;
  // Dragging a picture would start the browser's own drag of the image and cancel ours.
  box.addEventListener("dragstart", (e) => e.preventDefault());
  for (const img of box.querySelectorAll("img")) img.draggable = false;
  for (const end of ["pointerup", "pointercancel", "lostpointercapture"]) {
    box.addEventListener(end, () => { dragging = false; });
  }
  // A finger moves the slider only once it goes sideways (a vertical swipe scrolls the page).
  let touch = null;
  box.addEventListener("pointerdown", (e) => {
    if (e.pointerType === "touch") {
      touch = { x: e.clientX, y: e.clientY, id: e.pointerId };
      return;
    }
    dragging = true;
    box.setPointerCapture(e.pointerId);
    at(e.clientX);
  });
  box.addEventListener("pointermove", (e) => {
    if (touch && e.pointerId === touch.id && !dragging) {
      const dx = Math.abs(e.clientX - touch.x);
      const dy = Math.abs(e.clientY - touch.y);
      if (dx > 8 && dx > dy) {
        dragging = true;
        box.setPointerCapture(e.pointerId);
      } else if (dy > 8) {
        touch = null;
      }
    }
    if (dragging) at(e.clientX);
  });
  box.addEventListener("pointerup", (e) => {
    // A tap (no move) puts the handle where the finger was.
    if (touch && e.pointerId === touch.id && !dragging) at(e.clientX);
    touch = null;
  });
  h.addEventListener("keydown", (e) => {
    const now = Number(h.getAttribute("aria-valuenow"));
    const step = e.shiftKey ? 10 : 2;
    const next = { ArrowLeft: now - step, ArrowDown: now - step, ArrowRight: now + step, ArrowUp: now + step, Home: 0, End: 100, PageDown: now - 10, PageUp: now + 10 }[e.key];
    if (next !== undefined) {
      e.preventDefault();
      setSlider(next);
    }
  });
}

// ------------------------------------------------------------------------ costs and report

async function showCosts() {
  const ids = state.result && (state.result.procedure_ids || [state.result.procedure_id]);
  if (!ids) return;
  // The result it is for: another result or photo shown meanwhile does not get it.
  const seq = state.resultSeq;
  await guard(async () => {
    $("costs").disabled = true;
    try {
      const ex = await api("POST", "/api/exports/cost-infographic", { procedure_ids: ids, format: "png" });
      const src = await fileUrl(ex.download_url);
      if (seq !== state.resultSeq) return;
      $("infographic").src = src;
      $("infographic").hidden = false;
      $("infographic-full").href = $("infographic").src;
      $("infographic-full").hidden = false;
    } finally {
      $("costs").disabled = false;
    }
  });
}

async function createReport(ev) {
  ev.preventDefault();
  // One report at a time: a double click or a second Enter would make a second one.
  if (!state.result || state.reporting === state.photoGen) return;
  const submit = $("report-form").querySelector('button[type="submit"]');
  const f = new FormData($("report-form"));
  const patient = {};
  for (const k of ["name", "date_of_birth", "clinic", "surgeon", "notes"]) {
    const v = String(f.get(k) || "").trim();
    if (v) patient[k] = v;
  }
  const seq = state.resultSeq;
  const gen = state.photoGen;
  state.reporting = gen;
  if (submit) submit.disabled = true;
  await guard(async () => {
    $("report-status").textContent = "Creating the report…";
    $("report-link").hidden = true;
    const ex = await api("POST", "/api/exports", {
      visualization_ids: [state.result.id], format: "pdf", paper: f.get("paper"), patient,
      // Dated by the clinic's day, not UTC's.
      utc_offset_minutes: -new Date().getTimezoneOffset(),
    });
    const href = await fileUrl(ex.download_url);
    // Another result, or another patient's photo, shown meanwhile: the report is not theirs.
    if (seq !== state.resultSeq) return;
    const link = $("report-link");
    link.href = href;
    link.download = `afterview-report-${shortId(ex.id)}.pdf`;
    link.hidden = false;
    $("report-status").textContent = "The report is ready.";
    link.focus();
  }).finally(() => {
    if (state.reporting !== gen) return; // the photo (or the session) changed meanwhile
    state.reporting = false;
    if (submit) submit.disabled = false;
    if ($("report-link").hidden) $("report-status").textContent = "";
  });
}

// -------------------------------------------------------------------------------- history

const LISTS = {
  images: { path: "/api/images", render: renderImage },
  visualizations: { path: "/api/visualizations", render: renderViz },
  exports: { path: "/api/exports", render: renderExport },
  tasks: { path: "/api/tasks", render: renderTask },
};

/** The short form of an id shown to people: its last 8 characters. Task ids are time-ordered
 * (UUID v7), so their first characters are the same for everything made within a minute. */
function shortId(id) {
  return id.slice(-8);
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

function item(text, sub, action, label) {
  const li = document.createElement("li");
  const span = document.createElement("span");
  span.textContent = text;
  if (sub) {
    const small = document.createElement("small");
    small.className = "hint";
    small.textContent = ` ${sub}`;
    span.append(small);
  }
  li.append(span);
  if (action) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    // Named with its entry: a list of buttons all called "Open" says nothing to a screen reader.
    b.setAttribute("aria-label", `${label} ${text}${sub ? `, ${sub}` : ""}`);
    b.addEventListener("click", () => guard(action));
    li.append(b);
  }
  return li;
}

/// History's small pictures, fetched (with the token) as they scroll into view: a clinic tells
/// patients apart by face, not by "Photo 3000×4000".
const thumbs = new IntersectionObserver((entries) => {
  for (const e of entries) {
    if (!e.isIntersecting) continue;
    thumbs.unobserve(e.target);
    thumbnail(e.target.dataset.src).then((u) => { e.target.src = u; }, () => { e.target.hidden = true; });
  }
});

function withThumb(li, path) {
  if (!path) return li;
  const t = document.createElement("img");
  t.className = "thumb";
  t.alt = "";
  t.dataset.src = path;
  li.prepend(t);
  thumbs.observe(t);
  return li;
}

function renderImage(img) {
  return withThumb(item(`Photo ${img.width}×${img.height}`, when(img.created_at), async () => {
    navigate("/");
    resetPhoto();
    await openPhoto(img);
  }, "Open"), img.thumbnail_url);
}

function renderViz(v) {
  const comparison = Boolean(v.items);
  const what = comparison
    ? `Comparison: ${v.items.map((i) => procName(i.procedure_id)).join(", ")}`
    : procName(v.procedure_id);
  return withThumb(item(what, when(v.generated_at), async () => {
    navigate("/");
    resetPhoto();
    const gen = state.photoGen;
    const img = await api("GET", `/api/images/${v.image_id}`).catch(() => null);
    if (!stillShowing(gen)) return;
    if (img) {
      state.image = img;
      const src = await fileUrl(img.url);
      if (!stillShowing(gen)) return;
      $("photo-img").src = src;
      $("photo-view").hidden = false;
      $("photo-actions").hidden = false;
      updateGenerate();
      // Where the face is, for the zoom (without it the whole photo is shown).
      const face = await detectFace(img.id).catch(() => null);
      if (!stillShowing(gen)) return;
      if (face) state.face = { imageId: img.id, ...face };
    }
    await showResult(v, !comparison);
  }, "Open"), v.thumbnail_url);
}

function renderExport(e) {
  const what = e.kind === "infographic" ? "Cost infographic" : "Patient report";
  return item(`${what} (${(e.format || "").toUpperCase()})`, when(e.created_at), async () => {
    const a = document.createElement("a");
    a.href = await fileUrl(e.download_url);
    a.download = `afterview-${e.kind}-${shortId(e.id)}.${e.format}`;
    document.body.append(a);
    a.click();
    a.remove();
  }, "Download");
}

function renderTask(t) {
  const li = item(`${t.name.split(".").pop().replace(/_/g, " ")}`, `${when(t.created_at)} · ${t.progress}%`);
  const s = document.createElement("span");
  s.className = `state ${t.state}`;
  s.textContent = t.state;
  li.append(s);
  return li;
}

async function loadHistory() {
  // Every list emptied first (none shows an older answer while the ones before it load), then
  // each loaded on its own: one that fails leaves the others.
  clearHistory();
  const session = state.session;
  for (const name of Object.keys(LISTS)) {
    if (session !== state.session) return;
    await guard(() => loadPage(name));
  }
}

/// Empties History's lists, back to their first page.
function clearHistory() {
  for (const name of Object.keys(LISTS)) {
    state.pages[name] = 0;
    $(`h-${name}`).replaceChildren();
    document.querySelector(`.more[data-list="${name}"]`).hidden = true;
  }
}

async function loadPage(name) {
  const list = LISTS[name];
  const offset = state.pages[name] || 0;
  const session = state.session;
  const page = await api("GET", `${list.path}?limit=10&offset=${offset}`);
  if (session !== state.session) return; // another person signed in meanwhile
  const ul = $(`h-${name}`);
  for (const it of page.items) ul.append(list.render(it));
  if (offset === 0 && page.items.length === 0) ul.append(item("Nothing yet."));
  state.pages[name] = page.next_offset ?? null;
  document.querySelector(`.more[data-list="${name}"]`).hidden = page.next_offset == null;
}

// -------------------------------------------------------------------------------- monitor

function startMonitor() {
  refreshMonitor();
  state.monitorTimer = setInterval(refreshMonitor, 2000);
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

async function refreshMonitor() {
  let m;
  const session = state.session;
  try {
    m = await api("GET", "/api/monitor");
    if (session !== state.session) return; // answered for the person before
  } catch (e) {
    if (session !== state.session) return;
    clearInterval(state.monitorTimer);
    state.monitorTimer = null;
    if (e.status === 404 || e.status === 401) forgetLists();
    show(e.status === 404 ? "The monitor is for operators only." : e.message);
    return;
  }
  const qb = document.querySelector("#m-queues tbody");
  qb.replaceChildren(...m.queues.map((q) => {
    const tr = document.createElement("tr");
    tr.append(cell(q.queue), cell(q.ready), cell(q.scheduled), cell(q.running));
    return tr;
  }));
  const wl = $("m-workers");
  wl.replaceChildren(...(m.workers.length ? m.workers.map((w) => {
    const running = w.active.map((a) => `${a.name.split(".").pop()} ${a.running_seconds.toFixed(1)} s`).join(", ");
    return item(`${w.node}`, `${w.software} · ${w.queues.join(", ")} · ${w.active.length}/${w.concurrency} busy${running ? ": " + running : ""} · ${w.processed} done`);
  }) : [item("No worker answered.")]));
  const tb = document.querySelector("#m-tasks tbody");
  tb.replaceChildren(...m.tasks.map((t) => {
    const tr = document.createElement("tr");
    const st = cell(t.state);
    st.className = `state ${t.state}`;
    tr.append(cell(`${t.name.split(".").pop()} ${shortId(t.task_id)}`), cell(t.owner), st, cell(`${t.progress}%`),
      cell(`${t.seconds.toFixed(1)} s`), cell(t.retries), cell(t.worker || ""));
    const td = document.createElement("td");
    if (!["SUCCESS", "FAILURE", "REVOKED"].includes(t.state)) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = "Revoke";
      b.setAttribute("aria-label", `Revoke task ${shortId(t.task_id)}`);
      b.addEventListener("click", () => guard(async () => {
        await api("POST", `/api/monitor/tasks/${t.task_id}/revoke`);
        show(`Task ${shortId(t.task_id)} revoked.`, "info");
        refreshMonitor();
      }));
      td.append(b);
    }
    tr.append(td);
    return tr;
  }));
  $("monitor-updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
}

// ---------------------------------------------------------------------------------- start

function wire() {
  $("signin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    if (!t) return;
    clearToast();
    signIn(t).then(
      () => { $("token").value = ""; },
      (e) => show(e.status === 401
        ? `That access token was not accepted (${e.message}).`
        : e.message || String(e)),
    );
  });
  $("firebase-button").addEventListener("click", () => guard(firebaseSignIn));
  $("signout").addEventListener("click", () => signOut("Signed out."));
  for (const a of document.querySelectorAll("nav a")) {
    a.addEventListener("click", (ev) => {
      ev.preventDefault();
      navigate(a.getAttribute("href"));
    });
  }
  window.addEventListener("popstate", () => { if (state.me) setView(viewFromPath()); });
  $("photo").addEventListener("change", () => upload($("photo").files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    upload(e.dataTransfer.files[0]);
  });
  // A photo dropped beside the drop zone must not make the browser leave the app to show it.
  for (const ev of ["dragover", "drop"]) window.addEventListener(ev, (e) => e.preventDefault());
  // A sign-in link opened in a tab already showing the app changes only the fragment.
  window.addEventListener("hashchange", () => {
    if (/^#token=/.test(location.hash)) location.reload();
  });
  $("photo-delete").addEventListener("click", deletePhoto);
  $("generate").addEventListener("click", generate);
  $("cancel").addEventListener("click", cancelTask);
  $("costs").addEventListener("click", showCosts);
  $("report-form").addEventListener("submit", createReport);
  for (const b of document.querySelectorAll(".more")) {
    b.addEventListener("click", () => guard(() => loadPage(b.dataset.list)));
  }
  sliderEvents();
}

async function start() {
  wire();
  try {
    state.config = await api("GET", "/api/config");
  } catch (e) {
    state.config = { firebase: null };
  }
  $("firebase-signin").hidden = !state.config.firebase;
  // `afterview serve` prints a link with the dev token in the fragment (never sent to the
  // server, dropped from the address bar at once).
  const m = location.hash.match(/^#token=([^&]+)/);
  if (m) {
    history.replaceState({}, "", location.pathname);
  }
  if (m) {
    try {
      // A link cut off in the middle of an escape (`%3`) is an invalid link, not a blank page.
      try {
        state.token = decodeURIComponent(m[1]);
      } catch (e) {
        throw new ApiError(401, "unauthorized", "bad link");
      }
      await signIn(state.token);
      return;
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      state.token = null;
      setView("signin");
      show(e instanceof ApiError && e.status === 401
        ? "This sign-in link is invalid or has expired. Ask for a new link, or sign in with an access token below."
        : e.message || String(e));
      return;
    }
  }
  if (state.token) {
    const via = sessionStorage.getItem(VIA_KEY) || "token";
    if (state.config.firebase && via === "google") await resumeFirebase();
    // Another Google user took the browser's sign-in meanwhile: the session ended, with its
    // own message.
    if (!state.token) return;
    const ok = await guard(async () => { await signIn(state.token, via); return true; });
    if (ok) return;
  }
  setView("signin");
}

start();
