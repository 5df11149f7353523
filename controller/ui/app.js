// The operator console: sign in with a key, watch the site live (the tick stream), act on it
// (setpoints, mode, events, acknowledgements) as the key's role allows.

import { ApiError, api, listOf, openStream, session, whenUnauthorized } from "./api.js";
import { PowerChart } from "./chart.js";
import {
  $, $$, ago, clock, dateTime, duration, fill, fixed, h, kw, mw, mwh, pct, power, scaled, text,
  withUnit,
} from "./format.js";
import { SetpointsPanel } from "./setpoints.js";

const ROLES = ["viewer", "operator", "admin"];
const RENDER_MS = 200; // the overview redraws at most this often (ticks come every 100 ms)
const STALE_MS = 2000; // no tick for this long: the overview says its values are old

const ui = {
  who: null, // {key_id, name, role}
  stream: null,
  pollers: [],
  chart: null,
  setpoints: null,
  tick: null, // the latest summary from the stream
  tickAt: 0, // when it came (performance.now())
  renderPending: false,
  state: null, // the latest full /v1/state (device points), polled
  devices: [], // /v1/devices, polled
  setpointValues: null,
  alarmsActive: [],
  events: [], // /v1/events, polled
  auditBefore: [], // the before_id of each page shown so far (null: the newest)
  auditNext: null,
};

// ---- sign in -------------------------------------------------------------------------------

async function boot() {
  whenUnauthorized(() => signOut("The key was refused (revoked or unknown): sign in again."));
  $("#signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("#signin-key").value.trim());
  });
  $("#signout").addEventListener("click", () => signOut());
  if (session.key) {
    try {
      await start(await api("GET", "/v1/whoami"));
      return;
    } catch (exc) {
      if (exc.status !== 401) {
        showSignIn(`Could not reach the API: ${exc.message}`);
        return;
      }
    }
  }
  showSignIn();
}

function showSignIn(message) {
  $("#console").hidden = true;
  $("#signin").hidden = false;
  const error = $("#signin-error");
  error.hidden = !message;
  error.textContent = message || "";
  $("#signin-key").focus();
}

async function signIn(key) {
  if (!key) return showSignIn("Paste an API key.");
  $("#signin-submit").disabled = true;
  try {
    const who = await api("GET", "/v1/whoami", undefined, key);
    session.key = key;
    $("#signin-key").value = "";
    await start(who);
  } catch (exc) {
    showSignIn(exc.status === 401 ? "This key is not valid." : exc.message);
  } finally {
    $("#signin-submit").disabled = false;
  }
}

function signOut(message) {
  session.key = null;
  ui.stream?.close();
  ui.stream = null;
  for (const stop of ui.pollers) stop();
  ui.pollers = [];
  ui.setpoints?.reset(); // what one key typed is not left for the next
  ui.tick = null;
  ui.auditBefore = [];
  showSignIn(message);
}

// ---- running -------------------------------------------------------------------------------

async function start(who) {
  ui.who = who;
  $("#signin").hidden = true;
  $("#console").hidden = false;
  fill($("#who"), h("span", { class: "who-name" }, who.name),
    h("span", { class: `role role-${who.role}` }, who.role));
  $("#readonly").hidden = can("operator");
  ui.chart ??= new PowerChart($("#chart"));
  // The last ten minutes from the recorder, at each sign-in (the stream brings nothing while
  // signed out); without them (none yet, or refused) the chart fills from the stream alone.
  api("GET", "/v1/history?seconds=600").then((past) => ui.chart.seed(past), () => {});
  if (!ui.setpoints) {
    ui.setpoints = new SetpointsPanel($("#setpoints"), {
      toast,
      onApplied: () => refreshSoon(pollAudit),
    });
    wireControls();
  }
  if (!ui.setpoints.rows.size) {
    try {
      await ui.setpoints.build();
    } catch (exc) {
      toast(`Setpoints unavailable (their schema did not load): ${exc.message}`, "error");
    }
  }
  applyRole();
  ui.stream = openStream(session.key, { onTick, onStatus: linkStatus });
  ui.pollers = [
    every(2000, pollState),
    every(2000, pollDevices),
    every(2000, pollAlarms),
    every(2000, pollMode),
    every(5000, pollSetpoints),
    every(5000, pollEvents),
    every(5000, pollAudit),
    every(5000, pollEfficiency),
    every(1000, tickClock),
  ];
}

const can = (role) => ROLES.indexOf(ui.who?.role) >= ROLES.indexOf(role);

/** Controls that need a role: disabled, saying which role, for keys below it. */
function applyRole() {
  for (const el of $$("[data-needs]")) {
    const needs = el.dataset.needs;
    const allowed = can(needs);
    el.disabled = !allowed || el.dataset.busy === "1";
    if (allowed) {
      if (el.dataset.roleTitle) el.removeAttribute("title");
      delete el.dataset.roleTitle;
    } else {
      el.title = `Needs the ${needs} role (this key is a ${ui.who.role})`;
      el.dataset.roleTitle = "1";
    }
  }
  ui.setpoints?.setEditable(can("operator"));
}

/** fn now, then every ms while the page is visible; a failure is shown, not fatal. */
function every(ms, fn) {
  let timer = null;
  let stopped = false;
  const run = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try {
        await fn();
      } catch (exc) {
        if (!(exc instanceof ApiError && exc.status === 401)) console.warn(exc.message || exc);
      }
    }
    if (!stopped) timer = setTimeout(run, ms);
  };
  run();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function refreshSoon(...fns) {
  setTimeout(() => fns.forEach((fn) => fn().catch(() => {})), 150);
}

// ---- the stream and the overview -----------------------------------------------------------

function linkStatus(status) {
  const link = $("#link");
  link.dataset.state = status.state;
  const label = {
    connecting: "connecting…",
    open: "live",
    retrying: `reconnecting in ${Math.ceil((status.delay_ms || 0) / 1000)} s`,
    refused: "refused",
  }[status.state];
  text($("#link-text"), label);
  link.title = status.error ? String(status.error.message || status.error) : "";
  if (status.state === "refused") signOut("The stream refused this key: sign in again.");
}

function onTick(tick) {
  ui.tick = tick;
  ui.tickAt = performance.now();
  ui.chart.push(tick);
  if (!ui.renderPending) {
    ui.renderPending = true;
    setTimeout(() => {
      ui.renderPending = false;
      renderOverview();
    }, RENDER_MS);
  }
}

function kpi(id, number, unit, sub, state) {
  const tile = $(`#${id}`);
  text($(".num", tile), number);
  text($(".unit", tile), unit);
  if (sub !== undefined) {
    const el = $(".sub", tile);
    if (sub instanceof Node) fill(el, sub);
    else text(el, sub);
  }
  tile.dataset.state = state || "";
  return tile;
}

function renderOverview() {
  const t = ui.tick;
  if (!t) return;
  const m = t.measurements || {};
  const d = t.dispatch || {};
  const f = t.in_force || {};
  text($("#site-name"), t.site || "");
  renderMode(t.mode);

  kpi("kpi-it", mw(m.it_w), "MW", `site load ${mw(m.site_load_w)} MW`);
  const grid = kpi("kpi-grid", mw(m.grid_w), "MW",
    `plan ${mw(d.grid_target_w)} MW${f.import_cap_w ? ` · cap ${mw(f.import_cap_w)} MW` : ""}`,
    f.import_cap_w && m.grid_w > f.import_cap_w ? "warn" : "");
  grid.dataset.seq = t.tick?.seq;
  grid.dataset.w = m.grid_w;
  const bw = m.battery_w;
  const direction = !Number.isFinite(bw) ? "not measured" : Math.abs(bw) < 1e4 ? "idle"
    : bw > 0 ? "discharging" : "charging";
  kpi("kpi-battery", mw(bw), "MW", `${direction} · plan ${mw(d.battery_w)} MW`);
  const hz = m.grid_frequency_hz;
  const dev = Number.isFinite(hz) ? (hz - nominalHz(hz)) * 1000 : NaN;
  const deadband = (ui.setpointValues?.deadband_hz ?? 0.015) * 1000;
  const responding = Math.abs(d.frequency_response_w || 0) >= 1;
  kpi("kpi-freq", fixed(hz, 3), "Hz",
    `${dev >= 0 ? "+" : ""}${fixed(dev, 0)} mHz · ${responding
      ? `responding ${kw(d.frequency_response_w)} kW` : `deadband ±${fixed(deadband, 0)} mHz`}`,
    responding ? "info" : "");
  kpi("kpi-cooling", kw(m.cooling_w), "kW",
    `heat reused ${kw(m.reused_heat_w)} kW`);

  document.title = `gridpilot · ${t.site || ""} · ${(t.mode || "").toUpperCase()}${
    ui.alarmsActive.length ? ` · ${ui.alarmsActive.length} alarm${ui.alarmsActive.length > 1 ? "s" : ""}` : ""}`;
  renderAssets(t);
  renderLimits(t);
  renderDeviceLinks(t);
  renderCoolingLive(t);
  tickClock();
}

function nominalHz(hz) {
  return Math.abs(hz - 60) < Math.abs(hz - 50) ? 60 : 50;
}

function renderMode(mode) {
  const pill = $("#mode-pill");
  pill.dataset.mode = mode || "";
  text(pill, (mode || "—").toUpperCase());
  for (const b of $$(".mode-btn")) b.classList.toggle("active", b.dataset.mode === mode);
}

function tickClock() {
  text($("#clock"), clock(Date.now() / 1000));
  const t = ui.tick;
  if (!t) return;
  const age = (performance.now() - ui.tickAt) / 1000 + (t.tick?.age_s || 0);
  const old = age * 1000 > STALE_MS;
  $("#console").classList.toggle("stale", old);
  const tick = t.tick || {};
  text($("#tick-info"), old
    ? `no tick for ${fixed(age, 0)} s`
    : `tick ${tick.seq} · ${fixed((tick.duration_s || 0) * 1000, 1)} ms · overruns ${tick.overruns_total ?? 0}`);
}

function renderAssets(t) {
  const socs = t.measurements?.soc_ratio || {};
  const setpoints = t.dispatch?.asset_setpoints_w || {};
  const sp = ui.setpointValues;
  const band = sp
    ? `reserve ${pct(sp.soc_min_ratio, 0)} % · band ${pct(sp.soc_target_low_ratio, 0)}–${pct(sp.soc_target_high_ratio, 0)} %`
    : "";
  text($("#soc-band"), band);
  const root = $("#assets");
  const ids = Object.keys({ ...socs, ...setpoints });
  if (!ids.length) {
    if (root.dataset.ids !== "-") {
      root.dataset.ids = "-";
      fill(root, h("div", { class: "empty" }, "No battery reading: see the devices and alarms"));
    }
    return;
  }
  if (root.dataset.ids !== ids.join(",")) {
    root.dataset.ids = ids.join(",");
    fill(root, ids.map((id) => {
      const bar = h("div", { class: "soc-bar" },
        h("div", { class: "band" }), h("div", { class: "reserve" }), h("div", { class: "fill" }));
      return h("div", { class: "asset", dataset: { id } },
        h("div", { class: "asset-id" }, id, h("span", { class: "kind muted" }, "")),
        bar,
        h("div", { class: "soc mono" }, "—"),
        h("div", { class: "asset-power mono" }, "—"));
    }));
  }
  for (const el of $$(".asset", root)) {
    const id = el.dataset.id;
    const soc = socs[id];
    const w = setpoints[id];
    const bar = $(".soc-bar", el);
    bar.style.setProperty("--soc", `${Math.max(0, Math.min(1, soc ?? 0)) * 100}%`);
    if (sp) {
      bar.style.setProperty("--reserve", `${sp.soc_min_ratio * 100}%`);
      bar.style.setProperty("--band-lo", `${sp.soc_target_low_ratio * 100}%`);
      bar.style.setProperty("--band-hi", `${sp.soc_target_high_ratio * 100}%`);
    }
    el.classList.toggle("low", sp ? soc - sp.soc_min_ratio < 0.05 : false);
    text($(".soc", el), withUnit(pct(soc), "%"));
    const [num, unit] = power(w);
    const powerEl = $(".asset-power", el);
    text(powerEl, withUnit(num, unit));
    powerEl.dataset.dir = !Number.isFinite(w) || Math.abs(w) < 1e4 ? "idle" : w > 0 ? "out" : "in";
    powerEl.title = "power command: + discharge, − charge";
    const kind = ui.devices.find((dv) => dv.id === id)?.kind;
    if (kind) text($(".kind", el), kind.toUpperCase());
  }
}

function renderLimits(t) {
  const f = t.in_force || {};
  const d = t.dispatch || {};
  const rows = [
    ["Ramp up", `${kw(f.ramp_up_w_per_s)} kW/s`],
    ["Ramp down", `${kw(f.ramp_down_w_per_s)} kW/s`],
    ["Import cap", f.import_cap_w ? `${mw(f.import_cap_w)} MW` : "none"],
    ["Shed", f.shed_w ? `${mw(f.shed_w)} MW` : "none", f.shed_w ? "warn" : ""],
    ["Shed request", d.shed_request_w ? `${mw(d.shed_request_w)} MW` : "none",
      d.shed_request_w ? "warn" : ""],
    ["Unserved", d.unserved_w ? `${mw(d.unserved_w)} MW` : "0 MW", d.unserved_w ? "bad" : ""],
  ];
  const events = (f.events || []).map((id) => {
    const e = ui.events.find((x) => x.id === id);
    return e ? `#${id} ${e.kind === "shed" ? "shed" : "cap"} ${mw(e.value_w)} MW` : `#${id}`;
  });
  rows.push(["Events", events.length ? events.join(", ") : "none", events.length ? "warn" : ""]);
  // The next workload notice (a job start, a checkpoint) and how far ahead it is.
  const next = t.notices?.next;
  rows.push(["Next notice", next ? `${next.kind.replace("_", " ")} in ${Math.max(0,
    Math.round(next.lead_s))} s (${t.notices.pending} pending)` : "none"]);
  const grid = t.openadr;
  if (grid) {
    rows.push(["Utility (OpenADR)", grid.reachable ? `VTN answers; ${grid.events_in_force} events`
      : `VTN out of reach ${Math.round(grid.out_for_s)} s`, grid.reachable ? "" : "warn"]);
  }
  const root = $("#limits");
  if (root.children.length !== rows.length * 2) {
    fill(root, rows.flatMap(([k]) => [h("dt", {}, k), h("dd", { class: "mono" })]));
  }
  rows.forEach(([, v, state], i) => {
    const dd = root.children[2 * i + 1];
    text(dd, v);
    dd.dataset.state = state || "";
  });
}

// ---- devices -------------------------------------------------------------------------------

async function pollDevices() {
  ui.devices = await api("GET", "/v1/devices");
  renderDevices();
}

async function pollState() {
  ui.state = await api("GET", "/v1/state");
  renderCooling();
  renderPoints();
}

function renderDevices() {
  const body = $("#devices");
  const live = ui.tick?.devices || {};
  const rows = ui.devices.map((dv) => {
    const l = live[dv.id] || {};
    const connected = l.connected ?? dv.connected;
    const link = !connected ? "down" : dv.frozen ? "frozen" : "up";
    const errors = Object.entries(dv.counters?.errors_by_kind || {});
    const open = ui.openDevice === dv.id;
    const row = h("tr", {
      class: `dev dev-${link}${open ? " open" : ""}`, dataset: { id: dv.id },
      title: `${dv.protocol} ${dv.address} · map ${dv.map} · click for its points`,
      tabindex: 0,
      onclick: () => toggleDevice(dv.id),
      onkeydown: (e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          toggleDevice(dv.id);
        }
      },
    },
    h("td", {}, h("span", { class: "caret" }, open ? "▾" : "▸"), h("b", {}, dv.id),
      h("span", { class: "muted small" }, ` ${dv.kind} · ${dv.protocol}${dv.secured ? " · TLS" : ""}`)),
    h("td", {}, h("span", { class: `chip link-${link}` }, link),
      l.last_error || dv.last_error
        ? h("div", { class: "small error-text" }, l.last_error || dv.last_error) : null),
    h("td", { class: "r mono nowrap" }, dv.counters?.last_poll_s != null
      ? `${fixed(dv.counters.last_poll_s * 1000, 1)} ms` : "—"),
    h("td", { class: `r mono${l.stale_points ? " hl-warn" : ""}`, dataset: { count: "stale" } },
      l.stale_points ?? "—"),
    h("td", { class: `r mono${l.invalid_points ? " hl-bad" : ""}`, dataset: { count: "invalid" } },
      l.invalid_points ?? "—"),
    h("td", {}, errors.length
      ? errors.map(([k, n]) => h("span", { class: "chip err" }, `${k} ${n}`))
      : h("span", { class: "muted small" }, `none · ${dv.counters?.polls ?? 0} polls`)));
    return row;
  });
  fill(body, rows);
  const down = ui.devices.filter((dv) => !(live[dv.id]?.connected ?? dv.connected)).length;
  text($("#device-count"), `${ui.devices.length} devices${down ? ` · ${down} down` : " · all up"}`);
}

function toggleDevice(id) {
  ui.openDevice = ui.openDevice === id ? null : id;
  renderDevices();
  renderPoints();
  $(`#devices tr.dev[data-id="${id}"]`)?.focus();
}

/** Per-tick device link changes (from the stream) without waiting for the devices poll. */
function renderDeviceLinks(t) {
  for (const row of $$("#devices tr.dev")) {
    const l = t.devices?.[row.dataset.id];
    if (!l) continue;
    const stale = $('[data-count="stale"]', row);
    const invalid = $('[data-count="invalid"]', row);
    text(stale, l.stale_points);
    text(invalid, l.invalid_points);
    stale.classList.toggle("hl-warn", l.stale_points > 0);
    invalid.classList.toggle("hl-bad", l.invalid_points > 0);
  }
}

function renderPoints() {
  const root = $("#device-points");
  const id = ui.openDevice;
  const dev = id && ui.state?.devices?.[id];
  if (!dev) return fill(root);
  const rows = Object.entries(dev.points || {}).map(([name, p]) => {
    const flag = p.stale ? "stale" : !p.valid ? "invalid" : "";
    return h("tr", { class: flag ? `pt-${flag}` : "" },
      h("td", { class: "mono" }, name),
      h("td", { class: "r mono" }, pointValue(p)),
      h("td", { class: "muted" }, p.unit === "1" ? "" : p.unit),
      h("td", { class: "r mono muted" }, `${fixed(p.age_s, 2)} s`),
      h("td", {}, flag ? h("span", { class: `chip pt-${flag}` }, flag) : ""));
  });
  fill(root, h("div", { class: "points-head" }, h("b", {}, id), ` · ${rows.length} points`),
    h("table", { class: "table compact" },
      h("thead", {}, h("tr", {}, h("th", {}, "Point"), h("th", { class: "r" }, "Value"),
        h("th", {}, "Unit"), h("th", { class: "r" }, "Age"), h("th", {}, ""))),
      h("tbody", {}, rows)));
}

function pointValue(p) {
  const v = p.value;
  if (v === null || v === undefined) return "—";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v) && Math.abs(v) < 1e6) return String(v);
  const a = Math.abs(v);
  return fixed(v, a >= 1000 ? 0 : a >= 10 ? 2 : 4);
}

// ---- alarms --------------------------------------------------------------------------------

async function pollAlarms() {
  const [active, all] = (await Promise.all([
    api("GET", "/v1/alarms?active=true&limit=100"),
    api("GET", "/v1/alarms?limit=50"),
  ])).map((body) => listOf(body, "alarms"));
  ui.alarmsActive = active;
  renderAlarms(active, all.filter((a) => a.cleared_at !== null).slice(0, 12));
}

function alarmRow(a, live) {
  const acked = a.acked_at !== null;
  const ack = live && !acked
    ? h("button", {
      type: "button", class: "small ack", "data-needs": "operator", dataset: { alarm: a.id },
      onclick: (e) => ackAlarm(a.id, e.currentTarget),
    }, "Acknowledge")
    : null;
  const when = live
    ? `raised ${dateTime(a.raised_at)} (${ago(a.raised_at)})`
    : `${dateTime(a.raised_at)} → cleared ${dateTime(a.cleared_at)}`;
  return h("div", {
    class: `alarm sev-${a.severity}${acked ? " acked" : ""}`, dataset: { id: a.id, key: a.key },
  },
  h("span", { class: `chip sev sev-${a.severity}` }, a.severity),
  h("div", { class: "alarm-body" },
    h("div", { class: "alarm-msg" }, a.message),
    h("div", { class: "muted small" }, `#${a.id} · ${a.key} · ${when}`,
      acked ? h("span", { class: "acked-by" }, ` · acknowledged by ${a.acked_by} ${dateTime(a.acked_at)}`) : "")),
  ack);
}

function renderAlarms(active, recent) {
  fill($("#alarms-active"), active.length
    ? active.map((a) => alarmRow(a, true))
    : h("div", { class: "empty" }, "No active alarm"));
  fill($("#alarms-recent"), recent.length
    ? recent.map((a) => alarmRow(a, false))
    : h("div", { class: "empty muted" }, "None cleared recently"));
  const unacked = active.filter((a) => a.acked_at === null);
  const critical = active.some((a) => a.severity === "critical");
  kpi("kpi-alarms", String(active.length), "active",
    unacked.length ? `${unacked.length} to acknowledge` : active.length ? "all acknowledged" : "all clear",
    critical ? "bad" : unacked.length ? "warn" : active.length ? "" : "ok");
  text($("#alarm-count"), `${active.length} active · ${unacked.length} unacknowledged`);
  applyRole();
}

async function ackAlarm(id, button) {
  button.dataset.busy = "1";
  button.disabled = true;
  try {
    await api("POST", `/v1/alarms/${id}/ack`);
    toast(`Alarm #${id} acknowledged`, "ok");
  } catch (exc) {
    toast(exc.message, "error");
  } finally {
    delete button.dataset.busy;
    refreshSoon(pollAlarms, pollAudit);
  }
}

// ---- setpoints, mode, events ---------------------------------------------------------------

async function pollSetpoints() {
  ui.setpointValues = await api("GET", "/v1/setpoints");
  ui.setpoints.show(ui.setpointValues);
}

async function pollMode() {
  const mode = await api("GET", "/v1/mode");
  const o = mode.override;
  let note = "";
  if (o?.temporary?.length) {
    const next = o.temporary[o.temporary.length - 1];
    note = `${next.mode} for ${duration(next.expires_s - Date.now() / 1000)} more, then ${o.previous}`;
  }
  text($("#mode-override"), note);
  text($("#mode-note"), note);
  if (!ui.tick) renderMode(mode.mode);
}

function ttlSeconds(input) {
  const v = input.value.trim();
  if (v === "") return undefined;
  const n = Number(v);
  return Number.isFinite(n) ? Math.round(n * 60 * 1000) / 1000 : v;
}

async function setMode(mode) {
  const error = $("#mode-error");
  error.hidden = true;
  const ttl = ttlSeconds($("#mode-ttl"));
  if (mode === "safe") {
    const ok = await confirmDialog("Enter safe mode?",
      "Every battery's power falls to 0 W, no faster than the grid may ramp; then the grid "
      + "carries the whole load." + (ttl ? ` Back to the mode before after ${ttl / 60} min.` : ""),
      "Enter safe mode");
    if (!ok) return;
  }
  const body = { mode };
  if (ttl !== undefined) body.ttl_s = ttl;
  try {
    const result = await api("POST", "/v1/mode", body);
    renderMode(result.mode);
    toast(`Mode: ${result.mode}${ttl ? ` for ${ttl / 60} min` : ""}`, "ok");
  } catch (exc) {
    error.textContent = problemText(exc);
    error.hidden = false;
  }
  refreshSoon(pollMode, pollAudit);
}

function problemText(exc) {
  const errors = exc.errors.map((e) => (e.field ? `${e.field}: ${e.message}` : e.message));
  return [exc.message, ...errors].join(" — ");
}

async function pollEvents() {
  const start = $("#ev-start");
  if (!start.dataset.edited) start.value = localInputValue(new Date()); // "now" until edited
  const events = listOf(await api("GET", "/v1/events?limit=50"), "events");
  ui.events = events;
  const now = Date.now() / 1000;
  const status = (e) => (e.cancelled_at ? "cancelled" : e.ended_at || e.end_s <= now ? "ended"
    : e.started_at || e.start_s <= now ? "running" : "planned");
  const order = { running: 0, planned: 1, ended: 2, cancelled: 3 };
  const sorted = events.map((e) => ({ ...e, status: status(e) }))
    .sort((a, b) => order[a.status] - order[b.status] || b.start_s - a.start_s)
    .slice(0, 10);
  fill($("#events"), sorted.length ? h("table", { class: "table compact" },
    h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "Kind"), h("th", {}, "Source"),
      h("th", { class: "r" }, "Power"),
      h("th", {}, "From"), h("th", {}, "To"), h("th", {}, "Status"), h("th", {}, ""))),
    h("tbody", {}, sorted.map((e) => h("tr", { class: `ev-${e.status}`, dataset: { id: e.id } },
      h("td", { class: "mono muted" }, e.id),
      h("td", {}, e.kind === "shed" ? "shed" : "import cap"),
      // A utility's event (OpenADR): its VTN event and interval on hover.
      e.source === "openadr"
        ? h("td", { title: `VTN ${e.ref}, version ${e.revision}` }, "utility")
        : h("td", { class: "muted" }, "operator"),
      h("td", { class: "r mono" }, `${mw(e.value_w)} MW`),
      h("td", { class: "mono" }, dateTime(e.start_s)),
      h("td", { class: "mono" }, dateTime(e.end_s)),
      h("td", {}, h("span", { class: `chip ev ev-${e.status}` }, e.status)),
      h("td", { class: "r" }, e.status === "running" || e.status === "planned"
        ? h("button", {
          type: "button", class: "small ghost", "data-needs": "operator",
          onclick: () => cancelEvent(e.id),
        }, "Cancel") : null)))))
    : h("div", { class: "empty muted" }, "No event scheduled"));
  applyRole();
}

function localInputValue(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T`
    + `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

async function scheduleEvent() {
  const error = $("#event-error");
  error.hidden = true;
  const startInput = $("#ev-start").value;
  const start = startInput ? new Date(startInput).getTime() / 1000 : Date.now() / 1000;
  const minutes = Number($("#ev-duration").value);
  const body = {
    kind: $("#ev-kind").value,
    value_w: Math.round(Number($("#ev-value").value) * 1e6),
    start_s: Math.floor(start),
    end_s: Math.floor(start + minutes * 60),
  };
  try {
    const e = await api("POST", "/v1/events", body);
    toast(`Event #${e.id} scheduled: ${e.kind} ${mw(e.value_w)} MW from ${clock(e.start_s)}`, "ok");
    delete $("#ev-start").dataset.edited;
  } catch (exc) {
    error.textContent = problemText(exc);
    error.hidden = false;
  }
  refreshSoon(pollEvents, pollAudit);
}

async function cancelEvent(id) {
  try {
    await api("DELETE", `/v1/events/${id}`);
    toast(`Event #${id} cancelled`, "ok");
  } catch (exc) {
    toast(exc.message, "error");
  }
  refreshSoon(pollEvents, pollAudit);
}

function wireControls() {
  for (const b of $$(".mode-btn")) b.addEventListener("click", () => setMode(b.dataset.mode));
  $("#event-form").addEventListener("submit", (e) => {
    e.preventDefault();
    scheduleEvent();
  });
  const start = $("#ev-start");
  start.value = localInputValue(new Date());
  start.addEventListener("input", () => {
    start.dataset.edited = "1";
  });
  $("#audit-older").addEventListener("click", () => {
    if (ui.auditNext === null) return;
    ui.auditBefore.push(ui.auditNext);
    pollAudit();
  });
  $("#audit-newest").addEventListener("click", () => {
    ui.auditBefore = [];
    pollAudit();
  });
}

// ---- audit ---------------------------------------------------------------------------------

async function pollAudit() {
  const before = ui.auditBefore[ui.auditBefore.length - 1] ?? null;
  const query = before ? `?limit=25&before_id=${before}` : "?limit=25";
  const page = await api("GET", `/v1/audit${query}`);
  ui.auditNext = page.next_before_id;
  $("#audit-older").disabled = page.next_before_id === null;
  $("#audit-newest").disabled = before === null;
  const first = page.entries[0]?.id;
  const last = page.entries[page.entries.length - 1]?.id;
  text($("#audit-page"), page.entries.length
    ? `${before === null ? "newest" : `page ${ui.auditBefore.length + 1}`} · #${first}–#${last}` : "");
  fill($("#audit"), page.entries.length ? page.entries.map((e) => h("tr", { dataset: { id: e.id } },
    h("td", { class: "mono nowrap" }, dateTime(e.time_s)),
    h("td", { class: "nowrap" }, e.key_name || "—"),
    h("td", { class: "mono nowrap" }, e.action),
    h("td", { class: "change" }, change(e.old, e.new))))
    : h("tr", {}, h("td", { colspan: 4, class: "empty muted" }, "Nothing changed yet")));
}

const TIME_FIELDS = /(_at|^start_s|^end_s|^expires_s|^time_s)$/;

function compact(v, key = "") {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") {
    if (TIME_FIELDS.test(key) && v > 1e9) return dateTime(v);
    return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(6)));
  }
  if (Array.isArray(v)) return v.map((x) => compact(x)).join(", ");
  if (typeof v === "object") {
    return Object.entries(v)
      .filter(([, x]) => x !== null && x !== undefined)
      .map(([k, x]) => `${k} ${compact(x, k)}`)
      .join(", ");
  }
  return String(v);
}

function change(old, now) {
  if (old && now && typeof old === "object" && typeof now === "object") {
    const all = [...new Set([...Object.keys(old), ...Object.keys(now)])];
    const differ = all.filter((k) => JSON.stringify(old[k]) !== JSON.stringify(now[k]));
    const keys = differ.length ? differ : all; // what changed (an event's cancel: its end)
    return keys.map((k) => h("span", { class: "delta" }, h("span", { class: "mono" }, k), " ",
      h("span", { class: "old" }, compact(old[k], k)), " → ",
      h("span", { class: "new" }, compact(now[k], k))));
  }
  if (old !== null && old !== undefined) {
    return [h("span", { class: "old" }, compact(old)), " → ", h("span", { class: "new" }, compact(now))];
  }
  return h("span", { class: "new" }, compact(now));
}

// ---- cooling and efficiency ----------------------------------------------------------------

/** A CDU's reading by role (its map names the point), from the last /v1/state. */
function byRole(deviceId, role) {
  const dev = ui.devices.find((d) => d.id === deviceId);
  const point = dev?.roles?.[role];
  const p = point && ui.state?.devices?.[deviceId]?.points?.[point];
  return p && p.valid && !p.stale ? p.value : null;
}

function renderCoolingLive(t) {
  for (const [id, c] of Object.entries(t.cooling || {})) {
    const box = $(`#cooling .cdu[data-id="${id}"]`);
    if (!box || !c) continue;
    text($('[data-k="setpoint"]', box), withUnit(fixed(c.supply_setpoint_c, 1), "°C"));
    text($('[data-k="pump-cmd"]', box), withUnit(pct(c.pump_speed_ratio, 0), "%"));
    box.classList.toggle("fallback", !!c.fallback);
  }
}

function renderCooling() {
  if (!ui.devices.length) return; // not known yet: which devices are CDUs
  const root = $("#cooling");
  const cdus = ui.devices.filter((d) => d.kind === "cdu").map((d) => d.id);
  if (root.dataset.ids !== cdus.join(",")) {
    root.dataset.ids = cdus.join(",");
    const cell = (k, label) => h("div", { class: "cell" },
      h("div", { class: "label" }, label), h("div", { class: "v mono", dataset: { k } }, "—"));
    fill(root, cdus.map((id) => h("div", { class: "cdu", dataset: { id } },
      h("div", { class: "cdu-head" }, h("b", {}, id),
        h("span", { class: "chip fallback-chip" }, "fallback: safe pumps, lowest supply")),
      h("div", { class: "cells" },
        cell("supply", "Supply"), cell("setpoint", "Supply setpoint"), cell("return", "Return"),
        cell("dt", "ΔT"), cell("flow", "Flow"), cell("pressure", "Δp"),
        cell("pump", "Pump speed"), cell("pump-cmd", "Pump command"), cell("pump-w", "Pump power"),
        cell("heat", "Heat load"), cell("reused", "Heat reused"), cell("rejected", "Heat rejected"),
        cell("ambient", "Ambient")))));
    if (!cdus.length) fill(root, h("div", { class: "empty muted" }, "No CDU on this site"));
  }
  for (const id of cdus) {
    const box = $(`.cdu[data-id="${id}"]`, root);
    const r = (role) => byRole(id, role);
    const set = (k, v) => text($(`[data-k="${k}"]`, box), v);
    const sup = r("supply_c");
    const ret = r("return_c");
    set("supply", withUnit(fixed(sup, 1), "°C"));
    set("return", withUnit(fixed(ret, 1), "°C"));
    set("dt", withUnit(fixed(sup !== null && ret !== null ? ret - sup : NaN, 1), "K"));
    set("flow", withUnit(fixed(scaled(r("flow_m3_per_s"), 3600), 0), "m³/h"));
    set("pressure", withUnit(fixed(scaled(r("pressure_pa"), 1e-3), 0), "kPa"));
    set("pump", withUnit(pct(r("pump_speed_ratio"), 0), "%"));
    set("pump-w", withUnit(kw(r("pump_power_w"), 1), "kW"));
    set("heat", withUnit(mw(r("heat_load_w")), "MW"));
    const reused = r("heat_reused_w");
    const asked = r("reuse_request_w");
    set("reused", `${withUnit(kw(reused), "kW")}${asked ? ` of ${kw(asked)}` : ""}`);
    set("rejected", withUnit(mw(r("heat_rejected_w")), "MW"));
    set("ambient", withUnit(fixed(r("ambient_c"), 1), "°C"));
    if (!ui.tick) {
      set("setpoint", withUnit(fixed(r("supply_setpoint_c"), 1), "°C"));
      set("pump-cmd", withUnit(pct(r("pump_setpoint_ratio"), 0), "%"));
    }
  }
}

async function pollEfficiency() {
  const e = await api("GET", "/v1/efficiency");
  const windows = ["1m", "1h"];
  const notYet = "shown once half its window is covered";
  const ratio = (name, fmt) => windows.map((w) => {
    const v = e[name]?.[w];
    return h("td", { class: "r mono", title: v === undefined ? notYet : "" }, v === undefined ? "—" : fmt(v));
  });
  const energy = e.energy_j || {};
  fill($("#efficiency"),
    h("table", { class: "table compact eff" },
      h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", { class: "r" }, "1 min"),
        h("th", { class: "r" }, "1 h"))),
      h("tbody", {},
        h("tr", {}, h("td", {}, "PUE"), ratio("pue", (v) => fixed(v, 3))),
        h("tr", {}, h("td", {}, "Tokens per joule"), ratio("tokens_per_joule", (v) => `${fixed(v, 3)} tok/J`)),
        h("tr", {}, h("td", {}, "ERF (heat reused)"), ratio("erf", (v) => `${pct(v, 1)} %`)))),
    h("dl", { class: "kv energy" },
      h("dt", {}, "Facility energy"), h("dd", { class: "mono" }, `${mwh(energy.facility)} MWh`),
      h("dt", {}, "IT energy"), h("dd", { class: "mono" }, `${mwh(energy.it)} MWh`),
      h("dt", {}, "Cooling energy"), h("dd", { class: "mono" }, `${mwh(energy.cooling, 3)} MWh`),
      h("dt", {}, "Grid import"), h("dd", { class: "mono" }, `${mwh(energy.grid_import)} MWh`),
      h("dt", {}, "Heat recovered"), h("dd", { class: "mono" }, `${mwh(energy.recovered_heat, 3)} MWh`),
      h("dt", {}, "Tokens generated"), h("dd", { class: "mono" }, tokens(e.tokens))),
    h("div", { class: "muted small" }, "since the controller started"));
  const pue = e.pue?.["1m"];
  kpi("kpi-pue", pue === undefined ? "—" : fixed(pue, 3), "",
    e.tokens_per_joule?.["1m"] !== undefined
      ? `${fixed(e.tokens_per_joule["1m"], 2)} tok/J · ERF ${pct(e.erf?.["1m"] ?? 0, 1)} %`
      : "after 30 s of data");
}

function tokens(n) {
  if (!Number.isFinite(n)) return "—";
  return n >= 1e9 ? `${fixed(n / 1e9, 2)} billion` : `${fixed(n / 1e6, 1)} million`;
}

// ---- feedback ------------------------------------------------------------------------------

function toast(message, kind = "info") {
  const el = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" }, message);
  $("#toasts").append(el);
  setTimeout(() => el.classList.add("going"), kind === "error" ? 8000 : 4000);
  setTimeout(() => el.remove(), kind === "error" ? 8600 : 4600);
}

function confirmDialog(title, message, okLabel) {
  const dialog = $("#confirm");
  text($("#confirm-title"), title);
  text($("#confirm-text"), message);
  text($("#confirm-ok"), okLabel);
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

boot();
