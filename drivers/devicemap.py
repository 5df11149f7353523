"""Device maps: a device type described as data (YAML), shared by its driver and its simulator.

A map lists points: name, register address (Modbus) or node id (OPC UA), type, scale, unit,
access and valid range. Encoding and decoding live here so that driver and simulator cannot
drift apart.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from functools import cached_property
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
    "string": (0, ""),  # `count` registers, two ASCII characters each, NUL padded
}
OPCUA_TYPES = {"double"}
MAX_BLOCK_REGISTERS = 125  # Modbus limit for one read of holding registers
SUNSPEC_MARKER = "SunS"
# What a SunSpec device shows for a value it does not have (the standard's sentinels).
NOT_IMPLEMENTED = {
    "int16": (b"\x80\x00",),
    "uint16": (b"\xff\xff",),
    "int32": (b"\x80\x00\x00\x00",),
    "uint32": (b"\xff\xff\xff\xff",),
    "float32": (b"\x7f\xc0\x00\x00",),
}
SUNSPEC_END = 0xFFFF


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
    count: int = 0  # registers of a string
    const: float | str | None = None
    sf: str | None = None

    @property
    def writable(self) -> bool:
        return self.access == "rw"

    @property
    def register_count(self) -> int:
        return self.count if self.type == "string" else MODBUS_TYPES[self.type][0]

    @property
    def polled(self) -> bool:
        """Read every poll; const points and strings are read once, at connect."""
        return self.const is None and self.type != "string"

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

    @cached_property
    def codes(self) -> tuple[str, ...]:
        """Each point's struct format, big-endian ("" for strings)."""
        return tuple(">" + MODBUS_TYPES[p.type][1] for p in self.points)


@dataclass(frozen=True)
class DeviceMap:
    kind: str
    protocol: Literal["modbus", "opcua"]
    points: dict[str, Point]
    source: str
    word_order: Literal["big", "little"] = "big"
    namespace: str = ""
    blocks: tuple[Block, ...] = field(default=())  # what every poll reads
    identity_blocks: tuple[Block, ...] = field(default=())  # const and string points, at connect
    sunspec: bool = False  # SunSpec's "not implemented" values read as NaN
    alive_point: str | None = None  # a counter the device moves; stuck = its data are frozen
    alive_timeout_s: float = 3.0

    @property
    def polled(self) -> list[str]:
        """The points every poll reads (not the const and string ones read at connect)."""
        return [name for name, p in self.points.items() if p.polled or self.protocol == "opcua"]

    def point(self, name: str) -> Point:
        try:
            return self.points[name]
        except KeyError:
            raise KeyError(f"{self.kind} map ({self.source}) has no point {name!r}") from None

    def decode(self, point: Point, registers: list[int]) -> float:
        """Registers of one number point → value with its scale (not yet its `sf`)."""
        words = list(registers[: point.register_count])
        if self.word_order == "little":
            words.reverse()
        raw = b"".join(w.to_bytes(2, "big") for w in words)
        if self.sunspec and point.const is None and raw in NOT_IMPLEMENTED.get(point.type, ()):
            return math.nan
        (value,) = struct.unpack(">" + MODBUS_TYPES[point.type][1], raw)
        return float(value) * point.scale

    def decode_text(self, point: Point, registers: list[int]) -> str:
        raw = b"".join(w.to_bytes(2, "big") for w in registers[: point.register_count])
        return raw.split(b"\0", 1)[0].decode("ascii", errors="replace").strip()

    def encode(self, point: Point, value: float, sf: float = 0.0) -> list[int]:
        """Engineering value → registers (`sf`: the scale factor's value, if the point has
        one); rejects values the type cannot hold."""
        code = MODBUS_TYPES[point.type][1]
        raw_value: float | int = value / point.scale / 10.0**sf
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

    def encode_text(self, point: Point, text: str) -> list[int]:
        raw = text.encode("ascii")
        if len(raw) > 2 * point.register_count:
            raise ValueError(f"{self.kind}.{point.name}: {text!r} is longer than {point.type}")
        raw = raw.ljust(2 * point.register_count, b"\0")
        return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]

    def decode_block(self, block: Block, registers: list[int]) -> dict[str, float | str]:
        if self.word_order == "big" and not self.sunspec:
            # One bytes object for the block, each point unpacked in place: a poll of 100
            # devices spent a sixth of its time building per-point bytes before this.
            raw = struct.pack(f">{len(registers)}H", *registers)
            return {
                p.name: self.decode_text(p, registers[p.address - block.address :])  # type: ignore[operator]
                if p.type == "string"
                else struct.unpack_from(code, raw, 2 * (p.address - block.address))[0] * p.scale  # type: ignore[operator]
                for p, code in zip(block.points, block.codes, strict=True)
            }
        values: dict[str, float | str] = {}
        for p in block.points:
            words = registers[p.address - block.address :]  # type: ignore[operator]
            values[p.name] = (
                self.decode_text(p, words) if p.type == "string" else self.decode(p, words)
            )
        return values

    def with_scale_factors(self, values: dict[str, float], factors: dict[str, float]) -> None:
        """Apply each point's `sf` in place; `factors` holds the scale factors' values."""
        for name, value in values.items():
            sf = self.points[name].sf
            if sf is not None:
                values[name] = value * 10.0 ** factors[sf]

    def const_words(self) -> dict[int, list[int]]:
        """The registers every const point occupies, by address (for the simulator)."""
        words: dict[int, list[int]] = {}
        for p in self.points.values():
            if p.const is None or p.address is None:
                continue
            if isinstance(p.const, str):
                words[p.address] = self.encode_text(p, p.const)
            else:
                words[p.address] = self.encode(p, p.const)
        return words

    def sf_value(self, point: Point, known: dict[str, float]) -> float:
        """The value of a point's scale factor: its const, else as last read (`known`)."""
        if point.sf is None:
            return 0.0
        factor = self.points[point.sf]
        if isinstance(factor.const, int | float):
            return float(factor.const)
        if point.sf not in known:
            raise ValueError(f"{self.kind}.{point.name}: scale factor {point.sf} not read yet")
        return known[point.sf]


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
