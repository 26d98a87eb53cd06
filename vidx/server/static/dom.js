// Shared by the page's modules: the API client, element building (text only, never innerHTML), time formats.

export const API = "/api/v1";

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

// The route token: a slow answer for a page the user already left must not paint over the new one.
export const nav = { seq: 0 };
export const current = (seq) => seq === nav.seq;

const VIEWS = ["login", "search", "watch", "library", "overview", "jobs"];

export function showView(name) {
  for (const v of VIEWS) $(`#view-${v}`).hidden = v !== name;
  const tab = name === "watch" ? "search" : name;
  for (const a of $$(".nav a")) {
    if (a.dataset.route === tab) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.body.dataset.view = name;
  // The filters belong to the search; elsewhere they would only push the page down.
  if (name !== "search" && name !== "watch") {
    $("#filters").hidden = true;
    $("#filters-toggle").setAttribute("aria-expanded", "false");
  }
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function clock(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) seconds = 0;
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

export const span = (start, end) => `${clock(start)}–${clock(end)}`;

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  return clock(seconds);
}

export function baseName(path) {
  return String(path || "").split(/[\\/]/).filter(Boolean).pop() || String(path || "");
}

export const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

// The one error line of the page (never an alert box).
export function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let unauthorized = () => {};

// What to do when the server answers 401 outside /session (show the token form).
export function onUnauthorized(fn) {
  unauthorized = fn;
}

export async function api(path, options = {}) {
  const { json, ...rest } = options;
  const init = { credentials: "same-origin", ...rest, headers: { Accept: "application/json", ...(rest.headers || {}) } };
  if (json !== undefined) {
    init.method = init.method || "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "The vidx server cannot be reached.");
  }
  if (resp.status === 401 && !path.startsWith(`${API}/session`)) {
    unauthorized();
    throw new ApiError(401, "Sign in to continue.");
  }
  if (resp.status === 204) return null;
  let body = null;
  try {
    body = await resp.json();
  } catch (e) {
    body = null;
  }
  if (!resp.ok) {
    const msg = body && typeof body.error === "string" ? body.error : `${resp.status} ${resp.statusText}`.trim();
    throw new ApiError(resp.status, msg);
  }
  return body;
}

export function fail(err) {
  if (err instanceof ApiError && err.status === 401) return;
  showError(err && err.message ? err.message : String(err));
}

// Plain and <mark> runs of text for the words a search matched (the engine's tokens come lowercased).
export function highlight(text, matched) {
  const frag = document.createDocumentFragment();
  const words = (matched || []).map((w) => String(w).toLowerCase()).filter(Boolean);
  if (!words.length) {
    frag.append(text);
    return frag;
  }
  // Stemmed terms ("countri") still light up their surface words; short ones must match whole.
  const isHit = (w) => words.some((m) => w === m || (m.length >= 4 && w.startsWith(m)));
  for (const part of text.split(/([\p{L}\p{N}']+)/u)) {
    if (!part) continue;
    const word = /^[\p{L}\p{N}']+$/u.test(part) ? part.toLowerCase().replace(/'s$/, "") : null;
    frag.append(word && isHit(word) ? el("mark", { text: part }) : part);
  }
  return frag;
}

const STOP = new Set("a an and are as at be but by for from has have in is it its of on or that the this to was were will with".split(" "));

// The words of a query worth marking when no hit says what matched (a page opened from a shared link).
export function queryWords(q) {
  return String(q || "").toLowerCase().split(/[^\p{L}\p{N}']+/u).filter((w) => w.length > 1 && !STOP.has(w));
}

export function thumb(url, isAudio) {
  if (url) return el("img", { src: url, alt: "", loading: "lazy", decoding: "async" });
  return el("div", { class: `thumb-placeholder${isAudio ? " audio" : ""}`, "aria-hidden": "true" },
    isAudio ? null : el("span", { text: "no image" }));
}

export function stateBadge(state) {
  return el("span", { class: `badge state-${String(state || "unknown").replace(/[^a-z]/g, "")}`, text: state || "unknown" });
}
