// The vidx page: hash routes over the /api/v1 JSON API, and the token form when the server asks for one.

import { $, API, api, current, fail, nav, onUnauthorized, showError, showView } from "./dom.js";
import { bindManage, renderJobs, renderLibrary } from "./manage.js";
import { renderOverview } from "./overview.js";
import { bindSearch, renderSearch } from "./search.js";
import { renderWatch } from "./watch.js";

let session = { auth_required: false, authenticated: true };
let leave = null; // cleanup of the route on screen (the player, the jobs poll)

function leaveRoute() {
  if (leave) leave();
  leave = null;
}

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const at = raw.indexOf("?");
  const path = at < 0 ? raw : raw.slice(0, at);
  return { path: path || "/", params: new URLSearchParams(at < 0 ? "" : raw.slice(at + 1)) };
}

async function route() {
  const seq = ++nav.seq;
  leaveRoute();
  showError("");
  if (session.auth_required && !session.authenticated) {
    showLogin();
    return;
  }
  const { path, params } = parseHash();
  const watch = path.match(/^\/watch\/([^/]+)$/);
  try {
    let cleanup = null;
    if (watch) cleanup = await renderWatch(seq, decodeURIComponent(watch[1]), params);
    else if (path === "/library") await renderLibrary(seq);
    else if (path === "/overview") await renderOverview(seq);
    else if (path === "/jobs") cleanup = await renderJobs(seq);
    else await renderSearch(seq, params);
    if (current(seq)) leave = cleanup;
    else if (cleanup) cleanup();
  } catch (err) {
    if (current(seq)) fail(err);
  }
  if (current(seq)) keepFocus();
}

// After a page change the focus must not stay on something now hidden (keyboard users would start over at the top).
function keepFocus() {
  const a = document.activeElement;
  if (a && a !== document.body && a.isConnected && !a.closest("[hidden]")) return;
  const target = (document.body.dataset.view === "watch" && $("#player")) || $("#main");
  target.focus({ preventScroll: true });
}

function showLogin() {
  nav.seq += 1; // answers still on their way belong to a page that is gone
  leaveRoute();
  session = { auth_required: true, authenticated: false };
  showView("login");
  $("#logout").hidden = true;
  document.title = "Sign in · vidx";
  $("#token").focus();
}

async function login(event) {
  event.preventDefault();
  const input = $("#token");
  try {
    await api(`${API}/session`, { json: { token: input.value } });
  } catch (err) {
    showError(err.status === 401 ? "That token is not right." : err.message);
    input.select();
    return;
  }
  input.value = "";
  session = { auth_required: true, authenticated: true };
  $("#logout").hidden = false;
  await route();
  if (document.body.dataset.view === "search") $("#q").focus();
}

async function logout() {
  try {
    await api(`${API}/session`, { method: "DELETE" });
  } catch (err) {
    fail(err);
  }
  showLogin();
}

async function start() {
  onUnauthorized(showLogin);
  bindSearch(route);
  bindManage();
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", logout);
  window.addEventListener("hashchange", route);
  document.addEventListener("keydown", (ev) => {
    // "/" jumps to the search box, as in most search tools.
    if (ev.key === "/" && !ev.ctrlKey && !ev.metaKey && !/^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName)) {
      ev.preventDefault();
      $("#q").focus();
    }
  });
  try {
    session = await api(`${API}/session`);
  } catch (err) {
    fail(err);
  }
  $("#logout").hidden = !(session.auth_required && session.authenticated);
  await route();
}

start();
