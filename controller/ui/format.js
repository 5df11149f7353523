// Numbers with their units, and small DOM helpers. Everything shown goes through textContent:
// nothing the server sends is parsed as HTML.

const NBSP = "\u00a0";
const MINUS = "\u2212";

export function fixed(x, digits) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "—";
  const s = Math.abs(x).toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
  const zero = Number(Math.abs(x).toFixed(digits)) === 0;
  return (x < 0 && !zero ? MINUS : "") + s;
}

/** x in another unit; a missing value (null: not measured) stays missing, never 0. */
export const scaled = (x, factor) => (x === null || x === undefined ? NaN : x * factor);

export const mw = (w, digits = 2) => fixed(scaled(w, 1e-6), digits);
export const kw = (w, digits = 0) => fixed(scaled(w, 1e-3), digits);
export const pct = (ratio, digits = 1) => fixed(scaled(ratio, 100), digits);

/** A power in the unit that reads best: MW from 1 MW, else kW. Returns [number, unit]. */
export function power(w, mwDigits = 2) {
  if (w === null || w === undefined || !Number.isFinite(w)) return ["—", "MW"];
  return Math.abs(w) >= 1e6 ? [mw(w, mwDigits), "MW"] : [kw(w, 0), "kW"];
}

export function withUnit(text, unit) {
  return unit ? `${text}${NBSP}${unit}` : text;
}

/** An energy in MWh (from J). */
export const mwh = (j, digits = 2) => fixed(scaled(j, 1 / 3.6e9), digits);

export function clock(unixS, withSeconds = true) {
  if (!Number.isFinite(unixS)) return "—";
  return new Date(unixS * 1000).toLocaleTimeString("en-GB", {
    hour: "2-digit",
    minute: "2-digit",
    second: withSeconds ? "2-digit" : undefined,
  });
}

export function dateTime(unixS) {
  if (!Number.isFinite(unixS)) return "—";
  const d = new Date(unixS * 1000);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  const day = d.toLocaleDateString("en-GB", { day: "2-digit", month: "short" });
  return sameDay ? clock(unixS) : `${day} ${clock(unixS)}`;
}

export function ago(unixS, nowS = Date.now() / 1000) {
  const s = Math.max(0, nowS - unixS);
  if (s < 60) return `${Math.round(s)}${NBSP}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}${NBSP}min ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)}${NBSP}h ago`;
  return `${Math.round(s / 86400)}${NBSP}d ago`;
}

export function duration(s) {
  if (!Number.isFinite(s)) return "—";
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s}${NBSP}s`;
  if (s < 3600) return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}${NBSP}min`;
  return `${Math.floor(s / 3600)}${NBSP}h${NBSP}${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}`;
}

/** h("div", {class: "x", title: "y"}, child, "text", ...): an element, children appended. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace an element's children (a list of nodes). */
export function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

export function text(el, value) {
  const s = String(value);
  if (el.textContent !== s) el.textContent = s;
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
