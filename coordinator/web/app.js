// The Stylefarm dashboard: one page, four views chosen by the URL's hash —
//   #/                 the farm: workers, queue, jobs done, failures
//   #/collections      every collection you may see
//   #/c/ID[/p/N]       a collection's grid (page N), live
//   #/j/ID             one job: image, loss curve, attempts, files
//   #/submit           a new collection from photos and paintings
// Everything comes from the coordinator's JSON API (/api/…), whose bodies
// are farm.proto's messages as canonical JSON (the proto's field names,
// every field present, enums by name, 64-bit integers as strings): this
// page reads only fields the contract defines. Live changes arrive as
// server-sent events. No framework and no build step: the coordinator
// serves this file as it is.
"use strict";

const main = document.getElementById("main");
// What the current view must undo when the hash changes (timers, streams).
let teardown = [];

// ----------------------------------------------------------- helpers --

// h("td", {class: "x", onclick: f}, child, "text") → an element.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function show(...nodes) {
  main.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined && n !== false));
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Calls the API; a 401 sends the user to the sign-in form.
async function api(path, options = {}) {
  const init = { credentials: "same-origin", ...options };
  if (options.json !== undefined) {
    init.method = init.method || "POST";
    init.headers = { "Content-Type": "application/json" };
    init.body = JSON.stringify(options.json);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (_) {
    body = { error: text };
  }
  if (!r.ok) {
    if (r.status === 401) signIn(body && body.error);
    throw new ApiError(r.status, (body && body.error) || r.statusText);
  }
  return contract(body);
}

// With localStorage "stylefarm.strict" set (the browser tests set it),
// every message read from the API reports a read of a field it does not
// have in window.stylefarmUnknownFields: the page must read only what the
// contract sends.
const strict = localStorage.getItem("stylefarm.strict") === "1";
window.stylefarmUnknownFields = [];
function contract(value, path = "") {
  if (!strict || value === null || typeof value !== "object") return value;
  return new Proxy(value, {
    get(target, prop, receiver) {
      if (typeof prop === "string" && !(prop in target) && prop !== "then" && prop !== "toJSON") window.stylefarmUnknownFields.push(`${path}.${prop}`);
      const v = Reflect.get(target, prop, receiver);
      return typeof prop === "string" && v !== null && typeof v === "object" ? contract(v, `${path}.${prop}`) : v;
    },
  });
}

// A job's or worker's state as the page shows it: "QUEUED" → "queued".
const stateOf = (x) => String(x.state).toLowerCase();

function failed(e) {
  return h("p", { class: "error", role: "alert" }, e.message || String(e));
}

function duration(seconds) {
  if (!isFinite(seconds) || seconds <= 0) return "";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function ago(unix) {
  const s = Date.now() / 1000 - unix;
  return s < 1 ? "now" : `${duration(s)} ago`;
}

// A byte count (a number, or a uint64 as the contract's JSON sends it: a
// string) as people read it.
function bytes(count) {
  const n = Number(count);
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1 << 30) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  return `${(n / (1 << 30)).toFixed(1)} GiB`;
}

function countsLine(c) {
  return ["queued", "running", "succeeded", "failed", "cancelled"]
    .filter((k) => c[k] > 0)
    .map((k) => `${c[k]} ${k}`)
    .join(" · ") || "no jobs";
}

// "1 photo", "3 photos".
const plural = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

// A moment as a person reads it: "5 Dec 2026, 11:20" (their own zone).
function when(unix) {
  if (!unix) return "";
  return new Date(unix * 1000).toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

// "5s ago" that counts on by itself: every element with data-ago (unix
// seconds) is rewritten each second, on every view.
function agoSpan(unix, prefix = "", attrs = {}) {
  return h("span", { ...attrs, dataset: { ago: unix, prefix } }, prefix + ago(unix));
}
setInterval(() => {
  for (const el of document.querySelectorAll("[data-ago]")) el.textContent = el.dataset.prefix + ago(Number(el.dataset.ago));
}, 1000);

// A <time> with the date, and how long ago in grey.
function whenCell(unix) {
  if (!unix) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: new Date(unix * 1000).toISOString() }, when(unix), agoSpan(unix, " · ", { class: "muted" }));
}

// An id in full, with a button that copies it.
function copyable(id) {
  const button = h("button", { type: "button", class: "copy", title: "copy the whole id", "aria-label": `copy id ${id}`, onclick: async () => {
      try {
        await navigator.clipboard.writeText(id);
      } catch (_) {
        const area = h("textarea", {}, id);
        document.body.append(area);
        area.select();
        document.execCommand("copy");
        area.remove();
      }
      button.textContent = "copied";
      setTimeout(() => (button.textContent = "copy"), 1500);
    } }, "copy");
  return h("span", { class: "id" }, h("code", {}, id), button);
}


// A bar of `done` of `total` (its width set through the CSSOM: the page's
// content security policy refuses style attributes).
function progressBar(done, total) {
  const fill = h("span", {});
  fill.style.width = `${total ? (100 * done) / total : 0}%`;
  return h("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": total, "aria-valuenow": done, "aria-label": `${done} of ${total} jobs ended` }, fill);
}

// A collection's state in one word, as the coordinator gives it
// (Collection.state; the rule lives there, for every client alike).
function collectionState(c) {
  return (c.state || "").replace(/^COLLECTION_STATE_/, "").toLowerCase() || "unknown";
}

function every(ms, f) {
  const t = setInterval(f, ms);
  teardown.push(() => clearInterval(t));
}

// ----------------------------------------------------------- sign-in --

function signIn(why) {
  show(
    h("section", { class: "card narrow" },
      h("h1", {}, "Sign in"),
      h("p", {}, "This farm asks for a user token (the one farmctl takes as --token). The browser keeps it in a cookie only this page can send."),
      why ? h("p", { class: "error" }, why) : null,
      h("form", { id: "sign-in-form", onsubmit: async (ev) => {
          ev.preventDefault();
          const token = document.getElementById("token").value.trim();
          try {
            await api("/api/session", { json: { token } });
            route();
          } catch (e) {
            if (e.status !== 401) show(failed(e));
          }
        } },
        h("input", { id: "token", type: "password", autocomplete: "current-password", placeholder: "token", required: true }),
        h("button", { id: "sign-in", type: "submit" }, "Sign in"))));
}

async function who() {
  const s = await api("/api/session");
  const el = document.getElementById("who");
  el.replaceChildren();
  if (s.auth_required && s.signed_in) {
    el.append(s.admin ? "admin " : "signed in ",
      h("button", { class: "link", onclick: async () => { await api("/api/session", { method: "DELETE" }); route(); } }, "sign out"));
  }
  return s;
}

// -------------------------------------------------------------- farm --

async function farmView() {
  const box = h("div", {});
  show(h("h1", {}, "Farm"), box);
  teardown.push(() => offline(false));
  // Workers shown: those with this label (a click on a label sets it).
  let only = "";
  const draw = async () => {
    let f;
    try {
      f = await api("/api/farm");
    } catch (e) {
      // Unreachable: the banner says so and the page keeps what it showed,
      // reading again every few seconds; an answer that refuses is shown.
      if (e instanceof ApiError) box.replaceChildren(failed(e));
      else offline(true);
      return;
    }
    offline(false);
    const j = f.jobs;
    const pace = new Map(f.pace.map((p) => [p.worker_id, p.iterations_per_second]));
    const stat = (id, label, value) => h("div", { class: "stat" }, h("span", { id, class: "value" }, value), h("span", { class: "label" }, label));
    const act = (w, what) => async () => {
      try {
        await api(`/api/workers/${encodeURIComponent(w.worker_id)}/${what}`, { json: {} });
      } catch (e) {
        box.prepend(failed(e));
        return;
      }
      await draw();
    };
    // online · lost · stopped · quarantined, and whether it drains.
    const stateCell = (w) => {
      const state = stateOf(w);
      const label = state === "online" && w.draining ? (w.current_job ? "draining" : "drained") : state;
      const badge = { online: "succeeded", lost: "failed", quarantined: "failed", stopped: "cancelled" }[state] || "queued";
      return h("td", { "data-label": "state" },
        h("span", { class: `badge ${w.draining ? "queued" : badge} worker-state`, title: w.quarantine_reason || "" }, label),
        w.quarantined ? h("div", { class: "muted reason" }, w.quarantine_reason) : (w.strikes ? h("div", { class: "muted" }, `${w.strikes} strikes`) : null));
    };
    const actions = (w) => {
      const gone = stateOf(w) === "lost" || stateOf(w) === "stopped";
      return h("td", { class: "actions" },
        stateOf(w) === "online" && !w.draining ? h("button", { class: "drain", title: "finish the current job, lease no more", onclick: act(w, "drain") }, "Drain") : null,
        w.draining || w.quarantined ? h("button", { class: "resume", title: "lease again", onclick: act(w, "resume") }, "Resume") : null,
        gone && !w.current_job ? h("button", { class: "forget", title: "take it off the list", onclick: act(w, "forget") }, "Forget") : null);
    };
    const pick = (label) => () => { only = only === label ? "" : label; draw(); };
    const labelsCell = (w) => h("td", { "data-label": "labels" },
      (w.labels || []).map((l) => h("button", { class: `label${l === only ? " on" : ""}`, title: `show only workers with ${l}`, onclick: pick(l) }, l)));
    const shown = f.workers.filter((w) => !only || (w.labels || []).includes(only));
    const rows = shown.map((w) =>
      h("tr", { class: `worker ${stateOf(w)}`, "data-worker": w.worker_id, "data-name": w.name },
        h("td", { "data-label": "name" }, w.name),
        h("td", { "data-label": "device" }, w.device, w.device_name ? h("span", { class: "muted" }, ` ${w.device_name}`) : null),
        labelsCell(w),
        h("td", { "data-label": "job" }, w.current_job ? h("a", { href: `#/j/${w.current_job}`, title: w.current_job }, w.current_job.slice(0, 8)) : h("span", { class: "muted" }, "idle")),
        h("td", { class: "num", "data-label": "iterations/s" }, pace.has(w.worker_id) ? pace.get(w.worker_id).toFixed(2) : ""),
        h("td", { "data-label": "last heard" }, agoSpan(w.last_seen_unix)),
        stateCell(w),
        actions(w)));
    box.replaceChildren(
      h("div", { class: "stats" },
        stat("queue", "queued", j.queued || 0),
        stat("running", "running", j.running || 0),
        stat("done-hour", "done in the last hour", f.done_last_hour),
        stat("failed-total", "failed jobs", j.failed || 0),
        stat("stored", "stored", bytes(f.stored_bytes))),
      // (max_running and max_queued are proto3 optional: absent when no
      // quota applies, so asked with `in`, never read blind.)
      f.users && f.users.length ? h("h2", {}, "Users with work") : null,
      f.users && f.users.length ? h("table", { id: "users", class: "cards" },
        h("thead", {}, h("tr", {}, ["user", "running", "share", "queued", "weight"].map((t) => h("th", {}, t)))),
        h("tbody", {}, f.users.map((u) => h("tr", { class: u.you ? "you" : "" },
          h("td", { "data-label": "user" }, u.user || "everyone", u.you ? h("span", { class: "muted" }, " (you)") : null),
          h("td", { class: "num", "data-label": "running" }, u.running, "max_running" in u ? h("span", { class: "muted" }, ` of at most ${u.max_running}`) : null),
          h("td", { class: "num", "data-label": "share" }, (u.share || 0).toFixed(1)),
          h("td", { class: "num", "data-label": "queued" }, u.queued || 0, "max_queued" in u ? h("span", { class: "muted" }, ` of at most ${u.max_queued}`) : null),
          h("td", { class: "num", "data-label": "weight" }, u.weight))))) : null,
      h("h2", {}, "Workers"),
      only ? h("p", { id: "worker-filter" }, `Workers with ${only} (${shown.length} of ${f.workers.length}) · `, h("button", { class: "link", onclick: pick(only) }, "show all")) : null,
      f.workers.length === 0 ? h("p", { class: "muted" }, "No worker has registered.") :
        h("table", { id: "workers", class: "cards" },
          h("thead", {}, h("tr", {}, ["name", "device", "labels", "job", "iterations/s", "last heard", "state", ""].map((t) => h("th", {}, t)))),
          h("tbody", {}, rows)),
      h("h2", {}, "Failures in the last day, by cause"),
      f.failures_last_day.length === 0 ? h("p", { id: "failures", class: "muted" }, "None.") :
        h("table", { id: "failures" }, h("tbody", {}, f.failures_last_day.map((x) => h("tr", {}, h("td", {}, x.cause), h("td", { class: "num" }, x.count))))));
  };
  await draw();
  every(3000, draw);
}

// ------------------------------------------------------- collections --

// Every collection the user may see, filtered by state, searched by
// name or id, sorted; read again every five seconds while shown.
async function collectionsView() {
  const saved = JSON.parse(sessionStorage.getItem("stylefarm.collections") || "{}");
  const search = h("input", { id: "search", type: "search", placeholder: "name or id", "aria-label": "search collections by name or id", value: saved.q || "" });
  const state = h("select", { id: "state-filter", "aria-label": "show collections that are" },
    [["", "every state"], ["active", "queued or running"], ["failed", "with failed jobs"], ["succeeded", "all succeeded"], ["cancelled", "with cancelled jobs"]]
      .map(([v, t]) => h("option", { value: v, selected: saved.state === v }, t)));
  const sort = h("select", { id: "sort", "aria-label": "sort collections by" },
    [["newest", "newest first"], ["oldest", "oldest first"], ["name", "name"], ["state", "state"]].map(([v, t]) => h("option", { value: v, selected: saved.sort === v }, t)));
  const summary = h("span", { id: "collections-summary", class: "muted" });
  const table = h("tbody", {});
  const more = h("button", { id: "more-collections", type: "button", onclick: () => { limit += 100; load(); } }, "More");
  const box = h("div", {});
  show(h("h1", {}, "Collections"), h("div", { class: "toolbar" }, search, state, sort, summary), box);
  let limit = 100;
  let all = [];
  let more_left = false;
  let stored = 0;
  const order = { running: 0, queued: 1, failed: 2, cancelled: 3, succeeded: 4 };
  const draw = () => {
    sessionStorage.setItem("stylefarm.collections", JSON.stringify({ q: search.value, state: state.value, sort: sort.value }));
    const q = search.value.trim().toLowerCase();
    const wanted = (c) => {
      const k = c.counts;
      if (q && !c.name.toLowerCase().includes(q) && !c.collection_id.startsWith(q)) return false;
      if (state.value === "active") return k.queued + k.running > 0;
      if (state.value === "failed") return k.failed > 0;
      if (state.value === "cancelled") return k.cancelled > 0;
      if (state.value === "succeeded") return collectionState(c) === "succeeded";
      return true;
    };
    const by = {
      newest: (a, b) => b.created_unix - a.created_unix,
      oldest: (a, b) => a.created_unix - b.created_unix,
      name: (a, b) => a.name.localeCompare(b.name),
      state: (a, b) => order[collectionState(a)] - order[collectionState(b)] || b.created_unix - a.created_unix,
    }[sort.value];
    const shown = all.filter(wanted).sort(by);
    summary.textContent = (shown.length === all.length ? plural(all.length, "collection") : `${shown.length} of ${plural(all.length, "collection")}`) +
      ` · ${bytes(stored)} stored in all`;
    table.replaceChildren(...shown.map((c) => {
      const k = c.counts;
      const total = k.queued + k.running + k.succeeded + k.failed + k.cancelled;
      const done = k.succeeded + k.failed + k.cancelled;
      return h("tr", { "data-id": c.collection_id, "data-state": collectionState(c) },
        h("td", { "data-label": "name" }, h("a", { class: "collection-link", href: `#/c/${c.collection_id}`, title: c.collection_id }, c.name),
          h("div", { class: "muted small" }, h("code", {}, c.collection_id.slice(0, 8)))),
        h("td", { "data-label": "shape" }, `${plural(c.contents, "photo")} × ${plural(c.styles, "painting")} × ${plural(c.variants, "variant")}`),
        h("td", { "data-label": "jobs" },
          h("span", { class: `badge ${collectionState(c)}` }, collectionState(c)), " ", countsLine(k),
          progressBar(done, total)),
        h("td", { class: "num stored", "data-label": "stored" }, bytes(c.stored_bytes)),
        h("td", { "data-label": "submitted" }, whenCell(c.created_unix)));
    }));
    more.hidden = !more_left;
    if (!all.length) box.replaceChildren(h("p", { class: "muted" }, "No collections yet. ", h("a", { href: "#/submit" }, "Submit one.")));
    else if (!box.contains(table)) box.replaceChildren(h("table", { id: "collections", class: "cards" },
      h("thead", {}, h("tr", {}, ["name", "shape", "jobs", "stored", "submitted"].map((t) => h("th", {}, t)))), table), more);
  };
  const load = async () => {
    try {
      const got = [];
      let token = "";
      do {
        const r = await api(`/api/collections?page_size=100&page_token=${encodeURIComponent(token)}`);
        got.push(...r.collections);
        stored = r.stored_bytes;
        token = r.next_page_token;
      } while (token && got.length < limit);
      all = got;
      more_left = !!token;
      offline(false);
      draw();
    } catch (e) {
      if (e instanceof ApiError) box.replaceChildren(failed(e));
      else offline(true);
    }
  };
  teardown.push(() => offline(false));
  for (const el of [search, state, sort]) el.addEventListener("input", draw);
  await load();
  every(5000, load);
}

// --------------------------------------------------------- collection --

// While a page's live stream is down: a banner says so, and the running
// cells' remaining times are hidden (nothing counts down on a stale page).
function offline(down) {
  let banner = document.getElementById("offline");
  if (down && !banner) {
    banner = h("div", { id: "offline", class: "banner", role: "status" },
      "Lost contact with the coordinator; reconnecting. What this page shows may be out of date.");
    document.body.prepend(banner);
  } else if (!down && banner) {
    banner.remove();
  }
  document.body.classList.toggle("stale", down);
}

// A grid cell's content for one job.
function fillCell(td, job) {
  const prev = td._job;
  td._job = job;
  const state = stateOf(job);
  const p = job.progress || { iteration: 0, iterations: 0, eta_seconds: 0 };
  td.dataset.state = state;
  const name = `${job.content_name} × ${job.style_name}${td.dataset.variantLabel ? ` (${td.dataset.variantLabel})` : ""}`;
  td.title = `${name}${job.error ? "\n" + job.error : ""}`;
  td.querySelector(".frame").setAttribute("aria-label", `${name}: ${state}${state === "running" ? ` ${p.iteration} of ${p.iterations}` : ""}`);
  // A new preview may exist whenever the render moved or ended; a
  // finished job in cells larger than the previews shows its image.
  const large = state === "succeeded" && cellSize() > PREVIEW_SIDE;
  const version = `${job.attempts}-${p.iteration}-${state}${large ? "-full" : ""}`;
  if (job.attempts > 0 && (!prev || td.dataset.version !== version)) {
    td.dataset.version = version;
    const src = large ? `/api/jobs/${job.job_id}/files/output.png` : `/api/jobs/${job.job_id}/preview?v=${encodeURIComponent(version)}`;
    const next = h("img", { class: "thumb", alt: name, src });
    // Keep the old picture until the new one has loaded.
    next.addEventListener("load", () => {
      const old = td.querySelector("img.thumb");
      if (old && old !== next) old.replaceWith(next);
      else if (!old) td.querySelector(".frame").replaceChildren(next);
      td.dataset.preview = "yes";
    });
    // No preview yet (404): the cell keeps what it shows.
  }
  // Without a picture, the frame says what became of the job.
  if (!td.querySelector("img.thumb")) {
    // Running: "starting" until its first report, then how far it is.
    const mark = state !== "running" ? state : p.iterations > 0 ? `running ${Math.floor((100 * p.iteration) / p.iterations)}%` : "starting";
    td.querySelector(".frame").replaceChildren(h("span", { class: `mark ${state}` }, mark,
      state === "failed" && job.error ? h("small", {}, job.error) : null));
  }
  const pct = p.iterations > 0 ? Math.min(100, (100 * p.iteration) / p.iterations) : (state === "succeeded" ? 100 : 0);
  td.querySelector(".bar > span").style.width = `${pct}%`;
  td.querySelector(".state").textContent = state === "running" ? `${p.iteration}/${p.iterations}` : state;
  td.querySelector(".eta").textContent = state === "running" ? duration(p.eta_seconds) : "";
}

// The side of the previews workers write (job_files::PREVIEW_SIDE).
const PREVIEW_SIDE = 160;

// The grid's cell size: the size control's, remembered; larger on wide
// screens to start with.
function cellSize() {
  return Number(localStorage.getItem("stylefarm.cell")) || (innerWidth >= 1600 ? 240 : innerWidth < 600 ? 100 : 150);
}

function emptyCell(job, variantLabel) {
  const td = h("td", { class: "cell", dataset: { job: job.job_id, variantLabel: variantLabel || "" } },
    h("a", { href: `#/j/${job.job_id}`, class: "frame" }),
    h("div", { class: "bar" }, h("span", {})),
    h("div", { class: "meta" }, h("span", { class: "state" }), h("span", { class: "eta" })));
  fillCell(td, job);
  return td;
}

async function collectionView(id, pageNo) {
  let head;
  try {
    head = await api(`/api/collections/${id}`);
  } catch (e) {
    show(failed(e));
    return;
  }
  const cols = head.columns.length || 1;
  const rowsPerPage = Math.max(1, Math.min(200, Math.floor(600 / cols)));
  const pages = Math.max(1, Math.ceil(head.contents / rowsPerPage));
  const page = Math.min(Math.max(0, pageNo), pages - 1);
  const counts = h("span", { id: "counts" }, countsLine(head.counts));
  const stored = h("span", { id: "stored" }, `${bytes(head.stored_bytes)} stored`);
  // Buttons that cannot act are disabled, and say why.
  const setButtons = (c) => {
    const k = c.counts;
    const open = k.queued + k.running;
    cancel.disabled = open === 0;
    cancel.title = open === 0 ? "nothing to cancel: every job has ended" : `cancel the ${plural(open, "unfinished job")}`;
    retryFailed.disabled = !(k.failed > 0);
    retryFailed.title = k.failed > 0 ? `queue the ${plural(k.failed, "failed job")} again` : "no job has failed";
    pause.textContent = c.paused ? "Resume" : "Pause";
    pause.title = c.paused ? "let its queued jobs start again" : "start none of its queued jobs until resumed (running ones finish)";
    pause.dataset.paused = c.paused ? "yes" : "no";
    if (document.activeElement !== priority) priority.value = c.priority;
    remove.title = open ? `cancel the ${plural(open, "unfinished job")}, then delete the collection and everything it stored` : "delete the collection and everything it stored";
    counts.textContent = countsLine(k);
    stored.textContent = `${bytes(c.stored_bytes)} stored`;
  };
  // Pause, resume or a new priority: an UpdateCollectionRequest.
  const update = async (changes) => {
    try {
      const c = await api(`/api/collections/${id}`, { method: "PATCH", json: changes });
      head.counts = c.counts;
      setButtons(c);
      message.replaceChildren();
    } catch (e) {
      message.replaceChildren(failed(e));
    }
  };
  const pause = h("button", { id: "pause-collection", onclick: () => update({ paused: pause.dataset.paused !== "yes" }) }, "Pause");
  const priority = h("input", { id: "priority", type: "number", step: 1, value: head.priority, "aria-label": "priority (higher runs first)" });
  const setPriority = h("button", { id: "set-priority", title: "order its queued jobs against other collections'", onclick: () => update({ priority: Number(priority.value) }) }, "Set");
  const remove = h("button", { id: "delete-collection", class: "danger", onclick: async () => {
      const k = head.counts;
      const open = k.queued + k.running;
      if (!confirm(open ? `Cancel the unfinished jobs of ${head.name} and delete it with everything it stored?` : `Delete ${head.name} and everything it stored?`)) return;
      try {
        await api(`/api/collections/${id}?cancel=${open > 0}`, { method: "DELETE" });
        location.hash = "#/collections";
      } catch (e) {
        message.replaceChildren(failed(e));
      }
    } }, "Delete");
  const live = h("span", { id: "live", class: "muted" }, "connecting…");
  const message = h("div", {});
  const cancel = h("button", { id: "cancel-collection", class: "danger", onclick: async () => {
      if (!confirm(`Cancel every unfinished job of ${head.name}?`)) return;
      try {
        await api(`/api/collections/${id}/cancel`, { json: {} });
      } catch (e) {
        message.replaceChildren(failed(e));
      }
    } }, "Cancel collection");
  const retryFailed = h("button", { id: "retry-failed", onclick: async () => {
      try {
        const c = await api(`/api/collections/${id}/retry-failed`, { json: {} });
        head.counts = c.counts;
        setButtons(c);
      } catch (e) {
        message.replaceChildren(failed(e));
      }
    } }, "Retry failed jobs");
  const pager = pages > 1 ? h("div", { class: "pager" },
    h("a", { id: "prev-page", href: `#/c/${id}/p/${Math.max(0, page - 1)}`, class: page === 0 ? "disabled" : "" }, "‹ previous"),
    h("span", { id: "page-info" }, ` rows ${page * rowsPerPage + 1}–${Math.min(head.contents, (page + 1) * rowsPerPage)} of ${head.contents} `),
    h("a", { id: "next-page", href: `#/c/${id}/p/${Math.min(pages - 1, page + 1)}`, class: page === pages - 1 ? "disabled" : "" }, "next ›")) : null;
  setButtons(head);
  const cells = new Map();
  // Each variant's label, as the coordinator gives it (Column.label).
  const labels = [];
  for (const c of head.columns) labels[c.variant_index] = c.label;
  const table = h("table", { id: "grid", "aria-label": `${head.name}: photos by painting` },
    h("thead", {}, h("tr", {}, h("th", {}, ""), head.columns.map((c) =>
      h("th", { class: "col", scope: "col" }, c.style_name, labels[c.variant_index] ? h("div", { class: "muted variant" }, labels[c.variant_index]) : null)))));
  const body = h("tbody", {});
  table.append(body);
  // Which states stand out: the others are dimmed.
  const showing = h("select", { id: "show", "aria-label": "show jobs that are" },
    ["every job", "queued", "running", "succeeded", "failed", "cancelled"].map((t, k) => h("option", { value: k ? t : "" }, k ? `${t} only` : t)));
  // The same jobs as a list: searched by photo or painting, sorted.
  const search = h("input", { id: "job-search", type: "search", placeholder: "photo or painting", "aria-label": "search jobs by photo or painting" });
  const sortJobs = h("select", { id: "job-sort", "aria-label": "sort jobs by" },
    [["grid", "grid order"], ["state", "state"], ["progress", "progress"], ["name", "photo, painting"]].map(([v, t]) => h("option", { value: v }, t)));
  const view = h("select", { id: "view", "aria-label": "show the jobs as" }, h("option", { value: "grid" }, "grid"), h("option", { value: "list" }, "list"));
  const listBody = h("tbody", {});
  const list = h("table", { id: "job-list", class: "cards", hidden: true },
    h("thead", {}, h("tr", {}, ["photo", "painting", "variant", "state", "progress", "attempts", "why"].map((t) => h("th", {}, t)))), listBody);
  const stateOrder = { failed: 0, running: 1, queued: 2, cancelled: 3, succeeded: 4 };
  const drawList = () => {
    const q = search.value.trim().toLowerCase();
    const rows = [...cells.values()].map((td, k) => ({ job: td._job, k, label: td.dataset.variantLabel }))
      .filter(({ job }) => (!showing.value || stateOf(job) === showing.value) && (!q || job.content_name.toLowerCase().includes(q) || job.style_name.toLowerCase().includes(q)));
    const progress = (j) => (j.progress && j.progress.iterations ? j.progress.iteration / j.progress.iterations : 0);
    const by = {
      grid: (a, b) => a.k - b.k,
      state: (a, b) => stateOrder[stateOf(a.job)] - stateOrder[stateOf(b.job)] || a.k - b.k,
      progress: (a, b) => progress(b.job) - progress(a.job) || a.k - b.k,
      name: (a, b) => a.job.content_name.localeCompare(b.job.content_name) || a.job.style_name.localeCompare(b.job.style_name) || a.k - b.k,
    }[sortJobs.value];
    listBody.replaceChildren(...rows.sort(by).map(({ job, label }) => h("tr", { "data-job": job.job_id, "data-state": stateOf(job) },
      h("td", { "data-label": "photo" }, h("a", { href: `#/j/${job.job_id}` }, job.content_name)),
      h("td", { "data-label": "painting" }, job.style_name),
      h("td", { "data-label": "variant" }, label || `v${job.variant_index}`),
      h("td", { "data-label": "state" }, h("span", { class: `badge ${stateOf(job)}` }, stateOf(job))),
      h("td", { "data-label": "progress" }, job.progress ? `${job.progress.iteration}/${job.progress.iterations}` : ""),
      h("td", { class: "num", "data-label": "attempts" }, job.attempts),
      h("td", { "data-label": "why" }, job.error))));
  };
  const applyShow = () => {
    for (const td of cells.values()) td.classList.toggle("dim", !!showing.value && td.dataset.state !== showing.value);
    if (!list.hidden) drawList();
  };
  showing.addEventListener("input", applyShow);
  search.addEventListener("input", drawList);
  sortJobs.addEventListener("input", drawList);
  view.addEventListener("input", () => {
    const asList = view.value === "list";
    list.hidden = !asList;
    table.closest(".scroll").hidden = asList;
    for (const el of [search, sortJobs]) el.closest("label").hidden = !asList;
    zoom.closest("label").hidden = asList;
    if (asList) drawList();
  });
  // Cell size: remembered; larger on wide screens to start with.
  const zoom = h("input", { id: "zoom", type: "range", min: 80, max: 480, step: 20, "aria-label": "cell size", value: cellSize() });
  const applyZoom = () => {
    const before = cellSize();
    table.style.setProperty("--cell", `${zoom.value}px`);
    localStorage.setItem("stylefarm.cell", zoom.value);
    // Crossing the previews' size: finished cells change picture.
    if ((before > PREVIEW_SIDE) !== (Number(zoom.value) > PREVIEW_SIDE)) for (const td of cells.values()) fillCell(td, td._job);
  };
  zoom.addEventListener("input", applyZoom);
  applyZoom();
  // Arrow keys move between cells; Enter opens one.
  table.addEventListener("keydown", (ev) => {
    const moves = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
    const td = ev.target.closest && ev.target.closest("td.cell");
    if (!td || !moves[ev.key]) return;
    const tr = td.parentElement;
    const [dr, dc] = moves[ev.key];
    const rows = [...body.children];
    const row = rows[rows.indexOf(tr) + dr];
    const next = row && row.children[[...tr.children].indexOf(td) + dc];
    if (next && next.classList.contains("cell")) {
      next.querySelector("a.frame").focus();
      ev.preventDefault();
    }
  });
  show(
    h("div", { class: "title" },
      h("h1", {}, head.name),
      h("span", { class: "muted" }, ` ${plural(head.contents, "photo")} × ${plural(head.styles, "painting")} × ${plural(head.variants, "variant")} · submitted `, whenCell(head.created_unix))),
    h("p", { class: "muted small" }, "id ", copyable(id), " · ", stored),
    h("div", { class: "toolbar" }, pause, h("label", { class: "inline" }, h("span", {}, "priority"), priority), setPriority, h("span", { class: "spacer" }), remove),
    h("div", { class: "toolbar" }, counts, " ", live, h("span", { class: "spacer" }),
      h("label", { class: "inline" }, h("span", {}, "as"), view),
      h("label", { class: "inline" }, h("span", {}, "show"), showing),
      h("label", { class: "inline", hidden: true }, h("span", {}, "find"), search),
      h("label", { class: "inline", hidden: true }, h("span", {}, "sort"), sortJobs),
      h("label", { class: "inline" }, h("span", {}, "size"), zoom),
      h("a", { id: "zip", class: "button", href: `/api/collections/${id}/zip`, download: true }, "Download zip"), retryFailed, cancel),
    message, pager, h("div", { class: "scroll" }, table), list, pager ? pager.cloneNode(true) : null);

  const load = async () => {
    const r = await api(`/api/collections/${id}/grid?from_row=${page * rowsPerPage}&rows=${rowsPerPage}`);
    const rows = new Map();
    for (const job of r.jobs) {
      if (!rows.has(job.content_index)) rows.set(job.content_index, { name: job.content_name, jobs: [] });
      rows.get(job.content_index).jobs.push(job);
    }
    body.replaceChildren();
    cells.clear();
    for (const [, row] of [...rows.entries()].sort((a, b) => a[0] - b[0])) {
      const tr = h("tr", {}, h("th", { class: "row", scope: "row" }, row.name));
      for (const job of row.jobs) {
        const td = emptyCell(job, labels[job.variant_index]);
        cells.set(job.job_id, td);
        tr.append(td);
      }
      body.append(tr);
    }
    applyShow();
  };
  // Subscribe first, then read: no change between them is missed.
  const events = new EventSource(`/api/collections/${id}/events`);
  teardown.push(() => events.close());
  let countsDue = null;
  const refreshCounts = (delay = 1000) => {
    if (countsDue) return;
    countsDue = setTimeout(async () => {
      countsDue = null;
      try {
        const c = await api(`/api/collections/${id}`);
        head.counts = c.counts;
        setButtons(c);
      } catch (_) { /* the next change tries again */ }
    }, delay);
  };
  teardown.push(() => countsDue && clearTimeout(countsDue));
  // Every (re)connection says hello; after the first, whatever changed
  // while the stream was down is read again, the grid and the counts.
  let connected = false;
  let everConnected = false;
  events.addEventListener("hello", () => {
    live.textContent = "live";
    offline(false);
    connected = true;
    if (everConnected) {
      load().catch((e) => message.replaceChildren(failed(e)));
      refreshCounts(0);
    }
    everConnected = true;
  });
  events.addEventListener("changes", (ev) => {
    // A JobChanges: only what can change is set; the cell keeps its place
    // and names.
    const { jobs } = contract(JSON.parse(ev.data), "JobChanges");
    for (const change of jobs) {
      const td = cells.get(change.job_id);
      if (td) {
        const was = td._job;
        fillCell(td, { ...was, state: change.state, attempts: change.attempts, progress: change.progress, worker: change.worker, error: change.error,
          output_key: change.output_key, started_from: change.started_from, failures: change.failures, requeues: change.requeues });
      }
    }
    applyShow();
    refreshCounts();
  });
  events.addEventListener("resync", () => load().catch((e) => message.replaceChildren(failed(e))));
  events.addEventListener("error", () => {
    if (!connected && everConnected) return;
    connected = false;
    live.textContent = "reconnecting…";
    offline(true);
  });
  try {
    await load();
  } catch (e) {
    message.replaceChildren(failed(e));
  }
}

// --------------------------------------------------------------- job --

// The loss log as a chart: each term as it enters the total (α·content,
// β·style, TV weight·TV) and the total, against iteration, log scale —
// the same curves as the render's losses.svg and TensorBoard. The legend
// (line samples) sits under the plot; hovering (or focusing and using
// the arrow keys) shows the values at an iteration; an attempt that
// resumed from a checkpoint is marked where it resumed.
function lossChart(records, params, attempts) {
  const p = params || {};
  const weight = (k, d) => (typeof p[k] === "number" && isFinite(p[k]) ? p[k] : d);
  const [a, b, t] = [weight("alpha", 1), weight("beta", 1), weight("tv_weight", 0)];
  const series = [
    { key: "content", label: "α·content", value: (r) => a * r.content },
    { key: "style", label: "β·style", value: (r) => b * r.style },
    { key: "tv", label: "TV weight·TV", value: (r) => t * r.tv },
    { key: "total", label: "total", value: (r) => r.total },
  ].filter((s) => records.some((r) => s.value(r) > 0 && isFinite(s.value(r))));
  const box = h("div", { class: "chart" });
  const W = Math.max(300, Math.min(720, main.clientWidth - 40)), H = 320, L = 64, R = 14, T = 12, B = 46;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("id", "loss-curve");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("width", W);
  svg.setAttribute("role", "img");
  const add = (tag, attrs, text, parent = svg) => {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    parent.append(el);
    return el;
  };
  box.append(svg);
  if (!records.length || !series.length) {
    svg.setAttribute("aria-label", "no losses yet");
    add("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, "no losses yet");
    return box;
  }
  svg.setAttribute("aria-label", `losses over ${records.length} evaluations, log scale`);
  const values = records.flatMap((r) => series.map((s) => s.value(r))).filter((v) => v > 0 && isFinite(v));
  let lo = Math.floor(Math.log10(Math.min(...values)));
  let hi = Math.ceil(Math.log10(Math.max(...values)));
  if (hi === lo) hi = lo + 1;
  const first = records[0].iteration, last = Math.max(records[records.length - 1].iteration, first + 1);
  const x = (i) => L + ((W - L - R) * (i - first)) / (last - first);
  const y = (v) => T + ((H - T - B) * (hi - Math.log10(v))) / (hi - lo);
  // y: every decade, every few when there are many; 2 and 5 between when
  // there are few (4 to 6 ticks a side, or near it).
  const decades = hi - lo;
  const step = Math.max(1, Math.ceil(decades / 5));
  const yTicks = [];
  for (let d = lo; d <= hi; d += step) {
    yTicks.push(10 ** d);
    if (decades <= 2) for (const m of [2, 5]) if (d < hi) yTicks.push(m * 10 ** d);
  }
  const label = (v) => (v >= 0.01 && v < 1e5 ? String(Number(v.toPrecision(3))) : v.toExponential(0).replace("e+", "e"));
  for (const v of yTicks) {
    add("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "gridline" });
    add("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", class: "axis ytick" }, label(v));
  }
  // x: a 1, 2 or 5 step giving 4 to 6 ticks.
  const raw = (last - first) / 5;
  const mag = 10 ** Math.floor(Math.log10(Math.max(raw, 1)));
  const xStep = Math.max(1, [1, 2, 5, 10].map((m) => m * mag).find((s) => (last - first) / s <= 6));
  for (let i = Math.ceil(first / xStep) * xStep; i <= last; i += xStep) {
    add("line", { x1: x(i), x2: x(i), y1: T, y2: H - B, class: "gridline" });
    add("text", { x: x(i), y: H - B + 16, "text-anchor": "middle", class: "axis xtick" }, i);
  }
  add("text", { x: L + (W - L - R) / 2, y: H - 8, "text-anchor": "middle", class: "axis-title" }, "iteration");
  add("text", { x: 14, y: T + (H - T - B) / 2, "text-anchor": "middle", class: "axis-title", transform: `rotate(-90 14 ${T + (H - T - B) / 2})` }, "loss (log scale)");
  // Where an attempt resumed from a checkpoint.
  for (const at of attempts || []) {
    if (!(at.resumed_from > first && at.resumed_from <= last)) continue;
    add("line", { x1: x(at.resumed_from), x2: x(at.resumed_from), y1: T, y2: H - B, class: "resumed" });
    add("text", { x: x(at.resumed_from) + 4, y: T + 12, class: "axis resumed-label" }, `attempt ${at.attempt} resumed`);
  }
  for (const s of series) {
    const pts = records.filter((r) => s.value(r) > 0 && isFinite(s.value(r))).map((r) => `${x(r.iteration).toFixed(1)},${y(s.value(r)).toFixed(1)}`);
    add("polyline", { points: pts.join(" "), class: `series series-${s.key}`, "data-series": s.key });
  }
  // Hover: a rule, a dot on each line and the values at that iteration.
  const rule = add("line", { y1: T, y2: H - B, class: "hover-rule", visibility: "hidden" });
  const dots = series.map((s) => add("circle", { r: 3.5, class: `dot series-${s.key}`, visibility: "hidden" }));
  const tip = h("div", { class: "tip", id: "loss-tip", role: "status", hidden: true });
  box.append(tip);
  let at = records.length - 1;
  const point = (k) => {
    at = Math.max(0, Math.min(records.length - 1, k));
    const r = records[at];
    rule.setAttribute("x1", x(r.iteration));
    rule.setAttribute("x2", x(r.iteration));
    rule.setAttribute("visibility", "visible");
    series.forEach((s, n) => {
      const v = s.value(r);
      const ok = v > 0 && isFinite(v);
      dots[n].setAttribute("visibility", ok ? "visible" : "hidden");
      if (ok) {
        dots[n].setAttribute("cx", x(r.iteration));
        dots[n].setAttribute("cy", y(v));
      }
    });
    tip.replaceChildren(h("strong", {}, `iteration ${r.iteration}`), ...series.map((s) => h("div", {}, `${s.label}: ${Number(s.value(r).toPrecision(4))}`)));
    tip.hidden = false;
    tip.style.left = `${Math.min(x(r.iteration) + 12, W - 170)}px`;
  };
  const hide = () => {
    rule.setAttribute("visibility", "hidden");
    dots.forEach((d) => d.setAttribute("visibility", "hidden"));
    tip.hidden = true;
  };
  svg.addEventListener("mousemove", (ev) => {
    const box = svg.getBoundingClientRect();
    const i = first + ((((ev.clientX - box.left) * W) / box.width - L) / (W - L - R)) * (last - first);
    let best = 0;
    for (let k = 1; k < records.length; k++) if (Math.abs(records[k].iteration - i) < Math.abs(records[best].iteration - i)) best = k;
    point(best);
  });
  svg.addEventListener("mouseleave", hide);
  svg.setAttribute("tabindex", "0");
  svg.addEventListener("focus", () => point(at));
  svg.addEventListener("blur", hide);
  svg.addEventListener("keydown", (ev) => {
    if (ev.key === "ArrowLeft" || ev.key === "ArrowRight") {
      point(at + (ev.key === "ArrowLeft" ? -1 : 1));
      ev.preventDefault();
    }
  });
  // The legend: a sample of each line, outside the plot.
  box.append(h("ul", { class: "legend", id: "loss-legend" }, series.map((s) => {
    const sample = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    sample.setAttribute("width", 28);
    sample.setAttribute("height", 10);
    add("line", { x1: 1, x2: 27, y1: 5, y2: 5, class: `series series-${s.key}` }, undefined, sample);
    return h("li", { "data-series": s.key }, sample, s.label);
  })));
  return box;
}

// The full-size image over the page; Escape or a click closes it.
function lightbox(src, alt) {
  const dialog = h("dialog", { id: "lightbox", "aria-label": alt, onclick: () => dialog.close(), onclose: () => dialog.remove() },
    h("img", { src, alt }), h("p", { class: "muted" }, "Click or press Escape to close. ", h("a", { href: src, target: "_blank", onclick: (ev) => ev.stopPropagation() }, "Open the image on its own")));
  document.body.append(dialog);
  dialog.showModal();
  return dialog;
}

// A value as a parameter field shows it, and back: JSON where it reads as
// JSON (numbers, lists), else the text (adam, avg).
const paramText = (v) => (typeof v === "object" ? JSON.stringify(v) : String(v));
function paramValue(text) {
  try {
    return JSON.parse(text);
  } catch (_) {
    return text;
  }
}

// The job's parameters; with `retry`, each an editable field and a
// "Retry with changes" button that sends the fields changed ("Render
// again with changes" for a job that succeeded).
function paramsTable(params, retry, succeeded = false) {
  if (!params) return h("p", { class: "muted" }, "Unknown.");
  const fields = [];
  const rows = Object.entries(params).map(([k, v]) => {
    if (!retry) return h("tr", {}, h("th", {}, k), h("td", {}, paramText(v)));
    const input = h("input", { name: k, value: paramText(v), "aria-label": k, spellcheck: "false" });
    fields.push([k, input, paramText(v)]);
    return h("tr", {}, h("th", {}, h("label", {}, k)), h("td", {}, input));
  });
  const table = h("table", { id: "params" }, h("tbody", {}, rows));
  if (!retry) return table;
  const send = h("button", { id: "retry-with-changes", type: "submit" }, succeeded ? "Render again with changes" : "Retry with changes");
  return h("form", { id: "retry-form", onsubmit: (ev) => {
    ev.preventDefault();
    const changes = {};
    for (const [k, input, was] of fields) if (input.value.trim() !== was) changes[k] = paramValue(input.value.trim());
    retry(changes);
  } }, h("p", { class: "muted" }, succeeded ?
    "Change any value and render again: the job starts from the beginning with the new values; its earlier attempts stay listed, and the image the last one made stays in storage." :
    "Change any value and retry: the job starts again from the beginning with the new values; its earlier attempts stay listed."), table, send);
}

async function jobView(id) {
  const box = h("div", { id: "job-detail" });
  show(box);
  let events = null;
  const draw = async () => {
    // A JobDetail and its latest attempt's ListJobFilesResponse.
    let d, listed;
    try {
      [d, listed] = await Promise.all([api(`/api/jobs/${id}`), api(`/api/jobs/${id}/files`)]);
    } catch (e) {
      box.replaceChildren(failed(e));
      return;
    }
    const j = d.job;
    const state = stateOf(j);
    const p = j.progress || { iteration: 0, iterations: 0, eta_seconds: 0 };
    let params = null;
    try {
      params = JSON.parse(d.params_json);
    } catch (_) { /* shown as unknown */ }
    const files = listed.files;
    const has = (name) => files.some((f) => f.name === name);
    let records = [];
    if (has("losses.jsonl")) {
      try {
        const text = await (await fetch(`/api/jobs/${id}/files/losses.jsonl`, { credentials: "same-origin" })).text();
        records = text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
      } catch (_) { /* drawn as "no losses yet" */ }
    }
    // What the worker logged during the latest attempt (worker.log).
    let log = "";
    if (has("worker.log")) {
      try {
        log = await (await fetch(`/api/jobs/${id}/files/worker.log`, { credentials: "same-origin" })).text();
      } catch (_) { /* shown as "no log yet" */ }
    }
    const image = has("output.png") ? `/api/jobs/${id}/files/output.png` : (has("preview.png") ? `/api/jobs/${id}/preview?v=${p.iteration}` : null);
    const message = h("div", {});
    const act = (what) => async () => {
      try {
        await api(`/api/jobs/${id}/${what}`, { json: {} });
        await draw();
      } catch (e) {
        message.replaceChildren(failed(e));
      }
    };
    const ended = ["succeeded", "failed", "cancelled"].includes(state);
    // Retry with the parameters whose fields were changed.
    const retryWithChanges = async (changes) => {
      try {
        await api(`/api/jobs/${id}/retry`, { json: { changes_json: JSON.stringify(changes) } });
        await draw();
      } catch (e) {
        message.replaceChildren(failed(e));
      }
    };
    const variant = params ? Object.entries(params).filter(([k]) => ["alpha", "beta", "iters", "optimizer"].includes(k)).map(([k, v]) => `${k}=${v}`).join(", ") : "";
    const title = `${j.content_name} × ${j.style_name}`;
    box.replaceChildren(
      h("p", {}, h("a", { href: `#/c/${j.collection_id}` }, "‹ collection")),
      h("h1", {}, title, d.variant_label ? h("span", { class: "muted" }, ` · ${d.variant_label}`) : null),
      h("p", { class: "muted small" }, variant, variant ? " · " : "", "id ", copyable(j.job_id)),
      h("div", { class: "toolbar" },
        h("span", { id: "job-state", class: `badge ${state}` }, state),
        state === "running" ? ` iteration ${p.iteration} of ${p.iterations}, ${duration(p.eta_seconds)} to go` : "",
        d.waiting ? h("span", { id: "job-waiting", class: "muted" }, ` ${d.waiting}`) : "",
        j.error ? h("span", { class: "error" }, ` ${j.error}`) : "",
        h("span", { class: "spacer" }),
        !ended ? h("button", { id: "cancel-job", class: "danger", onclick: act("cancel") }, "Cancel job") : null,
        state === "failed" || state === "cancelled" ? h("button", { id: "retry-job", onclick: act("retry") }, "Retry job") : null),
      message,
      h("div", { class: "detail" },
        h("figure", {}, image ? h("button", { type: "button", class: "image-button", title: "show at full size", onclick: () => lightbox(image, title) },
          h("img", { id: "job-image", src: image, alt: `${title}, the render` })) : h("p", { class: "muted" }, "No image yet.")),
        h("div", { class: "curve" }, h("h2", {}, "Losses"), lossChart(records, params, d.attempts))),
      h("h2", {}, "Parameters"),
      paramsTable(params, ended ? retryWithChanges : null, state === "succeeded"),
      h("h2", {}, "Attempts"),
      h("table", { id: "attempts", class: "cards" },
        h("thead", {}, h("tr", {}, ["#", "worker", "started", "took", "resumed from", "outcome"].map((t) => h("th", {}, t)))),
        h("tbody", {}, d.attempts.map((a) => h("tr", {},
          h("td", { "data-label": "attempt" }, a.attempt), h("td", { "data-label": "worker", class: "worker", title: a.worker }, a.worker_name || a.worker),
          h("td", { "data-label": "started" }, h("time", { datetime: new Date(a.started_unix * 1000).toISOString() }, when(a.started_unix))),
          h("td", { "data-label": "took" }, a.ended_unix ? duration(a.ended_unix - a.started_unix) || "under a second" : `running for ${duration(Date.now() / 1000 - a.started_unix) || "a moment"}`),
          h("td", { class: "num", "data-label": "resumed from" }, a.resumed_from ? `iteration ${a.resumed_from}` : "the start"),
          h("td", { "data-label": "outcome" }, a.outcome))))),
      h("h2", {}, "Log of the latest attempt"),
      log ? h("pre", { id: "worker-log", class: "log" }, log) : h("p", { class: "muted" }, "No log yet (the worker writes it at each checkpoint and when the attempt ends)."),
      h("h2", {}, "Files of the latest attempt"),
      files.length === 0 ? h("p", { class: "muted" }, "None yet.") :
        h("ul", { id: "files" }, files.map((f) => h("li", {},
          h("a", { href: `/api/jobs/${id}/files/${f.name}?download=true`, download: f.name.split("/").pop() }, f.name),
          h("span", { class: "muted" }, ` ${bytes(Number(f.size_bytes))}`)))));
    if (!events && j.collection_id) {
      // Redraw when this job changes (at most once a second).
      events = new EventSource(`/api/collections/${j.collection_id}/events`);
      teardown.push(() => events.close());
      let due = null;
      let everConnected = false;
      events.addEventListener("hello", () => {
        offline(false);
        if (everConnected) draw();
        everConnected = true;
      });
      events.addEventListener("error", () => offline(true));
      events.addEventListener("changes", (ev) => {
        if (due || !contract(JSON.parse(ev.data), "JobChanges").jobs.some((c) => c.job_id === id)) return;
        due = setTimeout(() => { due = null; draw(); }, 1000);
      });
    }
  };
  await draw();
}

// ------------------------------------------------------------ submit --

function readBase64(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(String(r.result).replace(/^data:[^,]*,/, ""));
    r.onerror = () => reject(new Error(`${file.name}: ${r.error}`));
    r.readAsDataURL(file);
  });
}

// A file's name as the farm takes it: its stem, unsafe characters as "_".
function stem(name) {
  const s = name.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9._-]/g, "_").replace(/^\.+/, "");
  return s.slice(0, 100) || "image";
}

// "alpha=0.01, preset=fast" → {alpha: 0.01, preset: "fast"}
function parseVariant(line) {
  const v = {};
  for (const pair of line.split(",").map((p) => p.trim()).filter(Boolean)) {
    const at = pair.indexOf("=");
    if (at < 1) throw new Error(`variant "${line}": "${pair}" is not key=value`);
    const key = pair.slice(0, at).trim(), raw = pair.slice(at + 1).trim();
    let value;
    try { value = JSON.parse(raw); } catch (_) { value = raw; }
    v[key] = value;
  }
  return v;
}

function submitView() {
  const picked = { contents: [], styles: [] };
  const field = (label, input) => h("label", {}, h("span", {}, label), input);
  const num = (id, value, attrs = {}) => h("input", { id, type: "number", value, ...attrs });
  const count = h("strong", { id: "job-count" }, "0 jobs");
  const error = h("div", { id: "submit-error" });
  const variants = h("textarea", { id: "variants", rows: 3, placeholder: "one per line, e.g.  alpha=0.01\nor  preset=recipe, iters=300" });
  const blend = h("input", { id: "blend", type: "checkbox" });
  const lists = { contents: h("ul", { class: "files" }), styles: h("ul", { class: "files" }) };
  const variantLines = () => variants.value.split("\n").map((l) => l.trim()).filter(Boolean);
  const recount = () => {
    const columns = blend.checked ? Math.min(1, picked.styles.length) : picked.styles.length;
    const n = picked.contents.length * columns * Math.max(1, variantLines().length);
    count.textContent = `${n} job${n === 1 ? "" : "s"}`;
    for (const role of ["contents", "styles"]) lists[role].replaceChildren(...picked[role].map((f) => h("li", {}, stem(f.name), h("span", { class: "muted" }, ` ${bytes(f.size)}`))));
  };
  const take = (role, files) => {
    for (const f of files) if (!picked[role].some((g) => g.name === f.name && g.size === f.size)) picked[role].push(f);
    recount();
  };
  const drop = (role, label) => {
    const input = h("input", { id: role, type: "file", accept: "image/*", multiple: true, onchange: (ev) => take(role, ev.target.files) });
    const zone = h("div", { id: `drop-${role}`, class: "drop",
      ondragover: (ev) => { ev.preventDefault(); zone.classList.add("over"); },
      ondragleave: () => zone.classList.remove("over"),
      ondrop: (ev) => { ev.preventDefault(); zone.classList.remove("over"); take(role, ev.dataTransfer.files); } },
      h("strong", {}, label), h("span", { class: "muted" }, " drop images here or "), input, lists[role]);
    return zone;
  };
  const preset = h("select", { id: "preset" }, h("option", { value: "fast" }, "fast (L-BFGS, about a fifth of the recipe's time)"), h("option", { value: "recipe" }, "recipe (the assignment's Adam, 300 iterations)"));
  const optimizer = h("select", { id: "optimizer" }, h("option", { value: "" }, "the preset's"), h("option", { value: "adam" }, "adam"), h("option", { value: "lbfgs" }, "lbfgs"));
  const form = h("form", { id: "submit-form", onsubmit: async (ev) => {
      ev.preventDefault();
      error.replaceChildren();
      const button = document.getElementById("submit-button");
      button.disabled = true;
      try {
        const base = { preset: preset.value };
        const value = (id) => document.getElementById(id).value.trim();
        if (value("iters")) base.iters = Number(value("iters"));
        if (optimizer.value) base.optimizer = optimizer.value;
        if (value("alpha")) base.alpha = Number(value("alpha"));
        if (value("beta")) base.beta = Number(value("beta"));
        const lines = variantLines();
        const variants = (lines.length ? lines : [""]).map((l) => JSON.stringify({ ...base, ...parseVariant(l) }));
        const uploads = async (files) => Promise.all(files.map(async (f) => ({ name: stem(f.name), data: await readBase64(f) })));
        const r = await api("/api/collections", { json: {
          name: value("name"),
          contents: await uploads(picked.contents),
          styles: await uploads(picked.styles),
          variants_json: variants,
          max_side: Number(value("max-side")) || 0,
          snapshot_every: Number(value("snapshot-every")) || 0,
          priority: Number(value("priority")) || 0,
          blend_styles: blend.checked,
          idempotency_key: crypto.randomUUID ? crypto.randomUUID() : String(Math.random()),
        } });
        location.hash = `#/c/${r.collection_id}`;
      } catch (e) {
        error.replaceChildren(failed(e));
      } finally {
        button.disabled = false;
      }
    } },
    h("div", { class: "drops" }, drop("contents", "Photos (rows)"), drop("styles", "Paintings (columns)")),
    h("div", { class: "fields" },
      field("Name", h("input", { id: "name", placeholder: "the first photo × painting" })),
      field("Longer side (px)", num("max-side", 384, { min: 1, max: 16384 })),
      field("Preset", preset),
      field("Iterations", num("iters", "", { min: 1, placeholder: "the preset's" })),
      field("Optimizer", optimizer),
      field("α (content weight)", num("alpha", "", { step: "any", placeholder: "the preset's" })),
      field("β (style weight)", num("beta", "", { step: "any", placeholder: "the preset's" })),
      field("Snapshot every", num("snapshot-every", 0, { min: 0 })),
      field("Priority", num("priority", 0)),
      field("Blend the styles into one column", blend)),
    field("Variants (farmctl submit --variant syntax)", variants),
    h("div", { class: "toolbar" }, count, h("span", { class: "spacer" }), h("button", { id: "submit-button", type: "submit" }, "Submit")),
    error);
  variants.addEventListener("input", recount);
  blend.addEventListener("change", recount);
  show(h("h1", {}, "Submit a collection"), form);
  recount();
}

// ------------------------------------------------------------ router --

async function route() {
  for (const undo of teardown) undo();
  teardown = [];
  offline(false);
  const hash = location.hash.replace(/^#/, "") || "/";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", hash === a.getAttribute("href").slice(1));
  let s;
  try {
    s = await who();
  } catch (e) {
    show(failed(e));
    return;
  }
  if (s.auth_required && !s.signed_in) return signIn();
  let m;
  // An id's start (as git takes a commit's) opens what it names.
  if ((m = hash.match(/^\/[cj]\/([0-9a-fA-F-]{4,35})(\/.*)?$/))) {
    try {
      const r = await api(`/api/ids/${encodeURIComponent(m[1])}`);
      location.replace(`#/${r.kind === "job" ? "j" : "c"}/${r.id}${r.kind === "collection" && m[2] ? m[2] : ""}`);
    } catch (e) {
      show(failed(e));
    }
    return;
  }
  if ((m = hash.match(/^\/c\/([^/]+)(?:\/p\/(\d+))?$/))) return collectionView(m[1], Number(m[2] || 0));
  if ((m = hash.match(/^\/j\/([^/]+)$/))) return jobView(m[1]);
  if (hash === "/collections") return collectionsView();
  if (hash === "/submit") return submitView();
  return farmView();
}

window.addEventListener("hashchange", route);
route();
