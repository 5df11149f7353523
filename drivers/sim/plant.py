"""Physics of the simulated plant. Pure state machines: no sockets, no clock.

Each model takes writes by role (`drivers/kinds.py`: what a point is for, whatever a map
calls it), advances by `step(dt)` and reports its roles' values with `points()`. Signs follow
the design notes: battery power positive = discharge, grid power positive = import.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

HEARTBEAT_LOST = 1 << 3


@dataclass
class Battery:
    capacity_wh: float
    soc: float
    charge_efficiency: float = 0.96
    discharge_efficiency: float = 0.96

    @property
    def energy_j(self) -> float:
        return self.soc * self.capacity_wh * 3600.0

    def max_discharge_w(self, limit_w: float, dt: float) -> float:
        return min(limit_w, self.energy_j * self.discharge_efficiency / dt)

    def max_charge_w(self, limit_w: float, dt: float) -> float:
        room_j = (1.0 - self.soc) * self.capacity_wh * 3600.0
        return min(limit_w, room_j / self.charge_efficiency / dt)

    def apply(self, power_w: float, dt: float) -> None:
        """Move energy for `power_w` (positive = discharge) over dt; callers clamp first."""
        if power_w >= 0:
            delta_j = -power_w * dt / self.discharge_efficiency
        else:
            delta_j = -power_w * dt * self.charge_efficiency
        cap_j = self.capacity_wh * 3600.0
        self.soc = min(1.0, max(0.0, self.soc + delta_j / cap_j))


@dataclass
class Heartbeat:
    """The plant's watchdog: commands count only while the controller's heartbeat changes.

    A real device's watchdog counts wall time. Given a `clock` (the stack gives it
    time.monotonic), so does this one: a plant process frozen for 10 s and thawed finds the
    heartbeat 10 s old at once, although its physics catches up in short steps. Without one
    (the physics tests), it counts the simulated time it is given."""

    timeout_s: float
    value: float = -1.0
    last_change_s: float = -math.inf
    clock: Callable[[], float] | None = None

    def _now(self, simulated_s: float) -> float:
        return self.clock() if self.clock is not None else simulated_s

    def beat(self, value: float, now_s: float) -> None:
        if value != self.value:
            self.value, self.last_change_s = value, self._now(now_s)

    def alive(self, now_s: float) -> bool:
        return self._now(now_s) - self.last_change_s <= self.timeout_s


@dataclass
class UpsModel:
    """Grid-interactive UPS: the rectifier input follows `input_power_limit_w` within what the
    battery can give or take; without a live controller the input simply carries the load."""

    rated_power_w: float
    max_charge_w: float
    battery: Battery
    heartbeat: Heartbeat
    input_limit_w: float = 0.0
    limit_written: bool = False
    output_w: float = 0.0
    input_w: float = 0.0
    battery_w: float = 0.0
    alarms: int = 0
    now_s: float = 0.0

    def write(self, role: str, value: float) -> None:
        if role == "input_limit_w":
            self.input_limit_w, self.limit_written = value, True
        elif role == "heartbeat":
            self.heartbeat.beat(value, self.now_s)

    def step(self, load_w: float, dt: float) -> None:
        self.now_s += dt
        self.output_w = min(load_w, self.rated_power_w)
        alive = self.heartbeat.alive(self.now_s)
        target = self.input_limit_w if (self.limit_written and alive) else self.output_w
        lowest = self.output_w - self.battery.max_discharge_w(self.rated_power_w, dt)
        highest = self.output_w + self.battery.max_charge_w(self.max_charge_w, dt)
        self.input_w = min(max(target, lowest, 0.0), highest)
        self.battery_w = self.output_w - self.input_w
        self.battery.apply(self.battery_w, dt)
        self.alarms = (
            (1 if self.battery.soc < 0.1 else 0)
            | (2 if self.input_w < self.output_w - 1.0 else 0)
            | (4 if load_w > self.rated_power_w else 0)
            | (HEARTBEAT_LOST if self.limit_written and not alive else 0)
        )

    def points(self) -> dict[str, float]:
        discharging = self.battery_w > 1.0
        runtime = self.battery.energy_j / max(self.output_w, 1.0)
        return {
            "load_w": self.output_w,
            "input_w": self.input_w,
            "battery_w": self.battery_w,
            "soc": self.battery.soc,
            "mode": 1.0 if discharging and self.input_w < 1.0 else 0.0,
            "alarms": float(self.alarms),
            "runtime_s": min(runtime, 1.0e6),
            "rated_w": self.rated_power_w,
            "capacity_wh": self.battery.capacity_wh,
            "charge_max_w": self.max_charge_w,
            "discharge_max_w": self.rated_power_w,
        }


@dataclass
class BessModel:
    """Battery at the point of connection: follows WSet while enabled and the heartbeat lives;
    reverts to 0 W when the controller goes quiet."""

    w_max_rtg: float
    battery: Battery
    heartbeat: Heartbeat
    w_set: float = 0.0
    w_set_ena: bool = False
    w: float = 0.0
    alarms: int = 0
    now_s: float = 0.0
    hz: float = 50.0  # at its terminals: the grid's

    def write(self, role: str, value: float) -> None:
        if role == "setpoint_w":
            self.w_set = value
        elif role == "enable":
            self.w_set_ena = value >= 0.5
        elif role == "heartbeat":
            self.heartbeat.beat(value, self.now_s)

    def step(self, dt: float) -> None:
        self.now_s += dt
        alive = self.heartbeat.alive(self.now_s)
        target = self.w_set if (self.w_set_ena and alive) else 0.0
        hi = self.battery.max_discharge_w(self.w_max_rtg, dt)
        lo = -self.battery.max_charge_w(self.w_max_rtg, dt)
        self.w = min(max(target, lo), hi)
        self.battery.apply(self.w, dt)
        self.alarms = (
            (1 if self.battery.soc <= 0.02 else 0)
            | (2 if self.battery.soc >= 0.98 else 0)
            | (HEARTBEAT_LOST if self.w_set_ena and not alive else 0)
        )

    def points(self) -> dict[str, float]:
        return {
            "power_w": self.w,
            "frequency_hz": self.hz,
            "soc": self.battery.soc,
            "power_max_w": self.w_max_rtg,
            "capacity_wh": self.battery.capacity_wh,
            "energy_available_wh": self.battery.soc * self.battery.capacity_wh,
            "alarms": float(self.alarms),
        }


WATER_J_PER_M3_K = 4.18e6


@dataclass
class CduModel:
    """Liquid-cooling loop behind a CDU, good enough to tune a controller against.

    One thermal mass (the loop's water, at the supply temperature) takes the IT heat the
    liquid captures and gives it to the heat-reuse exchanger and the dry cooler. The racks see
    the supply `transport_delay_s` late; the return is what they add to it. The CDU's own
    valve is a proportional controller on its setpoint, so under load its supply sits off the
    setpoint (as real ones do) until a supervisor trims the setpoint. The dry cooler rejects at
    most UA × (return − ambient); its fans draw more the hotter the ambient. Energy is counted:
    heat in = rejected + reused + stored, exactly.
    """

    liquid_fraction: float = 0.8  # share of IT heat captured by the liquid loop
    flow_max_m3_per_s: float = 0.12
    pump_power_max_w: float = 150_000.0
    dp_max_pa: float = 250_000.0
    loop_volume_m3: float = 15.0  # thermal capacity: 6.3e7 J/K
    transport_delay_s: float = 10.0
    return_mixing_s: float = 20.0  # the return header mixes what the racks send back
    fan_tau_s: float = 30.0  # the dry cooler's fans change speed this slowly
    dry_cooler_ua_w_per_k: float = 1.0e6
    ambient_c: float = 25.0
    fan_w_per_w: float = 0.02  # fan power per watt rejected at 25 °C ambient ...
    fan_per_k_above_25: float = 0.04  # ... and 4 % more per kelvin above
    valve_gain_per_k: float = 0.25  # the CDU's own P control: valve = 0.5 + gain × error
    reuse_effectiveness: float = 0.8  # heat-reuse exchanger
    supply_c: float = 32.0
    supply_setpoint_c: float = 32.0
    pump_speed: float = 0.8
    reuse_request_w: float = 0.0  # the heat consumer asks for this ...
    reuse_min_temperature_c: float = 45.0  # ... at least this hot
    heat_w: float = 0.0
    return_c: float = 32.0  # at the CDU's inlet, after the return header
    racks_return_c: float = 32.0  # leaving the racks
    fan_w: float = 0.0
    rejected_w: float = 0.0
    reused_w: float = 0.0
    heat_in_j: float = 0.0
    rejected_j: float = 0.0
    reused_j: float = 0.0
    now_s: float = 0.0
    initial_supply_c: float = field(init=False)

    def __post_init__(self) -> None:
        self.initial_supply_c = self.supply_c
        self.return_c = self.racks_return_c = self.supply_c
        self._history: deque[tuple[float, float]] = deque([(0.0, self.supply_c)])

    def write(self, role: str, value: float) -> None:
        if role == "supply_setpoint_c":
            self.supply_setpoint_c = value
        elif role == "pump_setpoint_ratio":
            self.pump_speed = value
        elif role == "reuse_request_w":
            self.reuse_request_w = value
        elif role == "reuse_min_temperature_c":
            self.reuse_min_temperature_c = value

    @property
    def capacity_j_per_k(self) -> float:
        return self.loop_volume_m3 * WATER_J_PER_M3_K

    @property
    def stored_j(self) -> float:
        """Heat held by the loop above where it started."""
        return self.capacity_j_per_k * (self.supply_c - self.initial_supply_c)

    def _supply_at_racks(self) -> float:
        then = self.now_s - self.transport_delay_s
        while len(self._history) > 1 and self._history[1][0] <= then:
            self._history.popleft()
        return self._history[0][1]

    def step(self, it_w: float, dt: float) -> None:
        self.now_s += dt
        self._history.append((self.now_s, self.supply_c))
        self.heat_w = it_w * self.liquid_fraction
        flow_w_per_k = max(self.flow_m3_per_s * WATER_J_PER_M3_K, 1.0)
        self.racks_return_c = self._supply_at_racks() + self.heat_w / flow_w_per_k
        mix = dt / (self.return_mixing_s + dt)
        self.return_c += (self.racks_return_c - self.return_c) * mix
        reuse = 0.0
        if self.reuse_request_w > 0 and self.return_c >= self.reuse_min_temperature_c:
            # The consumer's water comes back 10 K below its minimum.
            lift = self.return_c - (self.reuse_min_temperature_c - 10.0)
            reuse = min(self.reuse_request_w, self.reuse_effectiveness * flow_w_per_k * lift)
        valve = min(
            max(0.5 + self.valve_gain_per_k * (self.supply_c - self.supply_setpoint_c), 0.0), 1.0
        )
        reject = valve * self.dry_cooler_ua_w_per_k * max(self.return_c - self.ambient_c, 0.0)
        self.reused_w, self.rejected_w = reuse, reject
        hot = 1.0 + self.fan_per_k_above_25 * max(self.ambient_c - 25.0, 0.0)
        fan_target = reject * self.fan_w_per_w * hot
        self.fan_w += (fan_target - self.fan_w) * dt / (self.fan_tau_s + dt)
        self.supply_c += (self.heat_w - reject - reuse) * dt / self.capacity_j_per_k
        self.heat_in_j += self.heat_w * dt
        self.rejected_j += reject * dt
        self.reused_j += reuse * dt

    @property
    def flow_m3_per_s(self) -> float:
        return self.flow_max_m3_per_s * self.pump_speed

    @property
    def pump_power_w(self) -> float:
        return self.pump_power_max_w * self.pump_speed**3

    @property
    def cooling_power_w(self) -> float:
        return self.pump_power_w + self.fan_w

    def points(self) -> dict[str, float]:
        return {
            "supply_c": self.supply_c,
            "return_c": self.return_c,
            "flow_m3_per_s": self.flow_m3_per_s,
            "pump_speed_ratio": self.pump_speed,
            "pressure_pa": self.dp_max_pa * self.pump_speed**2,
            "heat_load_w": self.heat_w,
            "pump_power_w": self.pump_power_w,
            "cooling_power_w": self.cooling_power_w,
            "supply_setpoint_c": self.supply_setpoint_c,
            "pump_setpoint_ratio": self.pump_speed,
            "heat_reused_w": self.reused_w,
            "heat_reused_j": self.reused_j,
            "heat_rejected_w": self.rejected_w,
            "ambient_c": self.ambient_c,
            "reuse_request_w": self.reuse_request_w,
            "reuse_min_temperature_c": self.reuse_min_temperature_c,
        }


@dataclass(frozen=True)
class FrequencyExcursion:
    """Fall to depth_hz over fall_s, hold, recover over recover_s (times in simulated s)."""

    at_s: float
    depth_hz: float
    fall_s: float = 5.0
    hold_s: float = 10.0
    recover_s: float = 30.0

    def deviation_hz(self, t_s: float) -> float:
        x = t_s - self.at_s
        if x <= 0:
            return 0.0
        if x < self.fall_s:
            return self.depth_hz * x / self.fall_s
        x -= self.fall_s
        if x <= self.hold_s:
            return self.depth_hz
        x -= self.hold_s
        return self.depth_hz * max(0.0, 1.0 - x / self.recover_s)


@dataclass
class MeterModel:
    """Grid meter: power at the connection point, averaged over a measurement window as real
    meters do (IEC 61000-4-30: 10/12 cycles, 200 ms), and a frequency that wanders around
    nominal."""

    nominal_hz: float
    window_s: float = 0.2
    seed: int = 7
    frequency_hz: float = field(init=False)
    active_power_w: float = 0.0
    energy_import_j: float = 0.0
    now_s: float = 0.0
    events: list[FrequencyExcursion] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.frequency_hz = self.nominal_hz
        self._walk_hz = self.nominal_hz
        self._rng = random.Random(self.seed)
        self._window: deque[tuple[float, float]] = deque()  # (dt, W) of recent steps

    def write(self, role: str, value: float) -> None:  # a meter takes no commands
        raise ValueError(f"meter role {role} is read-only")

    def step(self, grid_w: float, dt: float) -> None:
        self._window.append((dt, grid_w))
        span = sum(d for d, _ in self._window)
        # A nanosecond's slack: steps that add up to the window fill it, whatever the float
        # rounding of their sum (Python 3.12's sum() rounds differently from 3.11's).
        while span - self._window[0][0] >= self.window_s - 1e-9:
            span -= self._window.popleft()[0]
        self.active_power_w = sum(d * w for d, w in self._window) / span
        self.energy_import_j += max(grid_w, 0.0) * dt
        # Ornstein–Uhlenbeck walk: about ±20 mHz, a few tens of seconds to revert.
        theta, sigma = 0.05, 0.006
        self._walk_hz += theta * (self.nominal_hz - self._walk_hz) * dt
        self._walk_hz += sigma * math.sqrt(dt) * self._rng.gauss(0.0, 1.0)
        self.now_s += dt
        self.frequency_hz = self._walk_hz + sum(e.deviation_hz(self.now_s) for e in self.events)

    def points(self) -> dict[str, float]:
        return {
            "power_w": self.active_power_w,
            "frequency_hz": self.frequency_hz,
            "energy_import_j": self.energy_import_j,
        }
