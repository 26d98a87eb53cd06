// The watch view: the player at the moment, the moment and the chapters on a timeline, the transcript following playback, clip tags, the summary.

import { $, API, api, baseName, clock, current, duration, el, highlight, queryWords, showError, showView, span } from "./dom.js";
import { loadChapters, loadSummary, mountChapters, renderSummary } from "./chapters.js";
import { findHit } from "./search.js";

// A moment clip (".../clip?start=S&end=E") starts at S in media time; the original file at 0.
function clipRange(url) {
  const m = String(url).match(/\/clip\?(.*)$/);
  if (!m) return null;
  const p = new URLSearchParams(m[1]);
  return { start: parseFloat(p.get("start")) || 0, end: parseFloat(p.get("end")) || Infinity };
}

// Where to play: the hit's own URL when the page came from a result, else what the media says it can do.
function source(media, id, t, e, hit) {
  if (hit && hit.play_url) return { src: hit.play_url, offset: hit.play_offset ?? t };
  if (media.playable !== false) return { src: media.file_url || `${API}/media/${encodeURIComponent(id)}/file`, offset: t };
  return { src: `${API}/media/${encodeURIComponent(id)}/clip?start=${t.toFixed(2)}&end=${e.toFixed(2)}`, offset: 0 };
}

function header(media, t, q) {
  const name = media.name || baseName(media.path);
  document.title = `${name} at ${clock(t)} · vidx`;
  $("#watch-title").textContent = name;
  const streams = [media.video ? "video" : null, media.audio ? "audio" : null].filter(Boolean).join(" + ");
  const bits = [`${streams || "media"}, ${duration(media.duration)}`];
  if (media.width && media.height) bits.push(`${media.width}×${media.height}`);
  if (q) bits.push(`found for “${q}”`);
  $("#watch-meta").textContent = bits.join(" · ");
  return name;
}

function stageFor(media, name) {
  const stage = $("#stage");
  const isVideo = !!media.video;
  const player = el(isVideo ? "video" : "audio", { id: "player", controls: true, preload: "auto", playsinline: true });
  if (isVideo) stage.replaceChildren(player);
  else {
    // Fixed bar heights: a quiet picture of sound that costs nothing and never moves.
    const bars = Array.from({ length: 28 }, (_, i) => el("i", { class: `w${(i * 7 + 3) % 9}` }));
    stage.replaceChildren(el("div", { class: "audio-card" },
      el("div", { class: "audio-art", "aria-hidden": "true" }, ...bars),
      el("p", { class: "audio-name", text: name }),
      player));
  }
  stage.classList.toggle("is-audio", !isVideo);
  $("#tags-block").hidden = !isVideo;
  return player;
}

function renderTags(clip, hit) {
  const list = $("#tags");
  list.replaceChildren();
  const concepts = clip && clip.concepts && clip.concepts.length ? clip.concepts : null;
  $("#tags-at").textContent = clip ? `at ${span(clip.start, clip.end)}` : "";
  if (concepts) {
    for (const [name, prob] of concepts) {
      list.append(el("li", { class: "tag", title: `probability ${prob}` }, name, " ",
        el("span", { class: "muted", text: `${Math.round(prob * 100)}%` })));
    }
  } else if (hit && hit.concepts && hit.concepts.length) {
    for (const name of hit.concepts) list.append(el("li", { class: "tag", text: name }));
  } else {
    list.append(el("li", { class: "muted small", text: "No visual tags for this part." }));
  }
}

function transcript(media, t, e, marks, seek) {
  const list = $("#transcript");
  const lines = [];
  for (const seg of media.segments || []) {
    const btn = el("button", { type: "button", class: "line" },
      el("span", { class: "at", text: clock(seg.start) }),
      el("span", { class: "words" }, highlight(seg.text, marks)));
    btn.addEventListener("click", () => seek(seg.start));
    const li = el("li", { class: seg.end > t && seg.start < e ? "in-moment" : null }, btn);
    list.append(li);
    lines.push({ seg, li });
  }
  if (!lines.length) {
    list.append(el("li", { class: "empty muted", text: media.audio ? "No speech was transcribed in this file." : "This file has no sound." }));
  }
  return lines;
}

async function share() {
  const url = location.href;
  const btn = $("#share");
  try {
    await navigator.clipboard.writeText(url);
    btn.textContent = "Link copied";
    setTimeout(() => { btn.textContent = "Copy link"; }, 1500);
  } catch (e) {
    // No clipboard (plain http on another host): show the link so it can be copied by hand.
    $("#watch-meta").textContent = url;
  }
}

// The bar under the player: the moment's span, what has played, the play head; click or arrow keys seek.
function mountTimeline(player, total, t, e, seek, mediaTime) {
  const timeline = $("#timeline");
  const pct = (x) => `${total ? Math.max(0, Math.min(100, (x / total) * 100)) : 0}%`;
  $("#tl-moment").style.left = pct(t);
  $("#tl-moment").style.width = pct(e - t);
  // A page opened at a time (a chapter, the library) has no moment to show, only the play head.
  $("#tl-moment").hidden = !(e > t);
  $("#tl-span").textContent = e > t ? `Moment ${span(t, e)}` : "";
  $("#tl-dur").textContent = clock(total);
  timeline.setAttribute("aria-valuemax", String(Math.round(total)));
  const onClick = (ev) => {
    const r = timeline.getBoundingClientRect();
    if (r.width && total) seek(((ev.clientX - r.left) / r.width) * total);
  };
  const onKey = (ev) => {
    const step = { ArrowLeft: -5, ArrowRight: 5, ArrowDown: -5, ArrowUp: 5, PageDown: -30, PageUp: 30 }[ev.key];
    if (step !== undefined) seek(mediaTime() + step);
    else if (ev.key === "Home") seek(0);
    else if (ev.key === "End") seek(total);
    else if (ev.key === " " || ev.key === "Enter") {
      if (player.paused) player.play().catch(() => {});
      else player.pause();
    } else return;
    ev.preventDefault();
  };
  timeline.addEventListener("click", onClick);
  timeline.addEventListener("keydown", onKey);
  return {
    update(now) {
      $("#tl-played").style.width = pct(now);
      $("#tl-head").style.left = pct(now);
      $("#tl-now").textContent = clock(now);
      timeline.setAttribute("aria-valuenow", String(Math.round(now)));
      timeline.setAttribute("aria-valuetext", `${clock(now)} of ${clock(total)}`);
    },
    cleanup() {
      timeline.removeEventListener("click", onClick);
      timeline.removeEventListener("keydown", onKey);
    },
  };
}

// The transcript line and the clip tags of the current time.
function mountFollower(media, hit, t, e, q, seek) {
  const list = $("#transcript");
  const lines = transcript(media, t, e, hit && hit.matched && hit.matched.length ? hit.matched : queryWords(q), seek);
  const clips = (media.clips || []).slice().sort((a, b) => a.start - b.start);
  let currentLine = null;
  let currentClip;
  let userScrolledAt = 0;
  const onScroll = () => { userScrolledAt = Date.now(); };
  list.addEventListener("wheel", onScroll, { passive: true });
  list.addEventListener("touchmove", onScroll, { passive: true });
  return {
    update(now) {
      let line = null;
      for (const l of lines) if (l.seg.start <= now + 0.05 && now < l.seg.end + 0.3) line = l;
      if (line !== currentLine) {
        if (currentLine) currentLine.li.classList.remove("current");
        currentLine = line;
        // Keep the current line in view, unless the user is reading elsewhere in the list.
        if (line) {
          line.li.classList.add("current");
          if (Date.now() - userScrolledAt > 4000) list.scrollTo({ top: Math.max(0, line.li.offsetTop - list.clientHeight / 3), behavior: "smooth" });
        }
      }
      const c = clips.find((x) => x.start <= now && now < x.end) || clips[clips.length - 1];
      if (c !== currentClip) {
        currentClip = c;
        renderTags(c, hit);
      }
    },
    cleanup() {
      list.removeEventListener("wheel", onScroll);
      list.removeEventListener("touchmove", onScroll);
    },
  };
}

// Paints the watch route; returns the cleanup to run when the user leaves it.
export async function renderWatch(seq, id, params) {
  showView("watch");
  const t = Math.max(0, parseFloat(params.get("t")) || 0);
  const e = Math.max(t, parseFloat(params.get("e")) || t);
  const q = params.get("q") || "";
  $("#stage").replaceChildren(el("div", { class: "stage-loading", text: "Loading…" }));
  for (const sel of ["#transcript", "#tags", "#chapters", "#summary-block"]) $(sel).replaceChildren();
  $("#summary-block").hidden = true;
  $("#chapters-block").hidden = true;
  $("#watch-title").textContent = "";
  $("#watch-meta").textContent = "";
  $("#watch-back").href = q ? `#/?${new URLSearchParams({ q })}` : "#/";
  $("#watch-back").textContent = q ? "← Results" : "← Search";

  const [media, chapters] = await Promise.all([api(`${API}/media/${encodeURIComponent(id)}`), loadChapters(id)]);
  if (!current(seq)) return null;
  const name = header(media, t, q);
  const hit = findHit(id, t, e);
  const { src, offset } = source(media, id, t, e, hit);
  const clip = clipRange(src);
  const base = clip ? clip.start : 0;
  const player = stageFor(media, name);
  const total = media.duration || 0;
  const mediaTime = () => base + (player.currentTime || 0);

  const seek = (time) => {
    time = Math.max(0, Math.min(total || time, time));
    if (clip && (time < clip.start || time > clip.end)) {
      // Outside the transcoded clip: open the moment there, which asks for a new clip.
      const p = new URLSearchParams(params);
      p.set("t", time.toFixed(2));
      p.set("e", Math.min(total || time + 10, time + 10).toFixed(2));
      location.hash = `#/watch/${encodeURIComponent(id)}?${p}`;
      return;
    }
    player.currentTime = time - base;
    player.play().catch(() => {});
  };

  player.addEventListener("loadedmetadata", () => {
    player.currentTime = offset;
    player.play().catch(() => {});
  }, { once: true });
  player.addEventListener("error", () => {
    if (current(seq)) showError("This file cannot be played in this browser.");
  });
  player.src = src;

  const bar = mountTimeline(player, total, t, e, seek, mediaTime);
  const follow = mountFollower(media, hit, t, e, q, seek);
  // Chapter cues are in media time: a transcoded clip starts at 0, so only the original file gets the track.
  const marks = mountChapters({ id, chapters, total, seek, player, withTrack: !clip });
  const paint = () => {
    const now = mediaTime();
    bar.update(now);
    follow.update(now);
    marks.update(now);
  };
  for (const type of ["timeupdate", "seeked", "loadedmetadata"]) player.addEventListener(type, paint);
  paint();

  $("#replay").onclick = () => seek(t);
  $("#share").onclick = share;
  if (chapters.length) {
    loadSummary(id).then((summary) => {
      if (summary && current(seq)) renderSummary(summary, seek);
    });
  }

  return () => {
    bar.cleanup();
    follow.cleanup();
    marks.cleanup();
    player.pause();
    player.removeAttribute("src");
    player.load();
    $("#stage").replaceChildren();
  };
}
