"""Loading device maps: YAML in, a checked DeviceMap out, or DeviceMapError naming the file
and the point. Block reads are planned here, once, for the driver's every poll."""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

from drivers.devicemap import (
    MAX_BLOCK_REGISTERS,
    MODBUS_TYPES,
    OPCUA_TYPES,
    SUNSPEC_END,
    SUNSPEC_MARKER,
    Block,
    DeviceMap,
    DeviceMapError,
    Point,
)
from drivers.kinds import KINDS
from drivers.yamlfile import read_yaml


def _coalesce(points: list[Point], max_gap: int) -> tuple[Block, ...]:
    """Group points into block reads: adjacent (or nearly, within max_gap) and ≤ 125 registers."""
    blocks: list[Block] = []
    current: list[Point] = []
    start = end = 0
    for p in sorted(points, key=lambda p: p.address or 0):
        assert p.address is not None
        p_end = p.address + p.register_count
        if current and (p.address - end <= max_gap) and (p_end - start <= MAX_BLOCK_REGISTERS):
            current.append(p)
            end = p_end
            continue
        if current:
            blocks.append(Block(start, end - start, tuple(current)))
        current, start, end = [p], p.address, p_end
    if current:
        blocks.append(Block(start, end - start, tuple(current)))
    return tuple(blocks)


def _parse_point(raw: dict, protocol: str, where: str, models: dict[int, tuple[int, int]]) -> Point:
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise DeviceMapError(f"{where}: a point has no name")
    ctx = f"{where}, point {name!r}"
    ptype = raw.get("type")
    allowed = MODBUS_TYPES if protocol == "modbus" else OPCUA_TYPES
    if ptype not in allowed:
        raise DeviceMapError(f"{ctx}: unknown type {ptype!r} (one of {sorted(allowed)})")
    unit = raw.get("unit")
    if not isinstance(unit, str) or not unit:
        raise DeviceMapError(f'{ctx}: missing unit (use "1" for dimensionless)')
    access = raw.get("access", "r")
    if access not in ("r", "rw"):
        raise DeviceMapError(f"{ctx}: access must be 'r' or 'rw', not {access!r}")
    scale = raw.get("scale", 1.0)
    if not isinstance(scale, int | float) or scale == 0 or not math.isfinite(scale):
        raise DeviceMapError(f"{ctx}: scale must be a finite non-zero number, not {scale!r}")
    rng = raw.get("range")
    if rng is not None:
        numbers = isinstance(rng, list) and all(isinstance(x, int | float) for x in rng)
        if not (numbers and len(rng) == 2 and rng[0] <= rng[1]):
            raise DeviceMapError(f"{ctx}: range must be [min, max] with min ≤ max, not {rng!r}")
        rng = (float(rng[0]), float(rng[1]))
    count = raw.get("count", 0)
    if ptype == "string" and not (isinstance(count, int) and 1 <= count <= MAX_BLOCK_REGISTERS):
        raise DeviceMapError(f"{ctx}: a string needs count, its registers (1–125), not {count!r}")
    const = raw.get("const")
    if const is not None:
        text_ok = ptype == "string" and isinstance(const, str)
        number_ok = ptype != "string" and isinstance(const, int | float)
        if not (text_ok or number_ok):
            raise DeviceMapError(f"{ctx}: const {const!r} does not suit type {ptype}")
    role = raw.get("role")
    if role is not None and not (isinstance(role, str) and role):
        raise DeviceMapError(f"{ctx}: role names what the point is for, not {role!r}")
    sf = raw.get("sf")
    if sf is not None and not (isinstance(sf, str) and sf):
        raise DeviceMapError(f"{ctx}: sf names a scale-factor point, not {sf!r}")
    address, node = raw.get("address"), raw.get("node")
    if "model" in raw or "offset" in raw:
        model, offset = raw.get("model"), raw.get("offset")
        if model not in models:
            raise DeviceMapError(f"{ctx}: model {model!r} is not in the map's sunspec models")
        start, length = models[model]
        size = count if ptype == "string" else MODBUS_TYPES[ptype][0]
        if not (isinstance(offset, int) and offset >= 2 and offset + size <= length + 2):
            raise DeviceMapError(
                f"{ctx}: offset {offset!r} is outside model {model} (2–{length + 1})"
            )
        if address is not None:
            raise DeviceMapError(f"{ctx}: give address, or model and offset, not both")
        address = start + offset
    if protocol == "modbus" and not (isinstance(address, int) and 0 <= address <= 65535):
        raise DeviceMapError(f"{ctx}: address must be an integer 0–65535, not {address!r}")
    if protocol == "opcua" and not (isinstance(node, str) and node):
        raise DeviceMapError(f"{ctx}: OPC UA points need a node id")
    unknown = set(raw) - {
        "name",
        "type",
        "unit",
        "access",
        "scale",
        "address",
        "node",
        "range",
        "description",
        "count",
        "const",
        "sf",
        "model",
        "offset",
        "role",
    }
    if unknown:
        raise DeviceMapError(f"{ctx}: unknown fields {sorted(unknown)}")
    return Point(
        name=name,
        type=ptype,
        unit=unit,
        access=access,
        scale=float(scale),
        address=address,
        node=node,
        range=rng,
        description=str(raw.get("description", "")),
        count=count if ptype == "string" else 0,
        const=const,
        sf=sf,
        role=role,
    )


def _sunspec_layout(data: object, source: str) -> tuple[list[dict], dict[int, tuple[int, int]]]:
    """The const points a SunSpec device shows (marker, model headers, end) and where each
    model starts: {model id: (address of its ID, length L)}."""
    if data is None:
        return [], {}
    base = data.get("base") if isinstance(data, dict) else None
    models = data.get("models") if isinstance(data, dict) else None
    if not (isinstance(base, int) and isinstance(models, list) and models):
        raise DeviceMapError(f"{source}: sunspec needs base (an address) and models")
    points: list[dict] = [
        {
            "name": "sunspec_marker",
            "address": base,
            "type": "string",
            "count": 2,
            "unit": "1",
            "const": SUNSPEC_MARKER,
        }
    ]
    starts: dict[int, tuple[int, int]] = {}
    address = base + 2
    for m in models:
        mid, length = (m.get("id"), m.get("length")) if isinstance(m, dict) else (None, None)
        if not (isinstance(mid, int) and isinstance(length, int) and length >= 0):
            raise DeviceMapError(f"{source}: a sunspec model needs id and length, not {m!r}")
        if mid in starts:
            raise DeviceMapError(f"{source}: sunspec model {mid} appears twice")
        starts[mid] = (address, length)
        for name, offset, value in (("id", 0, mid), ("length", 1, length)):
            points.append(
                {
                    "name": f"model_{mid}_{name}",
                    "address": address + offset,
                    "type": "uint16",
                    "unit": "1",
                    "const": value,
                }
            )
        address += 2 + length
    for name, offset, value in (("sunspec_end", 0, SUNSPEC_END), ("sunspec_end_length", 1, 0)):
        points.append(
            {
                "name": name,
                "address": address + offset,
                "type": "uint16",
                "unit": "1",
                "const": value,
            }
        )
    return points, starts


def _check_roles(kind: str, points: list[Point], source: str) -> dict[str, str]:
    """Role → point, checked against the kind: each role known, played once, in its unit,
    writable where the controller writes it; every role the kind requires present."""
    if kind not in KINDS:
        raise DeviceMapError(f"{source}: unknown kind {kind!r} (one of {sorted(KINDS)})")
    known = KINDS[kind]
    roles: dict[str, str] = {}
    for p in points:
        if p.role is None:
            continue
        ctx = f"{source}, point {p.name!r}"
        if p.role not in known:
            raise DeviceMapError(
                f"{ctx}: {kind} has no role {p.role!r} (one of {', '.join(known)})"
            )
        if p.role in roles:
            raise DeviceMapError(f"{ctx}: role {p.role!r} is already played by {roles[p.role]!r}")
        if not p.polled:
            raise DeviceMapError(
                f"{ctx}: role {p.role!r} needs a value read every poll; a const or string "
                "point is read once, at connect"
            )
        spec = known[p.role]
        if p.unit != spec.unit:
            raise DeviceMapError(
                f"{ctx}: role {p.role!r} is in {spec.unit!r}, the point in {p.unit!r}"
            )
        if spec.access == "rw" and not p.writable:
            raise DeviceMapError(f"{ctx}: role {p.role!r} is written, so the point needs rw")
        roles[p.role] = p.name
    missing = [r for r, spec in known.items() if spec.required and r not in roles]
    if missing:
        raise DeviceMapError(
            f"{source}: a {kind} map needs a point for each of the roles {missing} "
            "(`role:` on the point)"
        )
    return roles


def _check_overlaps(points: list[Point], where: str) -> None:
    owner: dict[int, str] = {}
    for p in points:
        assert p.address is not None
        for reg in range(p.address, p.address + p.register_count):
            if reg in owner:
                raise DeviceMapError(
                    f"{where}: point {p.name!r} overlaps {owner[reg]!r} at register {reg}"
                )
            owner[reg] = p.name


def parse_map(data: object, source: str) -> DeviceMap:
    if not isinstance(data, dict):
        raise DeviceMapError(f"{source}: a map is a mapping with kind, protocol and points")
    kind, protocol = data.get("kind"), data.get("protocol")
    if not isinstance(kind, str) or not kind:
        raise DeviceMapError(f"{source}: missing kind")
    if protocol not in ("modbus", "opcua"):
        raise DeviceMapError(f"{source}: protocol must be modbus or opcua, not {protocol!r}")
    raw_points = data.get("points")
    if not isinstance(raw_points, list) or not raw_points:
        raise DeviceMapError(f"{source}: no points")
    layout, models = _sunspec_layout(data.get("sunspec"), source)
    points = [
        _parse_point(r if isinstance(r, dict) else {}, protocol, source, models)
        for r in [*layout, *raw_points]
    ]
    names = [p.name for p in points]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise DeviceMapError(f"{source}: duplicate point names {sorted(dupes)}")
    word_order = data.get("word_order", "big")
    if word_order not in ("big", "little"):
        raise DeviceMapError(f"{source}: word_order must be big or little, not {word_order!r}")
    for p in points:
        factor = next((f for f in points if f.name == p.sf), None) if p.sf else None
        if p.sf and (factor is None or factor.type != "int16"):
            raise DeviceMapError(f"{source}, point {p.name!r}: sf {p.sf!r} is no int16 point")
    alive_point, alive_timeout = None, 3.0
    if (liveness := data.get("liveness")) is not None:
        alive_point = liveness.get("point") if isinstance(liveness, dict) else None
        alive_timeout = liveness.get("timeout_s", 3.0) if isinstance(liveness, dict) else None
        if alive_point not in names:
            raise DeviceMapError(f"{source}: liveness point {alive_point!r} is not a point")
        if not (isinstance(alive_timeout, int | float) and alive_timeout > 0):
            raise DeviceMapError(f"{source}: liveness timeout_s must be > 0 s")
    gap = data.get("block_gap", 8)
    if not (isinstance(gap, int) and 0 <= gap < MAX_BLOCK_REGISTERS):
        raise DeviceMapError(f"{source}: block_gap is a register count 0–124, not {gap!r}")
    blocks: tuple[Block, ...] = ()
    identity: tuple[Block, ...] = ()
    if protocol == "modbus":
        _check_overlaps(points, source)
        blocks = _coalesce([p for p in points if p.polled], gap)
        identity = _coalesce([p for p in points if not p.polled], gap)
    roles = _check_roles(kind, points, source)
    return DeviceMap(
        kind=kind,
        protocol=protocol,
        points={p.name: p for p in points},
        source=source,
        word_order=word_order,
        namespace=str(data.get("namespace", "")),
        blocks=blocks,
        identity_blocks=identity,
        sunspec=data.get("sunspec") is not None,
        alive_point=alive_point,
        alive_timeout_s=float(alive_timeout),
        roles=roles,
    )


def shipped_maps() -> list[str]:
    """Names of the maps that ship with gridpilot (drivers/maps/*.yaml)."""
    folder = resources.files("drivers") / "maps"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_map(name_or_path: str | Path) -> DeviceMap:
    """A shipped map by name (`ups`) or a YAML file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        source, file = str(path), path
    else:
        if str(name_or_path) not in shipped_maps():
            raise DeviceMapError(
                f"no map {str(name_or_path)!r}: give a shipped map ({', '.join(shipped_maps())}) "
                "or the path of a YAML file"
            )
        source = f"drivers/maps/{name_or_path}.yaml"
        file = resources.files("drivers") / "maps" / f"{name_or_path}.yaml"
    data = read_yaml(file, source, DeviceMapError)
    return parse_map(data, source)
