"""The changes an operator may ask for, as validated shapes: the API process checks each body
against them before it asks the controller, and the controller checks the command again when
it arrives over the channel (it trusts no other process's checks)."""

from __future__ import annotations

from copy import copy
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

from controller.opsdb import Actor, Role
from controller.setpoints import Mode, Setpoints

TTL_DESCRIPTION = "temporary: revert to the values before after this long, s (absent: permanent)"
RULES = (
    "Rules across fields, checked on the whole result (a 422 names the field): "
    "soc_min_ratio ≤ soc_target_low_ratio ≤ soc_target_high_ratio ≤ the site's soc_max_ratio; "
    "supply_temperature_c within the site's cooling band (its min_supply_c to its water "
    "class's maximum); each state the temporary changes will pass through as they end must "
    "hold these too."
)


def _no_default_in_schema(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _optional(info: FieldInfo) -> FieldInfo:
    """The same field and bounds, absent meaning unchanged. Its type stays as it is: `null` is
    refused where it is no value of the field (only `import_cap_w` takes null: no cap)."""
    optional = copy(info)
    optional.default = None  # not validated: only ever seen when the field is absent
    optional.json_schema_extra = _no_default_in_schema
    return optional


def absent_or(description: str, **bounds: Any) -> Any:
    """A field that may be left out (then None), but never sent as null: given, it is a value
    of its type within `bounds`. The schema shows no default."""
    return Field(None, description=description, json_schema_extra=_no_default_in_schema, **bounds)


def _ttl(description: str = TTL_DESCRIPTION) -> Any:
    """Absent: permanent (null is refused, like any value of the wrong type)."""
    return absent_or(description, gt=0, le=86400)


SetpointsPatch: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "SetpointsPatch",
    __config__=Setpoints.model_config,
    __doc__="Some setpoints; those absent stay as they are. " + RULES,
    **{name: (info.annotation, _optional(info)) for name, info in Setpoints.model_fields.items()},
    ttl_s=(float, _ttl()),
)


class SetpointsPut(Setpoints):
    __doc__ = "Every setpoint. " + RULES

    ttl_s: float = _ttl()


class ModeIn(BaseModel):
    """auto, manual (batteries hold manual_battery_w) or safe."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    mode: Mode
    ttl_s: float = _ttl("temporary: back to the mode before after this long, s")


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9 ._-]+$")
    role: Role


class ActorIn(BaseModel):
    """Who asks, as the API process authenticated them."""

    model_config = ConfigDict(extra="forbid", strict=True)

    key_id: str | None = Field(max_length=64)
    name: str = Field(min_length=1, max_length=64)
    role: Role

    def actor(self) -> Actor:
        return Actor(self.key_id, self.name, self.role)

    @classmethod
    def of(cls, actor: Actor) -> dict[str, Any]:
        return {"key_id": actor.key_id, "name": actor.name, "role": actor.role}


class CaptureIn(BaseModel):
    """An operator's capture: the recorder keeps the window around now."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="why (kept with the capture and in the audit log)",
    )
