"""Device maps: a device type described as data (YAML), shared by its driver and its simulator.

A map lists points: name, register address (Modbus) or node id (OPC UA), type, scale, unit,
access and valid range. Encoding and decoding live here so that driver and simulator cannot
drift apart.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from drivers.yamlfile import read_yaml

# Register count and struct code of each Modbus type (big-endian within a word).
MODBUS_TYPES: dict[str, tuple[int, str]] = {
    "uint16": (1, "H"),
    "int16": (1, "h"),
    "uint32": (2, "I"),
    "int32": (2, "i"),
    "float32": (2, "f"),
}
OPCUA_TYPES = {"double"}
MAX_BLOCK_REGISTERS = 125  # Modbus limit for one read of holding registers


class DeviceMapError(ValueError):
    """A map that cannot be used; the message names the file and the point."""


@dataclass(frozen=True)
class Point:
    name: str
    type: str
    unit: str
    access: Literal["r", "rw"]
    scale: float = 1.0
    address: int | None = None
    node: str | None = None
    range: tuple[float, float] | None = None
    description: str = ""

    @property
    def writable(self) -> bool:
        return self.access == "rw"

    @property
    def register_count(self) -> int:
        return MODBUS_TYPES[self.type][0]

    def in_range(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return self.range is None or self.range[0] <= value <= self.range[1]


@dataclass(frozen=True)
class Block:
    """Adjacent registers read in one request."""

    address: int
    count: int
    points: tuple[Point, ...]


@dataclass(frozen=True)
class DeviceMap:
    kind: str
    protocol: Literal["modbus", "opcua"]
    points: dict[str, Point]
    source: str
    word_order: Literal["big", "little"] = "big"
    namespace: str = ""
    blocks: tuple[Block, ...] = field(default=())

    def point(self, name: str) -> Point:
        try:
            return self.points[name]
        except KeyError:
            raise KeyError(f"{self.kind} map ({self.source}) has no point {name!r}") from None

    def decode(self, point: Point, registers: list[int]) -> float:
        """Registers of one point → engineering value (scale applied)."""
        words = list(registers[: point.register_count])
        if self.word_order == "little":
            words.reverse()
        raw = b"".join(w.to_bytes(2, "big") for w in words)
        (value,) = struct.unpack(">" + MODBUS_TYPES[point.type][1], raw)
        return float(value) * point.scale

    def encode(self, point: Point, value: float) -> list[int]:
        """Engineering value → registers; rejects values the type cannot hold."""
        code = MODBUS_TYPES[point.type][1]
        raw_value: float | int = value / point.scale
        if code != "f":
            raw_value = round(raw_value)
        try:
            raw = struct.pack(">" + code, raw_value)
        except (struct.error, OverflowError) as exc:
            raise ValueError(
                f"{self.kind}.{point.name}: {value} {point.unit} does not fit {point.type}"
            ) from exc
        words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
        if self.word_order == "little":
            words.reverse()
        return words

    def decode_block(self, block: Block, registers: list[int]) -> dict[str, float]:
        return {
            p.name: self.decode(p, registers[p.address - block.address :])  # type: ignore[operator]
            for p in block.points
        }


def _coalesce(points: list[Point], max_gap: int = 8) -> tuple[Block, ...]:
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


def _parse_point(raw: dict, protocol: str, where: str) -> Point:
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
    address, node = raw.get("address"), raw.get("node")
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
    )


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
    points = [_parse_point(r if isinstance(r, dict) else {}, protocol, source) for r in raw_points]
    names = [p.name for p in points]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise DeviceMapError(f"{source}: duplicate point names {sorted(dupes)}")
    word_order = data.get("word_order", "big")
    if word_order not in ("big", "little"):
        raise DeviceMapError(f"{source}: word_order must be big or little, not {word_order!r}")
    blocks: tuple[Block, ...] = ()
    if protocol == "modbus":
        _check_overlaps(points, source)
        blocks = _coalesce(points)
    return DeviceMap(
        kind=kind,
        protocol=protocol,
        points={p.name: p for p in points},
        source=source,
        word_order=word_order,
        namespace=str(data.get("namespace", "")),
        blocks=blocks,
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
        source = f"drivers/maps/{name_or_path}.yaml"
        file = resources.files("drivers") / "maps" / f"{name_or_path}.yaml"
    data = read_yaml(file, source, DeviceMapError)
    return parse_map(data, source)
