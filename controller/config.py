"""Site configuration: modules with their devices, dispatch parameters, the demo plant.

A site file (YAML) is validated with pydantic; environment variables with the `GRIDPILOT_`
prefix override it (nested fields with `__`, e.g. `GRIDPILOT_DISPATCH__RAMP_UP_W_PER_S`).
The built-in default site (`controller/default_site.yaml`) is what the demo runs. This module
only declares and validates; `controller/sitefile.py` reads files and checks the devices' maps.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    Field,
    FilePath,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from controller.fields import (
    MAX_POWER_W,
    MIN_POWER_W,
    Credentials,
    Identifier,
    Port,
    PositiveSeconds,
    Strict,
)
from controller.grid.config import OpenADRConfig
from controller.ha.config import HAConfig
from controller.mv import MvSettings

DeviceKind = Literal["ups", "bess", "meter", "cdu"]
BATTERY_KINDS = ("ups", "bess")
# Lower bounds are the least values that still mean something: "above zero" let 5e-324 through,
# which the dispatch core turns into no ramp at all or an infinite frequency response.
RampLimit = Annotated[float, Field(ge=1e3, le=1e9)]  # W/s: at least 1 kW/s


class SecurityConfig(Credentials):
    """A secured link. Modbus: Modbus/TCP Security (TLS 1.2+, both sides show certificates).
    OPC UA: Basic256Sha256 with SignAndEncrypt, and a user name and password when given."""

    certificate: FilePath = Field(description="the controller's certificate (PEM)")
    private_key: FilePath = Field(description="its private key (PEM)")
    peer_certificate: FilePath | None = Field(
        None, description="the device's own certificate (PEM): pinned, only it is accepted"
    )
    peer_ca: list[FilePath] = Field(
        default_factory=list,
        description="CA certificates (PEM): a device certificate one of them signed is accepted",
    )


class DeviceConfig(Strict):
    id: Identifier
    kind: DeviceKind
    map: str | None = Field(None, description="device map name or YAML path; default: the kind")
    host: str = "127.0.0.1"
    port: Port
    unit_id: int = Field(1, ge=0, le=247, description="Modbus unit id")
    poll_period_s: PositiveSeconds = 0.05
    timeout_s: PositiveSeconds = 0.5
    stale_after_s: PositiveSeconds = Field(
        0.5, description="a value older than this is stale and not used for control"
    )
    backoff_max_s: PositiveSeconds = 5.0
    retries: int = Field(1, ge=0, le=5, description="reads answered with an error, tried again")
    min_gap_s: float = Field(0.0, ge=0, le=1, description="between two requests, s")
    opcua_mode: Literal["poll", "subscribe"] = Field(
        "poll", description="OPC UA: one batched read per poll, or a data-change subscription"
    )
    security: SecurityConfig | None = None

    @property
    def map_name(self) -> str:
        return self.map or self.kind

    @model_validator(mode="after")
    def _trusts_someone(self) -> DeviceConfig:
        sec = self.security
        if sec is not None and sec.peer_certificate is None and not sec.peer_ca:
            raise ValueError(
                f"device {self.id}: security needs peer_certificate (the device's own "
                "certificate) or peer_ca (the CAs that sign it): without either, any server "
                "answering at its address would be trusted"
            )
        return self


class ModuleConfig(Strict):
    id: Identifier
    devices: list[DeviceConfig] = Field(min_length=1)


class DispatchConfig(Strict):
    """What the dispatch core does; see the README's "Dispatch" section for each behaviour."""

    average_window_s: float = Field(
        0.0, ge=0, le=200, description="moving average before the low-pass, e.g. one period"
    )
    lowpass_tau_s: float = Field(10.0, gt=0, le=3600, description="low-pass time constant")
    ramp_up_w_per_s: RampLimit = Field(5e5, description="grid ramp limit upward, W/s (≥ 1 kW/s)")
    ramp_down_w_per_s: RampLimit = Field(
        5e5, description="grid ramp limit downward, W/s (≥ 1 kW/s)"
    )
    soc_min_ratio: float = Field(
        0.2, ge=0, le=1, description="reserve: never discharged below, 0–1"
    )
    soc_max_ratio: float = Field(0.95, ge=0, le=1, description="never charged above")
    soc_target_low_ratio: float = Field(
        0.5, ge=0, le=1, description="SoC band the battery returns to, 0–1"
    )
    soc_target_high_ratio: float = Field(0.7, ge=0, le=1, description="top of the SoC band, 0–1")
    soc_return_s: float = Field(
        300.0, ge=1, le=86400, description="time constant of the drift back into the band, s"
    )
    energy_return_s: float = Field(
        20.0,
        ge=0,
        le=3600,
        description="replace the energy the battery gave over this time, s (0: off, else ≥ 1)",
    )
    energy_anchor_s: float = Field(
        3600.0,
        gt=0,
        le=86400,
        description="...counted from the stored energy's average over this time, s",
    )
    ride_through_s: float = Field(
        300.0, ge=0, le=7200, description="UPS reserve: s of full rated load, never used to smooth"
    )
    charge_efficiency: float = Field(0.96, ge=0.5, le=1, description="one way, 0.5–1")
    discharge_efficiency: float = Field(0.96, ge=0.5, le=1, description="one way, 0.5–1")
    nominal_frequency_hz: Literal[50, 60] = 50
    droop: float = Field(
        0.05,
        ge=0.001,
        le=1,
        description="per-unit frequency deviation for full response (0.05: 5 %; at least 0.1 %)",
    )
    deadband_hz: float = Field(0.015, ge=0, le=1, description="frequency deadband, Hz")
    frequency_response_w: float = Field(1e6, ge=0, le=1e9, description="power at full response")
    import_cap_w: float | None = Field(
        None,
        ge=MIN_POWER_W,
        le=MAX_POWER_W,
        description="peak limit on grid import, W (at least 1 kW)",
    )
    fast_split_tau_s: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="assets that follow setpoints with a delay (BESS) get the battery power's "
        "slow part over this time constant; instant ones (UPS) the rest; 0: all alike",
    )
    allocation_horizon_s: float = Field(
        300.0, gt=0, le=86400, description="energy an asset must sustain its share for"
    )

    @field_validator("energy_return_s")
    @classmethod
    def _off_or_a_time(cls, value: float) -> float:
        # The core divides by it: 0 turns it off, but a microsecond would make the grid
        # replace the battery's energy at once (5e-324 s: at an infinite rate).
        if 0 < value < 1:
            raise ValueError("energy_return_s is 0 (off) or at least 1 s")
        return value

    @model_validator(mode="after")
    def _check_band(self) -> DispatchConfig:
        order = [
            ("soc_min_ratio", self.soc_min_ratio),
            ("soc_target_low_ratio", self.soc_target_low_ratio),
            ("soc_target_high_ratio", self.soc_target_high_ratio),
            ("soc_max_ratio", self.soc_max_ratio),
        ]
        for (a, va), (b, vb) in pairwise(order):
            if va > vb:
                raise ValueError(f"{a} ({va}) must not be above {b} ({vb})")
        if self.soc_min_ratio >= self.soc_max_ratio:
            raise ValueError(
                f"soc_min_ratio ({self.soc_min_ratio}) must be below "
                f"soc_max_ratio ({self.soc_max_ratio})"
            )
        return self


class CoolingSettings(Strict):
    """Cooling control; see the README's "Cooling control"."""

    water_class: Literal["W32", "W40", "W45"] = Field(
        "W45", description="ASHRAE liquid-cooling class: the supply's maximum, °C"
    )
    min_supply_c: float = Field(18.0, ge=5, le=40, description="the lowest supply setpoint")
    setpoint_rate_c_per_s: float = Field(0.2, gt=0, le=5, description="setpoint slew limit")
    pump_control: Literal["delta_t", "pressure"] = Field(
        "delta_t", description="the pumps hold the loop's mean ΔT, or its differential pressure"
    )
    delta_t_target_k: float = Field(15.0, gt=2, le=30, description="the loop's mean ΔT")
    pressure_target_pa: float = Field(150_000.0, gt=0, le=1e6, description="loop ΔP held")
    min_pump_speed: float = Field(0.3, ge=0.05, le=1, description="for the minimum flow")
    safe_pump_speed: float = Field(0.9, ge=0.05, le=1, description="when data is unusable")
    startup_grace_s: float = Field(
        15.0,
        ge=0,
        le=600,
        description="at start, wait this long for a CDU's first data (sending nothing) "
        "before its absence is a fault and the fallback runs",
    )

    @property
    def max_supply_c(self) -> float:
        return float(self.water_class[1:])

    @model_validator(mode="after")
    def _band(self) -> CoolingSettings:
        if self.min_supply_c >= self.max_supply_c:
            raise ValueError(f"min_supply_c must be below the {self.water_class} maximum")
        return self


class RetentionConfig(Strict):
    """How long the SQLite file keeps what grows; older rows are deleted once an hour. At one
    sample a second, samples take about 12 MB a day; the audit log grows with operators' changes
    (a few hundred bytes each)."""

    samples_days: float = Field(30.0, ge=1, le=3650, description="1 s site samples and events")
    audit_days: float = Field(
        365.0, ge=1, le=36500, description="audit entries, cleared alarms, ended DR events"
    )
    notices_days: float = Field(
        30.0,
        ge=1,
        le=36500,
        description="workload notices over or cancelled (their audit entries stay audit_days)",
    )


class CaptureConfig(Strict):
    """Disturbance captures: a window of the recorder's rows kept and exported as COMTRADE
    when the frequency strays, an alarm is raised, the mode changes, a demand-response event
    starts or ends, or an operator asks."""

    frequency_threshold_hz: float = Field(
        0.1, gt=0, le=5, description="an excursion: |frequency − nominal| beyond this, Hz"
    )
    pre_s: float = Field(30.0, ge=0, le=600, description="kept before the trigger, s")
    post_s: float = Field(60.0, gt=0, le=600, description="kept after the trigger, s")
    max_count: int = Field(500, ge=1, le=100_000, description="captures kept; oldest go first")


class RecorderConfig(Strict):
    """The high-rate recorder: every tick's key signals into time-partitioned files under
    `data_dir/recorder` (Arrow IPC while written, Parquet when closed; see the README for the
    MB a day)."""

    enabled: bool = True
    partition_s: float = Field(600.0, ge=10, le=86400, description="one file per, s")
    retention_h: float = Field(24.0, gt=0, le=24 * 366, description="rows kept, h")
    max_mb: float = Field(
        4096.0, ge=1, le=1e7, description="the folder at most, MB; the oldest files go first"
    )
    batch_s: float = Field(
        1.0, ge=0.1, le=10, description="rows handed to the disk every, s: what a kill can lose"
    )
    captures: CaptureConfig = CaptureConfig()


class LimitsConfig(Strict):
    """Bounds on what the API lets pile up: past one, a request is refused (409) and nothing
    is stored, so neither the file nor what each tick looks at grows without end."""

    max_pending_events: int = Field(
        1000, ge=1, le=100_000, description="demand-response events planned or running"
    )
    max_active_keys: int = Field(100, ge=1, le=10_000, description="API keys not revoked")
    max_pending_notices: int = Field(
        1000, ge=1, le=100_000, description="workload notices not yet over"
    )


class NoticeSettings(Strict):
    """Workload notices (`POST /v1/notices`): when one may take effect, how long it stays
    pending, and the power a GPU count stands for."""

    late_s: float = Field(
        5.0,
        ge=0,
        le=300,
        description="a notice may take effect at most this long before it arrives (clocks and "
        "networks lag), s; it stays pending this long after its time and duration have passed",
    )
    ahead_s: float = Field(
        7 * 86400.0,
        ge=60,
        le=366 * 86400.0,
        description="a notice takes effect at most this far ahead, s (7 days)",
    )
    # The H200 SXM's thermal design power (NVIDIA H200 datasheet: up to 700 W, configurable);
    # a site that knows its GPUs' draw under its workloads sets its own.
    power_w_per_gpu: float = Field(
        700.0, ge=1, le=1e5, description="what a notice's `gpus` stands for, W per GPU"
    )


class PlannerSettings(Strict):
    """The planner in the live loop: once every `every_s`, off the tick's path, it turns the
    pending workload notices (and, asked, the rhythm it learns from the load) into a
    feed-forward the dispatch core adds to its grid target. Off: today's dispatch, to the bit.
    The ramp limit, the caps and every battery limit hold whatever it plans."""

    enabled: bool = Field(False, description="plan ahead from notices (off: react only)")
    learn_rhythm: bool = Field(
        False, description="also plan the pauses the load's learned rhythm predicts"
    )
    every_s: float = Field(1.0, ge=0.1, le=60, description="re-planned this often, s")
    horizon_s: float = Field(60.0, ge=1, le=600, description="a plan looks this far ahead, s")
    stale_plans: int = Field(
        3, ge=2, le=100, description="a plan older than this many periods is not used"
    )
    hang_s: float = Field(
        5.0,
        ge=0.5,
        le=600,
        description="a plan not back this long after it was asked for (and stale): its process "
        "hung, and is replaced, s",
    )
    # Half is best for a notice exact to the step; a job's GPUs draw later more often than
    # earlier (loading, set-up), and a plan held while a start is late charges the battery
    # all the while, so a little less before it.
    lead_ratio: float = Field(
        0.35, ge=0, le=1, description="of an announced lasting step, crossed before its time"
    )
    # A job's GPUs often draw a few seconds after its start is said (the shipped trace's
    # train_ready: 3.1 s before): ramping on through that spares the battery the whole step
    # later (on the shipped trace with notices, at train_swing_ratio 0.7, 2 s: 4.17 → 3.09 kWh,
    # the band −20.0 → −20.4 dB; 3 s: 3.07 kWh). A start that never comes costs the ramp's
    # 2 s more of charging.
    late_ramp_s: float = Field(
        2.0,
        ge=0,
        le=60,
        description="an announced lasting step that is late: its grid ramp goes on this long "
        "past its time (at most give_up_s), then holds until it comes or is dropped, s",
    )
    give_up_s: float = Field(
        5.0, ge=0.5, le=300, description="an announced change not seen this long after: dropped"
    )
    # 0.75 keeps the grid's 0.1–20 Hz band 20 dB under the load's on the shipped training
    # trace with its notices (-20.25 dB; 0.8: -20.11) and on its rhythm tiled to 10 minutes
    # (-20.3 to -20.4 dB over five jitters; 1.0: -19.8), and stores 3.6 % less than 0.7 did
    # on the former (2.98 kWh: 1.45 of the least any battery needs, bench_bound_exact.py).
    train_swing_ratio: float = Field(
        0.75,
        ge=0,
        le=1,
        description="pauses every I s (checkpoints): the grid dips in a V this share of the "
        "ramp limit × I/2 deep (1: the triangle wave at the ramp limit)",
    )
    job_w: float = Field(
        0.0,
        ge=0,
        le=1e10,
        description="what a job adds to the draw when its notice gives no power_w or gpus, W "
        "(0: such notices are not planned)",
    )

    @model_validator(mode="after")
    def _late_ramp_within_give_up(self) -> PlannerSettings:
        # Refused only when set: a site that shortened give_up_s below the default
        # late_ramp_s keeps loading, and ramps on no longer than it waits (plan_settings).
        if "late_ramp_s" in self.model_fields_set and self.late_ramp_s > self.give_up_s:
            raise ValueError(
                f"late_ramp_s ({self.late_ramp_s:g}) is longer than give_up_s "
                f"({self.give_up_s:g}): the ramp would go on after its change was dropped"
            )
        return self

    @model_validator(mode="after")
    def _outlives_staleness(self) -> PlannerSettings:
        # A plan must cover the ticks that may use it, or its end would read as "no plan".
        if self.horizon_s < self.stale_plans * self.every_s:
            raise ValueError(
                f"horizon_s ({self.horizon_s:g}) is shorter than stale_plans × every_s "
                f"({self.stale_plans * self.every_s:g}): a plan would end while still in use"
            )
        return self


class BackupConfig(Strict):
    """Periodic online backups of the SQLite file (`gridpilot db backup` by hand)."""

    dir: Path | None = Field(None, description="where backups go; none: no periodic backup")
    every_h: float = Field(24.0, ge=1, le=24 * 365, description="hours between two backups")
    keep: int = Field(7, ge=1, le=1000, description="the newest this many are kept")


class ApiTlsConfig(Strict):
    """HTTPS for the API: the site's own certificate and key, or (`auto_dir`) a site CA and a
    certificate made at first start and kept in that folder (the container's default)."""

    enabled: bool = Field(True, description="false: plain HTTP (TLS ends in a proxy in front)")
    certificate: FilePath | None = Field(None, description="the API's certificate chain (PEM)")
    private_key: FilePath | None = Field(None, description="its private key (PEM)")
    auto_dir: Path | None = Field(
        None, description="without certificate: make (once) and use a CA and certificate here"
    )
    hosts: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="auto_dir: names clients reach the API by, besides this host's own",
    )

    @model_validator(mode="after")
    def _source(self) -> ApiTlsConfig:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together")
        if self.enabled and self.certificate is None and self.auto_dir is None:
            raise ValueError("give certificate and private_key, or auto_dir")
        return self


class ApiLimits(Strict):
    """What one client may cost the API process. The loop runs in another process; these keep
    the API itself answering under floods and slow clients."""

    max_connections: int = Field(256, ge=8, le=100_000, description="open at once, all clients")
    max_connections_per_address: int = Field(
        64, ge=1, le=100_000, description="open at once from one client address"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=300, description="to send a request's line and headers, from connect"
    )
    body_timeout_s: float = Field(10.0, gt=0, le=300, description="to send a request's body")
    keep_alive_s: float = Field(5.0, gt=0, le=300, description="idle between two requests")
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, le=1024 * 1024, description="request line and headers, together"
    )
    max_headers: int = Field(64, ge=8, le=1000, description="header fields in one request")
    writes_per_s: float = Field(
        10.0, gt=0, le=10_000, description="changes per second per key (per address: twice)"
    )
    write_burst: int = Field(
        50, ge=1, le=100_000, description="changes at once per key (per address: twice)"
    )
    max_stream_clients: int = Field(
        100, ge=1, le=10_000, description="clients of /v1/stream at once"
    )
    controller_timeout_s: float = Field(
        15.0, gt=0, le=120, description="the longest a request waits for the controller"
    )


class TokenSourceConfig(Strict):
    """An inference server's metrics endpoint whose token counter gridpilot reads."""

    id: Identifier
    url: AnyHttpUrl = Field(description="e.g. http://vllm-0:8000/metrics")
    metric: str = Field(
        "vllm:generation_tokens_total",
        pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$",
        description="vLLM's; SGLang: sglang:generation_tokens_total; "
        "TGI: tgi_request_generated_tokens_sum",
    )
    poll_period_s: float = Field(5.0, ge=0.5, le=3600)
    timeout_s: float = Field(2.0, gt=0, le=60)


class SiteConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GRIDPILOT_", env_nested_delimiter="__", extra="forbid", allow_inf_nan=False
    )

    name: Identifier = "demo"
    loop_period_s: float = Field(0.1, ge=0.005, le=10, description="control tick period")
    api_host: str = "127.0.0.1"
    api_port: Port = 8080
    api_tls: ApiTlsConfig | None = Field(None, description="HTTPS for the API; none: HTTP")
    api_limits: ApiLimits = ApiLimits()
    data_dir: Path = Path("data")
    modules: list[ModuleConfig] = Field(min_length=1)
    token_sources: list[TokenSourceConfig] = Field(
        default_factory=list, description="inference servers whose tokens count (TokEnergy)"
    )
    dispatch: DispatchConfig = DispatchConfig()
    cooling: CoolingSettings = CoolingSettings()
    retention: RetentionConfig = RetentionConfig()
    limits: LimitsConfig = LimitsConfig()
    notices: NoticeSettings = NoticeSettings()
    planner: PlannerSettings = Field(
        PlannerSettings(), description="plan ahead from notices and the load's rhythm; off: react"
    )
    backup: BackupConfig = BackupConfig()
    recorder: RecorderConfig = RecorderConfig()
    ha: HAConfig = Field(
        HAConfig(), description="an active/standby pair coordinated by etcd; off: one controller"
    )
    openadr: OpenADRConfig = Field(
        OpenADRConfig(), description="an OpenADR 3 VEN: a utility's events become caps and sheds"
    )
    mv: MvSettings = Field(
        MvSettings(), description="measurement and verification of demand-response events"
    )
    simulation: dict[str, Any] = Field(
        default_factory=dict,
        description="the demo plant's settings: only the simulators read them (and check them)",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file arrives as init arguments; the environment overrides it.
        return env_settings, init_settings

    @model_validator(mode="after")
    def _check_site(self) -> SiteConfig:
        ids = [d.id for d in self.devices]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"device ids must be unique; repeated: {dupes}")
        addresses = [(d.host, d.port) for d in self.devices]
        clash = sorted({f"{h}:{p}" for h, p in addresses if addresses.count((h, p)) > 1})
        if clash:
            raise ValueError(f"two devices share an address: {clash}")
        sources = [t.id for t in self.token_sources]
        if len(set(sources)) != len(sources):
            raise ValueError(f"token source ids must be unique: {sources}")
        kinds = [d.kind for d in self.devices]
        if kinds.count("meter") != 1:
            raise ValueError(f"a site has exactly one grid meter, found {kinds.count('meter')}")
        if not any(k in BATTERY_KINDS for k in kinds):
            raise ValueError("a site needs at least one battery asset (ups or bess)")
        for d in self.devices:
            if d.stale_after_s < d.poll_period_s:
                raise ValueError(
                    f"device {d.id}: stale_after_s ({d.stale_after_s}) is shorter than "
                    f"poll_period_s ({d.poll_period_s}); every value would be stale"
                )
        return self

    @property
    def devices(self) -> list[DeviceConfig]:
        return [d for m in self.modules for d in m.devices]

    def devices_of(self, *kinds: str) -> list[DeviceConfig]:
        return [d for d in self.devices if d.kind in kinds]


class ConfigError(ValueError):
    """An invalid site: the message names each bad field and its value."""


# Where secrets live: a device's or the plant's `security` (passwords, the OPC UA users), and any
# field named like one. No value sent there is ever shown: pydantic would show a misspelt
# `passwd:`, a section given as a bare string or a user's password of the wrong type as written.
SECRET_PARTS = ("security", "password", "secret")


def _may_show(err: Any) -> bool:
    """Whether an error may show the value sent: one value (never a whole section), and
    nowhere near a secret."""
    near_secret = any(w in str(part).lower() for part in err["loc"] for w in SECRET_PARTS)
    return (
        bool(err["loc"])
        and err["type"] != "missing"
        and not isinstance(err["input"], dict | list)
        and not near_secret
    )


def describe_errors(
    exc: ValidationError, prefix: str = "", what: str = "site configuration"
) -> str:
    """Each bad field of a site (or of `what`), with what it got (never a secret), one a line."""
    lines = []
    whole = f"({what.split()[0]})"  # where a rule on the whole site (or profile) failed
    for err in exc.errors():
        field = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "") or whole
        got = f" (got {err['input']!r})" if _may_show(err) else ""
        lines.append(f"{field}: {err['msg']}{got}")
    return f"invalid {what}:\n  " + "\n  ".join(lines)


def parse_site(data: object, overrides: dict | None = None) -> SiteConfig:
    if not isinstance(data, dict):
        raise ConfigError("invalid site configuration: the file must hold a mapping")
    try:
        return SiteConfig(**{**data, **(overrides or {})})
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from None
