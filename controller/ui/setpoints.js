// Setpoints: the values in force (GET /v1/setpoints), each with its bounds and description
// from the API's own schema (components.schemas.SetpointsPatch), edited in the unit that reads
// best and sent in SI (PATCH /v1/setpoints, only what changed, with an optional ttl_s). A
// refusal's problem document is shown at the field it names.

import { api, schemaOf } from "./api.js";
import { $, clock, dateTime, fill, fixed, h } from "./format.js";

// How each setpoint is shown: group, label, display unit and its factor to SI, API unit.
const FIELDS = {
  ramp_up_w_per_s: { group: "Grid", label: "Ramp limit up", unit: "kW/s", f: 1e3, si: "W/s" },
  ramp_down_w_per_s: { group: "Grid", label: "Ramp limit down", unit: "kW/s", f: 1e3, si: "W/s" },
  import_cap_w: { group: "Grid", label: "Import cap", unit: "MW", f: 1e6, si: "W", nullable: true },
  soc_min_ratio: { group: "Batteries", label: "SoC reserve", unit: "%", f: 0.01, si: "" },
  soc_target_low_ratio: { group: "Batteries", label: "SoC band low", unit: "%", f: 0.01, si: "" },
  soc_target_high_ratio: { group: "Batteries", label: "SoC band high", unit: "%", f: 0.01, si: "" },
  ride_through_s: { group: "Batteries", label: "UPS ride-through", unit: "s", f: 1, si: "s" },
  manual_battery_w: { group: "Batteries", label: "Manual power", unit: "kW", f: 1e3, si: "W" },
  droop: { group: "Frequency", label: "Droop", unit: "%", f: 0.01, si: "" },
  deadband_hz: { group: "Frequency", label: "Deadband", unit: "mHz", f: 1e-3, si: "Hz" },
  supply_temperature_c: { group: "Cooling", label: "CDU supply", unit: "°C", f: 1, si: "°C" },
  heat_reuse_mode: { group: "Cooling", label: "Heat reuse", unit: "", f: null, si: "" },
  heat_reuse_request_w: { group: "Cooling", label: "Heat requested", unit: "kW", f: 1e3, si: "W" },
  heat_reuse_min_temperature_c: {
    group: "Cooling", label: "Heat min temp.", unit: "°C", f: 1, si: "°C",
  },
};

/** A field the table above does not know (the API grew one): shown by its name's suffix. */
function guess(name) {
  const suffix = [
    ["_w_per_s", "kW/s", 1e3, "W/s"], ["_w", "kW", 1e3, "W"], ["_ratio", "%", 0.01, ""],
    ["_hz", "Hz", 1, "Hz"], ["_c", "°C", 1, "°C"], ["_s", "s", 1, "s"],
  ].find(([s]) => name.endsWith(s));
  const [, unit, f, si] = suffix || ["", "", 1, ""];
  return { group: "Other", label: name.replaceAll("_", " "), unit, f, si };
}

const round = (x) => Number(x.toPrecision(12));
const toShown = (si, meta) => (si === null ? "" : String(round(si / meta.f)));
const toSI = (shown, meta) => round(Number(shown) * meta.f);

function boundsOf(prop) {
  const numeric = prop.anyOf ? prop.anyOf.find((o) => o.type === "number") || {} : prop;
  return {
    min: numeric.minimum, max: numeric.maximum,
    xmin: numeric.exclusiveMinimum, xmax: numeric.exclusiveMaximum,
  };
}

function boundsText(b, meta) {
  const show = (v) => {
    const x = round(v / meta.f);
    return fixed(x, Number.isInteger(x) ? 0 : 3).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "");
  };
  const low = b.xmin !== undefined ? `> ${show(b.xmin)}` : b.min !== undefined ? `≥ ${show(b.min)}` : "";
  const high = b.xmax !== undefined ? `< ${show(b.xmax)}` : b.max !== undefined ? `≤ ${show(b.max)}` : "";
  return [low, high].filter(Boolean).join(", ");
}

function shownValue(value, meta) {
  if (value === null) return "none";
  if (meta.f === null) return String(value);
  const x = value / meta.f;
  const digits = Number.isInteger(round(x)) ? 0 : Math.abs(x) < 10 ? 2 : 1;
  return `${fixed(x, digits)}${meta.unit ? `\u00a0${meta.unit}` : ""}`;
}

export class SetpointsPanel {
  constructor(root, { onApplied, toast }) {
    this.root = root;
    this.form = $("#setpoints-form");
    this.list = $("#setpoints");
    this.formError = $("#setpoints-error");
    this.ttl = $("#sp-ttl");
    this.ttlError = $("#sp-ttl-error");
    this.apply = $("#sp-apply");
    this.onApplied = onApplied;
    this.toast = toast;
    this.rows = new Map(); // name → {meta, input, current, error, row, badge}
    this.current = null;
    this.canEdit = false;
    this.busy = false;
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.submit();
    });
    $("#sp-reset").addEventListener("click", () => this.reset());
    this.form.addEventListener("input", () => this.refreshChanged());
  }

  async build() {
    const schema = await schemaOf("SetpointsPatch");
    const props = schema?.properties || {};
    const groups = new Map();
    for (const [name, prop] of Object.entries(props)) {
      if (name === "ttl_s") continue;
      const meta = { ...(FIELDS[name] || guess(name)), prop, bounds: boundsOf(prop) };
      let input;
      if (prop.enum) {
        input = h("select", { id: `sp-${name}`, name, "data-needs": "operator" },
          prop.enum.map((v) => h("option", { value: v }, v)));
      } else {
        const b = meta.bounds;
        input = h("input", {
          id: `sp-${name}`, name, type: "number", step: "any", inputmode: "decimal",
          "data-needs": "operator",
          min: b.min ?? b.xmin, max: b.max ?? b.xmax,
          placeholder: meta.nullable ? "none" : "",
        });
        if (input.min) input.min = toShown(Number(input.min), meta);
        if (input.max) input.max = toShown(Number(input.max), meta);
      }
      const description = prop.description || "";
      const current = h("span", { class: "current mono" }, "—");
      const error = h("div", { class: "field-error", role: "alert", hidden: true });
      const badge = h("span", { class: "badge temp", hidden: true });
      const hint = [
        boundsText(meta.bounds, meta) && `${boundsText(meta.bounds, meta)} ${meta.unit}`.trim(),
        meta.nullable && "empty: none",
      ].filter(Boolean).join(" · ");
      const row = h("div", { class: "sp-row", dataset: { field: name } },
        h("label", { for: `sp-${name}`, title: `${name}: ${description}` },
          h("span", { class: "sp-label" }, meta.label), badge),
        current,
        h("span", { class: "unit-in" }, input, meta.unit ? h("span", {}, meta.unit) : null),
        h("span", { class: "sp-hint muted", title: hint }, hint),
        error);
      this.rows.set(name, { meta, input, current, error, row, badge });
      if (!groups.has(meta.group)) groups.set(meta.group, []);
      groups.get(meta.group).push(row);
    }
    fill(this.list, [...groups].map(([group, rows]) =>
      h("fieldset", { class: "sp-group" }, h("legend", {}, group), rows)));
    const ttl = props.ttl_s ? boundsOf(props.ttl_s) : {};
    if (ttl.max) this.ttl.max = String(ttl.max / 60);
    this.setEditable(this.canEdit);
  }

  setEditable(can) {
    this.canEdit = can;
    this.refreshChanged();
  }

  /** Values in force (GET /v1/setpoints); fields being edited keep what the operator typed. */
  show(setpoints) {
    this.current = setpoints;
    const temporary = new Map();
    for (const t of setpoints.override?.temporary || []) {
      for (const field of Object.keys(t.changes || {})) temporary.set(field, t.expires_s);
    }
    for (const [name, r] of this.rows) {
      const value = setpoints[name];
      r.current.textContent = shownValue(value, r.meta);
      const shown = r.meta.f === null ? String(value) : toShown(value, r.meta);
      if (!r.input.dataset.dirty && r.input.value !== shown) r.input.value = shown;
      const until = temporary.get(name);
      r.badge.hidden = until === undefined;
      if (until !== undefined) {
        const before = setpoints.override?.previous?.[name];
        r.badge.textContent = `until ${clock(until, false)}`;
        r.badge.title = `temporary: back to ${shownValue(before, r.meta)} at ${dateTime(until)}`;
      }
    }
    const n = (setpoints.override?.temporary || []).length;
    $("#setpoints-note").textContent = n ? `${n} temporary change${n > 1 ? "s" : ""} in force` : "";
    this.refreshChanged();
  }

  changes() {
    const out = {};
    if (!this.current) return out;
    for (const [name, r] of this.rows) {
      const raw = r.input.value.trim();
      const now = this.current[name];
      if (r.meta.f === null) {
        if (raw !== String(now)) out[name] = raw;
      } else if (raw === "") {
        if (r.meta.nullable && now !== null) out[name] = null;
        else if (!r.meta.nullable) out[name] = undefined; // emptied: not a value
      } else {
        const si = Number(raw) === Number(raw) ? toSI(raw, r.meta) : raw;
        if (si !== now) out[name] = si;
      }
    }
    return out;
  }

  refreshChanged() {
    const changed = this.changes();
    for (const [name, r] of this.rows) {
      const on = Object.hasOwn(changed, name);
      r.row.classList.toggle("changed", on);
      if (on) r.input.dataset.dirty = "1";
      else delete r.input.dataset.dirty;
    }
    const n = Object.keys(changed).length;
    this.apply.textContent = n ? `Apply ${n} change${n > 1 ? "s" : ""}` : "Apply";
    this.apply.disabled = !this.canEdit || this.busy || n === 0;
  }

  reset() {
    for (const r of this.rows.values()) delete r.input.dataset.dirty;
    this.clearErrors();
    if (this.current) this.show(this.current);
  }

  clearErrors() {
    for (const r of this.rows.values()) {
      r.error.hidden = true;
      r.error.textContent = "";
      r.row.classList.remove("invalid");
    }
    this.formError.hidden = true;
    this.ttlError.hidden = true;
  }

  fieldError(name, e) {
    const r = this.rows.get(name);
    const meta = r?.meta || { si: "" };
    const extra = [];
    if (e.bounds) {
      const ops = { gt: ">", ge: "≥", lt: "<", le: "≤" };
      extra.push(`bound ${Object.entries(e.bounds).map(([k, v]) => `${ops[k] || k} ${v}`)
        .join(", ")}${meta.si ? ` ${meta.si}` : ""}`);
    }
    if (e.value !== undefined) extra.push(`sent ${e.value}${meta.si ? ` ${meta.si}` : ""}`);
    const message = h("span", { class: "msg" }, e.message);
    const detail = extra.length ? h("span", { class: "muted" }, ` · ${extra.join(" · ")}`) : null;
    if (name === "ttl_s") {
      fill(this.ttlError, message, detail);
      this.ttlError.hidden = false;
      return true;
    }
    if (!r) return false;
    fill(r.error, message, detail);
    r.error.hidden = false;
    r.row.classList.add("invalid");
    return true;
  }

  /** Where a problem's errors belong: the field each names (or, for a rule across fields
   * with no field, the first setpoint its message names), else the form. */
  showProblem(problem) {
    const loose = [];
    for (const e of problem?.errors || []) {
      let field = e.field;
      if (!field) {
        field = [...this.rows.keys()].find((name) => e.message?.includes(name)) || null;
      }
      if (!field || !this.fieldError(field, e)) loose.push(e.message);
    }
    const summary = [problem?.title, problem?.detail].filter(Boolean).join(": ");
    fill(this.formError, h("b", {}, summary || "Refused"),
      loose.length ? ` — ${loose.join("; ")}` : "");
    this.formError.hidden = false;
  }

  async submit() {
    const changed = this.changes();
    if (!Object.keys(changed).length || !this.canEdit) return;
    this.clearErrors();
    const body = { ...changed };
    for (const [k, v] of Object.entries(body)) if (v === undefined) body[k] = null;
    const ttlMin = this.ttl.value.trim();
    if (ttlMin !== "") body.ttl_s = Number(ttlMin) === Number(ttlMin) ? round(Number(ttlMin) * 60) : ttlMin;
    this.busy = true;
    this.refreshChanged();
    try {
      const result = await api("PATCH", "/v1/setpoints", body);
      for (const r of this.rows.values()) delete r.input.dataset.dirty;
      this.show(result);
      const what = Object.keys(changed).map((k) => this.rows.get(k)?.meta.label || k).join(", ");
      this.toast(`Applied: ${what}${body.ttl_s ? ` for ${ttlMin} min` : ""}`, "ok");
      this.onApplied?.();
    } catch (exc) {
      if (exc.problem) this.showProblem(exc.problem);
      else this.showProblem({ title: exc.message });
    } finally {
      this.busy = false;
      this.refreshChanged();
    }
  }
}
