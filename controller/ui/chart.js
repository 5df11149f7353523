// The power chart: the last 10 minutes of IT load, grid draw, its plan, the batteries and
// the import cap in force, in MW (uPlot, vendored: window.uPlot): each tick from the stream,
// and the recorder's (GET /v1/history) at each sign-in, for the minutes the stream did not see.

const WINDOW_S = 600;
const REDRAW_MS = 500;

export const SERIES = [
  { key: "it", label: "IT load", color: "#f5a524" },
  { key: "grid", label: "Grid draw", color: "#4da3ff" },
  { key: "plan", label: "Grid plan", color: "#9cc9ff", dash: [6, 4] },
  { key: "battery", label: "Batteries", color: "#34c68a" },
  { key: "cap", label: "Import cap", color: "#f0564f", dash: [2, 4] },
];

const AXIS = {
  stroke: "#8b98a9",
  grid: { stroke: "rgba(139,152,169,0.12)", width: 1 },
  ticks: { stroke: "rgba(139,152,169,0.25)", width: 1 },
  font: "11px system-ui, sans-serif",
};

/** The MW axis: the data's span, padded; at least 2 MW tall (no reading, or a flat line,
 * would otherwise get uPlot's 0–100). */
function yRange(u, min, max) {
  if (min === null || max === null) return [0, 10];
  if (max - min < 2) return [(min + max) / 2 - 1, (min + max) / 2 + 1];
  return window.uPlot.rangeNum(min, max, 0.1, true);
}

/** 24-hour clock labels: seconds shown while the span is short. */
function hhmm(t, u) {
  const span = u.scales.x.max - u.scales.x.min;
  return new Date(t * 1000).toLocaleTimeString("en-GB", {
    hour: "2-digit", minute: "2-digit", second: span < 180 ? "2-digit" : undefined,
  });
}

export class PowerChart {
  constructor(root) {
    this.root = root;
    this.data = [[], ...SERIES.map(() => [])];
    this.dirty = false;
    this.plot = null;
    this.timer = setInterval(() => this.redraw(), REDRAW_MS);
    this.resize = new ResizeObserver(() => this.fit());
    this.resize.observe(root);
  }

  ensure() {
    if (this.plot || !window.uPlot) return this.plot;
    const { width, height } = this.size();
    const mwValue = (u, v) => (v === null || v === undefined ? "—" : `${v.toFixed(2)} MW`);
    this.plot = new window.uPlot(
      {
        width,
        height,
        cursor: { drag: { x: false, y: false }, points: { size: 6 } },
        legend: { live: true },
        scales: {
          x: { time: true },
          y: { range: yRange },
        },
        axes: [
          { ...AXIS, space: 70, values: (u, ticks) => ticks.map((t) => hhmm(t, u)) },
          { ...AXIS, size: 52, values: (u, ticks) => ticks.map((v) => v.toFixed(1)) },
        ],
        series: [
          { label: "time", value: "{HH}:{mm}:{ss}" },
          ...SERIES.map((s) => ({
            label: s.label,
            stroke: s.color,
            width: s.dash ? 1.25 : 1.5,
            dash: s.dash,
            value: mwValue,
            points: { show: false },
          })),
        ],
      },
      this.data,
      this.root,
    );
    return this.plot;
  }

  size() {
    const box = this.root.getBoundingClientRect();
    const legend = this.plot?.root.querySelector(".u-legend")?.offsetHeight || 28;
    return {
      width: Math.max(200, Math.floor(box.width)),
      height: Math.max(160, Math.floor(box.height) - legend - 4),
    };
  }

  /** The plot fills its box: width first (the legend's height depends on it), then height. */
  fit() {
    const plot = this.plot;
    const box = this.root.getBoundingClientRect();
    if (!plot || box.width < 50) return; // hidden (signed out): kept as it was
    const width = Math.floor(box.width);
    if (plot.width !== width) plot.setSize({ width, height: plot.height });
    const { height } = this.size();
    if (plot.height !== height) plot.setSize({ width, height });
  }

  /** One tick's summary from the stream. */
  push(tick) {
    const t = Date.parse(tick.tick?.time) / 1000;
    const m = tick.measurements || {};
    const d = tick.dispatch || {};
    if (!Number.isFinite(t) || m.it_w === undefined) return;
    const [xs, it, grid, plan, battery, cap] = this.data;
    if (xs.length && t <= xs[xs.length - 1]) return; // each tick once, in order
    const w = (v) => (Number.isFinite(v) ? v / 1e6 : null);
    xs.push(t);
    it.push(w(m.it_w));
    grid.push(w(m.grid_w));
    plan.push(w(d.grid_target_w));
    battery.push(w(m.battery_w));
    cap.push(w(tick.in_force?.import_cap_w));
    let drop = 0;
    while (drop < xs.length && xs[drop] < t - WINDOW_S) drop += 1;
    if (drop) for (const series of this.data) series.splice(0, drop);
    this.dirty = true;
  }

  /** Ticks from the recorder (`GET /v1/history`: columns of W, time in unix s) merged with
   * those the stream brought: the minutes before the page opened, and any the stream missed
   * while signed out or reconnecting. A tick is the same tick to the millisecond. */
  seed(history) {
    const times = history.time_s || [];
    const ms = (t) => Math.floor(t * 1000);
    const have = new Set(this.data[0].map(ms));
    const w = (v) => (Number.isFinite(v) ? v / 1e6 : null);
    const columns = ["it_w", "grid_w", "grid_target_w", "battery_w", "import_cap_w"];
    const rows = this.data[0].map((t, i) => this.data.map((series) => series[i]));
    let added = 0;
    times.forEach((t, i) => {
      if (!Number.isFinite(t) || have.has(ms(t))) return;
      rows.push([ms(t) / 1000, ...columns.map((c) => w((history[c] || [])[i]))]);
      added += 1;
    });
    if (!added) return;
    rows.sort((a, b) => a[0] - b[0]);
    this.data = this.data.map((_, k) => rows.map((row) => row[k]));
    this.dirty = true;
  }

  redraw() {
    if (!this.dirty || document.hidden) return;
    const plot = this.ensure();
    if (!plot) return;
    this.dirty = false;
    const xs = this.data[0];
    const end = xs[xs.length - 1];
    // The window grows to 10 minutes from the first tick seen, then scrolls.
    const min = Math.min(end - 60, Math.max(xs[0], end - WINDOW_S));
    plot.batch(() => {
      plot.setData(this.data, false);
      plot.setScale("x", { min, max: end });
      // Not hovering: the legend shows the latest tick.
      if (!(plot.cursor.left >= 0)) plot.setLegend({ idx: xs.length - 1 }, false);
    });
    this.root.dataset.points = String(xs.length);
    this.root.dataset.from = String(xs[0]); // the oldest tick shown (unix s)
  }

  get points() {
    return this.data[0].length;
  }
}
