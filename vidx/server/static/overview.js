// The library overview: totals, and the topics found across files with the moments of each (they open the player).

import { $, API, api, baseName, clock, current, el, plural, showView } from "./dom.js";

const pageHref = (url, id, start, end) => (url && url.startsWith("/#") ? url.slice(1) : `#/watch/${id}?t=${start}&e=${end}`);

function totals(data) {
  const stat = (label, value) => el("div", {}, el("dt", { text: label }), el("dd", { text: value }));
  const languages = Object.entries(data.languages || {}).map(([lang, n]) => `${lang} ${n}`).join(", ");
  return [
    stat("Files", String(data.files)),
    stat("Length", clock(data.hours * 3600)),
    stat("Speech", clock(data.speech_hours * 3600)),
    stat("Languages", languages || "—"),
  ];
}

function topicCard(topic, index) {
  const files = topic.media.length;
  const headingId = `topic-${index}`;
  const moments = el("ol", { class: "topic-moments" }, ...topic.moments.map((m) => el("li", {},
    el("a", { class: "moment", href: pageHref(m.page_url, m.media_id, m.start, m.end) },
      el("span", { class: "at", text: clock(m.start) }),
      el("span", { class: "m-title", text: m.title }),
      el("span", { class: "m-file muted small", text: m.media_name || baseName(m.media_path), title: m.media_path })))));
  const where = el("p", { class: "topic-files muted small" }, "In ");
  topic.media.forEach((m, i) => {
    if (i) where.append(", ");
    where.append(el("a", { href: `#/watch/${m.media_id}?t=0`, text: baseName(m.media_path), title: m.media_path }),
      m.chapters > 1 ? ` (${m.chapters})` : "");
  });
  return el("li", { class: "topic" }, el("article", { class: "card topic-card", "aria-labelledby": headingId },
    el("div", { class: "topic-head" },
      el("h2", { id: headingId, class: "topic-name", text: topic.name }),
      el("span", { class: "muted small", text: `${plural(files, "file")} · ${plural(topic.chapters, "chapter")}` })),
    topic.keywords && topic.keywords.length
      ? el("ul", { class: "tags", "aria-label": "Keywords" }, ...topic.keywords.map((k) => el("li", { class: "tag", text: k })))
      : null,
    moments,
    where));
}

export async function renderOverview(seq) {
  showView("overview");
  document.title = "Overview · vidx";
  $("#overview-summary").textContent = "Loading…";
  $("#overview-totals").replaceChildren();
  $("#topics").replaceChildren();
  $("#overview-note").hidden = true;
  const data = await api(`${API}/library/overview`);
  if (!current(seq)) return;
  $("#overview-totals").replaceChildren(...totals(data));
  $("#overview-summary").textContent = data.files
    ? `${plural(data.topics.length, "topic")} across ${plural(data.files, "file")}`
    : "No files yet. Ingest a folder on the Jobs page, or run vidx ingest.";
  if (data.unsummarized) {
    const note = $("#overview-note");
    note.textContent = `${plural(data.unsummarized, "file")} ${data.unsummarized === 1 ? "has" : "have"} no chapters yet: `
      + "they are computed after ingest (or run vidx chapters --recompute).";
    note.hidden = false;
  }
  $("#topics").replaceChildren(...data.topics.map(topicCard));
}
