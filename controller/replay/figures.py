"""The figures every smoothing replay reports (see the design notes). Pure numpy."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

J_PER_KWH = 3.6e6
BAND_HZ = (0.1, 20.0)


WELCH_SEGMENT_S = 40.0  # four periods of the band's lowest frequency: 0.1 Hz stays resolved


def welch_segment(samples: int, dt_s: float) -> int:
    """Samples in one Welch segment: WELCH_SEGMENT_S, or the whole record when shorter."""
    return max(2, min(samples, round(WELCH_SEGMENT_S / dt_s)))


def welch_psd(x: np.ndarray, dt_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (Hz) and Welch's power spectral density of x (W²/Hz for x in W).

    Hann-windowed segments of `welch_segment` samples, half overlapping, each segment's mean
    removed. A bare periodogram treats the record as periodic, so a load that starts idle and
    ends busy gets a jump at the wrap-around whose leakage floods the band: it rated a grid
    that ramps once and then stays flat at only -18.7 dB on the H200 trace.
    """
    from scipy.signal import welch  # scipy is slow to import; only replays need it

    segment = welch_segment(len(x), dt_s)
    return welch(x, fs=1.0 / dt_s, window="hann", nperseg=segment, detrend="constant")


EDGE_TOLERANCE = 1e-9  # relative: a bin's side of an edge is the rule's, not rounding's


def in_band(freqs: np.ndarray, dt_s: float, band_hz: tuple[float, float] = BAND_HZ) -> np.ndarray:
    """Which of a spectrum's bins are in the band: above band_hz[0], up to min(band_hz[1],
    Nyquist). A bin centred on an edge belongs below it, so bands that meet share no bin.

    Why the rule: 40 s segments put a bin on 0.1 Hz, and it gathers 0.05–0.15 Hz (Hann's
    main lobe), half of it under the band. It was in or out by the last bits of the time
    step (the shipped trace's 0.10000000000000142 s left it out, a recorder's 0.1 s took it
    in: 4–6 dB apart on the training trace, whose checkpoint cycle, 0.098 Hz, sits in it)."""
    top = min(band_hz[1], 0.5 / dt_s) * (1.0 + EDGE_TOLERANCE)
    return (freqs > band_hz[0] * (1.0 + EDGE_TOLERANCE)) & (freqs <= top)


def band_sum(
    freqs: np.ndarray, psd: np.ndarray, dt_s: float, band_hz: tuple[float, float] = BAND_HZ
) -> float:
    """The spectrum's bins in the band (`in_band`), added up."""
    return float(np.sum(psd[in_band(freqs, dt_s, band_hz)]))


def band_energy(x: np.ndarray, dt_s: float, band_hz: tuple[float, float] = BAND_HZ) -> float:
    """Spectral energy of x (mean removed) in the band (`in_band`): Welch's estimate
    (`welch_psd`), its bins in the band added up."""
    freqs, psd = welch_psd(x, dt_s)
    return band_sum(freqs, psd, dt_s, band_hz)


def band_operator(samples: int, dt_s: float, band_hz: tuple[float, float] = BAND_HZ) -> np.ndarray:
    """`band_energy` as a matrix M: band_energy(x) = ‖M·x‖² for every x of `samples` samples
    (Welch's segments and window, each segment's mean removed, the in-band bins' real and
    imaginary parts as rows). The band is quadratic in the grid, so a convex solver can hold
    a schedule to it (`bench/bench_bound_band.py`)."""
    from scipy.signal import get_window

    segment = welch_segment(samples, dt_s)
    # scipy's grid: half the segment overlaps (its floor), frequencies from fs = 1/dt
    starts = range(0, samples - segment + 1, segment - segment // 2)
    if len(starts) == 0:  # shorter than a segment: no band energy (band_energy's 0)
        return np.zeros((0, samples))
    window = get_window("hann", segment)
    freqs = np.fft.rfftfreq(segment, 1.0 / (1.0 / dt_s))
    nyquist = freqs[-1] if segment % 2 == 0 else math.inf
    bins = np.nonzero(in_band(freqs, dt_s, band_hz))[0]
    # One-sided density: twice each bin's power, but the Nyquist bin's once.
    scale = np.where(freqs[bins] == nyquist, 1.0, 2.0)
    scale = scale * dt_s / np.sum(window**2) / len(starts)  # averaged over the segments
    dft = np.fft.rfft(np.eye(segment), axis=0)[bins]
    one = (np.sqrt(scale)[:, None] * dft) @ (window[:, None] * (np.eye(segment) - 1.0 / segment))
    rows = []
    for first in starts:
        block = np.zeros((len(bins), samples), dtype=complex)
        block[:, first : first + segment] = one
        rows += [block.real, block.imag]
    return np.vstack(rows)


def attenuation_db(load_energy: float, grid_energy: float) -> float:
    """10·log10 of the grid's band energy over the load's: negative is smoothing."""
    if load_energy <= 0.0:
        return 0.0
    return float(10.0 * np.log10(max(grid_energy, 1e-300) / load_energy))


def band_attenuation_db(load_w: np.ndarray, grid_w: np.ndarray, dt_s: float) -> float:
    """10·log10 of the grid's band energy over the load's: negative is smoothing."""
    return attenuation_db(band_energy(load_w, dt_s), band_energy(grid_w, dt_s))


def stored_energy_j(
    battery_w: np.ndarray, dt_s: float, initial_j: float, eta_charge: float, eta_discharge: float
) -> np.ndarray:
    """Stored energy after each step: discharge costs b/η_d, charge stores |b|·η_c."""
    delta = np.where(battery_w >= 0, -battery_w / eta_discharge, -battery_w * eta_charge) * dt_s
    return initial_j + np.cumsum(delta)


@dataclass(frozen=True)
class Figures:
    grid_max_ramp_w_per_s: float
    band_attenuation_db: float
    battery_throughput_kwh: float
    required_capacity_kwh: float
    max_battery_w: float
    unserved_kwh: float
    soc_min: float
    soc_max: float


def figures(
    load_w: np.ndarray,
    grid_w: np.ndarray,
    battery_w: np.ndarray,
    unserved_w: np.ndarray,
    energy_j: np.ndarray,
    capacity_j: float,
    dt_s: float,
) -> Figures:
    ramp = float(np.max(np.abs(np.diff(grid_w))) / dt_s) if len(grid_w) > 1 else 0.0
    return Figures(
        grid_max_ramp_w_per_s=ramp,
        band_attenuation_db=band_attenuation_db(load_w, grid_w, dt_s),
        battery_throughput_kwh=float(np.sum(np.abs(battery_w)) * dt_s / J_PER_KWH),
        required_capacity_kwh=float((np.max(energy_j) - np.min(energy_j)) / J_PER_KWH),
        max_battery_w=float(np.max(np.abs(battery_w))),
        unserved_kwh=float(np.sum(unserved_w) * dt_s / J_PER_KWH),
        soc_min=float(np.min(energy_j) / capacity_j),
        soc_max=float(np.max(energy_j) / capacity_j),
    )
