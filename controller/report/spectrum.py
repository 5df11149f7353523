"""The grid draw's and the IT load's spectra, streamed, and their energy per band.

Welch's estimate exactly as the replay makes it (`controller.replay.figures.welch_psd`: Hann
segments of WELCH_SEGMENT_S, half overlapping, each segment's mean removed), accumulated over
chunks: segments start where they would on the whole record, so over one unbroken record the
band energies equal `band_energy`'s. A record shorter than a segment is one segment, as there.

Band energy is the sum of the spectrum's bins in the band (W²/Hz, `band_energy`'s figure); times
the bin width it is the signal's variance in the band (W²), whose root is the band's RMS (W).
The share in a band is its energy over the energy of all bins: the part of the signal's
variance (mean removed) that lies in the band. For a signal that is nearly flat, the share
describes its noise; read it with the band's RMS.

The samples are taken as evenly spaced at the loop's period. A missed tick or a NaN reading is
filled by linear interpolation between its neighbours (counted: `filled_samples`); after a gap
(a hole over MAX_FILL_S) the segments start afresh, so none spans it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from controller.replay.figures import attenuation_db, band_sum, welch_psd, welch_segment
from controller.report.rows import MAX_FILL_S, Rows

SIGNALS = ("grid_w", "it_w")


@dataclass(frozen=True)
class BandSpec:
    name: str
    low_hz: float
    high_hz: float
    share_max_ratio: float | None = None


@dataclass
class Even:
    """Rows → runs of evenly spaced samples of `names`, short holes filled, broken at gaps."""

    period_s: float
    names: tuple[str, ...]
    last: tuple[float, float, np.ndarray] | None = None  # time, seq, values of the last row
    samples: int = 0
    filled: int = 0
    gaps: int = 0

    def add(self, rows: Rows) -> list[tuple[bool, np.ndarray]]:
        """(starts a new run, samples as rows × names) for each run in this chunk."""
        values = np.column_stack([rows.get(n) for n in self.names])
        known = np.all(np.isfinite(values), axis=1)
        t, seq, v = rows.time_s[known], rows.get("seq")[known], values[known]
        fresh = self.last is None
        if self.last is not None:
            t0, s0, v0 = self.last
            t, seq, v = np.r_[t0, t], np.r_[s0, seq], np.vstack([v0, v])
        if not len(t):
            return []
        self.last = (float(t[-1]), float(seq[-1]), v[-1])
        # Ticks from one row to the next: by tick number where known, else by time.
        dt = np.diff(t)
        steps = np.where(np.isfinite(np.diff(seq)), np.diff(seq), np.rint(dt / self.period_s))
        gap = (steps < 1) | (dt > MAX_FILL_S) | (steps * self.period_s > MAX_FILL_S + 1e-9)
        steps = np.where(gap, 1, steps).astype(np.int64)
        self.gaps += int(gap.sum())
        self.filled += int((steps - 1).sum())
        # Each step from row p to p+1 gives samples at k/steps of the way, k = 1..steps.
        owner = np.repeat(np.arange(len(steps)), steps)
        k = np.arange(len(owner)) - np.repeat(np.cumsum(steps) - steps, steps) + 1
        at_row = k == steps[owner]
        a, b = v[owner], v[owner + 1]
        out = np.where(at_row[:, None], b, a + (k / steps[owner])[:, None] * (b - a))
        starts = np.flatnonzero(gap[owner] & at_row)
        if fresh:  # the record's first row starts the first run
            out, starts = np.vstack([v[:1], out]), np.r_[0, starts + 1]
        self.samples += len(out)
        edges, new = [0, *starts.tolist(), len(out)], set(starts.tolist())
        return [(lo in new, out[lo:hi]) for lo, hi in pairwise(edges) if hi > lo]


class WelchSum:
    """Welch's segments of one signal, summed as they arrive; segments never span a restart."""

    def __init__(self, dt_s: float) -> None:
        self.dt_s = dt_s
        self.length = welch_segment(sys.maxsize, dt_s)
        self.step = self.length - self.length // 2  # scipy's default overlap: half a segment
        self.buffer = np.empty(0)
        self.short = np.empty(0)  # the longest run too short for a segment, until one is full
        self.psd_sum: np.ndarray | None = None
        self.freqs_hz = np.empty(0)
        self.segments = 0

    def add(self, x: np.ndarray) -> None:
        buffer = np.r_[self.buffer, x]
        if len(buffer) >= self.length:
            k = (len(buffer) - self.length) // self.step + 1
            self.freqs_hz, psd = welch_psd(buffer[: (k - 1) * self.step + self.length], self.dt_s)
            self.psd_sum = psd * k if self.psd_sum is None else self.psd_sum + psd * k
            self.segments += k
            buffer = buffer[k * self.step :]
        self.buffer = buffer

    def restart(self) -> None:
        if not self.segments and len(self.buffer) > len(self.short):
            self.short = self.buffer
        self.buffer = np.empty(0)

    def spectrum(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Frequencies (Hz) and the mean PSD (W²/Hz); a record shorter than one segment is
        one segment of its own length, as `band_energy` takes it; None with under 2 samples."""
        if self.psd_sum is not None:
            return self.freqs_hz, self.psd_sum / self.segments
        self.restart()
        return welch_psd(self.short, self.dt_s) if len(self.short) >= 2 else None


def _band(
    spec: BandSpec, spectra: dict[str, tuple[np.ndarray, np.ndarray]], dt_s: float
) -> dict[str, Any]:
    freqs = spectra["grid_w"][0]
    energy = {n: band_sum(f, p, dt_s, (spec.low_hz, spec.high_hz)) for n, (f, p) in spectra.items()}
    total = {n: float(np.sum(p)) for n, (_, p) in spectra.items()}
    bin_hz = float(freqs[1] - freqs[0])
    figures: dict[str, Any] = {}
    for name, short in (("grid_w", "grid"), ("it_w", "it")):
        figures |= {
            f"{short}_psd_sum_w2_per_hz": energy[name],
            f"{short}_rms_w": float(np.sqrt(energy[name] * bin_hz)),
            f"{short}_share_ratio": energy[name] / total[name] if total[name] > 0 else None,
        }
    return figures | {"attenuation_db": attenuation_db(energy["it_w"], energy["grid_w"])}


class SpectrumFigures:
    """Streams rows; `result` gives each band's energy, RMS, share and attenuation."""

    def __init__(self, period_s: float, bands: Sequence[BandSpec]) -> None:
        self.period_s = period_s
        self.bands = bands
        self.even = Even(period_s, SIGNALS)
        self.welch = {n: WelchSum(period_s) for n in SIGNALS}

    def add(self, rows: Rows) -> None:
        for new, samples in self.even.add(rows):
            for column, name in enumerate(SIGNALS):
                if new:
                    self.welch[name].restart()
                self.welch[name].add(samples[:, column])

    def spectra(self) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
        found = {n: w.spectrum() for n, w in self.welch.items()}
        return None if any(s is None for s in found.values()) else found  # type: ignore[misc]

    def result(self) -> dict[str, Any]:
        spectra = self.spectra()
        nyquist = 0.5 / self.period_s
        bands = []
        for spec in self.bands:
            band = {
                "name": spec.name,
                "low_hz": spec.low_hz,
                "high_hz": min(spec.high_hz, nyquist),
                "share_max_ratio": spec.share_max_ratio,
            }
            if spec.low_hz >= nyquist:  # the rows cannot show it: no figure, not a zero
                band["note"] = f"above the rows' Nyquist frequency ({nyquist:g} Hz)"
            elif spectra:
                band |= _band(spec, spectra, self.period_s)
            bands.append(band)
        grid = self.welch["grid_w"]
        return {
            "period_s": self.period_s,
            "nyquist_hz": nyquist,
            "segment_s": grid.length * self.period_s,
            "segments": grid.segments or (1 if spectra else 0),
            "samples": self.even.samples,
            "filled_samples": self.even.filled,
            "gaps": self.even.gaps,
            "bands": bands,
        }

    def plot(self) -> dict[str, Any]:
        """Both spectra, for the page's log plot (empty with too few samples)."""
        spectra = self.spectra()
        if spectra is None:
            return {"freqs_hz": [], "grid_psd_w2_per_hz": [], "it_psd_w2_per_hz": []}
        return {
            "freqs_hz": spectra["grid_w"][0].tolist(),
            "grid_psd_w2_per_hz": spectra["grid_w"][1].tolist(),
            "it_psd_w2_per_hz": spectra["it_w"][1].tolist(),
        }
