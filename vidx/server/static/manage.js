// The library (files with state, duration, counts; remove) and jobs (live progress, ingest form) views.

import { $, API, api, baseName, clock, current, duration, el, fail, nav, plural, showError, showView, stateBadge, thumb } from "./dom.js";

const ACTIVE = new Set(["queued", "running"]);
const LIBRARY_PAGE = 50;

// ---------- library ----------

let libraryOffset = 0;

export async function renderLibrary(seq) {
  showView("library");
  document.title = "Library · vidx";
  $("#library").replaceChildren();
  $("#library-summary").textContent = "Loading…";
  libraryOffset = 0;
  await loadLibrary(seq);
}

async function loadLibrary(seq) {
  const data = await api(`${API}/media?limit=${LIBRARY_PAGE}&offset=${libraryOffset}`);
  if (!current(seq)) return;
  const box = $("#library");
  for (const m of data.items) box.append(libraryRow(m));
  libraryOffset += data.items.length;
  const all = libraryOffset >= data.total;
  $("#library-more").hidden = all;
  const secs = [...box.children].reduce((a, row) => a + Number(row.dataset.duration || 0), 0);
  $("#library-summary").textContent = data.total
    ? `${plural(data.total, "file")}${all ? ` · ${clock(secs)} in all` : ""}`
    : "No files yet. Ingest a folder on the Jobs page, or run vidx ingest.";
}

function removeButton(m) {
  // Two presses, no dialog: the first asks, the second removes (the user's file stays on disk).
  const btn = el("button", { type: "button", class: "ghost small danger", text: "Remove", "aria-label": `Remove ${m.name} from the index` });
  let timer = null;
  btn.addEventListener("click", async () => {
    if (btn.dataset.armed !== "1") {
      btn.dataset.armed = "1";
      btn.textContent = "Remove from index?";
      timer = setTimeout(() => { btn.dataset.armed = ""; btn.textContent = "Remove"; }, 4000);
      return;
    }
    clearTimeout(timer);
    btn.disabled = true;
    try {
      await api(`${API}/media/${m.id}`, { method: "DELETE" });
      showError("");
      $("#main").focus({ preventScroll: true });
      await renderLibrary(nav.seq);
    } catch (err) {
      btn.disabled = false;
      fail(err);
    }
  });
  return btn;
}

function libraryRow(m) {
  const name = m.name || baseName(m.path);
  const watch = `#/watch/${m.id}?t=0`;
  const streams = [m.video ? "video" : null, m.audio ? "audio" : null].filter(Boolean).join(" + ") || "no streams";
  const stat = (label, value) => el("div", {}, el("dt", { text: label }), el("dd", { text: value }));
  const row = el("article", { class: "media", role: "listitem", "data-id": m.id, "data-duration": m.duration || 0 });
  row.append(
    el("a", { class: "thumb", href: watch, tabindex: "-1", "aria-hidden": "true" },
      thumb(m.thumbnail_url, !m.video),
      m.duration ? el("span", { class: "time", text: clock(m.duration) }) : null),
    el("div", { class: "media-body" },
      el("h3", { class: "name" }, el("a", { href: watch, text: name })),
      el("p", { class: "path muted small", text: m.path, title: m.path }),
      el("div", { class: "media-meta" }, stateBadge(m.status),
        el("span", { class: "muted small", text: [streams, m.language].filter(Boolean).join(" · ") })),
      m.error ? el("p", { class: "reason", text: m.error }) : null),
    el("dl", { class: "stats" },
      stat("Length", duration(m.duration)),
      stat("Clips", String(m.clip_count ?? 0)),
      stat("Lines", String(m.segment_count ?? 0))),
    el("div", { class: "media-actions" }, removeButton(m)));
  return row;
}

// ---------- jobs ----------

let jobsTimer = null;

// Paints the jobs route and polls every second while a job is queued or running; returns the cleanup.
export async function renderJobs(seq) {
  showView("jobs");
  document.title = "Jobs · vidx";
  $("#jobs-summary").textContent = "Loading…";
  await pollJobs(seq);
  return stopJobs;
}

function stopJobs() {
  clearTimeout(jobsTimer);
  jobsTimer = null;
}

async function pollJobs(seq) {
  stopJobs();
  const data = await api(`${API}/jobs?limit=50`);
  if (!current(seq)) return;
  const items = data.items || [];
  const box = $("#jobs");
  // Rows whose job did not change stay as they are, so a focused link in one survives the poll.
  const old = new Map([...box.children].map((li) => [li.dataset.id, li]));
  const rows = items.map((job) => {
    const sig = JSON.stringify(job);
    const row = old.get(String(job.id));
    if (row && row.dataset.sig === sig) return row;
    const fresh = fillJob(el("li", { class: "job", "data-id": job.id }), job);
    fresh.dataset.sig = sig;
    return fresh;
  });
  box.replaceChildren(...rows);
  if (!items.length) box.append(el("li", { class: "empty muted", text: "No jobs yet. Ingest a file or folder above." }));
  const active = items.filter((j) => ACTIVE.has(j.state)).length;
  const failed = items.filter((j) => j.state === "failed").length;
  const parts = [plural(items.length, "job")];
  if (active) parts.push(`${active} in progress`);
  if (failed) parts.push(`${failed} failed`);
  $("#jobs-summary").textContent = parts.join(" · ");
  if (active) {
    jobsTimer = setTimeout(() => pollJobs(seq).catch((err) => { if (current(seq)) fail(err); }), 1000);
  }
}

// "took 4.2 s" for a finished job (the server's times carry no zone, so only their difference is shown).
function took(job) {
  const t0 = Date.parse(job.created_at || "");
  const t1 = Date.parse(job.finished_at || "");
  if (Number.isNaN(t0) || Number.isNaN(t1)) return null;
  const secs = Math.max(0, (t1 - t0) / 1000);
  return `took ${secs < 60 ? `${secs.toFixed(1)} s` : clock(secs)}`;
}

function jobLabel(job, shown) {
  if (job.state === "running") return `${job.stage || "working"} · ${shown}%`;
  if (job.state === "queued") return "waiting";
  // A skipped job's reason says why it had nothing to do: not an error, so it stands in the status line.
  if (job.state !== "failed" && job.reason) return job.reason;
  if (job.outcome && job.outcome !== job.state) return job.outcome;
  return job.state === "done" ? "finished" : job.state;
}

function fillJob(row, job) {
  const shown = job.state === "done" ? 100 : Math.round(Math.max(0, Math.min(1, job.progress || 0)) * 100);
  const name = baseName(job.path) || `job ${job.id}`;
  row.dataset.state = job.state;
  const fill = el("div", { class: "fill" });
  fill.style.width = `${shown}%`;
  row.replaceChildren(
    el("div", { class: "job-head" },
      el("div", { class: "job-name" },
        el("span", { class: "name" }, job.media_id && job.state === "done" ? el("a", { href: `#/watch/${job.media_id}?t=0`, text: name }) : name),
        el("span", { class: "path muted small", text: job.path || "", title: job.path || "" })),
      stateBadge(job.state)),
    el("div", { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": String(shown),
      "aria-label": `${name} progress` }, fill),
    el("div", { class: "job-foot muted small" },
      el("span", { text: jobLabel(job, shown) }),
      el("span", { text: [job.attempts > 1 ? `attempt ${job.attempts}` : null, took(job), `#${job.id}`].filter(Boolean).join(" · ") })));
  if (job.state === "failed" && job.reason) row.append(el("p", { class: "reason", text: job.reason }));
  return row;
}

async function submitIngest(event) {
  event.preventDefault();
  const area = $("#ingest-paths");
  const paths = area.value.split(/\r?\n/).map((s) => s.trim()).filter(Boolean);
  if (!paths.length) {
    showError("Give at least one path to ingest.");
    area.focus();
    return;
  }
  const btn = $("#ingest-form button[type=submit]");
  btn.disabled = true;
  try {
    const out = await api(`${API}/ingest`, { json: { paths } });
    showError("");
    area.value = "";
    await pollJobs(nav.seq);
    $("#jobs-summary").textContent = `Queued ${plural(out.jobs.length, "job")}. ${$("#jobs-summary").textContent}`;
  } catch (err) {
    fail(err);
  } finally {
    btn.disabled = false;
  }
}

export function bindManage() {
  $("#library-more").addEventListener("click", async () => {
    try {
      await loadLibrary(nav.seq);
    } catch (err) {
      fail(err);
    }
  });
  $("#ingest-form").addEventListener("submit", submitIngest);
  $("#ingest-paths").addEventListener("keydown", (ev) => {
    // Ctrl/Cmd+Enter sends the form from the multi-line box.
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) $("#ingest-form").requestSubmit();
  });
}
