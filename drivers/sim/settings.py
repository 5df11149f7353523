"""The simulated plant's own settings: the `simulation:` section of a site file, and the
devices the simulators serve. Only the simulators read these; the controller learns every
rating from the devices themselves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, FilePath, SecretStr

Port = Annotated[int, Field(ge=1, le=65535)]
PositiveSeconds = Annotated[float, Field(gt=0, le=3600)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class FrequencyEvent(Strict):
    """A scripted grid-frequency excursion the simulated meter shows: a fall (or rise) to
    `depth_hz` from nominal, a hold, a recovery, on top of the slow random walk."""

    at_s: float = Field(ge=0, le=1e7, description="simulated time it starts")
    depth_hz: float = Field(ge=-2, le=2, description="deviation at its deepest, e.g. -0.2")
    fall_s: PositiveSeconds = 5.0
    hold_s: float = Field(10.0, ge=0, le=3600)
    recover_s: PositiveSeconds = 30.0


class ServerSecurityConfig(Strict):
    """The simulators' side of secured links (every simulated device shows the same)."""

    certificate: FilePath = Field(description="the devices' certificate (PEM)")
    private_key: FilePath
    client_ca: FilePath = Field(description="clients must show a certificate it signed")
    users: dict[str, SecretStr] = Field(
        default_factory=dict, description="OPC UA user names and passwords (none: anonymous)"
    )


class SimulationConfig(Strict):
    """The demo plant: only the simulators read this; the controller learns ratings from devices."""

    trace: str = Field("h200_train_1p7b", description="shipped trace name or CSV path")
    gpus: int = Field(10_000, ge=0, le=10_000_000)
    base_w: float = Field(2e6, ge=0, le=1e10, description="non-GPU IT load")
    ups_rated_power_w: float = Field(7e6, gt=0, le=1e9)
    ups_battery_wh: float = Field(1.5e6, gt=0, le=1e10)
    ups_max_charge_w: float = Field(5e6, ge=0, le=1e9)
    bess_w_max_rtg: float = Field(4e6, gt=0, le=1e9)
    bess_wh_rtg: float = Field(8e6, gt=0, le=1e10)
    initial_soc_ratio: float = Field(0.6, ge=0, le=1)
    grid_frequency_hz: Literal[50, 60] = 50
    heartbeat_timeout_s: PositiveSeconds = 2.0
    physics_period_s: float = Field(0.01, gt=0, le=1)
    racks: int = Field(100, ge=1, le=100_000, description="the GPUs split into racks ...")
    rack_jitter_s: float = Field(0.02, ge=0, le=1, description="... each offset by up to this")
    frequency_events: list[FrequencyEvent] = Field(default_factory=list)
    inference_trace: str = Field("h200_infer_llama1p1b", description="drives the token counter")
    token_gpus: int = Field(10_000, ge=0, le=10_000_000, description="GPUs generating tokens")
    inference_host: str = "127.0.0.1"
    inference_port: Port | None = Field(None, description="serve vLLM-style /metrics here")
    security: ServerSecurityConfig | None = Field(None, description="secured devices")


@dataclass(frozen=True)
class SimDevice:
    """One simulated device: who it is, which map it speaks, where it listens."""

    id: str
    kind: str
    map: str  # shipped map name or YAML path
    host: str
    port: int
    unit_id: int = 1


@dataclass(frozen=True)
class Plant:
    devices: tuple[SimDevice, ...]
    simulation: SimulationConfig

    def of_kind(self, kind: str) -> list[SimDevice]:
        return [d for d in self.devices if d.kind == kind]
