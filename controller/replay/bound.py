"""The perfect-foresight bound: linear programs that know the whole trace (HiGHS via scipy).

Variables per step t: discharge d_t ≥ 0 and charge c_t ≥ 0 (W), stored energy E_t (J).
Grid g_t = load_t − d_t + c_t. Constraints, the same the online controller lives under:
  ramp:    −R_down·dt ≤ g_t − g_{t−1} ≤ R_up·dt
  power:   d_t ≤ P_discharge, c_t ≤ P_charge
  energy:  E_{t+1} = E_t − d_t·dt/η_d + c_t·dt·η_c,  E_floor ≤ E_t ≤ E_ceiling
  start:   E_0 as the online run's; the first step's battery as the online run's there (idle
           at a trace's start: the grid carries the load; a window's, where it stood)
  end:     E_T ≥ the online run's final energy (no bound may win by draining the battery)
Objectives: minimise throughput Σ(d + c)·dt; or capacity max E − min E; or peak power.

A linear program cannot forbid charging and discharging in the same step, which with
efficiencies below 1 lets it waste energy on purpose. That only relaxes the problem: its
figures stay lower bounds on what any controller, with any foresight, can do. For throughput
the relaxation costs nothing (wasting is throughput). For stored energy it is large: on the
shipped H200 trace the least-capacity schedule charges and discharges at once in a third of
its steps and burns 5 kWh doing it, so no battery can follow it. `realizable_capacity_kwh`
prices throughput until the schedule stops doing that: a schedule that knows the whole trace
and a battery can follow, so the least stored energy lies between the two figures. `OneWay`
solves the same program exactly, a binary per step (far slower: for benchmarks): on the
shipped trace with notices, the replay's battery (20 MW, 96 % each way, starting and ending
as the run does) needs at least 2.057 kWh, where the linear program says 1.625 and the
followable bound finds 2.062 (bench/bench_bound_exact.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds as Box
from scipy.optimize import LinearConstraint, linprog, milp

from controller.replay.figures import J_PER_KWH, stored_energy_j


@dataclass(frozen=True)
class BoundProblem:
    load_w: np.ndarray
    dt_s: float
    ramp_up_w_per_s: float
    ramp_down_w_per_s: float
    discharge_max_w: float
    charge_max_w: float
    energy_floor_j: float
    energy_ceiling_j: float
    initial_energy_j: float
    final_energy_min_j: float
    eta_charge: float
    eta_discharge: float
    initial_battery_w: float = 0.0  # the first step's (positive: discharge)


def _constraints(p: BoundProblem, extra_cols: int):
    """A_ub, b_ub, A_eq, b_eq, bounds for columns [d (T), c (T), E (T+1), extra]."""
    n = len(p.load_w)
    dt = p.dt_s
    cols = 3 * n + 1 + extra_cols
    d0, c0, e0 = 0, n, 2 * n
    # Ramp on g_t − g_{t−1} = (load_t − load_{t−1}) − (d_t − d_{t−1}) + (c_t − c_{t−1}).
    diff = sparse.diags(
        [np.ones(n - 1), -np.ones(n - 1)], [1, 0], shape=(n - 1, n)
    )  # x_t − x_{t−1}
    dload = np.diff(p.load_w)
    ramp_rows = sparse.hstack([-diff, diff, sparse.csr_matrix((n - 1, n + 1 + extra_cols))])
    a_ub = sparse.vstack([ramp_rows, -ramp_rows])
    b_ub = np.concatenate([p.ramp_up_w_per_s * dt - dload, p.ramp_down_w_per_s * dt + dload])
    if math.isfinite(p.discharge_max_w) and math.isfinite(p.charge_max_w):
        # d + c·P_dis/P_ch ≤ P_dis: exact when only one of them flows, and it keeps the LP
        # from cycling much power through both at once. (Written in watts: scaled to 1 W it
        # left HiGHS calling feasible problems infeasible.)
        both = sparse.hstack(
            [
                sparse.identity(n),
                sparse.identity(n) * (p.discharge_max_w / p.charge_max_w),
                sparse.csr_matrix((n, n + 1 + extra_cols)),
            ]
        )
        a_ub = sparse.vstack([a_ub, both])
        b_ub = np.concatenate([b_ub, np.full(n, p.discharge_max_w)])
    # Energy: E_{t+1} − E_t + d_t·dt/η_d − c_t·dt·η_c = 0.
    e_diff = sparse.diags([np.ones(n), -np.ones(n)], [1, 0], shape=(n, n + 1))
    a_eq = sparse.hstack(
        [
            sparse.identity(n) * (dt / p.eta_discharge),
            sparse.identity(n) * (-dt * p.eta_charge),
            e_diff,
            sparse.csr_matrix((n, extra_cols)),
        ]
    )
    b_eq = np.zeros(n)
    # Energy is counted from the start (E_0 = 0): absolute joules of a large battery would
    # drown the per-step changes in the solver's tolerances.
    floor, ceiling = p.energy_floor_j - p.initial_energy_j, p.energy_ceiling_j - p.initial_energy_j
    bounds = (
        [(0.0, p.discharge_max_w)] * n
        + [(0.0, p.charge_max_w)] * n
        + [(floor, ceiling)] * (n + 1)
        + [(None, None)] * extra_cols
    )
    first = p.initial_battery_w
    bounds[d0] = (max(first, 0.0),) * 2
    bounds[c0] = (max(-first, 0.0),) * 2
    bounds[e0] = (0.0, 0.0)
    bounds[e0 + n] = (max(floor, p.final_energy_min_j - p.initial_energy_j), ceiling)
    return a_ub.tocsr(), b_ub, a_eq.tocsr(), b_eq, bounds, cols


def _solve(c: np.ndarray, a_ub, b_ub, a_eq, b_eq, bounds) -> np.ndarray | None:
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
    return res.x if res.status == 0 else None


# (c, A_ub, b_ub, A_eq, b_eq, bounds): minimise c·x, as linprog takes it. A solver gets the
# problem too, so it can add constraints of its own on the columns' meaning (the grid's band:
# bench/bench_bound_band.py).
Bounds = list[tuple[float | None, float | None]]
Program = tuple[np.ndarray, sparse.csr_matrix, np.ndarray, sparse.csr_matrix, np.ndarray, Bounds]
Solver = Callable[[BoundProblem, Program], np.ndarray | None]


def solve_highs(p: BoundProblem, program: Program) -> np.ndarray | None:
    """A program's solution by HiGHS (None: none found)."""
    return _solve(*program)


UNIT = 1e6  # OneWay's MW and MJ


@dataclass
class OneWay:
    """A solver for the bound's programs where each step's battery flows one way, as a
    battery's does: a binary z per step, discharge ≤ its limit·z and charge ≤ its limit·(1 − z)
    (HiGHS's branch and bound, through scipy). Exact where the linear programs relax, and slow
    (the shipped 758-step trace's least stored energy: under two minutes here), so it serves
    the benchmarks, not replay. Keeps its dual bound, proven to HiGHS's tolerances (no schedule
    does with less) even where a limit stops it short of the best schedule."""

    time_limit_s: float
    node_limit: int | None = None  # the branch and bound's nodes at most (None: no limit)
    dual_kwh: float = float("nan")
    status: str = "not run"
    gap: float = float("nan")  # HiGHS's relative gap between its dual bound and best schedule
    seconds: float = 0.0

    def __call__(self, p: BoundProblem, program: Program) -> np.ndarray | None:
        c, a_ub, b_ub, a_eq, b_eq, bounds = program
        n, cols = len(p.load_w), len(c)
        if not (np.isfinite(p.discharge_max_w) and np.isfinite(p.charge_max_w)):
            raise ValueError("a one-way battery needs finite power limits")
        # Solved in MW and MJ: every row of the programs is in watts or joules, so the matrix
        # stands and the right-hand sides, bounds and objective scale. Against 20 MW limits in
        # watts, HiGHS's tolerances let its branch and bound call a schedule optimal above
        # one it had found itself.
        b_ub, b_eq, c = b_ub / UNIT, b_eq / UNIT, c * UNIT
        bounds = [tuple(None if v is None else v / UNIT for v in b) for b in bounds]
        lower = np.array([-np.inf if b[0] is None else b[0] for b in bounds] + [0.0] * n)
        upper = np.array([np.inf if b[1] is None else b[1] for b in bounds] + [1.0] * n)
        # A step fixed to charge or discharge (the first, as the online run's) fixes its z.
        first_d, first_c = lower[0], lower[n]
        if first_d > 0.0 or first_c > 0.0:
            lower[cols] = upper[cols] = 1.0 if first_d > 0.0 else 0.0
        pad = sparse.csr_matrix((a_ub.shape[0], n))
        d_rows = sparse.hstack(
            [
                sparse.identity(n),
                sparse.csr_matrix((n, cols - n)),
                -p.discharge_max_w / UNIT * sparse.identity(n),
            ]
        )
        c_rows = sparse.hstack(
            [
                sparse.csr_matrix((n, n)),
                sparse.identity(n),
                sparse.csr_matrix((n, cols - 2 * n)),
                p.charge_max_w / UNIT * sparse.identity(n),
            ]
        )
        ub_rows = sparse.vstack([sparse.hstack([a_ub, pad]), d_rows, c_rows]).tocsr()
        ub = np.r_[b_ub, np.zeros(n), np.full(n, p.charge_max_w / UNIT)]
        eq_rows = sparse.hstack([a_eq, sparse.csr_matrix((a_eq.shape[0], n))]).tocsr()
        t0 = time.perf_counter()
        res = milp(
            np.r_[c, np.zeros(n)],
            constraints=[
                LinearConstraint(ub_rows, -np.inf, ub),
                LinearConstraint(eq_rows, b_eq, b_eq),
            ],
            bounds=Box(lower, upper),
            integrality=np.r_[np.zeros(cols), np.ones(n)],
            options={
                "time_limit": self.time_limit_s,
                "mip_rel_gap": 1e-4,
                **({} if self.node_limit is None else {"node_limit": self.node_limit}),
            },
        )
        self.seconds = time.perf_counter() - t0
        self.status = res.message
        dual, gap = getattr(res, "mip_dual_bound", None), getattr(res, "mip_gap", None)
        self.dual_kwh = np.nan if dual is None else float(dual)  # the objective is in kWh
        self.gap = np.nan if gap is None else float(gap)
        return None if res.x is None else res.x[:cols] * UNIT


def min_throughput_kwh(p: BoundProblem, solve: Solver = solve_highs) -> float | None:
    """The least energy any schedule moves through the battery, kWh."""
    n = len(p.load_w)
    a_ub, b_ub, a_eq, b_eq, bounds, cols = _constraints(p, 0)
    c = np.zeros(cols)
    c[: 2 * n] = p.dt_s / J_PER_KWH
    x = solve(p, (c, a_ub, b_ub, a_eq, b_eq, bounds))
    return None if x is None else float(c @ x)


def capacity_program(p: BoundProblem, price: float) -> Program:
    """The least-capacity program (max E − min E, throughput priced at `price` kWh of capacity
    per kWh moved) over the columns [d (T), c (T), E (T+1), hi, lo]."""
    n = len(p.load_w)
    a_ub, b_ub, a_eq, b_eq, bounds, cols = _constraints(p, 2)
    e0, hi, lo = 2 * n, cols - 2, cols - 1
    # E_t − hi ≤ 0 and lo − E_t ≤ 0 for every t.
    rows = n + 1
    e_cols = np.arange(e0, e0 + rows)
    band = sparse.vstack(
        [
            sparse.csr_matrix(
                (
                    np.r_[np.ones(rows), -np.ones(rows)],
                    (np.r_[np.arange(rows), np.arange(rows)], np.r_[e_cols, np.full(rows, hi)]),
                ),
                shape=(rows, cols),
            ),
            sparse.csr_matrix(
                (
                    np.r_[-np.ones(rows), np.ones(rows)],
                    (np.r_[np.arange(rows), np.arange(rows)], np.r_[e_cols, np.full(rows, lo)]),
                ),
                shape=(rows, cols),
            ),
        ]
    )
    a_ub = sparse.vstack([a_ub, band]).tocsr()
    b_ub = np.concatenate([b_ub, np.zeros(2 * rows)])
    c = np.zeros(cols)
    c[hi], c[lo] = 1.0 / J_PER_KWH, -1.0 / J_PER_KWH
    c[: 2 * n] = price * p.dt_s / J_PER_KWH
    return c, a_ub, b_ub, a_eq, b_eq, bounds


def _capacity_schedule(
    p: BoundProblem, price: float, solve: Solver = solve_highs
) -> tuple[np.ndarray, float] | None:
    """The schedule of least capacity with throughput priced at `price`: (the net battery
    power per step, W; the capacity, kWh)."""
    n = len(p.load_w)
    x = solve(p, capacity_program(p, price))
    if x is None:
        return None
    return x[:n] - x[n : 2 * n], float((x[-2] - x[-1]) / J_PER_KWH)


def min_capacity_kwh(p: BoundProblem, solve: Solver = solve_highs) -> float | None:
    """The lower bound: the least capacity, wasting allowed (a whisker of throughput price
    keeps it from cycling energy where that changes nothing)."""
    found = _capacity_schedule(p, 1e-6, solve)
    return None if found is None else found[1]


# Throughput prices tried, low to high: higher ones waste less and need more capacity.
REALIZABLE_PRICES = (1e-3, 3e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.3, 1.0)
SAME_SHARE = 1e-6  # run as a battery would, within this of the LP's own: netting gains nothing


def realizable_schedule(
    p: BoundProblem, solve: Solver = solve_highs
) -> tuple[np.ndarray, float] | None:
    """Of the priced schedules, each run as a battery would (its net power per step, stored
    energy counted as the replay counts it) and kept when it holds the energy limits and the
    end, the one of least capacity: (its battery power per step, W, positive discharging; its
    capacity, kWh). A schedule that knows the whole trace and never charges and discharges
    at once. Prices rise until the LP's own schedule no longer wastes; higher ones would only
    need more. None: no priced schedule holds."""
    floor, ceiling = p.energy_floor_j - p.initial_energy_j, p.energy_ceiling_j - p.initial_energy_j
    end = p.final_energy_min_j - p.initial_energy_j
    best = None
    for price in REALIZABLE_PRICES:
        found = _capacity_schedule(p, price, solve)
        if found is None:
            continue
        net_w, lp_kwh = found
        e = np.r_[0.0, stored_energy_j(net_w, p.dt_s, 0.0, p.eta_charge, p.eta_discharge)]
        # Netted, the energy never falls below the LP's (no waste): the ceiling is what binds.
        if e.min() >= floor - 1.0 and e.max() <= ceiling + 1.0 and e[-1] >= end - 1.0:
            kwh = float(np.ptp(e) / J_PER_KWH)
            if best is None or kwh < best[1]:
                best = (net_w, kwh)
            if kwh <= lp_kwh * (1.0 + SAME_SHARE) + 1e-9:
                break  # the LP's schedule is the battery's: a higher price only costs more
    return best


def realizable_capacity_kwh(p: BoundProblem, solve: Solver = solve_highs) -> float | None:
    """`realizable_schedule`'s capacity, kWh (None: none holds)."""
    found = realizable_schedule(p, solve)
    return None if found is None else found[1]


def min_power_w(p: BoundProblem) -> float | None:
    """The smallest battery power (charge and discharge alike) that holds the ramp."""
    n = len(p.load_w)
    a_ub, b_ub, a_eq, b_eq, bounds, cols = _constraints(p, 1)
    peak = cols - 1
    # d_t + c_t − peak ≤ 0: the same one-way-at-a-time relaxation as the other programs.
    rows = sparse.hstack(
        [
            sparse.identity(n),
            sparse.identity(n),
            sparse.csr_matrix((n, n + 1)),
            sparse.csr_matrix(-np.ones((n, 1))),
        ]
    )
    a_ub = sparse.vstack([a_ub, rows]).tocsr()
    b_ub = np.concatenate([b_ub, np.zeros(n)])
    bounds[peak] = (0.0, None)
    c = np.zeros(cols)
    c[peak] = 1.0
    c[: 2 * n] = 1e-9 * p.dt_s  # prefer the schedule that also cycles least
    x = _solve(c, a_ub, b_ub, a_eq, b_eq, bounds)
    return None if x is None else float(x[peak])
