// The Handoff console: a single page over the same JSON API the CLI uses, signed in
// through the configured OpenID Connect issuer (authorization code + PKCE). It shows no
// data until the user is signed in, and only the actions the token's scopes allow.
"use strict";

const TOKEN_KEY = "handoff.console.token";
const PKCE_KEY = "handoff.console.pkce";
const state = { config: null, token: null, subject: "", scopes: [], timer: null, rendering: null };

// ------------------------------------------------------------------ building the page

/** An element with attributes and children (strings become text: data never becomes markup). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    // Through the CSSOM: the page's CSP refuses inline style attributes.
    else if (key === "style") Object.assign(node.style, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function page(...children) {
  const section = document.getElementById("page");
  section.replaceChildren(...children.flat(2).filter((c) => c !== undefined && c !== null && c !== false));
  return section;
}

function statusBadge(status, id) {
  return el("span", { class: `status ${status || ""}`, id }, status || "");
}

function relative(iso) {
  if (!iso) return "";
  const seconds = Math.round((Date.now() - Date.parse(iso)) / 1000);
  const span = (s) => (s < 60 ? `${s}s` : s < 3600 ? `${Math.floor(s / 60)}m` : s < 86400 ? `${Math.floor(s / 3600)}h` : `${Math.floor(s / 86400)}d`);
  if (Math.abs(seconds) <= 1) return "just now";
  return seconds > 0 ? `${span(seconds)} ago` : `in ${span(-seconds)}`;
}

function timeCell(iso) {
  return el("td", { title: iso || "" }, relative(iso));
}

function duration(ms) {
  if (ms === undefined || ms === null) return "";
  if (ms < 1000) return `${ms}ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)}s`;
  return `${Math.floor(ms / 60000)}m ${Math.floor((ms % 60000) / 1000)}s`;
}

function can(scope) {
  return state.scopes.includes(scope);
}

function notice(text, kind) {
  return el("p", { class: kind === "error" ? "error" : "notice", role: kind === "error" ? "alert" : "status" }, text);
}

/** A table whose columns sort when their header is clicked. */
function sortableTable(columns, rows, sort, onSort) {
  const head = el("tr", {}, columns.map((c) => {
    if (!c.key) return el("th", {}, c.label);
    const sorted = sort && sort.key === c.key ? ` sorted-${sort.dir}` : "";
    return el("th", { class: `sortable${sorted}`, onclick: () => onSort(c.key) }, c.label);
  }));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, rows));
}

function sortRows(items, sort) {
  if (!sort) return items;
  const value = (item) => {
    const v = sort.key.split(".").reduce((o, k) => (o == null ? o : o[k]), item);
    return v == null ? "" : v;
  };
  return [...items].sort((a, b) => {
    const x = value(a), y = value(b);
    const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return sort.dir === "asc" ? order : -order;
  });
}

// ------------------------------------------------------------------ the API

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? `${status} ${body.error || ""}: ${body.message}` : `${status}`);
    this.status = status;
    this.body = body;
  }
}

/** A promise that never settles: what a superseded render's reads resolve to. */
const superseded = () => new Promise(() => {});

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  // Reads belong to the render under way: once a newer render starts (the user moved on, or
  // the live refresh came round), they are aborted and never settle, so the page left behind
  // cannot overwrite the page the user is on. Changes (POST, PUT, PATCH) always complete.
  const signal = method === "GET" && state.rendering ? state.rendering.signal : undefined;
  let response, text;
  try {
    response = await fetch(path, { method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body) });
    if (response.status === 401) {
      signOut("Your session has ended: sign in again.");
      throw new ApiError(401, { message: "signed out" });
    }
    text = await response.text();
  } catch (e) {
    if (signal && signal.aborted) return superseded();
    throw e;
  }
  if (signal && signal.aborted) return superseded();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = { message: text }; }
  if (!response.ok) throw new ApiError(response.status, json);
  return json;
}

const get = (path) => api("GET", path);
const post = (path, body) => api("POST", path, body === undefined ? {} : body);
const enc = encodeURIComponent;

// ------------------------------------------------------------------ signing in (OIDC code + PKCE)

function base64url(bytes) {
  let text = "";
  for (const b of new Uint8Array(bytes)) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function redirectUri() {
  return `${location.origin}${location.pathname}`;
}

async function signIn(loginHint) {
  const verifier = base64url(crypto.getRandomValues(new Uint8Array(32)));
  const challenge = base64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  const nonce = base64url(crypto.getRandomValues(new Uint8Array(16)));
  sessionStorage.setItem(PKCE_KEY, JSON.stringify({ verifier, state: nonce, hash: location.hash }));
  const query = new URLSearchParams({
    response_type: "code", client_id: state.config.clientId, redirect_uri: redirectUri(),
    scope: state.config.scope, state: nonce, code_challenge: challenge, code_challenge_method: "S256",
  });
  if (loginHint) query.set("login_hint", loginHint);
  location.assign(`${state.config.authorizationEndpoint}?${query}`);
}

async function completeSignIn(params) {
  const pending = JSON.parse(sessionStorage.getItem(PKCE_KEY) || "null");
  sessionStorage.removeItem(PKCE_KEY);
  history.replaceState(null, "", redirectUri() + ((pending && pending.hash) || "#/exchanges"));
  if (params.get("error")) throw new Error(`sign-in refused: ${params.get("error_description") || params.get("error")}`);
  if (!pending || pending.state !== params.get("state")) throw new Error("sign-in answer does not match the request (state)");
  const response = await fetch(state.config.tokenEndpoint, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code", code: params.get("code"), redirect_uri: redirectUri(),
      client_id: state.config.clientId, code_verifier: pending.verifier,
    }),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok || !answer.access_token) throw new Error(`sign-in failed: ${answer.error_description || answer.error || response.status}`);
  sessionStorage.setItem(TOKEN_KEY, answer.access_token);
}

function useToken(token) {
  const part = token.split(".")[1] || "";
  let claims = {};
  try { claims = JSON.parse(atob(part.replace(/-/g, "+").replace(/_/g, "/"))); } catch (_) { claims = {}; }
  if (claims.exp && claims.exp * 1000 < Date.now()) return false;
  state.token = token;
  state.subject = claims.sub || "";
  state.scopes = String(claims.scope || (claims.scp || []).join(" ")).split(/\s+/).filter(Boolean);
  return true;
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  clearTimeout(state.timer);
  document.getElementById("nav").hidden = true;
  document.getElementById("who").replaceChildren();
  document.getElementById("page").hidden = true;
  document.getElementById("page").replaceChildren();
  document.getElementById("signin").hidden = false;
  document.getElementById("signin-error").textContent = message || "";
}

function showSignedIn() {
  document.getElementById("signin").hidden = true;
  document.getElementById("page").hidden = false;
  document.getElementById("nav").hidden = false;
  const roles = state.scopes.map((s) => s.replace("handoff:", "")).join(", ");
  document.getElementById("who").replaceChildren(
    el("span", { id: "signed-in-as" }, `${state.subject} (${roles})`),
    el("button", { onclick: () => signOut() }, "Sign out"),
  );
}

// ------------------------------------------------------------------ exchanges

const exchangesView = { sort: { key: "createdAt", dir: "desc" }, selected: new Set(), filters: { live: true }, results: null };

async function exchangesPage() {
  const f = exchangesView.filters;
  const integrations = await get("/integrations").catch(() => ({ items: [] }));
  const codes = [...new Set(integrations.items.map((i) => i.code))];
  const field = (label, input) => el("label", {}, label, input);
  const integration = el("select", { id: "filter-integration" }, el("option", { value: "" }, "all"), codes.map((c) => el("option", { value: c, selected: f.integration === c }, c)));
  const status = el("select", { id: "filter-status" }, ["", "Failed", "TimedOut", "Completed", "Started", "New", "WaitingOnExternalSystem", "WaitingForSubExchangesToFinish"].map((s) => el("option", { value: s, selected: (f.status || "") === s }, s || "all")));
  const since = el("select", { id: "filter-since" }, [["", "any time"], ["3600", "last hour"], ["86400", "last 24 h"], ["604800", "last 7 days"]].map(([v, t]) => el("option", { value: v, selected: (f.since || "") === v }, t)));
  // What is typed survives the live refresh until it is applied.
  const param = el("input", { id: "filter-param", placeholder: "key=value", value: f.paramDraft ?? f.param ?? "", size: 14 });
  param.addEventListener("input", () => (f.paramDraft = param.value));
  const live = el("input", { type: "checkbox", id: "filter-live", checked: f.live });
  const apply = () => {
    Object.assign(f, { integration: integration.value, status: status.value, since: since.value, param: param.value.trim(), paramDraft: undefined, live: live.checked });
    exchangesView.selected.clear();
    render();
  };
  for (const input of [integration, status, since, live]) input.addEventListener("change", apply);
  param.addEventListener("keydown", (e) => e.key === "Enter" && apply());

  const query = new URLSearchParams({ limit: "100" });
  if (f.integration) query.set("integrationCode", f.integration);
  if (f.status) query.set("status", f.status);
  const listed = await get(`/exchanges?${query}`);
  const after = f.since ? Date.now() - Number(f.since) * 1000 : 0;
  const [pk, pv] = (f.param || "").split("=");
  const items = listed.items.filter((e) => Date.parse(e.createdAt) >= after && (!pk || String((e.parameters || {})[pk] ?? "") === (pv || "")));
  const rows = sortRows(items, exchangesView.sort).map((e) => {
    const box = el("input", { type: "checkbox", class: "select", checked: exchangesView.selected.has(e.exchangeId),
      onclick: (ev) => { ev.stopPropagation(); ev.target.checked ? exchangesView.selected.add(e.exchangeId) : exchangesView.selected.delete(e.exchangeId); updateBulk(); } });
    return el("tr", { class: "clickable", dataset: { exchangeId: e.exchangeId, status: e.status }, onclick: () => (location.hash = `#/exchanges/${e.exchangeId}`) },
      can("handoff:operate") ? el("td", {}, box) : null,
      el("td", { class: "id" }, e.exchangeId),
      el("td", {}, `${e.integrationCode} v${e.integrationVersion ?? "null"}`),
      el("td", {}, statusBadge(e.status)),
      el("td", {}, (e.trigger && e.trigger.kind) || ""),
      timeCell(e.createdAt),
      el("td", {}, duration(e.durationMs)),
      el("td", {}, (e.error && e.error.code) || ""));
  });
  const columns = [
    ...(can("handoff:operate") ? [{ label: "" }] : []),
    { label: "Exchange", key: "exchangeId" }, { label: "Integration", key: "integrationCode" }, { label: "Status", key: "status" },
    { label: "Trigger", key: "trigger.kind" }, { label: "Created", key: "createdAt" }, { label: "Duration", key: "durationMs" }, { label: "Error", key: "error.code" },
  ];
  const onSort = (key) => {
    const s = exchangesView.sort;
    exchangesView.sort = { key, dir: s.key === key && s.dir === "desc" ? "asc" : "desc" };
    render();
  };
  const bulk = el("button", { id: "recover-selected", class: "primary", disabled: true, onclick: recoverSelected }, "Recover selected");
  function updateBulk() {
    bulk.disabled = exchangesView.selected.size === 0;
    bulk.textContent = `Recover selected (${exchangesView.selected.size})`;
  }
  updateBulk();
  page(
    el("h1", {}, "Exchanges"),
    el("div", { class: "filters" }, field("Integration", integration), field("Status", status), field("Created", since), field("Parameter", param),
      el("label", {}, "Live", live), el("button", { onclick: apply }, "Apply")),
    can("handoff:operate") ? el("div", { class: "actions" }, bulk) : null,
    exchangesView.results,
    items.length ? sortableTable(columns, rows, exchangesView.sort, onSort) : el("p", { class: "muted" }, "No exchange matches."),
    listed.nextCursor ? el("p", { class: "muted" }, "Showing the newest 100; narrow the filters to see older ones.") : null,
  );
  if (f.live) state.timer = setTimeout(render, 5000);
}

async function recoverSelected() {
  const ids = [...exchangesView.selected];
  const rows = [];
  for (const id of ids) {
    try {
      const r = await post(`/exchanges/${enc(id)}/recover`);
      rows.push(el("tr", { dataset: { exchangeId: id, recovered: "true" } }, el("td", { class: "id" }, id), el("td", {}, `recovering at step ${r.resumedAt}`)));
    } catch (e) {
      rows.push(el("tr", { dataset: { exchangeId: id, recovered: "false" } }, el("td", { class: "id" }, id), el("td", { class: "error" }, e.message)));
    }
  }
  exchangesView.selected.clear();
  const refused = rows.filter((r) => r.dataset.recovered === "false").length;
  exchangesView.results = el("div", { class: "card", id: "recover-results" },
    el("strong", {}, `Recovered ${rows.length - refused}, refused ${refused}`),
    el("table", {}, el("tbody", {}, rows)));
  render();
}

async function exchangePage(id) {
  const e = await get(`/exchanges/${enc(id)}`);
  const [logs, errorEntry, children] = await Promise.all([
    get(`/exchanges/${enc(id)}/logs`).catch(() => ({ items: [] })),
    e.error && e.error.stepId ? get(`/errors/${enc(`${id}.${Number(e.error.stepId)}`)}`).catch(() => null) : null,
    e.subExchanges ? get(`/exchanges?parentExchangeId=${enc(id)}&limit=100`).catch(() => ({ items: [] })) : null,
  ]);
  const act = async (label, fn) => {
    try { await fn(); render(); } catch (err) { document.getElementById("action-result").replaceChildren(notice(`${label}: ${err.message}`, "error")); }
  };
  const actions = [];
  if (can("handoff:operate") && e.recoverable) {
    actions.push(el("button", { id: "recover", class: "primary", onclick: () => act("Recover", () => post(`/exchanges/${enc(id)}/recover`)) }, "Recover"));
    const version = el("input", { id: "recover-version", type: "number", min: 1, placeholder: "version", size: 6 });
    actions.push(version, el("button", { id: "recover-onto", onclick: () => act("Recover onto version", () => post(`/exchanges/${enc(id)}/recover`, { integrationVersion: Number(version.value) })) }, "Recover onto version"));
  }
  const signoffStep = e.steps.find((s) => s.subStep === "ExchangeSignoff" && s.status === "Initial");
  if (can("handoff:invoke") && e.status === "WaitingOnExternalSystem" && signoffStep && e.steps.every((s) => s === signoffStep || s.status !== "Initial")) {
    actions.push(el("button", { id: "signoff", onclick: () => act("Sign off", () => post(`/exchanges/${enc(id)}/signoff`)) }, "Sign off"));
  }
  const total = Math.max(1, ...e.steps.map((s) => s.durationMs || 0));
  const stepRows = e.steps.map((s) => el("tr", { dataset: { stepId: s.stepId, status: s.status } },
    el("td", { class: "mono" }, s.stepId), el("td", {}, s.integrationStep || ""), el("td", {}, s.subStep),
    el("td", {}, statusBadge(s.status)), el("td", {}, `${s.attempts}/${s.maxAttempts}`),
    el("td", {}, s.nextRetryAt ? relative(s.nextRetryAt) : ""),
    el("td", { class: "bar-cell" }, s.durationMs != null ? el("div", { class: `bar ${s.status}`, style: { width: `${Math.max(1, Math.round((s.durationMs / total) * 100))}%` } }) : null, duration(s.durationMs)),
    el("td", {}, s.lastError ? `${s.lastError.classification} ${s.lastError.code}: ${s.lastError.message}` : ""),
    el("td", {}, payloadCell(s.payload)),
    // A step waiting for its next attempt runs it now; a failed secondary of a Completed
    // exchange runs again. A Failed exchange is recovered instead.
    el("td", {}, can("handoff:operate") && ((!e.final && s.nextRetryAt) || (e.status === "Completed" && s.status === "Failed")) ? el("button", { class: "retry", onclick: () => act("Retry", () => post(`/exchanges/${enc(id)}/steps/${enc(s.stepId)}/retry`)) }, "Retry now") : null)));
  const logView = el("div", {});
  const showLogs = (kind) => logView.replaceChildren(el("table", {}, el("tbody", {}, logs.items.filter((l) => !kind || l.type === kind).map((l) =>
    el("tr", {}, el("td", { title: l.timestamp }, relative(l.timestamp)), el("td", { class: "mono" }, l.stepId), el("td", {}, l.type), el("td", {}, l.line))))));
  showLogs("");
  const tabs = el("div", { class: "actions tabs" }, [["", "All"], ["System", "System"], ["User", "User"]].map(([k, t]) => el("button", { onclick: (ev) => { showLogs(k); tabs.querySelectorAll("button").forEach((b) => b.classList.remove("active")); ev.target.classList.add("active"); } }, t)));
  const fact = (k, v) => [el("dt", {}, k), el("dd", {}, v)];
  page(
    el("p", {}, el("a", { href: "#/exchanges" }, "← Exchanges")),
    el("h1", {}, "Exchange ", el("span", { class: "mono" }, e.exchangeId)),
    el("div", { class: "card" }, el("dl", { class: "facts" },
      fact("Status", [statusBadge(e.status, "exchange-status"), e.final ? " final" : "", e.recoverable ? ", recoverable" : ""]),
      fact("Integration", el("a", { href: `#/integrations/${enc(e.integrationCode)}` }, `${e.integrationCode} v${e.integrationVersion ?? "null"}`)),
      fact("Started by", `${(e.trigger && e.trigger.kind) || "?"}${e.trigger && e.trigger.caller ? ` (${e.trigger.caller})` : ""}`),
      fact("Created", `${relative(e.createdAt)} (${e.createdAt})`),
      fact("Duration", duration(e.durationMs) || "running"),
      e.parameters && Object.keys(e.parameters).length ? fact("Parameters", el("span", { class: "mono" }, JSON.stringify(e.parameters))) : null,
      e.error ? fact("Error", el("span", { class: "error", id: "exchange-error" }, `${e.error.classification} · ${e.error.code} · ${e.error.message}`)) : null,
      errorEntry ? fact("What fixes it", errorEntry.action) : null,
      e.held ? fact("Held", `at step ${e.held.stepId} since ${relative(e.held.since)}: ${e.held.reason}`) : null,
      e.parent ? fact("Parent", el("a", { href: `#/exchanges/${enc(e.parent.exchangeId)}` }, e.parent.exchangeId)) : null,
      e.subExchanges ? fact("Sub-exchanges", `${e.subExchanges.total} (${e.subExchanges.completed} completed, ${e.subExchanges.failed} failed, ${e.subExchanges.running} running)`) : null)),
    actions.length ? el("div", { class: "actions" }, actions) : null,
    el("div", { id: "action-result" }),
    el("h2", {}, "Steps"),
    el("table", { id: "steps" }, el("thead", {}, el("tr", {}, ["Step", "Name", "Sub-step", "Status", "Attempts", "Next retry", "Duration", "Last error", "Payload", ""].map((h) => el("th", {}, h)))), el("tbody", {}, stepRows)),
    children && children.items.length ? [el("h2", {}, "Sub-exchanges"), el("table", {}, el("tbody", {}, children.items.map((c) =>
      el("tr", { class: "clickable", onclick: () => (location.hash = `#/exchanges/${c.exchangeId}`) }, el("td", { class: "id" }, c.exchangeId), el("td", {}, statusBadge(c.status)), timeCell(c.createdAt)))))] : null,
    el("h2", {}, "Logs"), tabs, logView,
  );
  if (!e.final) state.timer = setTimeout(render, 2000);
}

function payloadCell(payload) {
  if (!payload) return "";
  if (payload.type === "Raw") {
    const pre = el("pre", { hidden: true }, payload.raw.slice(0, 4000) + (payload.raw.length > 4000 ? "\n…" : ""));
    return el("span", {}, el("button", { onclick: () => (pre.hidden = !pre.hidden) }, "Preview"), " ",
      el("button", { onclick: () => download(new Blob([payload.raw]), "payload") }, "Download"), pre);
  }
  const list = el("span", {});
  const set = payload.dataFileSetId;
  return el("span", {}, el("button", { onclick: async () => {
    const files = await get(`/data-file-sets/${enc(set)}`);
    list.replaceChildren(...files.files.map((f) => el("button", { onclick: () => downloadFile(set, f.name) }, `${f.name} (${f.size} B)`)));
  } }, "Files"), list);
}

async function downloadFile(set, name) {
  const response = await fetch(`/data-file-sets/${enc(set)}/files/${enc(name)}`, { headers: { Authorization: `Bearer ${state.token}` } });
  if (response.ok) download(await response.blob(), name);
}

function download(blob, name) {
  const a = el("a", { href: URL.createObjectURL(blob), download: name });
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

// ------------------------------------------------------------------ integrations

async function integrationsPage() {
  const listed = await get("/integrations");
  const byCode = new Map();
  for (const v of listed.items) if (!byCode.has(v.code)) byCode.set(v.code, { latest: v, versions: [] });
  for (const v of listed.items) byCode.get(v.code).versions.push(v);
  page(el("h1", {}, "Integrations"), el("table", {},
    el("thead", {}, el("tr", {}, ["Code", "Versions", "Endpoint", "Schedule", "Updated"].map((h) => el("th", {}, h)))),
    el("tbody", {}, [...byCode.entries()].map(([code, { latest, versions }]) => el("tr", { class: "clickable", dataset: { code }, onclick: () => (location.hash = `#/integrations/${enc(code)}`) },
      el("td", { class: "mono" }, code),
      el("td", {}, versions.map((v) => `v${v.version ?? "null"}${v.enabled ? "" : " (off)"}`).join(", ")),
      el("td", {}, statusBadge(latest.endpoint.status)),
      el("td", {}, typeof latest.endpoint.schedule === "string" ? latest.endpoint.schedule : latest.endpoint.schedule.expression || ""),
      timeCell(latest.updatedAt))))));
}

async function integrationPage(code) {
  const shown = await get(`/integrations/${enc(code)}`);
  const [log, queue] = await Promise.all([
    get(`/integrations/${enc(code)}/log?limit=50`).catch(() => ({ items: [] })),
    get(`/integrations/${enc(code)}/events?limit=20`).catch((e) => (e.status === 409 ? null : { error: e.message })),
  ]);
  const ep = shown.endpoint;
  const result = el("div", { id: "action-result" });
  const reason = el("input", { id: "endpoint-reason", placeholder: "reason (shown in the log)", size: 30 });
  const command = (verb, extra) => async () => {
    try { await post(`/integrations/${enc(code)}/${verb}`, { ...(reason.value ? { reason: reason.value } : {}), ...(extra || {}) }); render(); } catch (err) { result.replaceChildren(notice(err.message, "error")); }
  };
  const fact = (k, v) => [el("dt", {}, k), el("dd", {}, v)];
  const schedule = typeof ep.schedule === "string" ? ep.schedule
    : ep.schedule.expression ? `${ep.schedule.expression} (${ep.schedule.timezone}); next: ${(ep.schedule.nextRuns || []).map(relative).join(", ")}${ep.schedule.runs ? ` — ${ep.schedule.runs}` : ""}` : ep.schedule.state || "";
  const toggle = (v) => async () => {
    try { await api("PATCH", `/integrations/${enc(code)}/versions/${v.version ?? "null"}`, { enabled: !v.enabled }); render(); } catch (err) { result.replaceChildren(notice(err.message, "error")); }
  };
  page(
    el("p", {}, el("a", { href: "#/integrations" }, "← Integrations")),
    el("h1", {}, code),
    el("div", { class: "card" }, el("dl", { class: "facts" },
      fact("Endpoint", [statusBadge(ep.status, "endpoint-status"), ` since ${relative(ep.since)}`, ep.changedBy ? ` by ${ep.changedBy}` : "", ep.reason ? ` — ${ep.reason}` : ""]),
      fact("On system failure", ep.onSystemFailure), fact("Queue", ep.queueStatus), fact("Schedule", schedule),
      ep.retrying ? fact("Retrying", `${ep.retrying.exchangeId} step ${ep.retrying.stepId}: ${ep.retrying.error} (attempt ${ep.retrying.attempt}/${ep.retrying.maxAttempts})`) : null,
      ep.lastFailure ? fact("Last failure", `${ep.lastFailure.code} ${relative(ep.lastFailure.at)}: ${ep.lastFailure.error}`) : null)),
    can("handoff:operate") ? el("div", { class: "actions" }, reason,
      el("button", { id: "endpoint-enable", onclick: command("enable") }, "Enable"),
      el("button", { id: "endpoint-disable", class: "danger", onclick: command("disable") }, "Disable"),
      el("button", { id: "endpoint-resume", onclick: command("resume") }, "Resume"),
      el("button", { onclick: command("resume", { recoverFailed: true }) }, "Resume and recover failed")) : null,
    result,
    el("h2", {}, "Versions"),
    el("table", {}, el("tbody", {}, shown.versions.map((v) => el("tr", {},
      el("td", {}, `v${v.version ?? "null"}`), el("td", {}, v.enabled ? "enabled" : "disabled"), el("td", {}, `revision ${v.revision}`),
      timeCell(v.updatedAt), el("td", {}, v.updatedBy || ""),
      el("td", {}, can("handoff:admin") ? el("button", { onclick: toggle(v) }, v.enabled ? "Disable version" : "Enable version") : null),
      el("td", {}, el("details", {}, el("summary", {}, "definition"), el("pre", {}, JSON.stringify(v.definition, null, 2)))))))),
    el("h2", {}, "Event queue"),
    queue === null ? el("p", { class: "muted" }, "Not event-based.") : queue.error ? notice(queue.error, "error") : [
      el("p", {}, `${queue.pending} pending${queue.oldestAgeSeconds != null ? `, oldest ${queue.oldestAgeSeconds}s` : ""}, ${queue.discarded} discarded${queue.takenBy ? `, taken by ${queue.takenBy}` : ""}`),
      el("table", {}, el("tbody", {}, queue.items.map((ev) => el("tr", {}, el("td", { class: "mono" }, ev.eventId), el("td", {}, ev.key || ""), el("td", {}, ev.type || ""), timeCell(ev.receivedAt), el("td", {}, ev.takenBy || "")))))],
    el("h2", {}, "Endpoint log"),
    el("table", {}, el("tbody", {}, log.items.map((entry) => el("tr", {}, timeCell(entry.at), el("td", {}, entry.kind),
      el("td", {}, entry.kind === "statusChanged" ? `${entry.from} → ${entry.to}${entry.by ? ` by ${entry.by}` : ""}${entry.reason ? `: ${entry.reason}` : ""}`
        : entry.kind === "invoked" ? el("a", { href: `#/exchanges/${enc(entry.exchangeId)}` }, entry.exchangeId) : entry.reason || ""))))),
  );
}

// ------------------------------------------------------------------ errors, mappings, health

const errorsView = { classification: "", state: "open" };

async function errorsPage() {
  const query = new URLSearchParams({ limit: "100" });
  if (errorsView.classification) query.set("classification", errorsView.classification);
  if (errorsView.state) query.set("state", errorsView.state);
  const listed = await get(`/errors?${query}`);
  const select = (key, options) => el("select", { onchange: (ev) => { errorsView[key] = ev.target.value; render(); } },
    options.map(([v, t]) => el("option", { value: v, selected: errorsView[key] === v }, t)));
  const rows = listed.items.map((e) => {
    const note = el("input", { placeholder: "what was fixed", size: 24, class: "resolve-note" });
    const resolve = async () => {
      try { await post(`/errors/${enc(e.errorId)}/resolve`, { note: note.value }); render(); } catch (err) { cell.append(notice(err.message, "error")); }
    };
    const cell = el("td", {}, can("handoff:operate") && e.state === "open" ? [note, " ", el("button", { class: "resolve", onclick: resolve }, "Resolve")] : e.resolution ? `${e.resolution.by}: ${e.resolution.note}` : "");
    return el("tr", { dataset: { errorId: e.errorId } },
      el("td", { class: "id" }, el("a", { href: `#/exchanges/${enc(e.exchangeId)}` }, e.errorId)),
      el("td", {}, e.integrationCode), el("td", {}, e.classification), el("td", {}, e.code), el("td", {}, statusBadge(e.state)),
      el("td", {}, e.occurrences), timeCell(e.at), el("td", {}, e.message), el("td", {}, e.action), cell);
  });
  page(el("h1", {}, "Errors"),
    el("div", { class: "filters" },
      el("label", {}, "Classification", select("classification", [["", "all"], ["business", "business"], ["system", "system"]])),
      el("label", {}, "State", select("state", [["", "all"], ["open", "open"], ["resolved", "resolved"]]))),
    listed.items.length ? el("table", {}, el("thead", {}, el("tr", {}, ["Error", "Integration", "Class", "Code", "State", "Times", "At", "Message", "What fixes it", ""].map((h) => el("th", {}, h)))), el("tbody", {}, rows))
      : el("p", { class: "muted" }, "No error matches."));
}

async function mappingsPage(name) {
  const input = el("input", { id: "mapping-name", value: name || "", placeholder: "mapping name" });
  const open = () => (location.hash = `#/mappings/${enc(input.value.trim())}`);
  input.addEventListener("keydown", (e) => e.key === "Enter" && open());
  const parts = [el("h1", {}, "Mappings"), el("div", { class: "filters" }, el("label", {}, "Name", input), el("button", { onclick: open }, "Open"))];
  if (name) {
    let mapping = null;
    try { mapping = await get(`/mappings/${enc(name)}`); } catch (e) { if (e.status !== 404) throw e; }
    const text = el("textarea", { id: "mapping-document", readonly: !can("handoff:admin") }, JSON.stringify(mapping ? mapping.mapping : { fields: {}, values: {} }, null, 2));
    const result = el("div", {});
    const save = async () => {
      let doc;
      try { doc = JSON.parse(text.value); } catch (e) { result.replaceChildren(notice(`not JSON: ${e.message}`, "error")); return; }
      try { const saved = await api("PUT", `/mappings/${enc(name)}`, doc); result.replaceChildren(notice(`saved: revision ${saved.revision}`)); } catch (e) { result.replaceChildren(notice(e.message, "error")); }
    };
    parts.push(el("p", { class: "muted" }, mapping ? `revision ${mapping.revision}, updated ${relative(mapping.updatedAt)}` : "No such mapping yet."), text,
      can("handoff:admin") ? el("div", { class: "actions" }, el("button", { class: "primary", onclick: save }, mapping ? "Save" : "Create")) : null, result);
  }
  page(parts);
}

async function healthPage() {
  let health;
  try { health = await get("/health/components"); } catch (e) { if (e.status === 503 && e.body) health = e.body; else throw e; }
  page(el("h1", {}, "Health ", statusBadge(health.status)),
    el("table", {}, el("tbody", {}, Object.entries(health.components).map(([name, c]) => el("tr", {}, el("td", {}, name), el("td", {}, statusBadge(c.status)), el("td", { class: "mono" }, c.errorId || ""))))),
    el("h2", {}, "Scheduled jobs"),
    health.jobs.length ? el("table", { id: "job-runs" }, el("thead", {}, el("tr", {}, ["Job", "Last run", "Took", "Outcome"].map((h) => el("th", {}, h)))),
      el("tbody", {}, health.jobs.map((j) => el("tr", { dataset: { job: j.job } }, el("td", {}, j.job), timeCell(j.startedAt), el("td", {}, duration(j.durationMs)),
        el("td", {}, statusBadge(j.succeeded ? "ok" : "Failed"))))))
      : el("p", { class: "muted" }, "No job has run yet."),
    el("p", { class: "muted" }, "Each job also pings the monitor its template parameter names (RegularJobHeartbeatUrl, ErrorJobHeartbeatUrl); their alarms are in CloudWatch."));
}

// ------------------------------------------------------------------ routing

async function render() {
  clearTimeout(state.timer);
  if (state.rendering) state.rendering.abort();
  state.rendering = new AbortController();
  if (!state.token) return;
  const [, name, id] = (location.hash || "#/exchanges").split("/").map(decodeURIComponent);
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === name);
  try {
    if (name === "exchanges" && id) await exchangePage(id);
    else if (name === "integrations" && id) await integrationPage(id);
    else if (name === "integrations") await integrationsPage();
    else if (name === "errors") await errorsPage();
    else if (name === "mappings") await mappingsPage(id);
    else if (name === "health") await healthPage();
    else await exchangesPage();
  } catch (e) {
    if (state.token) page(notice(e.message, "error"));
  }
}

async function start() {
  const button = document.getElementById("signin-button");
  try {
    state.config = await (await fetch("/console/config.json")).json();
  } catch (e) {
    document.getElementById("signin-error").textContent = "The console's configuration could not be read.";
    return;
  }
  if (!state.config.authorizationEndpoint) {
    button.disabled = true;
    document.getElementById("signin-error").textContent = "Sign-in is not configured (template parameters ConsoleAuthorizationEndpoint and ConsoleTokenEndpoint).";
    return;
  }
  button.addEventListener("click", () => signIn(state.config.developmentIssuer ? "developer" : undefined));
  if (state.config.developmentIssuer) {
    document.getElementById("signin-more").replaceChildren("Development issuer: ",
      el("a", { href: "#", id: "signin-viewer", onclick: (e) => { e.preventDefault(); signIn("viewer"); } }, "sign in read-only as viewer"));
  }
  const params = new URLSearchParams(location.search);
  try {
    if (params.has("code") || params.has("error")) await completeSignIn(params);
  } catch (e) {
    signOut(e.message);
    return;
  }
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token && useToken(token)) {
    showSignedIn();
    window.addEventListener("hashchange", render);
    render();
  } else {
    signOut();
  }
}

start();
