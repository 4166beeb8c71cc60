// Tern web console: plain DOM, no framework, no network but this origin.
// Every figure comes from the controller: the cluster API's own REST
// resources (/v1/..., documented at /v1/openapi.json), /api/hosts adds the
// scheduler's view of each host, and a job's progress arrives as
// server-sent events.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { me: null, servers: [], hosts: [], jobs: [], timer: null, source: null, migrate: null };

// ---- helpers -------------------------------------------------------------

function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids.flat()) {
    if (k === null || k === undefined || k === false) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

async function api(path, body) {
  return body === undefined ? rest("GET", path) : rest("POST", path, body);
}

// One request: the console's header on anything but a GET (a cross-site
// form cannot send it), JSON both ways, the API's message on failure.
async function rest(method, path, body) {
  const opt = { method, headers: method === "GET" ? {} : { "x-tern-console": "1" } };
  if (body !== undefined) {
    opt.headers["content-type"] = "application/json";
    opt.body = JSON.stringify(body);
  }
  const r = await fetch(path, opt);
  const t = await r.text();
  let v = null;
  try { v = t ? JSON.parse(t) : null; } catch (_) { v = null; }
  if (!r.ok) {
    const e = new Error((v && v.message) || `${r.status} ${r.statusText}`);
    e.status = r.status;
    throw e;
  }
  return v;
}
const seg = encodeURIComponent;

function toast(msg, bad) {
  const t = h("div", { class: bad ? "toast bad" : "toast" }, msg);
  $("toasts").append(t);
  setTimeout(() => t.remove(), bad ? 9000 : 4000);
}

const canWrite = () => state.me && state.me.role === "read-write";
function bytes(b) {
  if (b === null || b === undefined) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return `${Number.isInteger(b) ? b : b.toFixed(1)} ${u[i]}`;
}
const rate = (b) => (b === null || b === undefined ? "–" : `${bytes(b)}/s`);
const ms = (m) => (m === null || m === undefined ? "–" : m >= 10000 ? `${(m / 1000).toFixed(1)} s` : `${m} ms`);
const when = (t) => (t ? new Date(t).toLocaleTimeString() : "–");
const badge = (text, cls) => h("span", { class: `badge s-${cls || text}` }, text.replace(/_/g, " "));

function hostStatus(r) {
  if (r.status.down) return "down";
  if (r.status.lapsed) return "lapsed";
  if (r.shutting_down) return "shutting down";
  if (r.maintenance) return "maintenance";
  return "online";
}

// ---- login and navigation -------------------------------------------------

async function boot() {
  $("login-form").addEventListener("submit", login);
  $("login-cert").addEventListener("click", loginWithCertificate);
  $("logout").addEventListener("click", logout);
  wireMigrateDialog();
  $("output-close").addEventListener("click", () => $("output").close());
  window.addEventListener("hashchange", route);
  // A click elsewhere or Escape closes an open row menu.
  document.addEventListener("click", (e) => {
    for (const d of document.querySelectorAll("details.menu[open]")) if (!d.contains(e.target)) d.open = false;
  });
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Escape") return;
    const open = document.querySelector("details.menu[open]");
    if (open) { open.open = false; open.querySelector("summary").focus(); }
  });
  try {
    state.me = await api("/api/me");
  } catch (_) {
    state.me = null;
  }
  route();
}

async function login(ev) {
  ev.preventDefault();
  $("login-error").textContent = "";
  try {
    state.me = await api("/api/login", { user: $("login-user").value, password: $("login-password").value });
    $("login-password").value = "";
    if (!location.hash || location.hash === "#/login") location.hash = "#/servers";
    route();
  } catch (e) {
    $("login-error").textContent = e.message;
  }
}

// The client certificate the browser presented to a console served with
// --console-tls: the cluster API's operator identities.
async function loginWithCertificate() {
  $("login-error").textContent = "";
  try {
    state.me = await api("/api/login-cert", {});
    if (!location.hash || location.hash === "#/login") location.hash = "#/servers";
    route();
  } catch (e) {
    $("login-error").textContent = e.message;
  }
}

async function logout() {
  try { await api("/api/logout", {}); } catch (_) { /* gone anyway */ }
  state.me = null;
  route();
}

function route() {
  clearInterval(state.timer);
  if (state.source) { state.source.close(); state.source = null; }
  const logged = !!state.me;
  $("login").hidden = logged;
  $("nav").hidden = !logged;
  $("who").hidden = !logged;
  $("page").replaceChildren();
  state.lastHosts = state.lastServers = state.lastJobs = null;
  if (!logged) { $("login-user").focus(); return; }
  $("who-name").textContent = `${state.me.user} (${state.me.role})`;
  const [, page, arg] = (location.hash || "#/servers").split("/");
  for (const p of ["hosts", "servers", "jobs"]) {
    $(`nav-${p}`).toggleAttribute("aria-current", false);
  }
  const cur = $(`nav-${page}`);
  if (cur) cur.setAttribute("aria-current", "page");
  if (page === "hosts") listPage(renderHosts);
  else if (page === "jobs" && arg) progressPage(decodeURIComponent(arg));
  else if (page === "jobs") listPage(renderJobs);
  else listPage(renderServers);
}

// A list page re-renders every few seconds, unless the user is in a menu.
function listPage(render) {
  const tick = async () => {
    if (document.querySelector("details.menu[open]") || $("migrate").open || $("output").open) return;
    try {
      await render();
    } catch (e) {
      if (e.status === 403 && /not logged in/.test(e.message)) { state.me = null; route(); return; }
      toast(e.message, true);
    }
  };
  tick();
  state.timer = setInterval(tick, 3000);
}

function keepFocus(fn) {
  const id = document.activeElement && document.activeElement.id;
  fn();
  if (id && $(id)) $(id).focus();
}

// ---- hosts ------------------------------------------------------------------

// Whether `key`'s data changed since the last render (a page re-renders
// only then, so focus and open menus survive the refresh).
function changed(key, data) {
  const js = JSON.stringify(data);
  if (state[key] === js && $("page").childElementCount) return false;
  state[key] = js;
  return true;
}

async function renderHosts() {
  const rows = await api("/api/hosts");
  if (!changed("lastHosts", rows)) return;
  const body = rows.map(({ record: r, view: v }) => {
    const st = hostStatus(r);
    const pools = v.pools.map((p) => `${p.name}: ${bytes(p.free_bytes)}${p.shared ? " (shared)" : ""}`).join(", ");
    const labels = Object.entries(r.report.labels || {}).map(([k, x]) => h("span", {}, `${k}=${x}`));
    const name = r.report.name;
    const toggle = (field, label) => h("label", { class: "inline" },
      h("input", {
        type: "checkbox", id: `${field}-${name}`, checked: r[field] ? true : null, disabled: canWrite() ? null : true,
        onchange: (e) => setPolicy(name, field, e.target.checked),
      }), label);
    return h("tr", { "data-host": name },
      h("th", { scope: "row" }, name),
      h("td", {}, badge(st, st.split(" ")[0])),
      h("td", {}, r.report.facts.cpu_model, h("div", { class: "muted" }, `microcode ${r.report.facts.microcode || "–"}`)),
      h("td", { class: "opt" }, r.report.facts.kernel),
      h("td", { class: "opt" }, r.report.facts.qemu_version),
      h("td", { class: "num" }, `${v.vcpus_total - v.vcpus_used} / ${v.vcpus_total}`),
      h("td", { class: "num" }, `${bytes((v.memory_total_mib - v.memory_used_mib) * 1048576)}`),
      h("td", { class: "opt" }, pools || "–"),
      h("td", { class: "opt labels" }, labels.length ? labels : "–"),
      h("td", { class: "num" }, `${v.inbound} in, ${v.outbound} out`),
      h("td", { class: "opt" }, toggle("auto_migrate_on_host_down", "Host down"), toggle("auto_migrate_on_host_shutdown", "Shutdown")),
      h("td", {}, canWrite() && !r.maintenance
        ? h("button", { type: "button", id: `maint-${name}`, onclick: () => maintenance(name) }, "Enter maintenance")
        : canWrite() && r.maintenance
          ? h("button", { type: "button", id: `leave-${name}`, onclick: () => leaveMaintenance(name) }, "Leave maintenance")
          : ""));
  });
  const table = h("div", { class: "scroll" }, h("table", { id: "hosts-table" },
    h("caption", { class: "sr" }, "Hosts"),
    h("thead", {}, h("tr", {}, ...["Host", "Status", "CPU", "Kernel", "QEMU", "Free vCPUs", "Free memory", "Free disk per pool", "Labels", "Migrations", "Auto-migrate on", ""]
      .map((c, i) => h("th", { scope: "col", class: [3, 4, 7, 8, 10].includes(i) ? "opt" : [5, 6, 9].includes(i) ? "num" : null }, c)))),
    h("tbody", {}, body)));
  keepFocus(() => $("page").replaceChildren(h("h1", {}, "Hosts"), table));
}

async function setPolicy(host, field, on) {
  const body = {};
  body[field === "auto_migrate_on_host_down" ? "on_host_down" : "on_host_shutdown"] = on;
  try {
    await rest("PATCH", `/v1/hosts/${seg(host)}/auto-migrate`, body);
    toast(`${host}: ${field.replace(/_/g, " ")} ${on ? "on" : "off"}`);
  } catch (e) {
    toast(e.message, true);
  }
  renderHosts().catch(() => {});
}

async function leaveMaintenance(host) {
  try {
    await rest("DELETE", `/v1/hosts/${seg(host)}/maintenance`);
    toast(`${host} takes new servers again`);
  } catch (e) {
    toast(e.message, true);
  }
  renderHosts().catch(() => {});
}

async function maintenance(host) {
  if (!confirm(`Move every server off ${host} and keep new ones away?`)) return;
  try {
    const jobs = await rest("POST", `/v1/hosts/${seg(host)}/maintenance`);
    toast(`${host} in maintenance: ${jobs.length} job(s) queued`);
  } catch (e) {
    toast(e.message, true);
  }
  renderHosts().catch(() => {});
}

// ---- servers ----------------------------------------------------------------

async function renderServers() {
  state.servers = await rest("GET", "/v1/servers");
  if (!changed("lastServers", state.servers) && $("servers-body")) return;
  let tb = $("servers-body");
  if (!tb) {
    const search = h("input", { id: "server-search", type: "search", placeholder: "name, host or state", oninput: filterServers });
    const sel = h("select", { id: "server-state", onchange: filterServers },
      ...["", "running", "ready", "start_migrate", "live_migrating", "migrating", "migrate_failed", "unknown", "lost"]
        .map((s) => h("option", { value: s }, s ? s.replace(/_/g, " ") : "any state")));
    tb = h("tbody", { id: "servers-body" });
    $("page").replaceChildren(h("h1", {}, "Servers"),
      h("div", { class: "toolbar" },
        h("div", {}, h("label", { for: "server-search" }, "Search"), search),
        h("div", {}, h("label", { for: "server-state" }, "State"), sel)),
      h("div", { class: "scroll" }, h("table", { id: "servers-table" },
        h("caption", { class: "sr" }, "Servers"),
        h("thead", {}, h("tr", {}, ...["Name", "Host", "State", "vCPUs", "Memory", "Disks", ""]
          .map((c, i) => h("th", { scope: "col", class: i === 5 ? "opt" : i === 3 ? "num opt" : i === 4 ? "num" : null }, c)))),
        tb)));
  }
  tb.replaceChildren(...state.servers.map(serverRow));
  filterServers();
}

function serverRow(s) {
  const d = s.domain;
  const name = d.name;
  const items = [];
  if (canWrite()) {
    items.push(h("button", { type: "button", id: `migrate-${name}`, onclick: () => openMigrate(name) }, "Migrate…"));
    if (!d.active) items.push(h("button", { type: "button", id: `start-${name}`, onclick: () => serverAction(name, "start") }, "Start"));
    if (d.active) items.push(h("button", { type: "button", id: `shutdown-${name}`, onclick: () => serverAction(name, "shutdown") }, "Shut down"));
  }
  items.push(h("button", { type: "button", id: `output-${name}`, onclick: () => openOutput(name) }, "Console output"));
  const disks = d.disks.map((k) => `${k.target}: ${bytes(k.bytes)}, ${k.shared ? "shared" : "local"}${k.pool ? ` in pool ${k.pool}` : ""}`).join("; ");
  return h("tr", { "data-server": name, "data-search": `${name} ${s.host} ${s.state}`, "data-state": s.state },
    h("th", { scope: "row" }, name),
    h("td", { class: "host" }, s.host),
    h("td", { class: "state" }, badge(s.state), s.error ? h("div", { class: "error" }, s.error) : null),
    h("td", { class: "num opt" }, d.vcpus),
    h("td", { class: "num" }, bytes(d.memory_mib * 1048576)),
    h("td", { class: "opt" }, disks || "–"),
    h("td", {}, h("details", { class: "menu", id: `menu-${name}`, ontoggle: placeMenu },
      h("summary", { "aria-label": `Actions for ${name}` }, "Actions ▾"),
      h("div", { class: "items" }, items))));
}

function filterServers() {
  const q = ($("server-search") || {}).value || "";
  const st = ($("server-state") || {}).value || "";
  for (const tr of document.querySelectorAll("#servers-body tr")) {
    const hit = tr.dataset.search.toLowerCase().includes(q.toLowerCase()) && (!st || tr.dataset.state === st);
    tr.hidden = !hit;
  }
}

async function serverAction(name, action) {
  closeMenus();
  if (action === "shutdown") toast(`${name}: ACPI power button pressed; waiting for it to power off`);
  try {
    await api("/api/server-action", { server: name, action });
    toast(`${name}: ${action === "start" ? "started" : "shut off"}`);
  } catch (e) {
    toast(e.message, true);
  }
}

// A row menu floats over the page (a table's scroll box would clip it).
function placeMenu(ev) {
  const d = ev.currentTarget;
  if (!d.open) return;
  for (const o of document.querySelectorAll("details.menu[open]")) if (o !== d) o.open = false;
  const r = d.querySelector("summary").getBoundingClientRect();
  const m = d.querySelector(".items");
  m.style.top = `${r.bottom + 2}px`;
  m.style.right = `${Math.max(4, window.innerWidth - r.right)}px`;
}

function closeMenus() {
  for (const d of document.querySelectorAll("details.menu[open]")) d.open = false;
}

async function openOutput(name) {
  closeMenus();
  const pre = $("output-text");
  pre.textContent = "";
  $("output-title").textContent = `Console output of ${name}`;
  $("output").showModal();
  let offset = 0;
  const follow = async () => {
    if (!$("output").open) return;
    try {
      const c = await api(`/api/console-output?server=${encodeURIComponent(name)}&offset=${offset}`);
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent += c.data;
      offset = c.next_offset;
      if (atEnd) pre.scrollTop = pre.scrollHeight;
      if (c.active) setTimeout(follow, 1000);
    } catch (e) {
      pre.textContent += `\n[${e.message}]`;
    }
  };
  follow();
}

// ---- migrate dialog ---------------------------------------------------------

function migrateOpts() {
  const m = state.migrate;
  const pick = $("dest-pick").checked;
  const chosen = document.querySelector("input[name=dest-host]:checked");
  const bw = parseInt($("opt-bw").value, 10);
  return {
    prefer_host: pick && chosen ? chosen.value : null,
    auto_start: !m.live && $("opt-autostart").checked,
    skip_cpu_check: m.live && $("opt-skip-cpu").checked,
    skip_kernel_check: m.live && $("opt-skip-kernel").checked,
    enable_tls: m.live && $("opt-tls").checked,
    quickly_finish: m.live && $("opt-quick").checked,
    max_bandwidth_mb: m.live && bw > 0 ? bw : null,
  };
}

function wireMigrateDialog() {
  $("migrate-cancel").addEventListener("click", () => $("migrate").close());
  $("migrate-ok").addEventListener("click", submitMigrate);
  $("forecast-run").addEventListener("click", runTimeForecast);
  for (const id of ["opt-skip-cpu", "opt-skip-kernel"]) $(id).addEventListener("change", loadVerdicts);
  for (const id of ["dest-auto", "dest-pick"]) $(id).addEventListener("change", () => { syncPick(); staleForecast(); });
  for (const id of ["opt-quick", "opt-tls", "opt-bw"]) $(id).addEventListener("change", staleForecast);
}

function syncPick() {
  const pick = $("dest-pick").checked;
  for (const r of document.querySelectorAll("input[name=dest-host]")) r.disabled = !pick || r.dataset.ok !== "1";
}

function staleForecast() {
  $("forecast-text").textContent = "Options changed: forecast again.";
  $("forecast-inputs").replaceChildren();
}

async function openMigrate(name) {
  closeMenus();
  const s = state.servers.find((x) => x.domain.name === name);
  const live = !!(s && s.domain.active);
  state.migrate = { name, live };
  $("migrate-title").textContent = `Migrate ${name}`;
  $("migrate-kind").textContent = live
    ? `Live migration: ${name} keeps running on ${s.host} while its memory moves.`
    : `Cold migration: ${name} is stopped; its definition and disks move.`;
  for (const e of document.querySelectorAll("#migrate .live-only")) e.hidden = !live;
  for (const e of document.querySelectorAll("#migrate .cold-only")) e.hidden = live;
  $("migrate-form").reset();
  $("migrate-error").textContent = "";
  $("forecast-text").textContent = "Choose a destination, then forecast.";
  $("forecast-inputs").replaceChildren();
  $("verdicts").replaceChildren(h("tr", {}, h("td", { colspan: 3 }, "Asking the scheduler…")));
  $("migrate").showModal();
  await loadVerdicts();
}

async function loadVerdicts() {
  const m = state.migrate;
  const opts = migrateOpts();
  const prev = opts.prefer_host;
  try {
    const rows = await rest("POST", `/v1/servers/${seg(m.name)}/forecast`, { live: m.live, options: { ...opts, prefer_host: null } });
    $("verdicts").replaceChildren(...rows.map((r) => h("tr", { "data-host": r.host, "data-ok": r.ok ? "1" : "0" },
      h("td", {}, h("label", { class: "inline" },
        h("input", { type: "radio", name: "dest-host", value: r.host, id: `dest-${r.host}`, "data-ok": r.ok ? "1" : "0",
          checked: prev === r.host ? true : null, onchange: staleForecast }), r.host)),
      h("td", { class: r.ok ? "yes" : "no" }, r.ok ? "yes" : "no"),
      h("td", { class: "reason" }, r.detail))));
    syncPick();
  } catch (e) {
    $("migrate-error").textContent = e.message;
  }
}

async function runTimeForecast() {
  const m = state.migrate;
  $("forecast-text").textContent = "Sampling the guest and the link…";
  $("forecast-run").disabled = true;
  try {
    const r = await api("/api/time-forecast", { server: m.name, opts: migrateOpts() });
    const f = r.forecast;
    const p = f.prediction;
    const g = f.range;
    const span = g
      ? `${ms(g.total.p10_ms)}–${ms(g.total.p90_ms)} in all (median ${ms(g.total.p50_ms)}),` +
        ` ${ms(g.downtime.p10_ms)}–${ms(g.downtime.p90_ms)} of downtime (median ${ms(g.downtime.p50_ms)})`
      : `about ${ms(p.total_ms)} in all, ${ms(p.downtime_ms)} of downtime`;
    $("forecast-text").textContent =
      `To ${r.host}: ${span}` +
      ` (${p.converges ? "converges" : "does not converge without the policy"}; link ${rate(f.bandwidth)},` +
      ` guest dirtying ${rate(f.dirty_rate)}). ${f.verdict}`;
    const list = $("forecast-inputs");
    list.replaceChildren();
    if (g) {
      const i = g.inputs;
      const r3 = (e, f) => `${f(e.p50)} (${f(e.p10)}–${f(e.p90)}): ${e.source}`;
      const pct = (v) => `${Math.round(v * 100)} %`;
      const ms0 = (v) => `${Math.round(v)} ms`;
      for (const [k, v] of [
        ["Zero pages", r3(i.zero_fraction, pct)],
        ["Send rate", r3(i.send_rate, rate)],
        ["One migration thread", r3(i.thread_rate, rate)],
        ["Guest dirtying", r3(i.dirty_rate, rate)],
        ["Setup", r3(i.setup_ms, ms0)],
        ["Switch-over", r3(i.switch_ms, ms0)],
      ]) list.append(h("li", {}, `${k}: ${v}`));
    }
  } catch (e) {
    $("forecast-text").textContent = e.message;
  } finally {
    $("forecast-run").disabled = false;
  }
}

async function submitMigrate() {
  const m = state.migrate;
  const opts = migrateOpts();
  if ($("dest-pick").checked && !opts.prefer_host) {
    $("migrate-error").textContent = "Pick a host that qualifies, or choose Automatic.";
    return;
  }
  try {
    const job = await rest("POST", `/v1/servers/${seg(m.name)}/migrate`, { live: m.live, options: opts });
    $("migrate").close();
    toast(`${m.name}: job ${job.id} queued`);
    location.hash = `#/jobs/${job.id}`;
  } catch (e) {
    $("migrate-error").textContent = e.message;
  }
}

// ---- jobs ---------------------------------------------------------------------

async function renderJobs() {
  state.jobs = await rest("GET", "/v1/jobs");
  state.finals = state.finals || {};
  const done = state.jobs.filter((j) => ["succeeded", "failed", "cancelled"].includes(j.state) && j.kind !== "rescue");
  await Promise.all(done.slice(-20).filter((j) => !state.finals[j.id]).map(async (j) => {
    try {
      const hist = await api(`/api/jobs/${encodeURIComponent(j.id)}/history`);
      if (hist.finished) state.finals[j.id] = hist.last || {};
    } catch (_) { /* shown as unknown */ }
  }));
  if (!changed("lastJobs", [state.jobs, state.finals])) return;
  const groups = [
    ["Running", (j) => j.state === "running"],
    ["Queued", (j) => j.state === "queued"],
    ["Finished", (j) => ["succeeded", "failed", "cancelled"].includes(j.state)],
  ];
  const out = [h("h1", {}, "Jobs")];
  for (const [title, pred] of groups) {
    const jobs = state.jobs.filter(pred).reverse();
    out.push(h("h2", {}, `${title} (${jobs.length})`));
    if (!jobs.length) { out.push(h("p", { class: "muted" }, "None.")); continue; }
    out.push(h("div", { class: "scroll" }, h("table", { id: `jobs-${title.toLowerCase()}` },
      h("thead", {}, h("tr", {}, ...["Job", "Kind", "Server", "From → to", "State", "Why", "Created", "Took", "Downtime", "Sent"]
        .map((c, i) => h("th", { scope: "col", class: [1, 6, 9].includes(i) ? "opt" : null }, c)))),
      h("tbody", {}, jobs.map((j) => h("tr", { "data-job": j.id },
        h("td", {}, h("a", { href: `#/jobs/${j.id}` }, j.id)),
        h("td", { class: "opt" }, j.kind),
        h("td", {}, j.server),
        h("td", {}, `${j.source} → ${j.dest || "?"}`),
        h("td", {}, badge(j.state, j.state === "running" ? "running-job" : j.state)),
        h("td", {}, j.note || (j.state === "succeeded" ? "done" : "–")),
        h("td", { class: "opt" }, when(j.created_ms)),
        h("td", {}, j.finished_ms && j.started_ms ? ms(j.finished_ms - j.started_ms) : "–"),
        h("td", {}, finalFig(j, (f) => (f.downtime_ms === null || f.downtime_ms === undefined ? null : ms(f.downtime_ms)))),
        h("td", { class: "opt" }, finalFig(j, (f) => (f.data_processed ? bytes(f.data_processed) : null)))))))));
  }
  keepFocus(() => $("page").replaceChildren(...out));
}

// A finished job's final figure from its kept history, "–" if none.
function finalFig(j, pick) {
  const f = (state.finals || {})[j.id];
  return (f && pick(f)) || "–";
}

// ---- progress ---------------------------------------------------------------

function fig(id, label) {
  return h("div", { class: "fig" }, h("div", { class: "k" }, label), h("div", { class: "v", id }, "–"));
}

function progressPage(id) {
  const samples = [];
  let job = null;
  let updates = 0;
  const cancel = h("button", { type: "button", id: "job-cancel", class: "danger", hidden: true, onclick: () => cancelJob(id) }, "Cancel migration");
  $("page").replaceChildren(
    h("h1", { id: "job-title" }, `Job ${id}`),
    h("p", {}, h("span", { id: "job-state" }, "…"), " ", h("span", { id: "job-note", class: "muted" }), " ", cancel),
    h("section", { id: "progress", "aria-label": "Figures", "data-updates": "0" },
      h("div", { class: "grid" },
        fig("f-phase", "Phase"), fig("f-iteration", "Iteration"), fig("f-sent", "Sent"),
        fig("f-remaining", "Remaining"), fig("f-rate", "Transfer rate"), fig("f-dirty", "Dirty rate"),
        fig("f-expected", "Expected downtime"), fig("f-limit", "Downtime limit"),
        fig("f-total", "Total time"), fig("f-downtime", "Downtime"))),
    h("div", { class: "charts" },
      h("div", { class: "chart" }, h("h3", {}, "Transfer rate"), h("canvas", { id: "chart-rate", role: "img", "aria-label": "Transfer rate over time" })),
      h("div", { class: "chart" }, h("h3", {}, "Remaining"), h("canvas", { id: "chart-remaining", role: "img", "aria-label": "Bytes remaining over time" }))),
    h("h3", {}, "Policy steps and events"),
    h("ol", { id: "steps", class: "steps" }));
  const draw = () => {
    chart($("chart-rate"), samples.map((s) => [s.at_ms, s.rate]), "--chart1", rate);
    chart($("chart-remaining"), samples.map((s) => [s.at_ms, s.remaining]), "--chart2", bytes);
  };
  const src = new EventSource(`/api/jobs/${encodeURIComponent(id)}/events`);
  state.source = src;
  src.addEventListener("job", (e) => {
    job = JSON.parse(e.data);
    $("job-title").textContent = `${job.kind === "live-migrate" ? "Live migration" : "Migration"} of ${job.server}: ${job.source} → ${job.dest || "?"}`;
    $("job-state").replaceChildren(badge(job.state, job.state === "running" ? "running-job" : job.state));
    $("job-note").textContent = job.note || "";
    cancel.hidden = !canWrite() || ["succeeded", "failed", "cancelled"].includes(job.state);
    if (job.finished_ms && job.started_ms) $("f-total").textContent = ms(job.finished_ms - job.started_ms);
  });
  src.addEventListener("info", (e) => {
    const i = JSON.parse(e.data);
    if (!i) return;
    $("f-phase").textContent = i.phase || "–";
    $("f-iteration").textContent = i.iteration;
    $("f-sent").textContent = bytes(i.data_processed);
    $("f-remaining").textContent = bytes(i.data_remaining);
    $("f-rate").textContent = rate(i.memory_bandwidth || i.disk_rate);
    $("f-dirty").textContent = rate(i.dirty_rate);
    $("f-expected").textContent = ms(i.expected_downtime_ms);
    $("f-limit").textContent = ms(i.downtime_limit_ms);
    if (i.downtime_ms !== null && i.downtime_ms !== undefined) $("f-downtime").textContent = ms(i.downtime_ms);
    updates++;
    $("progress").dataset.updates = String(updates);
  });
  src.addEventListener("sample", (e) => { samples.push(JSON.parse(e.data)); draw(); });
  src.addEventListener("step", (e) => {
    const s = JSON.parse(e.data);
    $("steps").append(h("li", {}, `${when(s.at_ms)} [${s.phase}] ${s.message}`));
  });
  src.addEventListener("end", (e) => {
    const j = JSON.parse(e.data);
    src.close();
    $("progress").dataset.ended = j.state;
    if (j.note) $("job-note").textContent = j.note;
  });
  src.addEventListener("gone", () => { src.close(); $("job-state").textContent = "No such job."; });
  src.onerror = () => { if (src.readyState === EventSource.CLOSED) toast("Progress stream closed", true); };
  window.addEventListener("resize", draw);
}

async function cancelJob(id) {
  try {
    const j = await rest("POST", `/v1/jobs/${seg(id)}/cancel`);
    toast(`Job ${j.id}: cancel ${j.state === "cancelled" ? "done" : "requested"}`);
  } catch (e) {
    toast(e.message, true);
  }
}

// A line chart on a canvas: time on x, value on y from 0.
function chart(cv, pts, colorVar, fmt) {
  const dpr = window.devicePixelRatio || 1;
  const w = cv.clientWidth, hgt = cv.clientHeight;
  if (!w || !hgt) return;
  cv.width = w * dpr; cv.height = hgt * dpr;
  const g = cv.getContext("2d");
  g.scale(dpr, dpr);
  const css = getComputedStyle(document.documentElement);
  const fg = css.getPropertyValue("--muted").trim(), line = css.getPropertyValue("--line").trim();
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = fg; g.strokeStyle = line;
  const L = 72, B = 18, T = 6, R = 8;
  const pw = w - L - R, ph = hgt - B - T;
  g.strokeRect(L, T, pw, ph);
  if (pts.length < 1) { g.fillText("waiting for figures…", L + 8, T + 16); return; }
  const t0 = pts[0][0], t1 = Math.max(pts[pts.length - 1][0], t0 + 1000);
  const vmax = Math.max(1, ...pts.map((p) => p[1])) * 1.1;
  for (let k = 0; k <= 2; k++) {
    const v = (vmax * k) / 2, y = T + ph - (ph * k) / 2;
    g.fillText(fmt(v), 4, y + 4);
    g.beginPath(); g.moveTo(L, y); g.lineTo(L + pw, y); g.stroke();
  }
  g.fillText(`${((t1 - t0) / 1000).toFixed(0)} s`, L + pw - 24, hgt - 4);
  g.fillText("0 s", L, hgt - 4);
  g.strokeStyle = css.getPropertyValue(colorVar).trim();
  g.lineWidth = 2;
  g.beginPath();
  pts.forEach(([t, v], i) => {
    const x = L + ((t - t0) / (t1 - t0)) * pw, y = T + ph - (v / vmax) * ph;
    if (i) g.lineTo(x, y); else g.moveTo(x, y);
  });
  g.stroke();
}

document.addEventListener("DOMContentLoaded", boot);
