"""Faults a simulated device can be told to show, so tests can prove the drivers notice them.

Link faults act on the protocol (Modbus only: OPC UA sessions are asyncua's); value faults act
on what the device shows, whatever its protocol.
"""

from __future__ import annotations

import math
import struct
from enum import StrEnum

from drivers.devicemap import NOT_IMPLEMENTED, DeviceMap, Point


class Fault(StrEnum):
    NONE = "none"
    DROP = "drop"  # close every connection as soon as a request arrives
    SILENT = "silent"  # take requests and never answer: the client times out
    EXCEPTION = "exception"  # answer every request with Modbus exception 4, device failure
    NAN = "nan"  # every measured point shows NaN (or the type's "not implemented")
    ABSURD = "absurd"  # every measured point shows a value far outside its range
    FREEZE = "freeze"  # every point keeps its last value, the device's heartbeat included


LINK_FAULTS = frozenset({Fault.DROP, Fault.SILENT, Fault.EXCEPTION})


def faulty_value(fault: Fault) -> float:
    """What a measured point shows under a value fault (NaN or absurd), as a number."""
    return math.nan if fault is Fault.NAN else 3.0e38


def faulty_words(devmap: DeviceMap, point: Point, fault: Fault) -> list[int]:
    """The registers of a measured number point under NaN or ABSURD: integers cannot hold NaN,
    so they show the SunSpec "not implemented" pattern; absurd is the type's extreme."""
    if point.type == "float32":
        raw = struct.pack(">f", faulty_value(fault))
    elif fault is Fault.NAN:
        raw = NOT_IMPLEMENTED[point.type][0]
    else:
        size = 2 * point.register_count
        top = (1 << (8 * size - 1)) - 1 if point.type.startswith("int") else (1 << 8 * size) - 2
        raw = top.to_bytes(size, "big")
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if devmap.word_order == "little":
        words.reverse()
    return words


def measured(devmap: DeviceMap) -> list[Point]:
    """The points a value fault spoils: read-only, polled, not the device's own heartbeat."""
    return [
        p
        for p in devmap.points.values()
        if p.polled and not p.writable and p.name != devmap.alive_point
    ]
