// The Stylefarm dashboard: one page, four views chosen by the URL's hash —
//   #/                 the farm: workers, queue, jobs done, failures
//   #/collections      every collection you may see
//   #/c/ID[/p/N]       a collection's grid (page N), live
//   #/j/ID             one job: image, loss curve, attempts, files
//   #/submit           a new collection from photos and paintings
// Everything comes from the coordinator's JSON API (/api/…); live changes
// arrive as server-sent events. No framework and no build step: the
// coordinator serves this file as it is.
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
  return body;
}

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

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

function countsLine(c) {
  return ["queued", "running", "succeeded", "failed", "cancelled"]
    .filter((k) => c[k] > 0)
    .map((k) => `${c[k]} ${k}`)
    .join(" · ") || "no jobs";
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
  const draw = async () => {
    let f;
    try {
      f = await api("/api/farm");
    } catch (e) {
      box.replaceChildren(failed(e));
      return;
    }
    const j = f.jobs;
    const stat = (id, label, value) => h("div", { class: "stat" }, h("span", { id, class: "value" }, value), h("span", { class: "label" }, label));
    const act = (w, what) => async () => {
      try {
        await api(`/api/workers/${encodeURIComponent(w.id)}/${what}`, { json: {} });
      } catch (e) {
        box.prepend(failed(e));
        return;
      }
      await draw();
    };
    // online · lost · stopped · quarantined, and whether it drains.
    const stateCell = (w) => {
      const label = w.state === "online" && w.draining ? (w.current_job ? "draining" : "drained") : w.state;
      const badge = { online: "succeeded", lost: "failed", quarantined: "failed", stopped: "cancelled" }[w.state] || "queued";
      return h("td", {},
        h("span", { class: `badge ${w.draining ? "queued" : badge} worker-state`, title: w.quarantine_reason || "" }, label),
        w.quarantined ? h("div", { class: "muted reason" }, w.quarantine_reason) : (w.strikes ? h("div", { class: "muted" }, `${w.strikes} strikes`) : null));
    };
    const actions = (w) => {
      const gone = w.state === "lost" || w.state === "stopped";
      return h("td", { class: "actions" },
        w.state === "online" && !w.draining ? h("button", { class: "drain", title: "finish the current job, lease no more", onclick: act(w, "drain") }, "Drain") : null,
        w.draining || w.quarantined ? h("button", { class: "resume", title: "lease again", onclick: act(w, "resume") }, "Resume") : null,
        gone && !w.current_job ? h("button", { class: "forget", title: "take it off the list", onclick: act(w, "forget") }, "Forget") : null);
    };
    const rows = f.workers.map((w) =>
      h("tr", { class: `worker ${w.state}`, "data-worker": w.id, "data-name": w.name },
        h("td", {}, w.name),
        h("td", {}, w.device, w.device_name ? h("span", { class: "muted" }, ` ${w.device_name}`) : null),
        h("td", {}, w.current_job ? h("a", { href: `#/j/${w.current_job}` }, w.current_job.slice(0, 8)) : h("span", { class: "muted" }, "idle")),
        h("td", { class: "num" }, w.iterations_per_second == null ? "" : w.iterations_per_second.toFixed(2)),
        h("td", {}, ago(w.last_seen_unix)),
        stateCell(w),
        actions(w)));
    box.replaceChildren(
      h("div", { class: "stats" },
        stat("queue", "queued", j.queued || 0),
        stat("running", "running", j.running || 0),
        stat("done-hour", "done in the last hour", f.done_last_hour),
        stat("failed-total", "failed jobs", j.failed || 0)),
      h("h2", {}, "Workers"),
      f.workers.length === 0 ? h("p", { class: "muted" }, "No worker has registered.") :
        h("table", { id: "workers" },
          h("thead", {}, h("tr", {}, ["name", "device", "job", "iterations/s", "last heard", "state", ""].map((t) => h("th", {}, t)))),
          h("tbody", {}, rows)),
      h("h2", {}, "Failures in the last day, by cause"),
      f.failures_last_day.length === 0 ? h("p", { id: "failures", class: "muted" }, "None.") :
        h("table", { id: "failures" }, h("tbody", {}, f.failures_last_day.map((x) => h("tr", {}, h("td", {}, x.cause), h("td", { class: "num" }, x.count))))));
  };
  await draw();
  every(3000, draw);
}

// ------------------------------------------------------- collections --

async function collectionsView() {
  const list = h("div", {});
  show(h("h1", {}, "Collections"), list);
  let token = "";
  const more = h("button", { id: "more-collections", onclick: () => page() }, "More");
  const table = h("tbody", {});
  list.append(h("table", { id: "collections" },
    h("thead", {}, h("tr", {}, ["name", "shape", "jobs", "submitted"].map((t) => h("th", {}, t)))), table), more);
  const page = async () => {
    try {
      const r = await api(`/api/collections?page_size=100&page_token=${encodeURIComponent(token)}`);
      for (const c of r.collections) {
        table.append(h("tr", {},
          h("td", {}, h("a", { class: "collection-link", href: `#/c/${c.id}` }, c.name)),
          h("td", {}, `${c.contents} × ${c.styles} × ${c.variants}`),
          h("td", {}, countsLine(c.counts)),
          h("td", {}, new Date(c.created_unix * 1000).toLocaleString())));
      }
      token = r.next_page_token;
      more.hidden = !token;
      if (!table.children.length) list.replaceChildren(h("p", { class: "muted" }, "No collections yet. ", h("a", { href: "#/submit" }, "Submit one.")));
    } catch (e) {
      list.append(failed(e));
    }
  };
  await page();
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
  td.dataset.state = job.state;
  td.title = `${job.content_name} × ${job.style_name}${job.error ? "\n" + job.error : ""}`;
  // A new preview may exist whenever the render moved or ended.
  const version = `${job.attempts}-${job.iteration}-${job.state}`;
  if (job.attempts > 0 && (!prev || td.dataset.version !== version)) {
    td.dataset.version = version;
    const next = h("img", { class: "thumb", alt: "", src: `/api/jobs/${job.id}/preview?v=${encodeURIComponent(version)}` });
    // Keep the old picture until the new one has loaded.
    next.addEventListener("load", () => {
      const old = td.querySelector("img.thumb");
      if (old && old !== next) old.replaceWith(next);
      else if (!old) td.querySelector(".frame").append(next);
      td.dataset.preview = "yes";
    });
    // No preview yet (404): the cell keeps what it shows.
  }
  const pct = job.iterations > 0 ? Math.min(100, (100 * job.iteration) / job.iterations) : (job.state === "succeeded" ? 100 : 0);
  td.querySelector(".bar > span").style.width = `${pct}%`;
  td.querySelector(".state").textContent = job.state === "running" ? `${job.iteration}/${job.iterations}` : job.state;
  td.querySelector(".eta").textContent = job.state === "running" ? duration(job.eta_seconds) : "";
}

function emptyCell(job) {
  const td = h("td", { class: "cell", dataset: { job: job.id } },
    h("a", { href: `#/j/${job.id}`, class: "frame" }),
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
  const retryFailed = h("button", { id: "retry-failed", hidden: !(head.counts && head.counts.failed > 0), onclick: async () => {
      try {
        const c = await api(`/api/collections/${id}/retry-failed`, { json: {} });
        counts.textContent = countsLine(c.counts);
        retryFailed.hidden = true;
      } catch (e) {
        message.replaceChildren(failed(e));
      }
    } }, "Retry failed jobs");
  const pager = pages > 1 ? h("div", { class: "pager" },
    h("a", { id: "prev-page", href: `#/c/${id}/p/${Math.max(0, page - 1)}`, class: page === 0 ? "disabled" : "" }, "‹ previous"),
    h("span", { id: "page-info" }, ` rows ${page * rowsPerPage + 1}–${Math.min(head.contents, (page + 1) * rowsPerPage)} of ${head.contents} `),
    h("a", { id: "next-page", href: `#/c/${id}/p/${Math.min(pages - 1, page + 1)}`, class: page === pages - 1 ? "disabled" : "" }, "next ›")) : null;
  const variantLabel = (c) => {
    if (head.variants <= 1) return "";
    const p = c.params || {};
    return ` · v${c.variant}` + (p.iterations ? ` (${p.optimizer || ""} ${p.iterations} it, α ${p.alpha}, β ${p.beta})` : "");
  };
  const table = h("table", { id: "grid" },
    h("thead", {}, h("tr", {}, h("th", {}, ""), head.columns.map((c) => h("th", { class: "col" }, c.style_name, h("span", { class: "muted" }, variantLabel(c)))))));
  const body = h("tbody", {});
  table.append(body);
  show(
    h("div", { class: "title" },
      h("h1", {}, head.name),
      h("span", { class: "muted" }, ` ${head.contents} contents × ${head.styles} styles × ${head.variants} variants`)),
    h("div", { class: "toolbar" }, counts, " ", live, h("span", { class: "spacer" }),
      h("a", { id: "zip", class: "button", href: `/api/collections/${id}/zip`, download: `${head.name}.zip` }, "Download zip"), retryFailed, cancel),
    message, pager, h("div", { class: "scroll" }, table), pager ? pager.cloneNode(true) : null);

  const cells = new Map();
  const load = async () => {
    const r = await api(`/api/collections/${id}/grid?from_row=${page * rowsPerPage}&rows=${rowsPerPage}`);
    const rows = new Map();
    for (const job of r.jobs) {
      if (!rows.has(job.row)) rows.set(job.row, { name: job.content_name, jobs: [] });
      rows.get(job.row).jobs.push(job);
    }
    body.replaceChildren();
    cells.clear();
    for (const [, row] of [...rows.entries()].sort((a, b) => a[0] - b[0])) {
      const tr = h("tr", {}, h("th", { class: "row" }, row.name));
      for (const job of row.jobs) {
        const td = emptyCell(job);
        cells.set(job.id, td);
        tr.append(td);
      }
      body.append(tr);
    }
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
        counts.textContent = countsLine(c.counts);
        retryFailed.hidden = !(c.counts.failed > 0);
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
    const { jobs } = JSON.parse(ev.data);
    for (const change of jobs) {
      const td = cells.get(change.id);
      if (td) fillCell(td, { ...td._job, ...change, content_name: td._job.content_name, style_name: td._job.style_name, row: td._job.row });
    }
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

// The loss log as an SVG: content, style, TV and total against iteration,
// log scale.
function lossCurve(records) {
  const W = 640, H = 300, L = 60, R = 10, T = 10, B = 30;
  const series = ["total", "content", "style", "tv"];
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("id", "loss-curve");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const add = (tag, attrs, text) => {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.append(el);
    return el;
  };
  const values = records.flatMap((r) => series.map((s) => r[s])).filter((v) => v > 0 && isFinite(v));
  if (!records.length || !values.length) {
    add("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted" }, "no losses yet");
    return svg;
  }
  const lo = Math.floor(Math.log10(Math.min(...values)));
  const hi = Math.ceil(Math.log10(Math.max(...values)));
  const first = records[0].iteration, last = Math.max(records[records.length - 1].iteration, first + 1);
  const x = (i) => L + ((W - L - R) * (i - first)) / (last - first);
  const y = (v) => T + ((H - T - B) * (hi - Math.log10(v))) / Math.max(1, hi - lo);
  for (let d = lo; d <= hi; d++) {
    add("line", { x1: L, x2: W - R, y1: y(10 ** d), y2: y(10 ** d), class: "gridline" });
    add("text", { x: L - 6, y: y(10 ** d) + 4, "text-anchor": "end", class: "axis" }, `1e${d}`);
  }
  add("text", { x: L, y: H - 8, class: "axis" }, `iteration ${first}`);
  add("text", { x: W - R, y: H - 8, "text-anchor": "end", class: "axis" }, `${last}`);
  series.forEach((s, k) => {
    const pts = records.filter((r) => r[s] > 0 && isFinite(r[s])).map((r) => `${x(r.iteration).toFixed(1)},${y(r[s]).toFixed(1)}`);
    if (pts.length) add("polyline", { points: pts.join(" "), class: `series series-${s}` });
    add("text", { x: L + 10 + k * 90, y: T + 14, class: `legend series-${s}` }, s);
  });
  return svg;
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
// "Retry with changes" button that sends the fields changed.
function paramsTable(params, retry) {
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
  const send = h("button", { id: "retry-with-changes", type: "submit" }, "Retry with changes");
  return h("form", { id: "retry-form", onsubmit: (ev) => {
    ev.preventDefault();
    const changes = {};
    for (const [k, input, was] of fields) if (input.value.trim() !== was) changes[k] = paramValue(input.value.trim());
    retry(changes);
  } }, h("p", { class: "muted" }, "Change any value and retry: the job starts again from the beginning with the new values; its earlier attempts stay listed."), table, send);
}

async function jobView(id) {
  const box = h("div", { id: "job-detail" });
  show(box);
  let events = null;
  const draw = async () => {
    let d;
    try {
      d = await api(`/api/jobs/${id}`);
    } catch (e) {
      box.replaceChildren(failed(e));
      return;
    }
    const j = d.job;
    const has = (name) => d.files.some((f) => f.name === name);
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
    const image = has("output.png") ? `/api/jobs/${id}/files/output.png` : (has("preview.png") ? `/api/jobs/${id}/preview?v=${j.iteration}` : null);
    const message = h("div", {});
    const act = (what) => async () => {
      try {
        await api(`/api/jobs/${id}/${what}`, { json: {} });
        await draw();
      } catch (e) {
        message.replaceChildren(failed(e));
      }
    };
    const ended = ["succeeded", "failed", "cancelled"].includes(j.state);
    // Retry with the parameters whose fields were changed.
    const retryWithChanges = async (changes) => {
      try {
        await api(`/api/jobs/${id}/retry`, { json: { changes } });
        await draw();
      } catch (e) {
        message.replaceChildren(failed(e));
      }
    };
    box.replaceChildren(
      h("p", {}, h("a", { href: `#/c/${d.collection_id}` }, "‹ collection")),
      h("h1", {}, `${j.content_name} × ${j.style_name}`, j.variant ? ` · v${j.variant}` : ""),
      h("div", { class: "toolbar" },
        h("span", { id: "job-state", class: `badge ${j.state}` }, j.state),
        j.state === "running" ? ` iteration ${j.iteration} of ${j.iterations}, ${duration(j.eta_seconds)} to go` : "",
        j.error ? h("span", { class: "error" }, ` ${j.error}`) : "",
        h("span", { class: "spacer" }),
        !ended ? h("button", { id: "cancel-job", class: "danger", onclick: act("cancel") }, "Cancel job") : null,
        j.state === "failed" || j.state === "cancelled" ? h("button", { id: "retry-job", onclick: act("retry") }, "Retry job") : null),
      message,
      h("div", { class: "detail" },
        h("figure", {}, image ? h("a", { href: image, target: "_blank" }, h("img", { id: "job-image", src: image, alt: "the render" })) : h("p", { class: "muted" }, "No image yet.")),
        h("div", { class: "curve" }, h("h2", {}, "Losses"), lossCurve(records))),
      h("h2", {}, "Parameters"),
      paramsTable(d.params, j.state === "failed" || j.state === "cancelled" ? retryWithChanges : null),
      h("h2", {}, "Attempts"),
      h("table", { id: "attempts" },
        h("thead", {}, h("tr", {}, ["#", "worker", "started", "ended", "resumed from", "outcome"].map((t) => h("th", {}, t)))),
        h("tbody", {}, d.attempts.map((a) => h("tr", {},
          h("td", {}, a.attempt), h("td", {}, a.worker),
          h("td", {}, new Date(a.started_unix * 1000).toLocaleTimeString()),
          h("td", {}, a.ended_unix ? new Date(a.ended_unix * 1000).toLocaleTimeString() : "—"),
          h("td", { class: "num" }, a.resumed_from ? `iteration ${a.resumed_from}` : "the start"),
          h("td", {}, a.outcome))))),
      h("h2", {}, "Log of the latest attempt"),
      log ? h("pre", { id: "worker-log", class: "log" }, log) : h("p", { class: "muted" }, "No log yet (the worker writes it at each checkpoint and when the attempt ends)."),
      h("h2", {}, "Files of the latest attempt"),
      d.files.length === 0 ? h("p", { class: "muted" }, "None yet.") :
        h("ul", { id: "files" }, d.files.map((f) => h("li", {},
          h("a", { href: `/api/jobs/${id}/files/${f.name}?download=true`, download: f.name.split("/").pop() }, f.name),
          h("span", { class: "muted" }, ` ${bytes(f.size_bytes)}`)))));
    if (!events && d.collection_id) {
      // Redraw when this job changes (at most once a second).
      events = new EventSource(`/api/collections/${d.collection_id}/events`);
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
        if (due || !JSON.parse(ev.data).jobs.some((c) => c.id === id)) return;
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
        const variantObjects = (lines.length ? lines : [""]).map((l) => ({ ...base, ...parseVariant(l) }));
        const uploads = async (files) => Promise.all(files.map(async (f) => ({ name: stem(f.name), data: await readBase64(f) })));
        const r = await api("/api/collections", { json: {
          name: value("name"),
          contents: await uploads(picked.contents),
          styles: await uploads(picked.styles),
          variants: variantObjects,
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
      field("Name", h("input", { id: "name", placeholder: "collection" })),
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
  if ((m = hash.match(/^\/c\/([^/]+)(?:\/p\/(\d+))?$/))) return collectionView(m[1], Number(m[2] || 0));
  if ((m = hash.match(/^\/j\/([^/]+)$/))) return jobView(m[1]);
  if (hash === "/collections") return collectionsView();
  if (hash === "/submit") return submitView();
  return farmView();
}

window.addEventListener("hashchange", route);
route();
