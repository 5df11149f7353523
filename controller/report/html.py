"""The compliance report as one self-contained HTML page: inline CSS, plots as inline SVG
(matplotlib), no script and nothing fetched from the network. Every string from the report
(site, profile, asset and band names, notes) is escaped."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

import numpy as np

from controller.report.battery import SOC_SUFFIX
from controller.report.checks import FAIL, PASS

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { padding: .25em .7em; border-bottom: 1px solid #e3e3e3; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #176f2c; font-weight: 600; } .fail { color: #b3261e; font-weight: 600; }
.no_data { color: #777; } .badge { padding: .1em .6em; border-radius: .3em; border: 1px solid; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
.muted { color: #666; font-size: .9em; }
"""
RESULT_TEXT = {PASS: "pass", FAIL: "fail", "no_data": "no data"}


def _text(value: Any) -> str:
    return escape(str(value), quote=True)


def _num(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _text(value)
    return _text(f"{value:,}" if isinstance(value, int) else f"{value:,.4g}")


def _utc(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-5] + " UTC"


def _result(result: str) -> str:
    return f'<span class="{_text(result)}">{_text(RESULT_TEXT.get(result, result))}</span>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: set[int]) -> str:
    """A table of cells already escaped (`_text`, `_num`, `_result` make them)."""
    head = "".join(f"<th>{_text(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _svg(draw: Callable[[Any], None], salt: str, size_in: tuple[float, float]) -> str:
    """A figure drawn by `draw(fig)` as inline SVG: text as text, ids unique to this figure
    (several SVGs share one page), no metadata."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"svg.hashsalt": salt, "svg.fonttype": "none"}
    with matplotlib.rc_context(style):
        fig = plt.figure(figsize=size_in, constrained_layout=True)
        try:
            draw(fig)
            out = io.StringIO()
            fig.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
        finally:
            plt.close(fig)
    svg = out.getvalue()
    svg = svg[svg.index("<svg") :]
    return re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)


def _time_axis(envelope: Mapping[str, Any], count: int) -> tuple[np.ndarray, str]:
    """Bucket centres since the range's start, in s, min or h by the range's length."""
    centre_s = (np.arange(count) + 0.5) * envelope["bucket_s"]
    span = count * envelope["bucket_s"]
    unit, scale = (
        ("s", 1.0) if span <= 600 else ("min", 60.0) if span <= 6 * 3600 else ("h", 3600.0)
    )
    return centre_s / scale, f"time since {_utc(envelope['start_s'])} ({unit})"


def _series(envelope: Mapping[str, Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    s = envelope["series"][name]
    as_array = lambda v: np.array([np.nan if x is None else x for x in v], float)  # noqa: E731
    return as_array(s["min"]), as_array(s["max"])


def _band_plot(ax: Any, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, label: str, color: str):
    ax.fill_between(x, lo, hi, color=color, alpha=0.35, lw=0, label=label)
    ax.plot(x, (lo + hi) / 2, color=color, lw=0.7)


def _load_plot(envelope: Mapping[str, Any]) -> str:
    it_lo, it_hi = _series(envelope, "it_w")
    grid_lo, grid_hi = _series(envelope, "grid_w")
    x, label = _time_axis(envelope, len(it_lo))

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        _band_plot(ax, x, it_lo / 1e6, it_hi / 1e6, "IT load (min–max)", "tab:gray")
        _band_plot(ax, x, grid_lo / 1e6, grid_hi / 1e6, "grid draw (min–max)", "tab:blue")
        ax.set_xlabel(label)
        ax.set_ylabel("MW")
        ax.legend(loc="upper right", fontsize=8)

    return _svg(draw, "load", (10, 3.4))


def _spectrum_plot(spectrum: Mapping[str, Any], band_top_hz: float) -> str:
    freqs = np.array(spectrum["freqs_hz"], float)
    keep = freqs > 0  # the mean's bin has no place on a log axis

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        for key, label, color in (
            ("it_psd_w2_per_hz", "IT load", "tab:gray"),
            ("grid_psd_w2_per_hz", "grid draw", "tab:blue"),
        ):
            psd = np.array(spectrum[key], float)[keep]
            ax.loglog(freqs[keep], np.maximum(psd, 1e-30), color=color, lw=1, label=label)
        ax.axvspan(0.1, band_top_hz, color="tab:orange", alpha=0.12, label="0.1–20 Hz band")
        ax.set_xlabel("frequency (Hz)")
        ax.set_ylabel("power spectral density (W²/Hz)")
        ax.legend(loc="lower left", fontsize=8)

    return _svg(draw, "spectrum", (10, 3.4))


def _ramp_plot(histograms: Sequence[Mapping[str, Any]]) -> str:
    def draw(fig: Any) -> None:
        axes = fig.subplots(1, len(histograms), squeeze=False)[0]
        for ax, h in zip(axes, histograms, strict=True):
            edges = np.maximum(np.array(h["edges_w"], float), 0.5)  # 0 W has no log place
            if len(edges) > 1:
                ax.stairs(h["counts"], edges, fill=True, color="tab:blue", alpha=0.7)
                ax.set_xscale("log")
                ax.set_yscale("log")
            if h["limit_w"] is not None:
                ax.axvline(h["limit_w"], color="tab:red", ls="--", lw=1, label="limit")
                ax.legend(fontsize=7)
            ax.set_title(f"over {h['window_s']:g} s", fontsize=9)
            ax.set_xlabel("|Δ grid| (W)", fontsize=8)
        axes[0].set_ylabel("pairs")

    return _svg(draw, "ramp", (11, 3.2))


def _soc_plot(envelope: Mapping[str, Any]) -> str | None:
    names = [n for n in envelope["series"] if n.endswith(SOC_SUFFIX)]
    if not names:
        return None

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        colors = iter(["tab:purple", "tab:green", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"])
        for name in names:
            lo, hi = _series(envelope, name)
            x, label = _time_axis(envelope, len(lo))
            color = next(colors, "tab:gray")
            legend = name.removesuffix(SOC_SUFFIX).replace("$", r"\$")  # not mathtext
            _band_plot(ax, x, lo, hi, legend, color)
        ax.set_xlabel(label)
        ax.set_ylabel("state of charge")
        ax.legend(loc="upper right", fontsize=8)

    return _svg(draw, "soc", (10, 3.0))


def _checks_section(checks: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        (
            _text(c["name"]),
            _num(c["limit"]),
            _num(c["measured"]),
            _text(c["unit"]),
            _num(c["held_ratio"]),
            _num(c["required_ratio"]),
            _result(c["result"]),
            _text(c["note"] or ""),
        )
        for c in checks
    ]
    headers = ("check", "limit", "measured", "unit", "held", "required", "result", "note")
    return _table(headers, rows, {1, 2, 4, 5})


def _ramp_section(ramp: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        (
            _num(w["window_s"]),
            _num(w["max_w"]),
            _num(w["max_rate_w_per_s"]),
            _utc(w["max_at_s"]) if w["max_at_s"] is not None else "—",
            _num(w["limit_w"]),
            _num(w["within_limit_ratio"]),
            _num(w["pairs"]),
        )
        for w in ramp
    ]
    headers = ("window (s)", "largest |Δ| (W)", "as a rate (W/s)", "at", "limit (W)", "within",
               "pairs")  # fmt: skip
    return _table(headers, rows, {0, 1, 2, 4, 5, 6})


def _bands_section(spectrum: Mapping[str, Any]) -> str:
    rows = [
        (
            _text(b["name"]),
            _text(f"{b['low_hz']:g}–{b['high_hz']:g}"),
            _num(b.get("grid_rms_w")),
            _num(b.get("it_rms_w")),
            _num(b.get("grid_share_ratio")),
            _num(b.get("attenuation_db")),
            _num(b["share_max_ratio"]),
        )
        for b in spectrum["bands"]
    ]
    headers = ("band", "Hz", "grid RMS (W)", "IT RMS (W)", "grid share", "attenuation (dB)",
               "share limit")  # fmt: skip
    note = (
        f"Welch: {spectrum['segments']} segment(s) of {spectrum['segment_s']:g} s, "
        f"{spectrum['samples']:,} samples, {spectrum['filled_samples']:,} filled by "
        f"interpolation (missed ticks, unknown readings), {spectrum['gaps']} gap(s) over which "
        "no segment runs. The share is the band's part of the signal's variance (mean removed); "
        "bands end at the Nyquist frequency."
    )
    return _table(headers, rows, {2, 3, 4, 5, 6}) + f'<p class="muted">{_text(note)}</p>'


def _events_section(events: Mapping[str, Any]) -> str:
    parts = []
    frequency = events["frequency"]
    if frequency is None:
        parts.append("<p>No frequency parameters in the recorder's meta data: not judged.</p>")
    elif not frequency:
        parts.append("<p>No frequency event in the range.</p>")
    else:
        rows = [
            (
                _utc(e["start_s"]),
                _num(e["end_s"] - e["start_s"]),
                _text(e["direction"]),
                _num(e["extreme_hz"]),
                _num(e["response_time_s"]),
                _num(e["delivered_ratio"]),
            )
            for e in frequency
        ]
        headers = ("start", "duration (s)", "side", "nadir / peak (Hz)", "response time (s)",
                   "delivered / droop")  # fmt: skip
        parts.append("<h3>Frequency events</h3>" + _table(headers, rows, {1, 3, 4, 5}))
    if events["import_caps"]:
        rows = [
            (
                _utc(c["start_s"]),
                _num(c["end_s"] - c["start_s"]),
                _num(c["cap_w"]),
                _num(c["within_cap_ratio"]),
                _num(c["max_excess_w"]),
            )
            for c in events["import_caps"]
        ]
        headers = ("start", "duration (s)", "cap (W)", "time at or under", "largest excess (W)")
        parts.append("<h3>Import caps</h3>" + _table(headers, rows, {1, 2, 3, 4}))
    if events["captures"]:
        items = "".join(
            "<li>" + ", ".join(f"{_text(k)}: {_text(v)}" for k, v in c.items()) + "</li>"
            for c in events["captures"]
        )
        parts.append(f"<h3>Captures</h3><ul>{items}</ul>")
    return "".join(parts)


def _battery_section(battery: Mapping[str, Any]) -> str:
    rows = [
        ("throughput (kWh)", _num(battery["throughput_kwh"])),
        ("equivalent full cycles", _num(battery["equivalent_full_cycles"])),
        ("largest battery power (W)", _num(battery["max_battery_w"])),
        ("unserved (kWh)", _num(battery["unserved_kwh"])),
        *(
            (f"SoC of {_text(a)} (min – max)", f"{_num(s['min_ratio'])} – {_num(s['max_ratio'])}")
            for a, s in battery["soc"].items()
        ),
    ]
    return _table(("figure", "value"), rows, {1})


def render_html(report: Mapping[str, Any]) -> str:
    """The page for a report built with `build_report(..., plots=True)`."""
    if "plots" not in report:
        raise ValueError("the report has no plots: build it with plots=True")
    plots, rng, profile = report["plots"], report["range"], report["profile"]
    site = report.get("site") or "site"
    top_hz = report["spectrum"]["bands"][0]["high_hz"]
    soc = _soc_plot(plots["envelope"])
    sections = [
        f"<h1>Grid compliance report: {_text(site)}</h1>",
        f"<p>{_text(_utc(rng['from_s']))} to {_text(_utc(rng['to_s']))}; "
        f"{rng['rows']:,} rows at {_num(rng['period_s'])} s, {rng['missing_rows']:,} missing. "
        f"Profile <b>{_text(profile['name'])}</b>. Result: "
        f'<span class="badge {_text(report["result"])}">'
        f"{_text(RESULT_TEXT.get(report['result'], report['result']))}</span></p>",
        f'<p class="muted">{_text(profile.get("description", ""))}</p>',
        "<h2>Checks</h2>" + _checks_section(report["checks"]),
        "<h2>IT load and grid draw</h2><figure>" + _load_plot(plots["envelope"]) + "</figure>",
        "<h2>Spectrum</h2><figure>" + _spectrum_plot(plots["spectrum"], top_hz) + "</figure>"
        + _bands_section(report["spectrum"]),
        "<h2>Ramp</h2>" + _ramp_section(report["ramp"]) + "<figure>"
        + _ramp_plot(plots["ramp_histograms"]) + "</figure>",
        "<h2>Events</h2>" + _events_section(report["events"]),
        "<h2>Battery</h2>" + _battery_section(report["battery"])
        + (f"<figure>{soc}</figure>" if soc else ""),
    ]  # fmt: skip
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Grid compliance report: {_text(site)}</title><style>{CSS}</style></head>"
        f"<body>{''.join(sections)}</body></html>\n"
    )
