"""A compliance profile: the limits a utility sets on the site's grid draw (ramp per window,
the share of energy in the oscillation band, frequency response), read from YAML and checked
whole. A bad file is a ProfileError naming the file and each bad field."""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.config import describe_errors
from drivers.yamlfile import read_yaml

PROFILES = resources.files("controller.report") / "profiles"
BUILTIN = ("generic", "large_load")

LimitW = Annotated[float, Field(gt=0, le=1e11)]
Ratio = Annotated[float, Field(gt=0, le=1)]


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class Band(Strict):
    name: str = Field(
        min_length=1,
        max_length=40,
        pattern=r"^[A-Za-z0-9_. -]+$",
        description="what the band is called in the report",
    )
    low_hz: float = Field(gt=0, le=1000, description="lower edge, Hz (inclusive)")
    high_hz: float = Field(gt=0, le=1000, description="upper edge, Hz (inclusive; Nyquist caps it)")
    share_max_ratio: Ratio | None = Field(
        None, description="largest share of the grid draw's energy allowed in this band, 0–1"
    )

    @model_validator(mode="after")
    def _ordered(self) -> Band:
        if self.low_hz >= self.high_hz:
            raise ValueError(f"low_hz {self.low_hz} must be below high_hz {self.high_hz}")
        return self


class Profile(Strict):
    name: str = Field(min_length=1, max_length=80, description="the profile's name")
    description: str = Field("", max_length=2000, description="where the limits come from")
    ramp_100ms_max_w: LimitW | None = Field(
        None, description="largest |Δ grid draw| over any 0.1 s, W (none: not checked)"
    )
    ramp_1s_max_w: LimitW | None = Field(
        None, description="largest |Δ grid draw| over any 1 s, W (none: not checked)"
    )
    ramp_10s_max_w: LimitW | None = Field(
        None, description="largest |Δ grid draw| over any 10 s, W (none: not checked)"
    )
    ramp_60s_max_w: LimitW | None = Field(
        None, description="largest |Δ grid draw| over any 60 s, W (none: not checked)"
    )
    band_share_max_ratio: Ratio | None = Field(
        None,
        description="largest share of the grid draw's energy (mean removed) in 0.1–20 Hz, 0–1",
    )
    band_attenuation_max_db: float | None = Field(
        None,
        ge=-200,
        le=0,
        description="the grid draw's 0.1–20 Hz energy against the IT load's, at most, dB "
        "(−20: a hundredth)",
    )
    bands: tuple[Band, ...] = Field(
        (), max_length=20, description="further bands to report, each with an optional limit"
    )
    frequency_event_threshold_hz: float = Field(
        0.1,
        gt=0,
        le=5,
        description="|f − nominal| an excursion beyond the deadband must reach to be an event, Hz",
    )
    frequency_response_time_max_s: float | None = Field(
        None,
        gt=0,
        le=600,
        description="longest time from an event's start to 90 % of the droop's power, s",
    )
    frequency_response_delivered_min_ratio: float | None = Field(
        None,
        gt=0,
        le=2,
        description="least energy delivered over an event, as a share of the droop's, 0–2",
    )
    required_share_ratio: Ratio = Field(
        1.0,
        description="share of ramp pairs (or of events) that must hold a limit for it to pass",
    )

    @model_validator(mode="after")
    def _band_names_once(self) -> Profile:
        names = [b.name for b in self.bands]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"band name(s) {twice} given more than once")
        return self

    def ramp_limits_w(self) -> dict[float, float | None]:
        """Each ramp window (s) and its limit (W, None: not checked)."""
        return {
            0.1: self.ramp_100ms_max_w,
            1.0: self.ramp_1s_max_w,
            10.0: self.ramp_10s_max_w,
            60.0: self.ramp_60s_max_w,
        }


def parse_profile(data: object, source: str) -> Profile:
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: invalid profile: the file must hold a mapping")
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"{source}: {describe_errors(exc, what='profile')}") from None


def _read(file: Path | Traversable, source: str) -> Profile:
    return parse_profile(read_yaml(file, source, ProfileError), source)


def load_profile(path: Path) -> Profile:
    """The profile in a YAML file; ProfileError naming the file and every bad field."""
    return _read(path, str(path))


def builtin_profile(name: str = "generic") -> Profile:
    """One of the profiles shipped with gridpilot (BUILTIN)."""
    if name not in BUILTIN:
        raise ProfileError(f"no built-in profile {name!r}; there are {list(BUILTIN)}")
    return _read(PROFILES / f"{name}.yaml", f"profile {name}")
