"""Device maps: every shipped map loads, values survive the trip through registers, bad maps
are refused with the file and the point named."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from drivers.devicemap import MAX_BLOCK_REGISTERS, DeviceMapError
from drivers.kinds import KINDS, required_roles
from drivers.maploader import load_map, parse_map, shipped_maps


def test_every_shipped_map_loads():
    names = shipped_maps()
    assert {"ups", "bess", "meter", "cdu"} <= set(names)
    for name in names:
        m = load_map(name)
        assert m.points
        for p in m.points.values():
            assert p.unit
        for block in (*m.blocks, *m.identity_blocks):
            assert block.count <= MAX_BLOCK_REGISTERS
            covered = {p.name for p in block.points}
            assert all(
                block.address <= p.address < block.address + block.count for p in block.points
            )
            assert covered
        if m.protocol == "modbus":  # polled each time, or read once at connect: never both
            polled = {p.name for b in m.blocks for p in b.points}
            once = {p.name for b in m.identity_blocks for p in b.points}
            assert polled | once == set(m.points) and not polled & once


def meter_map(*points: dict, **extra: object) -> dict:
    """A meter map around `points`, with the two roles every meter map must bind, far off."""
    roles = [
        {"name": "power", "role": "power_w", "address": 9000, "type": "float32", "unit": "W"},
        {"name": "hz", "role": "frequency_hz", "address": 9002, "type": "uint16", "unit": "Hz"},
    ]
    return {"kind": "meter", "protocol": "modbus", "points": [*points, *roles], **extra}


@pytest.mark.parametrize("word_order", ["big", "little"])
@given(value=st.floats(min_value=-1e7, max_value=1e7, allow_nan=False))
def test_float32_round_trip(word_order: str, value: float):
    m = parse_map(
        meter_map(
            {"name": "p", "address": 0, "type": "float32", "unit": "W"}, word_order=word_order
        ),
        "test",
    )
    p = m.point("p")
    assert math.isclose(m.decode(p, m.encode(p, value)), value, rel_tol=1e-6, abs_tol=1e-3)


@given(raw=st.integers(min_value=0, max_value=65535))
def test_scaled_uint16_round_trip(raw: int):
    m = load_map("meter")
    p = m.point("frequency_hz")
    value = raw * p.scale
    assert m.encode(p, value) == [raw]
    assert math.isclose(m.decode(p, [raw]), value)


@given(value=st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_int32_round_trip(value: int):
    m = parse_map(meter_map({"name": "p", "address": 10, "type": "int32", "unit": "W"}), "test")
    p = m.point("p")
    words = m.encode(p, value)
    assert len(words) == 2 and all(0 <= w <= 0xFFFF for w in words)
    assert m.decode(p, words) == value


def test_value_too_large_for_its_type_is_refused():
    m = load_map("ups")
    with pytest.raises(ValueError, match=r"ups\.mode"):
        m.encode(m.point("mode"), 70000)


SUNSPEC = {"base": 40000, "models": [{"id": 1, "length": 66}]}


def _map(**point) -> dict:
    base = {"name": "p", "address": 0, "type": "uint16", "unit": "W"}
    return meter_map({**base, **point})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_map(type="float128"), "unknown type 'float128'"),
        (_map(unit=None), "missing unit"),
        (_map(access="w"), "access must be"),
        (_map(address=-1), "address must be"),
        (_map(scale=0), "scale must be"),
        (_map(range=[5, 1]), "range must be"),
        (_map(range=["a", "b"]), "range must be"),
        (_map(colour="red"), "unknown fields"),
        ({"kind": "x", "protocol": "bacnet", "points": []}, "protocol must be"),
        ({"kind": "x", "protocol": "modbus", "points": []}, "no points"),
        (_map(type="string"), "a string needs count"),
        (_map(const="abc"), "does not suit type uint16"),
        (_map(sf="nothing"), "sf 'nothing' is no int16 point"),
        (_map(model=701, offset=10, address=None), "model 701 is not in the map's sunspec"),
        ({**_map(model=1, offset=68, address=None), "sunspec": SUNSPEC}, "offset 68 is outside"),
        ({**_map(), "liveness": {"point": "beat"}}, "liveness point 'beat' is not a point"),
    ],
)
def test_bad_map_names_file_and_point(data: dict, message: str):
    with pytest.raises(DeviceMapError) as err:
        parse_map(data, "maps/broken.yaml")
    assert "maps/broken.yaml" in str(err.value)
    assert message in str(err.value)


def test_overlapping_registers_refused():
    data = {
        "kind": "x",
        "protocol": "modbus",
        "points": [
            {"name": "a", "address": 0, "type": "float32", "unit": "W"},
            {"name": "b", "address": 1, "type": "uint16", "unit": "W"},
        ],
    }
    with pytest.raises(DeviceMapError, match="'b' overlaps 'a' at register 1"):
        parse_map(data, "x.yaml")


def test_far_apart_points_get_separate_blocks_and_long_runs_split():
    points = [
        {"name": f"p{i}", "address": i * 2, "type": "float32", "unit": "W"} for i in range(100)
    ]
    points.append({"name": "far", "address": 5000, "type": "uint16", "unit": "1"})
    m = parse_map(meter_map(*points), "x.yaml")
    assert [b.count for b in m.blocks] == [124, 76, 1, 3]  # the last: the meter's roles


def test_map_file_by_path(tmp_path: Path):
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(_map()))
    assert load_map(path).point("p").unit == "W"
    with pytest.raises(DeviceMapError, match="cannot read"):
        load_map(tmp_path / "gone.yaml")


def test_sunspec_layout_and_its_not_implemented_values():
    m = load_map("bess")
    assert m.point("sunspec_marker").address == 40000
    assert m.point("model_802_id").address == 40353 and m.point("model_802_length").const == 62
    assert m.point("sunspec_end").address == 40417  # after the last model's 62 registers
    w, soc, end = m.point("w"), m.point("soc_ratio"), m.point("sunspec_end")
    assert math.isnan(m.decode(w, [0x8000]))  # int16 "not implemented"
    assert math.isnan(m.decode(soc, [0xFFFF]))  # uint16 "not implemented"
    assert m.decode(end, [0xFFFF]) == 0xFFFF  # a const is what it says
    # Scale factors: W in kW (w_sf 3), SoC in hundredths of a percent (pct_sf -2, scale 0.01).
    assert m.encode(w, -1_234_000.0, sf=3.0) == [(-1234) & 0xFFFF]
    assert m.encode(soc, 0.6789, sf=-2.0) == [6789]
    values = {"w": m.decode(w, [1234]), "soc_ratio": m.decode(soc, [6789])}
    m.with_scale_factors(values, {"w_sf": 3.0, "pct_sf": -2.0})
    assert values == {"w": 1_234_000.0, "soc_ratio": pytest.approx(0.6789)}


@given(registers=st.lists(st.integers(0, 0xFFFF), min_size=125, max_size=125))
def test_block_decoding_matches_point_by_point(registers: list[int]):
    """The whole-block fast path reads every point as decoding it alone does."""
    m = load_map("ups")
    for block in m.blocks:
        words = registers[: block.count]
        fast = m.decode_block(block, words)
        for p in block.points:
            alone = m.decode(p, words[p.address - block.address :])
            assert fast[p.name] == alone or (math.isnan(alone) and math.isnan(fast[p.name]))


def test_every_shipped_map_binds_the_roles_its_kind_requires():
    for name in shipped_maps():
        m = load_map(name)
        for role in required_roles(m.kind):
            point = m.role_point(role)
            assert point.unit == KINDS[m.kind][role].unit, (name, role)
            assert point.writable or KINDS[m.kind][role].access == "r", (name, role)


def test_a_second_bess_layout_serves_the_same_roles():
    sunspec, flat = load_map("bess"), load_map("bess_flat")
    assert sunspec.kind == flat.kind == "bess"
    assert set(required_roles("bess")) <= set(sunspec.roles) & set(flat.roles)
    assert sunspec.role_point("soc").name != flat.role_point("soc").name  # another vendor's
    assert flat.word_order == "little" and flat.role_point("power_w").scale == 1000.0


def _role_map(kind: str, points: list[dict]) -> dict:
    return {"kind": kind, "protocol": "modbus", "points": points}


W = {"type": "float32", "unit": "W"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_role_map("pump", [{"name": "a", "address": 0, **W}]), "unknown kind 'pump'"),
        (
            _role_map("meter", [{"name": "a", "address": 0, "role": "power_w", **W}]),
            "a meter map needs a point for each of the roles ['frequency_hz']",
        ),
        (
            meter_map({"name": "a", "address": 0, "role": "soc", **W}),
            "meter has no role 'soc'",
        ),
        (
            meter_map({"name": "a", "address": 0, "role": "power_w", **W}),
            "role 'power_w' is already played by",
        ),
        (
            _role_map(
                "meter",
                [
                    {"name": "a", "address": 0, "role": "power_w", "const": 5.0, **W},
                    {"name": "f", "address": 2, "role": "frequency_hz", "type": "uint16",
                     "unit": "Hz"},
                ],
            ),
            "role 'power_w' needs a value read every poll",
        ),
        (
            _role_map(
                "meter",
                [
                    {"name": "a", "address": 0, "role": "power_w", "type": "float32", "unit": "kW"},
                    {"name": "f", "address": 2, "role": "frequency_hz", "type": "uint16",
                     "unit": "Hz"},
                ],
            ),
            "role 'power_w' is in 'W', the point in 'kW'",
        ),
        (
            _role_map(
                "bess",
                [
                    {"name": n, "address": i * 2, "role": n, **u}
                    for i, (n, u) in enumerate(
                        [("power_w", W), ("power_max_w", W), ("setpoint_w", W),
                         ("capacity_wh", {"type": "float32", "unit": "Wh"}),
                         ("soc", {"type": "float32", "unit": "1"}),
                         ("enable", {"type": "uint16", "unit": "1", "access": "rw"}),
                         ("heartbeat", {"type": "uint16", "unit": "1", "access": "rw"})]
                    )
                ],
            ),
            "role 'setpoint_w' is written, so the point needs rw",
        ),
    ],
)  # fmt: skip
def test_roles_are_checked_against_the_kind_naming_file_point_and_role(data, message):
    with pytest.raises(DeviceMapError) as err:
        parse_map(data, "maps/vendor.yaml")
    assert "maps/vendor.yaml" in str(err.value) and message in str(err.value)


def test_a_key_given_twice_is_refused_naming_the_file(tmp_path: Path):
    path = tmp_path / "twice.yaml"
    path.write_text("kind: meter\nprotocol: modbus\nkind: ups\npoints: []\n")
    with pytest.raises(DeviceMapError, match=r"(?s)twice.yaml: not valid YAML.*'kind' twice"):
        load_map(path)


def test_an_unknown_map_name_lists_the_shipped_ones():
    with pytest.raises(DeviceMapError, match=r"no map 'metre'.*meter"):
        load_map("metre")
