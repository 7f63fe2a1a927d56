// stemd's page: plain JavaScript, no build step and nothing from a CDN (it must
// work on an offline NAS). State comes from /api/v1, changes from /api/v1/events.
"use strict";

const API = "/api/v1";
const jobs = new Map();      // id -> job as the API shows it
const rows = new Map();      // id -> <li>
let refreshTimer = null;

async function getJSON(url, options) {
  const response = await fetch(url, Object.assign({ credentials: "same-origin" }, options));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
    throw new Error(`${response.status}: ${detail}`);
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

function title(job) { return job.source.split("/").pop(); }

// -- rendering: one <li> per job, kept across updates (a playing stem keeps playing)

function renderJob(job) {
  let row = rows.get(job.id);
  if (!row) {
    row = el("li", { class: "job", "data-id": String(job.id) });
    rows.set(job.id, row);
  }
  if (row.dataset.state !== job.state) {
    row.dataset.state = job.state;
    row.replaceChildren(...content(job));
  }
  const bar = row.querySelector("progress");
  if (bar) bar.value = job.progress;
  const percent = row.querySelector(".percent");
  if (percent) percent.textContent = `${Math.round(job.progress * 100)} %`;
  const position = row.querySelector(".position");
  if (position) position.textContent = job.queue_position ? `#${job.queue_position} in the queue` : "";
  const section = document.getElementById(job.state);
  if (section && row.parentElement !== section) section.prepend(row);
}

function content(job) {
  const head = el("div", { class: "title" }, title(job));
  const meta = el("div", { class: "meta" }, job.source);
  if (job.state === "running") {
    return [head, meta, el("progress", { max: "1", value: String(job.progress) }),
      el("span", { class: "percent meta" })];
  }
  if (job.state === "queued") {
    const parts = [head, meta, el("span", { class: "position meta" })];
    if (job.error) parts.push(el("div", { class: "error" }, `waiting to retry: ${job.error}`));
    return parts;
  }
  if (job.state === "failed") {
    return [head, meta, el("div", { class: "error reason" }, job.error || "failed"),
      el("button", { class: "retry", type: "button", onclick: () => retry(job.id) }, "Retry")];
  }
  // done: a player and a download link per stem, and the zip
  const stems = el("div", { class: "stems" });
  for (const [stem, url] of Object.entries(job.stems)) {
    stems.append(el("span", {}, stem), el("audio", { controls: "", preload: "metadata", src: url }),
      el("a", { href: url, download: "" }, "download"));
  }
  const links = job.zip ? el("a", { class: "zip", href: job.zip }, "all stems (zip)") : "";
  return [head, meta, stems, links];
}

function renderAll() {
  for (const job of [...jobs.values()].sort((a, b) => a.id - b.id)) renderJob(job);
  for (const [id, row] of rows) {
    if (!jobs.has(id)) { row.remove(); rows.delete(id); }
  }
}

// -- data

async function refresh() {
  refreshTimer = null;
  try {
    const body = await getJSON(`${API}/jobs?limit=100`);
    jobs.clear();
    for (const job of body.jobs) jobs.set(job.id, job);
    renderAll();
  } catch (error) {
    console.warn("stemd: cannot list the jobs:", error);
  }
}

function refreshSoon() {
  if (refreshTimer === null) refreshTimer = setTimeout(refresh, 150);
}

async function showInfo() {
  try {
    const info = await getJSON(`${API}/info`);
    document.getElementById("model").textContent = info.model;
    document.getElementById("device").textContent = info.device;
    document.getElementById("free").textContent = size(info.outbox_free_bytes);
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
    const job = await getJSON(`${API}/jobs/${id}/retry`, { method: "POST" });
    jobs.set(job.id, job);
    renderJob(job);
  } catch (error) {
    alert(`Retry failed: ${error.message}`);
  }
}

// -- uploads: multipart, with the browser's own progress events

function upload(file) {
  const item = el("li", {}, el("div", { class: "title" }, file.name),
    el("progress", { max: "1", value: "0" }), el("div", { class: "meta" }, "uploading"));
  document.getElementById("uploads").prepend(item);
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
      renderJob(body);
    } else {
      item.querySelector(".meta").textContent = `refused (${request.status}): ${body.detail || request.statusText}`;
      item.querySelector(".meta").className = "meta error";
    }
  };
  request.onerror = () => { item.querySelector(".meta").textContent = "upload failed: connection lost"; };
  const form = new FormData();
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
  for (const name of ["detected", "started", "done", "failed", "retried", "duplicate", "resync"]) {
    source.addEventListener(name, () => {
      refreshSoon();
      showWorkersSoon();
      if (name === "done") showInfo();
    });
  }
}

setUpUploads();
showInfo();
showWorkers();
refresh();
listen();
