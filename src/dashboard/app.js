// The mini-lambda dashboard: plain JavaScript, no framework, no build step.
//
// Everything it shows comes from the public API, under the base path the server wrote into
// <meta name="base-path">. Views are chosen by the URL hash (#/jobs?status=failed), so every
// view can be bookmarked and the server needs no route per view. Data is only ever put into
// the page as text (textContent, attributes), never as HTML.
"use strict";

const BASE = (document.querySelector('meta[name="base-path"]') || {}).content || "";
const STATUSES = ["pending", "running", "success", "failed", "timeout", "cancelled"];
const TOKEN_KEY = "mini-lambda-token";
const REFRESH_KEY = "mini-lambda-refresh-seconds";
/// Which statuses each bulk action touches (the rest of the filter's jobs are skipped).
const ACTION_STATUSES = {
  retry: ["failed", "timeout", "cancelled"],
  cancel: ["pending", "running"],
  delete: STATUSES,
};
/// With a function filter the counters cannot count: the page reads up to this many jobs.
const BULK_SCAN_CAP = 5000;
const PAGE_SIZE = 50;

// ---------------------------------------------------------------------------
// DOM helpers
// ---------------------------------------------------------------------------

/// An element with attributes and children; strings become text nodes, never markup.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  appendAll(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  appendAll(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = String(value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function appendAll(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

function badge(status) {
  return h("span", { class: `badge status-${status}`, text: status });
}

/// A timestamp in local time as `2026-12-01 17:42:01` (the cell's title keeps the UTC text).
function when(text) {
  if (!text) return "—";
  const date = new Date(text);
  if (Number.isNaN(date.getTime())) return text;
  const two = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())} ` +
    `${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}`;
}

function timeCell(text) {
  return h("td", { class: "time", title: text || "" }, when(text));
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.floor(seconds % 60)} s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  return `${Math.floor(seconds / 86400)} d ${Math.floor((seconds % 86400) / 3600)} h`;
}

function pretty(value) {
  return JSON.stringify(value, null, 2);
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

// ---------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  describe() {
    if (this.status === 403) return `read-only token: ${this.message}`;
    if (this.status === 0) return this.message;
    return `${this.status} ${this.code}: ${this.message}`;
  }
}

function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/// One API call. A 401 opens the token form and rejects; other errors reject with the
/// server's envelope as an ApiError.
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = storedToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(BASE + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (err) {
    throw new ApiError(0, "unreachable", `the server did not answer (${err.message})`);
  }
  if (response.status === 401) {
    const error = await errorOf(response);
    askForToken(token ? "The token was refused. Enter a valid API token." : null);
    throw error;
  }
  if (!response.ok) throw await errorOf(response);
  const data = response.status === 204 ? null : await response.json();
  return { data, headers: response.headers };
}

async function errorOf(response) {
  let code = "error";
  let message = response.statusText || "request failed";
  try {
    const envelope = await response.json();
    if (envelope && envelope.error) {
      code = envelope.error.code || code;
      message = envelope.error.message || message;
    }
  } catch (_) {
    // Not our JSON envelope (a proxy's page, say): keep the status text.
  }
  return new ApiError(response.status, code, message);
}

// ---------------------------------------------------------------------------
// Token form
// ---------------------------------------------------------------------------

let authPending = false;

function askForToken(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  authPending = true;
  const text = document.getElementById("token-message");
  text.textContent = message || "";
  text.hidden = !message;
  document.getElementById("auth").hidden = false;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("token-input").focus();
}

async function submitToken(event) {
  event.preventDefault();
  const input = document.getElementById("token-input");
  const token = input.value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    // Any read checks the token; the list of queues is small.
    await api("GET", "/queues");
  } catch (err) {
    if (err.status !== 401) showNotice(err.describe(), "error");
    input.select();
    return;
  }
  input.value = "";
  authPending = false;
  document.getElementById("auth").hidden = true;
  document.getElementById("sign-out").hidden = false;
  route();
}

// ---------------------------------------------------------------------------
// Notices and dialogs
// ---------------------------------------------------------------------------

let noticeTimer = null;

function showNotice(text, kind) {
  const notice = document.getElementById("notice");
  notice.textContent = text;
  notice.className = kind || "info";
  notice.hidden = false;
  clearTimeout(noticeTimer);
  if (kind !== "error") noticeTimer = setTimeout(() => (notice.hidden = true), 8000);
}

function hideNotice() {
  document.getElementById("notice").hidden = true;
}

/// Shows the dialog; resolves true when confirmed. `body` is a list of nodes.
function confirmDialog({ title, body, confirmLabel, danger, disabled }) {
  const dialog = document.getElementById("dialog");
  document.getElementById("dialog-title").textContent = title;
  appendAll(clear(document.getElementById("dialog-body")), body);
  const confirm = document.getElementById("dialog-confirm");
  confirm.textContent = confirmLabel || "OK";
  confirm.className = danger ? "danger" : "primary";
  confirm.disabled = Boolean(disabled);
  return new Promise((resolve) => {
    const form = document.getElementById("dialog-form");
    const cancel = document.getElementById("dialog-cancel");
    const finish = (answer) => {
      form.removeEventListener("submit", onSubmit);
      cancel.removeEventListener("click", onCancel);
      dialog.removeEventListener("cancel", onCancel);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const onSubmit = (event) => {
      event.preventDefault();
      finish(true);
    };
    const onCancel = (event) => {
      event.preventDefault();
      finish(false);
    };
    form.addEventListener("submit", onSubmit);
    cancel.addEventListener("click", onCancel);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    (disabled ? cancel : confirm).focus();
  });
}

/// Runs an action; shows its outcome, then refreshes the view.
async function act(what, call, done) {
  try {
    const result = await call();
    showNotice(done ? done(result) : `${what}: done`, "ok");
  } catch (err) {
    if (err.status !== 401) showNotice(`${what} failed: ${err.describe()}`, "error");
  }
  refreshNow();
}

// ---------------------------------------------------------------------------
// Routing and refresh
// ---------------------------------------------------------------------------

/// The view of the hash: `#/jobs/ID`, `#/jobs?status=failed`, … (name, id, params).
function parseHash() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query] = hash.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query || "");
  if (parts[0] === "jobs" && parts[1]) return { name: "job", id: parts[1], params };
  const name = ["overview", "jobs", "queues", "functions"].includes(parts[0]) ? parts[0] : "overview";
  return { name, params };
}

function jobsHash(params) {
  const query = new URLSearchParams();
  for (const key of ["status", "queue", "function", "before"]) {
    if (params[key]) query.set(key, params[key]);
  }
  const text = query.toString();
  return text ? `#/jobs?${text}` : "#/jobs";
}

let current = null; // { name, refresh(), generation }
let generation = 0;
let refreshTimer = null;

function route() {
  if (authPending) return;
  hideNotice();
  const { name, id, params } = parseHash();
  for (const link of document.querySelectorAll("#nav a")) {
    const active = link.dataset.view === (name === "job" ? "jobs" : name);
    link.classList.toggle("active", active);
  }
  generation += 1;
  const view = clear(document.getElementById("view"));
  const mount = { overview: overviewView, jobs: jobsView, job: jobView, queues: queuesView, functions: functionsView }[name];
  current = mount(view, params, id, generation);
  refreshNow();
}

/// Whether a refresh started for view `gen` may still draw (the user has not moved on).
function live(gen) {
  return gen === generation;
}

async function refreshNow() {
  clearTimeout(refreshTimer);
  if (current && !authPending) {
    const gen = generation;
    try {
      await current.refresh();
      if (live(gen)) document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      if (live(gen) && err.status !== 401) {
        document.getElementById("updated").textContent = "refresh failed";
      }
    }
  }
  schedule();
}

function schedule() {
  clearTimeout(refreshTimer);
  const seconds = Number(localStorage.getItem(REFRESH_KEY) ?? "5");
  if (seconds > 0 && !document.hidden) refreshTimer = setTimeout(refreshNow, seconds * 1000);
}

/// A box in the view for errors of one part of it.
function errorBox(err) {
  return h("div", { class: "panel error-box", role: "alert" }, err instanceof ApiError ? err.describe() : String(err));
}

// ---------------------------------------------------------------------------
// Overview
// ---------------------------------------------------------------------------

function overviewView(view, _params, _id, gen) {
  const statusCards = h("div", { class: "cards", id: "status-cards" });
  const workers = h("div", { class: "cards", id: "workers" });
  const chart = h("div", { class: "panel chart", id: "finished-chart" });
  const queues = h("div", { id: "overview-queues" });
  const problem = h("div", { id: "stats-error" });
  view.append(
    h("h1", {}, "Overview"),
    problem,
    statusCards,
    h("div", { class: "row" }, workers),
    h("h2", {}, "Jobs finished per minute, last hour"),
    chart,
    h("h2", {}, "Queues"),
    queues,
  );

  async function refresh() {
    let stats;
    try {
      stats = (await api("GET", "/stats")).data;
      clear(problem);
    } catch (err) {
      if (!live(gen) || err.status === 401) throw err;
      clear(problem).append(h("div", { class: "panel error-box", role: "alert" },
        `Statistics are unavailable (GET /stats: ${err.describe()}). Counts below come from GET /queues.`));
      stats = await statsFromQueues();
    }
    if (!live(gen)) return;
    drawStatusCards(clear(statusCards), stats.jobs);
    clear(workers);
    if (stats.workers) {
      workers.append(card("Workers busy", `${stats.workers.busy} / ${stats.workers.total}`, "workers-busy"));
    }
    if (stats.node) workers.append(card("Node", stats.node, "node"));
    clear(chart);
    if (stats.finished_per_minute) chart.append(...finishedChart(stats.finished_per_minute));
    else chart.append(h("p", { class: "muted" }, "No chart without GET /stats."));
    drawQueueSummary(clear(queues), stats.queues);
  }
  return { refresh };
}

/// The overview's numbers without /stats: the same counters, read per queue.
async function statsFromQueues() {
  const queues = (await api("GET", "/queues")).data;
  const jobs = Object.fromEntries(STATUSES.map((status) => [status, 0]));
  for (const queue of queues) for (const status of STATUSES) jobs[status] += queue.counts[status] || 0;
  return { jobs, queues: queues.map((queue) => ({ ...queue, oldest_pending_age_seconds: undefined })) };
}

function card(label, value, id) {
  return h("div", { class: "card stat", id }, h("div", { class: "stat-value", text: value }), h("div", { class: "stat-label", text: label }));
}

function drawStatusCards(container, counts) {
  for (const status of STATUSES) {
    const n = counts[status] || 0;
    const link = h("a", { class: `card stat stat-${status}`, href: jobsHash({ status }), "data-status": status },
      h("div", { class: "stat-value", text: n.toLocaleString() }),
      h("div", { class: "stat-label" }, badge(status)));
    container.append(link);
  }
}

function drawQueueSummary(container, queues) {
  if (!queues || queues.length === 0) {
    container.append(h("p", { class: "panel muted" }, "No queues yet."));
    return;
  }
  const rows = queues.map((queue) => h("tr", { "data-queue": queue.name },
    h("td", {}, h("a", { href: jobsHash({ queue: queue.name }) }, queue.name)),
    h("td", {}, queue.paused ? h("span", { class: "badge paused", text: "paused" }) : h("span", { class: "badge active", text: "active" })),
    STATUSES.map((status) => h("td", { class: "num" }, String(queue.counts[status] || 0))),
    // /stats says 0 when no pending job is due: nothing waits, shown as a dash.
    h("td", { class: "num oldest" }, queue.oldest_pending_age_seconds > 0 ? age(queue.oldest_pending_age_seconds) : "—"),
  ));
  container.append(h("table", { class: "table" },
    h("thead", {}, h("tr", {}, h("th", {}, "Queue"), h("th", {}, "State"),
      STATUSES.map((status) => h("th", { class: "num" }, status)), h("th", { class: "num" }, "Oldest pending"))),
    h("tbody", {}, rows)));
}

/// Stacked bars per minute: succeeded (green) under failed (red), from oldest to newest.
function finishedChart(minutes) {
  const width = 900;
  const height = 220;
  const left = 40;
  const bottom = 24;
  const top = 10;
  const plotWidth = width - left - 10;
  const plotHeight = height - bottom - top;
  const most = Math.max(4, ...minutes.map((m) => (m.succeeded || 0) + (m.failed || 0)));
  // Four grid steps of a whole, round size, so every tick reads as a whole number.
  const scale = 4 * niceStep(most / 4);
  const slot = plotWidth / Math.max(1, minutes.length);
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart-svg", role: "img", "aria-label": "jobs finished per minute" });
  for (const fraction of [0, 0.25, 0.5, 0.75, 1]) {
    const y = top + plotHeight * (1 - fraction);
    svg.append(s("line", { x1: left, x2: width - 10, y1: y, y2: y, class: "grid" }));
    svg.append(s("text", { x: left - 6, y: y + 4, class: "axis", "text-anchor": "end" }, String(Math.round(scale * fraction))));
  }
  minutes.forEach((minute, index) => {
    const x = left + index * slot + 1;
    const barWidth = Math.max(1, slot - 2);
    const succeeded = minute.succeeded || 0;
    const failed = minute.failed || 0;
    const succeededHeight = (succeeded / scale) * plotHeight;
    const failedHeight = (failed / scale) * plotHeight;
    const label = `${new Date(minute.minute).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}: ${succeeded} succeeded, ${failed} failed, ${minute.cancelled || 0} cancelled`;
    const group = s("g", { class: "bar" }, s("title", {}, label));
    group.append(s("rect", { x, width: barWidth, y: top + plotHeight - succeededHeight, height: succeededHeight, class: "succeeded" }));
    group.append(s("rect", { x, width: barWidth, y: top + plotHeight - succeededHeight - failedHeight, height: failedHeight, class: "failed" }));
    svg.append(group);
  });
  const labels = [[0, "-60 min"], [Math.floor(minutes.length / 2), "-30 min"], [minutes.length - 1, "now"]];
  for (const [index, text] of labels) {
    svg.append(s("text", { x: left + index * slot + slot / 2, y: height - 6, class: "axis", "text-anchor": "middle" }, text));
  }
  const totals = minutes.reduce((sum, m) => [sum[0] + (m.succeeded || 0), sum[1] + (m.failed || 0)], [0, 0]);
  const legend = h("div", { class: "legend" },
    h("span", { class: "swatch succeeded" }), `succeeded ${totals[0]}`,
    h("span", { class: "swatch failed" }), `failed ${totals[1]}`);
  return [svg, legend];
}

/// The smallest round whole number (1, 2, 2.5, 5 … times a power of ten) at least `n`.
function niceStep(n) {
  const power = 10 ** Math.floor(Math.log10(Math.max(1, n)));
  const steps = power === 1 ? [1, 2, 3, 4, 5, 6, 8, 10] : [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10];
  for (const step of steps) if (step * power >= n) return step * power;
  return 10 * power;
}

// ---------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------

function jobsView(view, params, _id, gen) {
  const filter = {
    status: params.get("status") || "",
    queue: params.get("queue") || "",
    function: params.get("function") || "",
  };
  const before = params.get("before") || "";
  const apply = (changes) => {
    location.hash = jobsHash({ ...filter, ...changes, before: changes.before || "" });
  };

  const status = h("select", { id: "filter-status", name: "status", onchange: () => apply({ status: status.value }) },
    h("option", { value: "" }, "any status"),
    STATUSES.map((name) => h("option", { value: name, selected: name === filter.status }, name)));
  const queue = h("input", { id: "filter-queue", name: "queue", placeholder: "any queue", value: filter.queue, list: "queue-names", autocomplete: "off" });
  const fn = h("input", { id: "filter-function", name: "function", placeholder: "any function", value: filter.function, list: "function-names", autocomplete: "off" });
  const filters = h("form", { class: "filters", id: "job-filters", onsubmit: (event) => {
    event.preventDefault();
    apply({ queue: queue.value.trim(), function: fn.value.trim() });
  } },
  h("label", {}, "Status", status), h("label", {}, "Queue", queue), h("label", {}, "Function", fn),
  h("button", { type: "submit" }, "Filter"),
  h("a", { href: "#/jobs", class: "button-link" }, "Clear"));

  const jobId = h("input", { id: "job-id", placeholder: "job id", autocomplete: "off", spellcheck: "false" });
  const jump = h("form", { class: "filters", id: "job-jump", onsubmit: (event) => {
    event.preventDefault();
    const id = jobId.value.trim();
    if (id) location.hash = `#/jobs/${encodeURIComponent(id)}`;
  } }, h("label", {}, "Open a job", jobId), h("button", { type: "submit" }, "Open"));

  const hasFilter = Boolean(filter.status || filter.queue || filter.function);
  const bulkButton = (action, label) => h("button", {
    type: "button", id: `bulk-${action}`, class: action === "delete" ? "danger" : "",
    disabled: !hasFilter, title: hasFilter ? "" : "Set a filter first",
    onclick: () => bulkAction(action, filter),
  }, label);
  const bulk = h("div", { class: "bulk" }, h("span", { class: "muted" }, "Everything matching the filter:"),
    bulkButton("retry", "Retry…"), bulkButton("cancel", "Cancel…"), bulkButton("delete", "Delete…"));

  const table = h("div", { id: "jobs-table" });
  const pager = h("div", { class: "pager", id: "pager" });
  view.append(h("h1", {}, "Jobs"), h("div", { class: "toolbar" }, filters, jump), bulk, table, pager,
    h("datalist", { id: "queue-names" }), h("datalist", { id: "function-names" }));
  fillNameLists(gen);

  async function refresh() {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    for (const [key, value] of Object.entries(filter)) if (value) query.set(key, value);
    if (before) query.set("before", before);
    let page;
    try {
      page = await api("GET", `/jobs?${query}`);
    } catch (err) {
      if (live(gen) && err.status !== 401) clear(table).append(errorBox(err));
      throw err;
    }
    if (!live(gen)) return;
    drawJobs(clear(table), page.data, hasFilter);
    const next = nextBefore(page.headers.get("Link"));
    clear(pager);
    if (before) pager.append(h("a", { href: jobsHash(filter), class: "button-link", id: "page-newest" }, "« Newest"));
    if (next) pager.append(h("a", { href: jobsHash({ ...filter, before: next }), class: "button-link", id: "page-older" }, "Older »"));
  }
  return { refresh };
}

async function fillNameLists(gen) {
  try {
    const [queues, functions] = await Promise.all([api("GET", "/queues"), api("GET", "/functions")]);
    if (!live(gen)) return;
    const fill = (id, names) => {
      const list = document.getElementById(id);
      if (list) appendAll(clear(list), names.map((name) => h("option", { value: name })));
    };
    fill("queue-names", queues.data.map((queue) => queue.name));
    fill("function-names", functions.data.map((fn) => fn.name));
  } catch (_) {
    // Suggestions only; the list itself reports errors.
  }
}

/// The `before` cursor of a `Link: </jobs?…&before=ID>; rel="next"` header.
function nextBefore(link) {
  if (!link) return null;
  const match = /[?&]before=([0-9a-fA-F-]+)[^>]*>\s*;\s*rel="next"/.exec(link);
  return match ? match[1] : null;
}

function drawJobs(container, jobs, filtered) {
  if (jobs.length === 0) {
    container.append(h("p", { class: "panel muted", id: "no-jobs" }, filtered ? "No jobs match this filter." : "No jobs yet."));
    return;
  }
  const rows = jobs.map((job) => h("tr", { "data-job-id": job.id, class: "job-row" },
    h("td", { class: "mono" }, h("a", { href: `#/jobs/${job.id}` }, job.id)),
    h("td", {}, badge(job.status)),
    h("td", {}, h("a", { href: jobsHash({ queue: job.queue }) }, job.queue)),
    h("td", {}, job.function ? h("a", { href: jobsHash({ function: job.function }) }, job.function) : h("span", { class: "muted" }, "simulated")),
    timeCell(job.created_at),
    timeCell(job.finished_at),
    h("td", { class: "num" }, `${job.retry_count}/${job.max_retries}`),
    h("td", { class: "error-cell", title: job.error_message || "" }, job.error_message || ""),
  ));
  container.append(h("table", { class: "table" },
    h("thead", {}, h("tr", {}, ["Job", "Status", "Queue", "Function", "Created", "Finished"].map((name) => h("th", {}, name)),
      h("th", { class: "num" }, "Retries"), h("th", {}, "Error"))),
    h("tbody", {}, rows)));
}

function describeFilter(filter) {
  return Object.entries(filter).filter(([, value]) => value).map(([key, value]) => `${key} = ${value}`).join(", ");
}

/// How many jobs a bulk action on `filter` would touch: `{ n, atLeast }`. Without a function
/// filter the queues' counters answer exactly (GET /queues, summed over the matching queues);
/// with one the page reads the matching jobs up to BULK_SCAN_CAP and may only say "at least".
async function countMatching(action, filter) {
  const statuses = ACTION_STATUSES[action].filter((status) => !filter.status || status === filter.status);
  if (statuses.length === 0) return { n: 0, atLeast: false };
  if (!filter.function) {
    const queues = (await api("GET", "/queues")).data;
    let n = 0;
    for (const queue of queues) {
      if (filter.queue && queue.name !== filter.queue) continue;
      for (const status of statuses) n += queue.counts[status] || 0;
    }
    return { n, atLeast: false };
  }
  let n = 0;
  let seen = 0;
  let before = null;
  for (;;) {
    const query = new URLSearchParams({ limit: "1000", function: filter.function });
    if (filter.status) query.set("status", filter.status);
    if (filter.queue) query.set("queue", filter.queue);
    if (before) query.set("before", before);
    const page = await api("GET", `/jobs?${query}`);
    seen += page.data.length;
    n += page.data.filter((job) => statuses.includes(job.status)).length;
    before = nextBefore(page.headers.get("Link"));
    if (!before) return { n, atLeast: false };
    if (seen >= BULK_SCAN_CAP) return { n, atLeast: true };
  }
}

const ACTION_WORDS = {
  retry: { verb: "Retry", done: "Retried", note: "Only failed, timed-out and cancelled jobs are retried." },
  cancel: { verb: "Cancel", done: "Cancelled", note: "Only pending and running jobs are cancelled." },
  delete: { verb: "Delete", done: "Deleted", note: "Jobs are deleted with their attempts, whatever their status. This cannot be undone." },
};

async function bulkAction(action, filter) {
  const words = ACTION_WORDS[action];
  const body = {};
  for (const [key, value] of Object.entries(filter)) if (value) body[key] = value;
  let count;
  try {
    count = await countMatching(action, filter);
  } catch (err) {
    if (err.status !== 401) showNotice(`Cannot count the matching jobs: ${err.describe()}`, "error");
    return;
  }
  const amount = `${count.atLeast ? "at least " : ""}${plural(count.n, "job")}`;
  const confirmed = await confirmDialog({
    title: `${words.verb} ${amount}?`,
    body: [
      h("p", {}, "Filter: ", h("strong", {}, describeFilter(filter))),
      h("p", { id: "bulk-count", "data-count": count.n, "data-at-least": count.atLeast }, `This will ${action} ${amount}.`),
      h("p", { class: "muted" }, words.note),
      count.atLeast ? h("p", { class: "muted" }, `Counted the first ${BULK_SCAN_CAP} jobs of this function; more match.`) : null,
    ],
    confirmLabel: `${words.verb} ${amount}`,
    danger: action !== "retry",
    disabled: count.n === 0,
  });
  if (!confirmed) return;
  act(`${words.verb} matching jobs`, () => api("POST", `/jobs/${action}`, body),
    (result) => `${words.done} ${plural(result.data.affected, "job")}.`);
}

// ---------------------------------------------------------------------------
// One job
// ---------------------------------------------------------------------------

function jobView(view, _params, id, gen) {
  const head = h("div", { class: "job-head" });
  const fields = h("div", { id: "job-fields" });
  const attempts = h("div", { id: "attempts" });
  view.append(h("p", {}, h("a", { href: "#/jobs" }, "« Jobs")), head, fields, h("h2", {}, "Attempts"), attempts);

  async function refresh() {
    let job;
    let tries;
    try {
      [job, tries] = await Promise.all([
        api("GET", `/jobs/${encodeURIComponent(id)}`).then((r) => r.data),
        api("GET", `/jobs/${encodeURIComponent(id)}/attempts`).then((r) => r.data),
      ]);
    } catch (err) {
      if (live(gen) && err.status !== 401) {
        clear(head).append(h("h1", { class: "mono" }, id));
        clear(fields).append(errorBox(err));
        clear(attempts);
      }
      throw err;
    }
    if (!live(gen)) return;
    drawJobHead(clear(head), job);
    drawJobFields(clear(fields), job);
    drawAttempts(clear(attempts), tries);
  }
  return { refresh };
}

function drawJobHead(container, job) {
  const retryable = ["failed", "timeout", "cancelled"].includes(job.status);
  const cancellable = ["pending", "running"].includes(job.status);
  container.append(
    h("h1", {}, "Job ", h("span", { class: "mono", id: "job-id-title" }, job.id), " ", h("span", { id: "job-status" }, badge(job.status))),
    h("div", { class: "actions" },
      h("button", { type: "button", id: "job-retry", class: "primary", disabled: !retryable,
        onclick: () => act("Retry", () => api("POST", `/jobs/${job.id}/retry`), () => "The job is queued again.") }, "Retry"),
      h("button", { type: "button", id: "job-cancel", disabled: !cancellable,
        onclick: () => act("Cancel", () => api("POST", `/jobs/${job.id}/cancel`), (r) => (r.data.status === "cancelled" ? "The job is cancelled." : "The job is being stopped.")) }, "Cancel"),
      h("button", { type: "button", id: "job-delete", class: "danger", onclick: () => deleteJob(job) }, "Delete")));
}

async function deleteJob(job) {
  const confirmed = await confirmDialog({
    title: "Delete this job?",
    body: [h("p", {}, "The job ", h("span", { class: "mono" }, job.id), " and its attempts are deleted. This cannot be undone.")],
    confirmLabel: "Delete",
    danger: true,
  });
  if (!confirmed) return;
  try {
    await api("DELETE", `/jobs/${job.id}`);
    location.hash = "#/jobs";
    showNotice("The job is deleted.", "ok");
  } catch (err) {
    if (err.status !== 401) showNotice(`Delete failed: ${err.describe()}`, "error");
  }
}

function drawJobFields(container, job) {
  const rows = [
    ["Status", badge(job.status)],
    ["Queue", h("a", { href: jobsHash({ queue: job.queue }) }, job.queue)],
    ["Function", job.function || h("span", { class: "muted" }, "none (simulated)")],
    ["Priority", String(job.priority)],
    ["Created", when(job.created_at)],
    ["Due", when(job.run_at)],
    ["Started", when(job.started_at)],
    ["Finished", when(job.finished_at)],
    ["Retries", `${job.retry_count} of ${job.max_retries}`],
    ["Timeout", `${job.timeout_seconds} s`],
  ];
  if (job.traceparent) rows.push(["Trace", h("span", { class: "mono", id: "job-traceparent" }, job.traceparent)]);
  if (job.error_message) rows.push(["Error", h("span", { class: "error", id: "job-error" }, job.error_message)]);
  container.append(
    h("dl", { class: "fields panel" }, rows.map(([key, value]) => [h("dt", {}, key), h("dd", { "data-field": key.toLowerCase() }, value)])),
    h("div", { class: "two" },
      h("section", {}, h("h2", {}, "Payload"), h("pre", { class: "json", id: "job-payload" }, pretty(job.payload))),
      h("section", {}, h("h2", {}, "Result"), h("pre", { class: "json", id: "job-result" }, pretty(job.result)))));
}

function drawAttempts(container, attempts) {
  if (attempts.length === 0) {
    container.append(h("p", { class: "panel muted", id: "no-attempts" }, "No attempts yet."));
    return;
  }
  const rows = attempts.map((attempt) => h("tr", { class: "attempt-row", "data-attempt": attempt.attempt },
    h("td", { class: "num" }, String(attempt.attempt)),
    h("td", {}, badge(attempt.status)),
    timeCell(attempt.started_at),
    h("td", { class: "num" }, attempt.duration_ms === null ? "—" : `${attempt.duration_ms} ms`),
    h("td", { class: "num exit-code" }, attempt.exit_code === null ? "—" : String(attempt.exit_code)),
    h("td", { class: "mono" }, attempt.node || "—"),
    h("td", { class: "error-cell", title: attempt.error_message || "" }, attempt.error_message || ""),
    h("td", { class: "stderr" }, attempt.stderr_tail ? h("details", {}, h("summary", {}, `${attempt.stderr_tail.length} bytes`), h("pre", {}, attempt.stderr_tail)) : "—"),
  ));
  container.append(h("table", { class: "table", id: "attempts-table" },
    h("thead", {}, h("tr", {}, h("th", { class: "num" }, "#"), h("th", {}, "Status"), h("th", {}, "Started"), h("th", { class: "num" }, "Duration"),
      h("th", { class: "num" }, "Exit"), ["Node", "Error", "Stderr (tail)"].map((name) => h("th", {}, name)))),
    h("tbody", {}, rows)));
}

// ---------------------------------------------------------------------------
// Queues
// ---------------------------------------------------------------------------

function queuesView(view, _params, _id, gen) {
  const table = h("div", { id: "queues-table" });
  view.append(h("h1", {}, "Queues"), table);

  async function refresh() {
    let queues;
    try {
      queues = (await api("GET", "/queues")).data;
    } catch (err) {
      if (live(gen) && err.status !== 401) clear(table).append(errorBox(err));
      throw err;
    }
    if (!live(gen)) return;
    clear(table);
    if (queues.length === 0) {
      table.append(h("p", { class: "panel muted" }, "No queues yet: a queue appears with its first job."));
      return;
    }
    const rows = queues.map((queue) => h("tr", { "data-queue": queue.name, class: "queue-row" },
      h("td", {}, h("a", { href: jobsHash({ queue: queue.name }) }, queue.name)),
      h("td", { class: "queue-state" }, queue.paused ? h("span", { class: "badge paused", text: "paused" }) : h("span", { class: "badge active", text: "active" })),
      STATUSES.map((status) => h("td", { class: `num count-${status}` }, String(queue.counts[status] || 0))),
      h("td", { class: "num concurrency" }, queue.concurrency === null ? "no limit" : String(queue.concurrency)),
      h("td", { class: "num" }, queue.rate_per_second === null ? "no limit" : `${queue.rate_per_second}/s`),
      h("td", { class: "actions" },
        queue.paused
          ? h("button", { type: "button", class: "resume", onclick: () => act(`Resume ${queue.name}`, () => api("POST", `/queues/${encodeURIComponent(queue.name)}/resume`), () => `Queue ${queue.name} resumed.`) }, "Resume")
          : h("button", { type: "button", class: "pause", onclick: () => act(`Pause ${queue.name}`, () => api("POST", `/queues/${encodeURIComponent(queue.name)}/pause`), () => `Queue ${queue.name} paused.`) }, "Pause"),
        h("button", { type: "button", class: "edit-limit", onclick: () => editConcurrency(queue) }, "Limit…")),
    ));
    table.append(h("table", { class: "table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Queue"), h("th", {}, "State"), STATUSES.map((status) => h("th", { class: "num" }, status)),
        h("th", { class: "num" }, "Concurrency"), h("th", { class: "num" }, "Rate"), h("th", {}, ""))),
      h("tbody", {}, rows)));
  }
  return { refresh };
}

async function editConcurrency(queue) {
  const input = h("input", { id: "concurrency-input", type: "number", min: "1", max: "10000", step: "1",
    value: queue.concurrency === null ? "" : String(queue.concurrency), placeholder: "no limit" });
  const confirmed = await confirmDialog({
    title: `Concurrency of ${queue.name}`,
    body: [h("label", { class: "stacked" }, "Most jobs of this queue running at once, on all nodes (empty: no limit)", input)],
    confirmLabel: "Save",
  });
  if (!confirmed) return;
  const text = input.value.trim();
  const concurrency = text === "" ? null : Number(text);
  act(`Set the concurrency of ${queue.name}`, () => api("PUT", `/queues/${encodeURIComponent(queue.name)}`, { concurrency }),
    (result) => `Queue ${queue.name}: concurrency ${result.data.concurrency === null ? "unlimited" : result.data.concurrency}.`);
}

// ---------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------

function functionsView(view, _params, _id, gen) {
  const table = h("div", { id: "functions-table" });
  view.append(h("h1", {}, "Functions"), table);

  async function refresh() {
    let functions;
    try {
      functions = (await api("GET", "/functions")).data;
    } catch (err) {
      if (live(gen) && err.status !== 401) clear(table).append(errorBox(err));
      throw err;
    }
    if (!live(gen)) return;
    clear(table);
    if (functions.length === 0) {
      table.append(h("p", { class: "panel muted" }, "No functions: put executables in FUNCTIONS_DIR."));
      return;
    }
    const rows = functions.map((fn) => h("tr", { "data-function": fn.name, class: "function-row" },
      h("td", { class: "mono" }, fn.name),
      h("td", { class: "num" }, `${fn.size.toLocaleString()} B`),
      timeCell(fn.modified_at),
      h("td", {}, fn.schema_error ? h("span", { class: "badge status-failed", title: fn.schema_error, text: "unusable" })
        : fn.has_schema ? h("span", { class: "badge status-success", text: "yes" }) : h("span", { class: "muted" }, "no")),
      h("td", { class: "error-cell" }, fn.schema_error || ""),
      h("td", {}, h("a", { href: jobsHash({ function: fn.name }) }, "jobs »")),
    ));
    table.append(h("table", { class: "table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", { class: "num" }, "Size"), ["Modified", "Schema", "Schema problem", ""].map((name) => h("th", {}, name)))),
      h("tbody", {}, rows)));
  }
  return { refresh };
}

// ---------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------

function start() {
  const interval = document.getElementById("refresh-interval");
  interval.value = localStorage.getItem(REFRESH_KEY) ?? "5";
  interval.addEventListener("change", () => {
    localStorage.setItem(REFRESH_KEY, interval.value);
    schedule();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) clearTimeout(refreshTimer);
    else refreshNow();
  });
  document.getElementById("token-form").addEventListener("submit", submitToken);
  const signOut = document.getElementById("sign-out");
  signOut.hidden = !storedToken();
  signOut.addEventListener("click", () => {
    askForToken(null);
  });
  window.addEventListener("hashchange", route);
  route();
}

start();
