// Chapters on the watch view: markers on the timeline, the list beside the player (seek, rename), the file's summary.

import { $, API, api, clock, el, fail, showError, span } from "./dom.js";

const pct = (x, total) => `${total ? Math.max(0, Math.min(100, (x / total) * 100)) : 0}%`;

// The chapter a media time falls in (the last one past its end, as the player's own end can run a little long).
export function chapterAt(chapters, now) {
  let found = null;
  for (const c of chapters) if (c.start <= now + 0.05) found = c;
  return found;
}

// The WebVTT chapters track (players that draw chapters on their own seek bar use it; cues load in "hidden" mode).
function attachTrack(player, id, version) {
  for (const old of player.querySelectorAll("track")) old.remove();
  const track = el("track", {
    kind: "chapters", label: "Chapters", srclang: "en", default: true,
    src: `${API}/media/${encodeURIComponent(id)}/export?format=webvtt-chapters${version ? `&v=${version}` : ""}`,
  });
  player.append(track);
  track.track.mode = "hidden";
}

function paintMarkers(chapters, total) {
  const box = $("#tl-chapters");
  box.replaceChildren();
  if (chapters.length < 2) return;
  for (const c of chapters) {
    const seg = el("div", { class: "tl-chapter", title: `${c.index}. ${c.title} (${clock(c.start)})`, "data-index": c.index });
    seg.style.left = pct(c.start, total);
    seg.style.width = pct(c.end - c.start, total);
    box.append(seg);
  }
}

function titleBlock(c) {
  return el("span", { class: "ch-text" },
    el("span", { class: "ch-title" }, c.title,
      c.edited ? el("span", { class: "ch-edited", title: `computed title: ${c.computed_title}`, text: "edited" }) : null),
    c.keywords && c.keywords.length ? el("span", { class: "ch-keywords muted", text: c.keywords.join(" · ") }) : null);
}

// The inline rename form; resolves when saved (the chapter the server returns) or cancelled (null).
function editForm(c, onDone) {
  const input = el("input", { type: "text", class: "ch-input", value: c.title, maxlength: "200", "aria-label": `Title of chapter ${c.index}` });
  const restore = c.edited
    ? el("button", { type: "button", class: "ghost small", text: "Use computed", title: `Go back to “${c.computed_title}”` })
    : null;
  const cancel = el("button", { type: "button", class: "ghost small", text: "Cancel" });
  const form = el("form", { class: "ch-edit" }, input,
    el("div", { class: "ch-edit-actions" }, el("button", { type: "submit", class: "primary small", text: "Save" }), restore, cancel));
  const send = async (title) => {
    for (const b of form.querySelectorAll("button, input")) b.disabled = true;
    try {
      const saved = await api(`${API}/media/${encodeURIComponent(c.media_id)}/chapters/${c.index}`, { method: "PATCH", json: { title } });
      showError("");
      onDone(saved);
    } catch (err) {
      for (const b of form.querySelectorAll("button, input")) b.disabled = false;
      fail(err);
      input.focus();
    }
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    send(input.value.trim() || null);
  });
  if (restore) restore.addEventListener("click", () => send(null));
  cancel.addEventListener("click", () => onDone(null));
  form.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") {
      ev.preventDefault();
      onDone(null);
    }
  });
  return { form, input };
}

// The list beside the player, the markers on the timeline and the current chapter; returns {update, cleanup}.
export function mountChapters({ id, chapters, total, seek, player, withTrack }) {
  const list = $("#chapters");
  const panel = $("#chapters-block");
  let current = null;
  let version = 0;
  panel.hidden = false;
  $("#chapters-count").textContent = chapters.length ? `${chapters.length}` : "";
  const rows = new Map();

  const paintRow = (c) => {
    const row = rows.get(c.index) || el("li", { class: "chapter", "data-index": c.index });
    rows.set(c.index, row);
    const go = el("button", { type: "button", class: "ch-seek", "aria-label": `Play chapter ${c.index}, ${c.title}, from ${clock(c.start)}` },
      el("span", { class: "at", text: clock(c.start) }), titleBlock(c));
    go.addEventListener("click", () => seek(c.start));
    const pencil = el("button", { type: "button", class: "ghost small ch-rename", "aria-label": `Rename chapter ${c.index}`, title: "Rename" },
      el("span", { class: "pencil", "aria-hidden": "true" }));
    pencil.addEventListener("click", () => {
      const { form, input } = editForm({ ...c, media_id: id }, (saved) => {
        if (saved) {
          Object.assign(c, saved);
          version += 1;
          paintMarkers(chapters, total);
          if (withTrack) attachTrack(player, id, version);
          if (current === c) nowLine(c);
        }
        paintRow(c);
        rows.get(c.index).querySelector(".ch-rename").focus();
      });
      row.replaceChildren(form);
      input.focus();
      input.select();
    });
    row.replaceChildren(go, pencil);
    if (current === c) go.setAttribute("aria-current", "true");
    return row;
  };

  const nowLine = (c) => {
    $("#watch-chapter").textContent = c ? `Chapter ${c.index} of ${chapters.length}: ${c.title}` : "";
  };

  list.replaceChildren(...chapters.map(paintRow));
  if (!chapters.length) {
    list.append(el("li", { class: "empty muted", text: "No chapters yet: they are computed after ingest (or run vidx chapters --recompute)." }));
  }
  paintMarkers(chapters, total);
  if (withTrack && chapters.length) attachTrack(player, id, version);

  return {
    update(now) {
      const c = chapterAt(chapters, now);
      if (c === current) return;
      current = c;
      for (const [index, row] of rows) {
        const on = c && index === c.index;
        row.classList.toggle("current", !!on);
        const go = row.querySelector(".ch-seek");
        if (go) {
          if (on) go.setAttribute("aria-current", "true");
          else go.removeAttribute("aria-current");
        }
      }
      for (const seg of $("#tl-chapters").children) seg.classList.toggle("current", !!c && seg.dataset.index === String(c.index));
      nowLine(c);
    },
    cleanup() {
      $("#tl-chapters").replaceChildren();
      $("#watch-chapter").textContent = "";
    },
  };
}

// The file's summary under the player: its sentences and highlights (each seeks), main concepts, keywords, speech.
export function renderSummary(summary, seek) {
  const box = $("#summary-block");
  const seekButton = (cls, start, ...children) => {
    const b = el("button", { type: "button", class: cls }, ...children);
    b.addEventListener("click", () => seek(start));
    return b;
  };
  // Every sentence is the transcript's own, with its time: a click plays it.
  const text = el("ol", { class: "sum-text" });
  for (const s of summary.sentences || []) {
    text.append(el("li", {}, seekButton("sum-sentence", s.start, el("span", { class: "at", text: clock(s.start) }),
      el("span", { class: "sum-words", text: s.text }))));
  }
  if (!text.children.length) text.append(el("li", { class: "muted", text: summary.summary || "Nothing was said in this file." }));

  const highlights = el("ol", { class: "highlights" });
  const byTime = (summary.highlights || []).slice().sort((a, b) => a.start - b.start);
  for (const h of byTime) {
    highlights.append(el("li", {}, seekButton("hl", h.start,
      el("span", { class: "at", text: clock(h.start) }),
      el("span", { class: `badge hl-${h.kind === "unusual" ? "unusual" : "central"}`, text: h.kind === "unusual" ? "unusual" : "central" }),
      el("span", { class: "hl-text", text: h.text || span(h.start, h.end) }))));
  }

  const share = Math.max(0, Math.min(1, summary.speech_share || 0));
  const meter = el("div", { class: "meter", role: "img", "aria-label": `Speech in ${Math.round(share * 100)}% of the file` },
    el("div", { class: "fill" }));
  meter.firstChild.style.width = `${share * 100}%`;
  const facts = el("dl", { class: "sum-facts" },
    el("div", {}, el("dt", { text: "Speech" }),
      el("dd", {}, `${Math.round(share * 100)}% · ${clock(summary.speech_seconds || 0)}`, meter)));
  const tagList = (items) => el("ul", { class: "tags" }, ...items.map(([name, value]) =>
    el("li", { class: "tag" }, name, value === null ? null : " ", value === null ? null : el("span", { class: "muted", text: `${Math.round(value * 100)}%` }))));
  if (summary.concepts && summary.concepts.length) {
    facts.append(el("div", {}, el("dt", { text: "On screen" }), el("dd", {}, tagList(summary.concepts))));
  }
  if (summary.keywords && summary.keywords.length) {
    facts.append(el("div", {}, el("dt", { text: "Keywords" }), el("dd", {}, tagList(summary.keywords.map((k) => [k, null])))));
  }
  box.replaceChildren(
    el("h2", { id: "summary-title", class: "label", text: "Summary" }),
    el("div", { class: "sum-grid" },
      el("div", { class: "sum-main" }, text,
        highlights.children.length ? el("h3", { class: "label", text: "Highlights" }) : null,
        highlights.children.length ? highlights : null),
      facts));
  box.hidden = false;
}

// Chapters and, when there are any, the summary; never computed here (the server only reads what ingest stored).
export async function loadChapters(id) {
  try {
    return await api(`${API}/media/${encodeURIComponent(id)}/chapters`);
  } catch (err) {
    fail(err);
    return [];
  }
}

export async function loadSummary(id) {
  try {
    return await api(`${API}/media/${encodeURIComponent(id)}/summary`);
  } catch (err) {
    if (err.status !== 404) fail(err);
    return null;
  }
}
