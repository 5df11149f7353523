"""Replay: the live controller's dispatch core over a whole site trace, with its figures, the
perfect-foresight bound beside them, and the smallest battery that holds the ramp."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller.config import DispatchConfig, PlannerSettings, RampLimit
from controller.dispatch import Bank, core, initial_state, params_vector, rhythm
from controller.dispatch.replan import Memory, Replanning, plan_settings, replan
from controller.replay.bound import (
    BoundProblem,
    min_capacity_kwh,
    min_power_w,
    min_throughput_kwh,
    realizable_capacity_kwh,
)
from controller.replay.events import Announced
from controller.replay.figures import Figures, figures

CHUNK_STEPS = 200_000  # simulate in chunks this long, so long traces can report progress
PLAN_EVERY_S = 1.0  # re-planned once a second, as the live loop would, off the tick's path
# The LPs (throughput, capacity, and the followable bound's priced capacity programs, up to
# eight) grow faster than the trace: 26 s, 5 s and 26 s at this size here.
BOUND_MAX_STEPS = 10_000
Progress = Callable[[int, int], None]  # (steps done, steps in all)


class ReplaySettings(BaseModel):
    """What a replay needs besides the trace; validated like every other input."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    gpus: int = Field(10_000, ge=0, le=10_000_000)
    base_w: float = Field(2e6, ge=0, le=1e10)
    battery_w: float = Field(20e6, gt=0, le=1e10, description="charge and discharge limit")
    battery_wh: float = Field(20e6, gt=0, le=1e12)
    initial_soc: float = Field(0.6, ge=0, le=1)
    ramp_w_per_s: RampLimit = Field(5e5, description="grid ramp limit, up and down, W/s")
    lowpass_tau_s: float | None = Field(None, gt=0, le=3600, description="override the site's")
    average_window_s: float | None = Field(None, ge=0, le=200, description="override the site's")
    energy_return_s: float | None = Field(None, ge=0, le=3600, description="override the site's")
    job_w_per_gpu: float = Field(
        470.0, ge=0, le=1e5, description="what a GPU of an announced job adds to the draw, W"
    )
    dispatch: DispatchConfig = DispatchConfig()
    planner: PlannerSettings = PlannerSettings()  # its shapes' settings (enabled: not read)

    @model_validator(mode="after")
    def _options_into_dispatch(self) -> ReplaySettings:
        update: dict[str, float] = {
            "ramp_up_w_per_s": self.ramp_w_per_s,
            "ramp_down_w_per_s": self.ramp_w_per_s,
        }
        for name in ("lowpass_tau_s", "average_window_s", "energy_return_s"):
            if (value := getattr(self, name)) is not None:
                update[name] = value
        # Validated whole, as the site file is: a copy with the options would skip the bounds.
        self.dispatch = DispatchConfig.model_validate({**self.dispatch.model_dump(), **update})
        return self

    @property
    def capacity_j(self) -> float:
        return self.battery_wh * 3600.0


@dataclass(frozen=True)
class ReplayRun:
    load_w: np.ndarray
    out: np.ndarray  # core outputs, one row per step
    energy_j: np.ndarray  # stored energy, with the initial value first
    capacity_j: float
    figures: Figures
    plan_w: np.ndarray  # the planner's feed-forward each step (0: none)
    first_battery_w: float = 0.0  # the bound's first step: idle at a trace's start


def simulate(
    load_w: np.ndarray,
    dt_s: float,
    settings: ReplaySettings,
    progress: Progress | None = None,
    notices: tuple[Announced, ...] = (),
    start_s: float = 0.0,
    learn: rhythm.RhythmSettings | None = None,
    planner: FeedForward | None = None,
) -> ReplayRun:
    """The core over the trace; with notices (trace time, the first step at start_s), the
    planner re-plans every PLAN_EVERY_S from what was announced by then; with `learn`, also
    from the pauses the rhythm learned from the load so far predicts. `planner`: another
    planner in its place (a benchmark's, e.g. one that knows the trace ahead)."""
    cap = settings.capacity_j
    e0 = settings.initial_soc * cap
    params = params_vector(
        settings.dispatch, Bank(cap, e0, 0.0, settings.battery_w, settings.battery_w)
    )
    n = len(load_w)
    nominal = np.full(n, float(settings.dispatch.nominal_frequency_hz))
    caps = np.full(n, settings.dispatch.import_cap_w or math.inf)
    state = initial_state(e0)
    out = core.outputs(n)
    plan_w = np.zeros(n)
    if planner is not None and (notices or learn is not None):
        raise ValueError("notices and learn are the shipped planner's: not with planner=")
    if planner is None and (notices or learn is not None):
        planner = _Planner(notices, settings, dt_s, start_s, learn)
    chunk = max(1, round(PLAN_EVERY_S / dt_s)) if planner is not None else CHUNK_STEPS
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        args = (state, params, load_w[start:end], nominal[start:end], caps[start:end])
        if planner is None:
            state = core.simulate(*args, dt_s, out[start:end])
        else:
            plan_w[start:end] = planner.feed_forward(start, state, load_w)[: end - start]
            state = core.simulate_planned(*args, plan_w[start:end], dt_s, out[start:end])
        if progress and (end % CHUNK_STEPS < chunk or end == n):
            progress(end, n)
    return _run(load_w, out, np.r_[e0, out[:, core.O_ENERGY]], cap, dt_s, plan_w)


def _run(
    load_w: np.ndarray,
    out: np.ndarray,
    energy_j: np.ndarray,
    capacity_j: float,
    dt_s: float,
    plan_w: np.ndarray,
    first_battery_w: float = 0.0,
) -> ReplayRun:
    o = out
    figs = figures(
        load_w, o[:, core.O_GRID], o[:, core.O_BATTERY], o[:, core.O_UNSERVED], energy_j,
        capacity_j, dt_s,
    )  # fmt: skip
    return ReplayRun(load_w, out, energy_j, capacity_j, figs, plan_w, first_battery_w)


def window(run: ReplayRun, first: int, dt_s: float) -> ReplayRun:
    """The run from step `first` on, with its own figures: the controller (and what it learned)
    warm, as the live one is once the workload has run a while. Its bound starts where the run
    stood: the same stored energy and the same battery power."""
    out = run.out[first:]
    first_w = float(out[0, core.O_BATTERY]) if len(out) else 0.0
    return _run(
        run.load_w[first:], out, run.energy_j[first:], run.capacity_j, dt_s, run.plan_w[first:],
        first_w,
    )  # fmt: skip


class FeedForward(Protocol):
    """What `simulate` asks a planner once every PLAN_EVERY_S: the feed-forward per step from
    `step` on (W; at least to the next re-plan), given the core's state then and the trace."""

    def feed_forward(self, step: int, core_state: np.ndarray, load_w: np.ndarray) -> np.ndarray:
        """The feed-forward per step from `step` on, W."""
        ...


class _Planner:
    """The replay's shell around the shared re-plan: which notices were out by each re-plan,
    and the loads seen since the last one."""

    def __init__(
        self,
        notices: tuple[Announced, ...],
        s: ReplaySettings,
        dt_s: float,
        start_s: float,
        learn: rhythm.RhythmSettings | None = None,
    ) -> None:
        self.notices, self.dt_s, self.start_s = notices, dt_s, start_s
        self.settings = Replanning(
            plan_settings(s.dispatch, s.planner), s.gpus * s.job_w_per_gpu, learn
        )
        self.memory = Memory()
        self.last = 0

    def feed_forward(self, step: int, core_state: np.ndarray, load_w: np.ndarray) -> np.ndarray:
        now = self.start_s + step * self.dt_s
        since = now - self.settings.keep_s  # notices just over stay: their plans fade out
        out = [a.notice for a in self.notices if a.known_s <= now and a.notice.ends_s >= since]
        seen = load_w[self.last : step]
        self.last = step
        lowpass = core_state[core.S_LOWPASS] if core_state[core.S_INIT] else load_w[step]
        ff, self.memory = replan(self.memory, now, self.dt_s, out, seen, lowpass, self.settings)
        return ff


def bound_problem(run: ReplayRun, dt_s: float, s: ReplaySettings) -> BoundProblem:
    d = s.dispatch
    return BoundProblem(
        load_w=run.load_w,
        dt_s=dt_s,
        ramp_up_w_per_s=d.ramp_up_w_per_s,
        ramp_down_w_per_s=d.ramp_down_w_per_s,
        discharge_max_w=s.battery_w,
        charge_max_w=s.battery_w,
        energy_floor_j=d.soc_min_ratio * s.capacity_j,
        energy_ceiling_j=d.soc_max_ratio * s.capacity_j,
        initial_energy_j=float(run.energy_j[0]),
        # "No emptier than the online run ended", to a millionth of the battery: exactly
        # that end can sit on the edge of what the ramp allows and read as infeasible.
        final_energy_min_j=float(run.energy_j[-1]) - max(1.0, 1e-6 * s.capacity_j),
        eta_charge=d.charge_efficiency,
        eta_discharge=d.discharge_efficiency,
        initial_battery_w=run.first_battery_w,
    )


def _ratio(online: float, bound: float | None) -> float | None:
    if bound is None or bound <= 0.0:
        return None
    return online / bound


def report(
    run: ReplayRun, dt_s: float, settings: ReplaySettings, with_bound: bool
) -> dict[str, Any]:
    """The replay's figures, and the bound's where asked (None where the LP has no solution)."""
    result: dict[str, Any] = asdict(run.figures)
    lp_thr = lp_cap = lp_real = None
    steps = len(run.load_w)
    note = "solved" if with_bound else "not asked for"
    if with_bound and steps > BOUND_MAX_STEPS:
        with_bound = False
        note = f"skipped: {steps:,} steps is over {BOUND_MAX_STEPS:,}; replay a shorter window"
    if with_bound:
        problem = bound_problem(run, dt_s, settings)
        lp_thr, lp_cap = min_throughput_kwh(problem), min_capacity_kwh(problem)
        lp_real = realizable_capacity_kwh(problem)
    result |= {
        "lp_throughput_kwh": lp_thr,
        "lp_required_capacity_kwh": lp_cap,
        "lp_realizable_capacity_kwh": lp_real,
        "throughput_ratio": _ratio(run.figures.battery_throughput_kwh, lp_thr),
        "capacity_ratio": _ratio(run.figures.required_capacity_kwh, lp_cap),
        "realizable_capacity_ratio": _ratio(run.figures.required_capacity_kwh, lp_real),
        "bound": note,
        "steps": steps,
        "dt_s": dt_s,
    }
    return result


@dataclass(frozen=True)
class Sizing:
    online_battery_w: float
    online_battery_wh: float  # nameplate, with the SoC window and the start SoC
    online_swing_kwh: float  # stored-energy range actually used
    lp_battery_w: float | None
    lp_swing_kwh: float | None  # the LP's lower bound
    lp_realizable_swing_kwh: float | None  # a foresight schedule a battery can follow


def size(load_w: np.ndarray, dt_s: float, settings: ReplaySettings) -> Sizing:
    """The smallest battery (power, energy) with which the online controller serves the whole
    trace without breaking the ramp, and the LP's smallest power and energy swing."""
    d = settings.dispatch
    unlimited = settings.model_copy(update={"battery_w": 1e10, "battery_wh": 1e12})
    free = simulate(load_w, dt_s, unlimited)
    power = free.figures.max_battery_w
    e0 = float(free.energy_j[0])
    up = float(np.max(free.energy_j)) - e0
    down = e0 - float(np.min(free.energy_j))
    ratio = settings.initial_soc
    need = [0.0]
    if up > 0:
        need.append(up / max(d.soc_max_ratio - ratio, 1e-9))
    if down > 0:
        need.append(down / max(ratio - d.soc_min_ratio, 1e-9))
    capacity_j = max(need)
    # A finite battery changes the SoC return's pull: grow by 5 % until the run is clean.
    for _ in range(60):
        trial = settings.model_copy(
            update={"battery_w": power * 1.0001 + 1.0, "battery_wh": capacity_j / 3600.0 + 1e-3}
        )
        run = simulate(load_w, dt_s, trial)
        if run.figures.unserved_kwh <= 0.0:
            break
        power = max(power, run.figures.max_battery_w) * 1.02
        capacity_j *= 1.05
    # A battery that leaves its SoC band drifts back and may need less power than the free
    # run's peak: the power the clean run used (a limit it never reached changes nothing).
    used = run.figures.max_battery_w * 1.0001 + 1.0
    trial = trial.model_copy(update={"battery_w": min(trial.battery_w, used)})
    # The LP's energy is unbounded like the free online run's; its power is what the online
    # controller needed (unbounded power would let it waste energy without limit).
    problem = replace(
        bound_problem(free, dt_s, unlimited),
        energy_floor_j=-math.inf,
        energy_ceiling_j=math.inf,
        discharge_max_w=trial.battery_w,
        charge_max_w=trial.battery_w,
    )
    return Sizing(
        online_battery_w=trial.battery_w,
        online_battery_wh=trial.battery_wh,
        online_swing_kwh=run.figures.required_capacity_kwh,
        lp_battery_w=min_power_w(replace(problem, discharge_max_w=math.inf, charge_max_w=math.inf)),
        lp_swing_kwh=min_capacity_kwh(problem),
        lp_realizable_swing_kwh=realizable_capacity_kwh(problem),
    )


SOC_MIN_SPAN = 0.05  # the SoC axis spans at least this: a 0.0003 wiggle is not a swing


def plot(
    run: ReplayRun, dt_s: float, path: str, settings: ReplaySettings, title: str = "replay"
) -> None:
    """Site load and grid draw, the grid's ramp against its limit, battery power and SoC over
    time, to a PNG (or any matplotlib format), titled with the settings it ran with."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(len(run.load_w)) * dt_s
    grid_w = run.out[:, core.O_GRID]
    limit = settings.ramp_w_per_s
    fig, axes = plt.subplots(4, 1, sharex=True, figsize=(11, 9), constrained_layout=True)
    d = settings.dispatch
    fig.suptitle(
        f"{title}: {settings.gpus:,} GPUs + {settings.base_w / 1e6:g} MW; grid ramp limit "
        f"{limit / 1e6:g} MW/s; battery {settings.battery_w / 1e6:g} MW / "
        f"{settings.battery_wh / 1e6:g} MWh; low-pass {d.lowpass_tau_s:g} s, energy return "
        f"{d.energy_return_s:g} s",
        fontsize=10,
    )
    axes[0].plot(t, run.load_w / 1e6, lw=0.6, color="tab:gray", label="site load")
    axes[0].plot(t, grid_w / 1e6, lw=1.4, color="tab:blue", label="grid draw (the plan)")
    axes[0].set_ylabel("MW")
    ramp = np.gradient(grid_w, dt_s) / 1e6 if len(grid_w) > 1 else np.zeros_like(grid_w)
    axes[1].plot(t, ramp, lw=0.6, color="tab:blue", label="grid ramp")
    for sign in (1, -1):
        axes[1].axhline(sign * limit / 1e6, color="tab:red", ls="--", lw=1,
                        label="ramp limit" if sign > 0 else None)  # fmt: skip
    axes[1].set_ylabel("grid ramp\n(MW/s)")
    axes[2].plot(t, run.out[:, core.O_BATTERY] / 1e6, lw=0.6, color="tab:green",
                 label="battery power (+ discharge)")  # fmt: skip
    axes[2].axhline(0.0, color="black", lw=0.5)
    axes[2].set_ylabel("battery MW")
    soc = run.energy_j[1:] / run.capacity_j
    axes[3].plot(t, soc, color="tab:purple", label="state of charge")
    middle, span = (soc.max() + soc.min()) / 2, max(soc.max() - soc.min(), SOC_MIN_SPAN)
    axes[3].set_ylim(max(middle - span * 0.6, 0.0), min(middle + span * 0.6, 1.0))
    axes[3].set_ylabel("state of charge")
    kwh = run.capacity_j / 3.6e6  # the same curve in stored energy, on the right
    axes[3].secondary_yaxis("right", functions=(lambda r: r * kwh, lambda e: e / kwh)).set_ylabel(
        "stored kWh"
    )
    axes[3].set_xlabel("time (s)")
    for ax in axes:  # legends beside the data (past the kWh axis), never over it
        ax.legend(loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize=8, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)
