"""What operators may set, with one declaration of every bound: the dispatch settings take
their bounds from `DispatchConfig` (the same the site file is held to), and a change is
accepted only if the dispatch configuration it makes is valid as a whole."""

from __future__ import annotations

from copy import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from controller.config import DispatchConfig, SiteConfig

Mode = Literal["auto", "manual", "safe"]
# The dispatch settings an operator may change at run time; the rest stay as the site says.
DISPATCH_FIELDS = (
    "ramp_up_w_per_s", "ramp_down_w_per_s", "soc_target_low_ratio", "soc_target_high_ratio",
    "soc_min_ratio", "ride_through_s", "import_cap_w", "droop", "deadband_hz",
)  # fmt: skip


def _required(info: FieldInfo) -> FieldInfo:
    """The same field and bounds, with no default: a PUT names every setpoint."""
    field = copy(info)
    field.default = PydanticUndefined
    return field


class _OwnSetpoints(BaseModel):
    """The setpoints that are not dispatch settings."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    supply_temperature_c: float = Field(ge=15, le=60, description="CDU supply target, °C")
    heat_reuse_mode: Literal["off", "on"] = Field(description="serve the heat consumer")
    heat_reuse_request_w: float = Field(ge=0, le=1e9, description="heat the consumer asks, W")
    heat_reuse_min_temperature_c: float = Field(
        ge=20, le=90, description="the consumer needs its heat at least this hot, °C"
    )
    manual_battery_w: float = Field(
        ge=-1e9, le=1e9, description="manual mode: total battery power, W (+ = discharge)"
    )


_DispatchSetpoints: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "_DispatchSetpoints",
    __base__=_OwnSetpoints,
    **{
        name: (DispatchConfig.model_fields[name].annotation, _required(info))
        for name, info in DispatchConfig.model_fields.items()
        if name in DISPATCH_FIELDS
    },
)


class Setpoints(_DispatchSetpoints):  # type: ignore[valid-type, misc]
    """Everything an operator may set, each with its bounds (the API's schema says them)."""

    def dispatch_update(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in DISPATCH_FIELDS}


def dispatch_config(site: SiteConfig, setpoints: Setpoints) -> DispatchConfig:
    """The dispatch configuration these setpoints make with the site's, validated whole:
    e.g. a SoC band above `soc_max_ratio` is refused (pydantic's ValidationError); and the
    supply target must lie in the site's cooling band (its floor, its water class's maximum)."""
    cooling = site.cooling
    target = setpoints.supply_temperature_c
    if not cooling.min_supply_c <= target <= cooling.max_supply_c:
        message = (
            f"supply_temperature_c ({target}) must lie within the site's cooling band, "
            f"{cooling.min_supply_c}–{cooling.max_supply_c} °C ({cooling.water_class})"
        )
        raise ValidationError.from_exception_data(
            "Setpoints",
            [
                {
                    "type": "value_error",
                    "loc": ("supply_temperature_c",),
                    "input": target,
                    "ctx": {"error": ValueError(message)},
                }
            ],
        )
    return DispatchConfig.model_validate(
        {**site.dispatch.model_dump(), **setpoints.dispatch_update()}
    )


def initial_setpoints(site: SiteConfig) -> Setpoints:
    d = site.dispatch
    return Setpoints(
        **{f: getattr(d, f) for f in DISPATCH_FIELDS},
        supply_temperature_c=32.0,
        heat_reuse_mode="off",
        heat_reuse_request_w=0.0,
        heat_reuse_min_temperature_c=45.0,
        manual_battery_w=0.0,
    )
