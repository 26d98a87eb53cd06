// The search view: the form and its filters (kept in the URL), result cards with the "why", more results.

import { $, $$, API, api, baseName, current, el, fail, highlight, nav, plural, showError, showView, span, thumb } from "./dom.js";

const PAGE = 12;
const FILTERS = ["media", "path_prefix", "min_duration", "max_duration", "speech", "fusion", "per_media"];
const ALL_SOURCES = ["lexical", "speech", "visual"];
const SOURCE_LABEL = { lexical: "words", speech: "speech", visual: "visual" };

let state = null; // {params, offset, hasMore} of the search on screen
const hits = new Map(); // "id:start:end" -> hit, so opening a result reuses its play_url

// page_url carries the times to 2 decimals, so the key does too.
const hitKey = (id, start, end) => `${id}:${Number(start).toFixed(2)}:${Number(end).toFixed(2)}`;

export function findHit(id, t, e) {
  return hits.get(hitKey(id, t, e)) || null;
}

function formToParams() {
  const form = $("#search-form");
  const p = new URLSearchParams();
  const q = form.elements.q.value.trim();
  if (q) p.set("q", q);
  for (const name of FILTERS) {
    const v = String(form.elements[name].value || "").trim();
    if (v) p.set(name, v);
  }
  const sources = $$('input[name="sources"]:checked', form).map((c) => c.value);
  if (sources.length && sources.length < ALL_SOURCES.length) p.set("sources", sources.join(","));
  return p;
}

function paramsToForm(p) {
  const form = $("#search-form");
  form.elements.q.value = p.get("q") || "";
  for (const name of FILTERS) form.elements[name].value = p.get(name) || "";
  const sources = (p.get("sources") || "").split(",").filter(Boolean);
  for (const c of $$('input[name="sources"]', form)) c.checked = !sources.length || sources.includes(c.value);
  updateFilterCount(p);
}

function updateFilterCount(p) {
  const n = [...FILTERS, "sources"].filter((k) => p.has(k)).length;
  const badge = $("#filter-count");
  badge.textContent = n ? String(n) : "";
  badge.hidden = !n;
}

function apiQuery(p, offset) {
  const out = new URLSearchParams({ q: p.get("q"), limit: String(PAGE), offset: String(offset) });
  for (const name of FILTERS) {
    if (!p.has(name)) continue;
    if (name === "media") {
      for (const m of p.get(name).split(",").map((s) => s.trim()).filter(Boolean)) out.append("media", m);
    } else out.set(name, p.get(name));
  }
  if (p.has("sources")) out.set("sources", p.get("sources"));
  return out;
}

export async function renderSearch(seq, params) {
  showView("search");
  paramsToForm(params);
  const q = params.get("q");
  $("#results").replaceChildren();
  $("#more").hidden = true;
  $("#search-summary").textContent = "";
  document.title = q ? `${q} · vidx` : "vidx";
  $("#search-empty").hidden = !!q;
  if (!q) {
    state = null;
    $("#q").focus();
    await loadStats(seq);
    return;
  }
  state = { params, offset: 0, hasMore: false };
  $("#search-summary").textContent = "Searching…";
  try {
    await loadResults(seq);
  } catch (err) {
    if (current(seq)) $("#search-summary").textContent = "";
    throw err;
  }
}

async function loadStats(seq) {
  const data = await api(`${API}/media?limit=1&offset=0`);
  if (!current(seq)) return;
  $("#search-stats").textContent = data.total
    ? `${plural(data.total, "file")} in the library.`
    : "The library is empty: ingest some files on the Jobs page.";
}

async function loadResults(seq) {
  const st = state;
  const data = await api(`${API}/search?${apiQuery(st.params, st.offset)}`);
  if (!current(seq) || st !== state) return;
  const list = $("#results");
  const start = list.children.length;
  data.results.forEach((hit, i) => list.append(resultCard(hit, start + i)));
  st.offset += data.results.length;
  st.hasMore = !!data.has_more;
  $("#more").hidden = !st.hasMore;
  const n = list.children.length;
  const took = Number.isFinite(data.took_ms) ? ` · ${Math.round(data.took_ms)} ms` : "";
  $("#search-summary").textContent = n
    ? `${n}${st.hasMore ? "+" : ""} moment${n === 1 ? "" : "s"} for “${data.query}”${took}`
    : `Nothing found for “${data.query}”. Try other words, or fewer filters.`;
}

async function moreResults() {
  if (!state) return;
  const btn = $("#more");
  btn.disabled = true;
  const firstNew = $("#results").children.length;
  try {
    await loadResults(nav.seq);
    const card = $("#results").children[firstNew];
    if (card) card.querySelector(".result").focus();
  } catch (err) {
    fail(err);
  } finally {
    btn.disabled = false;
  }
}

function resultCard(hit, index) {
  const name = hit.media_name || baseName(hit.media_path);
  const href = hit.page_url && hit.page_url.startsWith("/#") ? hit.page_url.slice(1) : `#/watch/${hit.media_id}?t=${hit.start}&e=${hit.end}`;
  hits.set(hitKey(hit.media_id, hit.start, hit.end), hit);
  const isAudio = !hit.thumbnail_url && !("visual" in (hit.scores || {}));
  const snippet = el("p", { class: "snippet" });
  if (hit.text) snippet.append(highlight(hit.text, hit.matched));
  else {
    snippet.classList.add("muted");
    snippet.append(hit.concepts && hit.concepts.length ? `On screen: ${hit.concepts.join(", ")}` : "No words at this moment.");
  }
  const chips = el("ul", { class: "chips", "aria-label": "Why it matched" });
  for (const [source, value] of Object.entries(hit.scores || {}).sort((a, b) => b[1] - a[1])) {
    chips.append(el("li", { class: `chip src-${source.replace(/[^a-z]/g, "")}`, title: `${source} score ${value}` },
      el("span", { class: "dot", "aria-hidden": "true" }),
      SOURCE_LABEL[source] || source, " ",
      el("b", { text: Number(value).toFixed(2) })));
  }
  const link = el("a", { class: "result", href },
    el("div", { class: "thumb" },
      thumb(hit.thumbnail_url, isAudio),
      el("span", { class: "time", text: span(hit.start, hit.end) })),
    el("div", { class: "card-body" },
      el("h3", { class: "name", text: name, title: hit.media_path || name }),
      hit.chapter ? el("p", { class: "chapter-line", title: `Chapter: ${hit.chapter}` },
        el("span", { class: "sr-only", text: "Chapter: " }), hit.chapter) : null,
      snippet,
      chips));
  return el("li", { "data-rank": index + 1 }, link);
}

function toggleFilters() {
  const btn = $("#filters-toggle");
  const open = btn.getAttribute("aria-expanded") !== "true";
  btn.setAttribute("aria-expanded", String(open));
  $("#filters").hidden = !open;
  if (open) $("#filters").querySelector("input, select").focus();
}

function resetFilters() {
  const form = $("#search-form");
  for (const name of FILTERS) form.elements[name].value = "";
  for (const c of $$('input[name="sources"]', form)) c.checked = true;
  updateFilterCount(new URLSearchParams());
}

// Wires the form; `rerun` repaints the route when a search is submitted again unchanged.
export function bindSearch(rerun) {
  $("#search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const p = formToParams();
    if (!p.get("q")) {
      showError("Type something to search for.");
      $("#q").focus();
      return;
    }
    const target = `#/?${p}`;
    if (location.hash === target) rerun();
    else location.hash = target;
  });
  $("#filters-toggle").addEventListener("click", toggleFilters);
  $("#filters-reset").addEventListener("click", resetFilters);
  $("#more").addEventListener("click", moreResults);
  // Down from the box goes to the first result; the arrows then walk the cards, Up from the first returns.
  $("#q").addEventListener("keydown", (ev) => {
    const first = $("#results .result");
    if (ev.key === "ArrowDown" && first && !$("#view-search").hidden) {
      ev.preventDefault();
      first.focus();
    }
  });
  $("#results").addEventListener("keydown", (ev) => {
    if (ev.key !== "ArrowDown" && ev.key !== "ArrowUp") return;
    const cards = $$("#results .result");
    const i = cards.indexOf(document.activeElement);
    if (i < 0) return;
    ev.preventDefault();
    const next = cards[ev.key === "ArrowDown" ? i + 1 : i - 1];
    if (next) next.focus();
    else if (ev.key === "ArrowUp") $("#q").focus();
  });
}
