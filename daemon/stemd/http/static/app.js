// stemd's page: plain JavaScript, no build step and nothing from a CDN (it must
// work on an offline NAS). State comes from api/v1, changes from api/v1/events.
//
// Every URL here is relative to the page: behind a proxy that serves stemd under a
// path prefix (nginx's `location /stemd/`), the page is /stemd/ and its calls go to
// /stemd/api/v1/... The URLs the API puts in a job (`url`, `stems`, `zip`) are
// root-absolute, so the page builds its own from the job's id and stem names.
"use strict";

const API = "api/v1";
// ?page_size=N on the page's URL (the API takes 1..500 a page)
const PAGE_SIZE = Math.min(500, Math.max(1, Number(new URLSearchParams(location.search).get("page_size")) || 100));
const jobs = new Map();      // id -> job as the API shows it (the newest page)
const older = new Map();     // id -> job from the pages asked for with "older jobs"
const rows = new Map();      // id -> <li>
const mixers = new Map();    // id -> Mixer of a done job's row
let refreshTimer = null;
let query = "";              // the search box's text
let nextBefore = null;       // the cursor of the next older page, null at the end
let olderBefore = null;      // where the first older page starts (the newest page's end)
let info = null;             // GET api/v1/info

function jobURL(id) { return `${API}/jobs/${id}`; }
function stemURL(id, stem) { return `${jobURL(id)}/stems/${encodeURIComponent(stem)}`; }

async function getJSON(url, options) {
  const response = await fetch(url, Object.assign({ credentials: "same-origin" }, options));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
    const error = new Error(`${response.status}: ${detail}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function size(bytes) {
  if (bytes == null) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
  return `${bytes.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function clock(seconds) {
  if (!Number.isFinite(seconds)) return "–:––";
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${r}` : `${m}:${r}`;
}

function title(job) { return job.source.split("/").pop(); }
function folderOf(job) { const parts = job.source.split("/"); parts.pop(); return parts.join("/"); }

// -- the mixer: a done job's stems played together from one transport ---------
//
// Each stem is an <audio> element streaming its stem route (Range requests: a
// long track plays, and seeks, without being downloaded whole), routed through a
// Web Audio gain node (mute, solo, volume). The first stem's element is the
// clock: the others are nudged (playback rate) or, when far off, moved to it. The
// waveforms come from peaks.json, drawn before any stem is fetched; the elements
// get their sources only when the mixer first plays (a library of a hundred
// results asks for no stem), and give them up when another mixer plays (a browser
// opens 6 connections to a host: four idle streams would hold most of them).

let audioGraph = null;       // one AudioContext for the page, made on the first play

function graph() {
  if (audioGraph === null) audioGraph = new AudioContext();
  return audioGraph;
}

const SYNC_EVERY_MS = 200;
const NUDGE_S = 0.008;       // closer than this: leave it alone
const JUMP_S = 0.12;         // further than this: move it, rather than nudge
const NUDGE_MAX = 0.06;      // the most a stem's rate is changed by to catch up

class Mixer {
  constructor(job) {
    this.id = job.id;
    this.duration = NaN;
    this.peaks = null;
    this.playing = false;
    this.timer = null;
    this.tracks = new Map();   // stem -> {audio, gain, volume, muted, soloed, canvas, ...}
    this.node = this.build(Object.keys(job.stems));
    this.loadPeaks();
  }

  build(stems) {
    this.button = el("button", { class: "play", type: "button", onclick: () => this.toggle() }, "Play");
    this.seekBar = el("input", { class: "seek", type: "range", min: "0", max: "0", step: "0.01", value: "0",
      "aria-label": "position" });
    this.seekBar.addEventListener("input", () => this.seek(Number(this.seekBar.value)));
    this.time = el("span", { class: "time meta" }, "0:00 / –:––");
    const transport = el("div", { class: "transport" }, this.button, this.seekBar, this.time);
    const list = el("div", { class: "stems" });
    for (const stem of stems) {
      const audio = el("audio", { preload: "none", "data-src": stemURL(this.id, stem) });
      const track = { stem, audio, gain: null, volume: 1, muted: false, soloed: false };
      track.canvas = el("canvas", { class: "wave", width: "600", height: "44", "data-stem": stem });
      track.canvas.addEventListener("click", (event) => {
        const box = track.canvas.getBoundingClientRect();
        if (Number.isFinite(this.duration)) this.seek((event.clientX - box.left) / box.width * this.duration);
      });
      track.mute = el("button", { class: "mute", type: "button", title: "mute", onclick: () => {
        track.muted = !track.muted; this.apply(); } }, "M");
      track.solo = el("button", { class: "solo", type: "button", title: "solo", onclick: () => {
        track.soloed = !track.soloed; this.apply(); } }, "S");
      track.slider = el("input", { class: "volume", type: "range", min: "0", max: "1", step: "0.01",
        value: "1", "aria-label": `${stem} volume` });
      track.slider.addEventListener("input", () => { track.volume = Number(track.slider.value); this.apply(); });
      audio.addEventListener("loadedmetadata", () => this.learnDuration(audio.duration));
      audio.addEventListener("waiting", () => this.stalled());
      audio.addEventListener("canplay", () => this.resumeIfReady());
      audio.addEventListener("ended", () => this.ended());
      this.tracks.set(stem, track);
      list.append(el("div", { class: "stem", "data-stem": stem },
        el("span", { class: "name" }, stem), track.canvas, track.mute, track.solo, track.slider,
        el("a", { href: stemURL(this.id, stem), download: "" }, "download"), audio));
    }
    this.leader = this.tracks.values().next().value;
    if (this.leader) this.leader.audio.addEventListener("timeupdate", () => this.show());
    return el("div", { class: "mixer", "data-job": String(this.id) }, transport, list);
  }

  async loadPeaks() {
    try {
      this.peaks = await getJSON(`${jobURL(this.id)}/peaks`);
      // drawn to the loudest stem's peak: quiet tracks still show their shape, and
      // the stems keep their loudness against each other
      let top = 0;
      for (const data of Object.values(this.peaks.stems || {})) {
        for (const v of data.min) top = Math.max(top, -v);
        for (const v of data.max) top = Math.max(top, v);
      }
      this.peaks.top = top || this.peaks.scale || 127;
      this.learnDuration(this.peaks.frames / this.peaks.samplerate);
    } catch (error) {
      this.peaks = null;  // stems made before stemd wrote peaks: they still play
    }
    this.draw();
  }

  learnDuration(seconds) {
    if (!Number.isFinite(seconds) || seconds <= 0) return;
    if (!Number.isFinite(this.duration) || Math.abs(this.duration - seconds) > 0.05) {
      this.duration = seconds;
      this.seekBar.max = String(seconds);
      this.show();
    }
  }

  attached() { return Boolean(this.leader && this.leader.audio.getAttribute("src")); }

  position() { return this.attached() ? this.leader.audio.currentTime : this.resumeAt || 0; }

  // the streams, opened where the transport stands
  attach() {
    if (this.attached()) return;
    const at = this.resumeAt || 0;
    for (const track of this.tracks.values()) {
      track.audio.preload = "auto";
      track.audio.src = track.audio.dataset.src;
      if (at) track.audio.currentTime = at;
    }
  }

  // the streams closed (their connections free), the position kept
  release() {
    if (!this.attached()) return;
    this.pause();
    this.resumeAt = this.position();
    for (const track of this.tracks.values()) {
      track.audio.removeAttribute("src");
      track.audio.load();
    }
  }

  // -- sound

  connect() {
    const context = graph();
    for (const track of this.tracks.values()) {
      if (track.gain) continue;
      const source = context.createMediaElementSource(track.audio);
      track.gain = context.createGain();
      source.connect(track.gain).connect(context.destination);
    }
    this.apply();
    if (context.state === "suspended") context.resume();
  }

  apply() {
    const solo = [...this.tracks.values()].some((t) => t.soloed);
    for (const track of this.tracks.values()) {
      track.level = track.muted || (solo && !track.soloed) ? 0 : track.volume;
      if (track.gain) track.gain.gain.value = track.level;
      track.mute.classList.toggle("on", track.muted);
      track.solo.classList.toggle("on", track.soloed);
      track.canvas.classList.toggle("silent", track.level === 0);
    }
    this.draw();
  }

  // what each stem sounds at now: the gain node's value (the element's volume before
  // the first play routes it through the graph)
  gains() {
    const out = {};
    for (const [stem, track] of this.tracks) out[stem] = track.gain ? track.gain.gain.value : track.level ?? 1;
    return out;
  }

  // -- transport

  toggle() { if (this.playing) this.pause(); else this.play(); }

  async play() {
    for (const mixer of mixers.values()) if (mixer !== this) mixer.release();
    this.attach();
    this.connect();
    this.playing = true;
    this.button.textContent = "Pause";
    const at = this.position();
    for (const track of this.tracks.values()) {
      if (Math.abs(track.audio.currentTime - at) > NUDGE_S) track.audio.currentTime = at;
    }
    if (this.timer === null) this.timer = setInterval(() => this.sync(), SYNC_EVERY_MS);
    // start them in one go once every stem has data where the clock stands
    // (resumeIfReady, on each element's canplay), not each as its data comes
    if ([...this.tracks.values()].some((t) => t.audio.readyState < HTMLMediaElement.HAVE_FUTURE_DATA)) {
      this.held = true;
      return;
    }
    this.held = false;
    await Promise.all([...this.tracks.values()].map((t) => t.audio.play().catch(() => {})));
  }

  pause() {
    this.playing = false;
    this.button.textContent = "Play";
    this.held = false;
    for (const track of this.tracks.values()) { track.audio.pause(); track.audio.playbackRate = 1; }
    clearInterval(this.timer);
    this.timer = null;
    if (this.attached()) this.seek(this.position());  // every stem where the clock stopped
  }

  seek(seconds) {
    const at = Math.max(0, Math.min(seconds, Number.isFinite(this.duration) ? this.duration : seconds));
    if (this.attached()) for (const track of this.tracks.values()) track.audio.currentTime = at;
    else this.resumeAt = at;
    this.show(at);
  }

  ended() { if (this.playing && this.leader.audio.ended) this.pause(); }

  // a stem ran out of data: hold every stem until all can go on together
  stalled() {
    if (!this.playing || this.held) return;
    this.held = true;
    for (const track of this.tracks.values()) track.audio.pause();
  }

  resumeIfReady() {
    if (!this.held || !this.playing) return;
    if ([...this.tracks.values()].some((t) => t.audio.readyState < HTMLMediaElement.HAVE_FUTURE_DATA)) return;
    this.play();
  }

  sync() {
    if (!this.playing || this.held) return;
    const clockAt = this.position();
    for (const track of this.tracks.values()) {
      if (track === this.leader) continue;
      const ahead = track.audio.currentTime - clockAt;
      if (Math.abs(ahead) > JUMP_S) { track.audio.currentTime = clockAt; track.audio.playbackRate = 1; }
      else if (Math.abs(ahead) > NUDGE_S) {
        track.audio.playbackRate = 1 - Math.max(-NUDGE_MAX, Math.min(NUDGE_MAX, 2 * ahead));
      }
      else track.audio.playbackRate = 1;
    }
    this.show();
  }

  // every stem's position, for the page's tests and anyone curious
  positions() {
    const out = {};
    for (const [stem, track] of this.tracks) out[stem] = track.audio.currentTime;
    return out;
  }

  stop() { this.release(); }

  // -- pictures

  show(at) {
    const now = at ?? this.position();
    this.time.textContent = `${clock(now)} / ${clock(this.duration)}`;
    if (document.activeElement !== this.seekBar) this.seekBar.value = String(now);
    this.draw(now);
  }

  draw(at) {
    const now = at ?? this.position();
    const played = Number.isFinite(this.duration) && this.duration > 0 ? now / this.duration : 0;
    for (const track of this.tracks.values()) drawWave(track.canvas, this.peaks, track.stem, played);
  }
}

function drawWave(canvas, peaks, stem, played) {
  const width = Math.max(100, Math.round(canvas.clientWidth * (window.devicePixelRatio || 1)) || 600);
  if (canvas.width !== width) canvas.width = width;
  const height = canvas.height, middle = height / 2;
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, width, height);
  const style = getComputedStyle(canvas);
  const done = style.getPropertyValue("--wave-played").trim() || "#2f6fed";
  const rest = style.getPropertyValue("--wave").trim() || "#9aa4b2";
  const data = peaks && peaks.stems && peaks.stems[stem];
  if (!data) {  // no peaks.json (older stems): a line, and the position
    g.fillStyle = rest;
    g.fillRect(0, middle - 1, width, 2);
    g.fillStyle = done;
    g.fillRect(0, middle - 1, width * played, 2);
    canvas.dataset.drawn = "line";
    return;
  }
  const points = data.min.length, scale = (peaks.top || peaks.scale || 127) / 0.95;
  for (let x = 0; x < width; x++) {
    const from = Math.floor(x * points / width);
    const to = Math.max(from + 1, Math.floor((x + 1) * points / width));
    let low = 0, high = 0;
    for (let i = from; i < to && i < points; i++) {
      if (data.min[i] < low) low = data.min[i];
      if (data.max[i] > high) high = data.max[i];
    }
    const top = middle - (high / scale) * middle, bottom = middle - (low / scale) * middle;
    g.fillStyle = x < width * played ? done : rest;
    g.fillRect(x, top, 1, Math.max(1, bottom - top));
  }
  canvas.dataset.drawn = "peaks";
}

// -- rendering: one <li> per job, kept across updates (a playing mixer keeps playing)

function renderJob(job) {
  let row = rows.get(job.id);
  if (!row) {
    row = el("li", { class: "job", "data-id": String(job.id) });
    rows.set(job.id, row);
  }
  if (row.dataset.state !== job.state) {
    row.dataset.state = job.state;
    const mixer = mixers.get(job.id);
    if (mixer) { mixer.stop(); mixers.delete(job.id); }
    row.replaceChildren(...content(job));
  }
  const bar = row.querySelector("progress");
  if (bar) bar.value = job.progress;
  const percent = row.querySelector(".percent");
  if (percent) percent.textContent = `${Math.round(job.progress * 100)} %`;
  const position = row.querySelector(".position");
  if (position) position.textContent = job.queue_position ? `#${job.queue_position} in the queue` : "";
  const section = document.getElementById(job.state);
  if (section && row.parentElement !== section) placeRow(section, row, job.id);
}

// newest first, wherever the row comes from (an update, an older page)
function placeRow(section, row, id) {
  for (const other of section.children) {
    if (Number(other.dataset.id) < id) { section.insertBefore(row, other); return; }
  }
  section.append(row);
}

function content(job) {
  // the source's name once, as the title; its folder (if any) beside it
  const folder = folderOf(job);
  const head = el("div", { class: "head" }, el("span", { class: "title" }, title(job)),
    folder ? el("span", { class: "where meta" }, ` in ${folder}`) : "");
  if (job.state === "running") {
    return [head, el("progress", { max: "1", value: String(job.progress) }),
      el("span", { class: "percent meta" })];
  }
  if (job.state === "queued") {
    const parts = [head, el("span", { class: "position meta" })];
    if (job.error) parts.push(el("div", { class: "error" }, `waiting to retry: ${job.error}`));
    return parts;
  }
  if (job.state === "failed") {
    return [head, el("div", { class: "error reason" }, job.error || "failed"),
      el("div", { class: "actions" },
        el("button", { class: "retry", type: "button", onclick: () => retry(job.id) }, "Retry"),
        el("button", { class: "dismiss", type: "button", onclick: () => dismiss(job.id) }, "Dismiss"))];
  }
  // done: the mixer (a player per stem, with its download link), and the zip
  const parts = [head];
  if (Object.keys(job.stems || {}).length) {
    const mixer = new Mixer(job);
    mixers.set(job.id, mixer);
    parts.push(mixer.node, el("a", { class: "zip", href: `${jobURL(job.id)}/stems.zip` }, "all stems (zip)"));
  } else {
    parts.push(el("div", { class: "meta" }, "its stems are gone from the outbox"));
  }
  return parts;
}

function shown(job) {
  return !(job.dismissed && job.state === "failed");  // dismissed: out of sight, as in `stemd status`
}

function renderAll() {
  const all = new Map([...older, ...jobs]);
  for (const job of [...all.values()].sort((a, b) => a.id - b.id)) {
    if (shown(job)) renderJob(job);
  }
  for (const [id, row] of rows) {
    const job = all.get(id);
    if (!job || !shown(job)) {
      row.remove();
      rows.delete(id);
      const mixer = mixers.get(id);
      if (mixer) { mixer.stop(); mixers.delete(id); }
    }
  }
  document.getElementById("older").hidden = nextBefore === null;
}

// -- data

function listURL(before) {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (query) params.set("q", query);
  if (before != null) params.set("before", String(before));
  return `${API}/jobs?${params}`;
}

async function refresh() {
  refreshTimer = null;
  const asked = query;
  try {
    const body = await getJSON(listURL(null));
    if (asked !== query) return;  // the search changed meanwhile: its own refresh follows
    if (older.size) {
      // older pages are shown: what new jobs push off the newest page joins them
      const oldest = Math.min(...body.jobs.map((job) => job.id));
      for (const [id, job] of jobs) if (id < oldest) older.set(id, job);
    }
    jobs.clear();
    for (const job of body.jobs) jobs.set(job.id, job);
    const end = body.next_before ?? null;
    if (olderBefore === null || older.size === 0) { olderBefore = end; nextBefore = end; }
    renderAll();
  } catch (error) {
    console.warn("stemd: cannot list the jobs:", error);
  }
}

function refreshSoon() {
  if (refreshTimer === null) refreshTimer = setTimeout(refresh, 150);
}

async function showOlder() {
  if (nextBefore === null) return;
  try {
    const body = await getJSON(listURL(nextBefore));
    for (const job of body.jobs) if (!jobs.has(job.id)) older.set(job.id, job);
    nextBefore = body.next_before ?? null;
    renderAll();
  } catch (error) {
    alert(`Cannot list older jobs: ${error.message}`);
  }
}

function setUpLibrary() {
  const box = document.getElementById("search");
  let timer = null;
  box.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      query = box.value.trim();
      older.clear();
      olderBefore = null;
      nextBefore = null;
      refresh();
    }, 250);
  });
  document.getElementById("older").addEventListener("click", showOlder);
}

async function showInfo() {
  try {
    info = await getJSON(`${API}/info`);
    document.getElementById("model").textContent = info.model;
    document.getElementById("device").textContent = info.device;
    // what runs the forward pass, beside the device: "cpu · openvino fp32"
    document.getElementById("runtime").textContent =
      info.backend ? ` · ${info.backend} ${info.precision}` : "";
    document.getElementById("free").textContent = size(info.outbox_free_bytes);
    showChoices();
  } catch (error) {
    console.warn("stemd: no info:", error);
  }
}

// -- workers: every daemon (host) sharing the ledger, and what each worker runs

let workersTimer = null;

async function showWorkers() {
  workersTimer = null;
  try {
    const status = await getJSON(`${API}/status`);
    const items = [];
    for (const node of status.nodes) {
      for (const worker of node.workers) {
        const doing = worker.source
          ? `${title(worker)} ${Math.round((worker.progress || 0) * 100)} %`
          : "idle";
        items.push(el("li", { class: "worker", "data-worker": `${node.host}/${worker.name}` },
          el("span", { class: "title" }, `${node.host} · ${worker.name} (${worker.device})`),
          " ", el("span", { class: "meta" }, doing)));
      }
    }
    document.getElementById("workers").replaceChildren(...items);
  } catch (error) {
    console.warn("stemd: no workers:", error);
  }
}

// each daemon reports its workers every 2 s: asking more often shows nothing new
function showWorkersSoon() {
  if (workersTimer === null) workersTimer = setTimeout(showWorkers, 1000);
}

async function retry(id) {
  try {
    const job = await getJSON(`${jobURL(id)}/retry`, { method: "POST" });
    older.delete(id);
    jobs.set(job.id, job);
    renderAll();
  } catch (error) {
    alert(`Retry failed: ${error.message}`);
  }
}

async function dismiss(id) {
  try {
    const job = await getJSON(`${jobURL(id)}/dismiss`, { method: "POST" });
    const known = job && job.id === id ? job : Object.assign({}, jobs.get(id) || older.get(id));
    known.dismissed = true;  // as the answer says, or as asked (an answer without the job)
    (older.has(id) ? older : jobs).set(id, known);
    renderAll();
  } catch (error) {
    alert(`Dismiss failed: ${error.message}`);
  }
}

// -- uploads: multipart, with the browser's own progress events, and the choices

function showChoices() {
  const boxes = document.getElementById("stem-boxes");
  const two = document.getElementById("two-stem");
  const stems = (info && info.stems) || [];
  if (boxes.children.length) return;  // made once: a later refresh keeps what was picked
  boxes.replaceChildren(...stems.map((stem) => el("label", { class: "stem-box" },
    el("input", { type: "checkbox", value: stem, checked: "" }), ` ${stem}`)));
  two.replaceChildren(...stems.map((stem) => el("option", { value: stem }, stem)));
  if (stems.includes("vocals")) two.value = "vocals";
  const configured = document.querySelector("#format option[value='']");
  if (info && info.format) configured.textContent = `as configured (${info.format})`;
}

// the form fields beside `file`: only what differs from the default, so a server
// that knows no choices still takes a plain upload
function choices() {
  const fields = {};
  if (document.getElementById("mode").value === "two") {
    fields.two_stems = document.getElementById("two-stem").value;
  } else {
    const boxes = [...document.querySelectorAll("#stem-boxes input")];
    const ticked = boxes.filter((box) => box.checked).map((box) => box.value);
    if (boxes.length && !ticked.length) throw new Error("tick at least one stem");
    if (ticked.length < boxes.length) fields.stems = ticked.join(",");
  }
  const format = document.getElementById("format").value;
  if (format && !(info && format === info.format)) fields.format = format;
  return fields;
}

function upload(file) {
  const item = el("li", {}, el("div", { class: "title" }, file.name),
    el("progress", { max: "1", value: "0" }), el("div", { class: "meta" }, "uploading"));
  document.getElementById("uploads").prepend(item);
  const refuse = (text) => {
    item.querySelector(".meta").textContent = text;
    item.querySelector(".meta").className = "meta error";
  };
  let fields;
  try { fields = choices(); } catch (error) { refuse(error.message); return; }
  const request = new XMLHttpRequest();
  request.open("POST", `${API}/jobs`);
  request.upload.onprogress = (event) => {
    if (event.lengthComputable) item.querySelector("progress").value = event.loaded / event.total;
  };
  request.onload = () => {
    let body = {};
    try { body = JSON.parse(request.responseText); } catch (_) { /* not JSON */ }
    if (request.status === 200 || request.status === 202) {
      item.remove();
      jobs.set(body.id, body);
      renderAll();
    } else {
      const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || "");
      refuse(`refused (${request.status}): ${detail || request.statusText}`);
    }
  };
  request.onerror = () => { item.querySelector(".meta").textContent = "upload failed: connection lost"; };
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) form.append(name, value);
  form.append("file", file, file.name);
  request.send(form);
}

function setUpUploads() {
  const input = document.getElementById("file-input");
  input.addEventListener("change", () => { for (const file of input.files) upload(file); input.value = ""; });
  const drop = document.getElementById("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    for (const file of event.dataTransfer.files) upload(file);
  });
  const mode = document.getElementById("mode");
  mode.addEventListener("change", () => {
    const two = mode.value === "two";
    document.getElementById("two-stem-choice").hidden = !two;
    document.getElementById("stem-boxes").hidden = two;
  });
}

// -- live updates

function listen() {
  const live = document.getElementById("live");
  const source = new EventSource(`${API}/events`);
  source.onopen = () => { live.textContent = "connected"; live.className = "on"; refreshSoon(); };
  source.onerror = () => { live.textContent = "reconnecting"; live.className = "off"; };
  source.addEventListener("progress", (event) => {
    const data = JSON.parse(event.data);
    const job = jobs.get(data.job);
    if (job && job.state === "running") { job.progress = data.progress; renderJob(job); }
    else refreshSoon();
    showWorkersSoon();
  });
  for (const name of ["detected", "started", "done", "failed", "retried", "duplicate", "dismissed", "resync"]) {
    source.addEventListener(name, () => {
      refreshSoon();
      showWorkersSoon();
      if (name === "done") showInfo();
    });
  }
}

// for tests and the curious: the mixers by job id, and the page's audio graph
window.stemd = { mixers, graph: () => audioGraph };

setUpUploads();
setUpLibrary();
showInfo();
showWorkers();
refresh();
listen();
