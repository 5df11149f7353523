"""Energy accounting and token counting: the numbers behind PUE and TokEnergy."""

from __future__ import annotations

import math

import pytest

from controller.energy import EnergyTotals, RollingRatios, Sample
from controller.tokens import TokenCount, TokenMeter, TokenSource, tokens_shown
from drivers.sim.tokens import MetricsEndpoint, exposition
from tests.sites import free_port


def test_energy_counters_integrate_each_power_and_skip_the_unknown():
    e = EnergyTotals()
    e.add(0.1, grid_w=5e6, it_w=8e6, cooling_w=0.4e6, battery_w={"bess-1": 2e6, "ups-a": -1e6})
    e.add(0.1, grid_w=-1e6, it_w=None, cooling_w=0.4e6, battery_w={"bess-1": math.nan})
    assert e.grid_import_j == pytest.approx(5e5)  # export is not import
    assert e.it_j == pytest.approx(8e5)
    assert e.cooling_j == pytest.approx(0.8e5)
    assert e.facility_j == pytest.approx(8.4e5)  # only where IT and cooling were both known
    assert e.battery_discharge_j == {"bess-1": pytest.approx(2e5), "ups-a": 0.0}
    assert e.battery_charge_j == {"bess-1": 0.0, "ups-a": pytest.approx(1e5)}
    e.add(-1.0, grid_w=5e6, it_w=8e6, cooling_w=0.0, battery_w={})  # a clock gone backwards
    assert e.it_j == pytest.approx(8e5)


def test_rolling_pue_and_tokens_per_joule():
    r = RollingRatios()
    assert r.pue("1m") is None
    it_w, cooling_w, tokens_per_s = 8e6, 0.4e6, 2e6
    for t in range(0, 3601):
        r.record(Sample(t, it_w * t, (it_w + cooling_w) * t, tokens_per_s * t))
    assert r.pue("1m") == pytest.approx(1.05)
    assert r.pue("1h") == pytest.approx(1.05)
    assert r.tokens_per_joule("1m") == pytest.approx(2e6 / 8.4e6)
    short = RollingRatios()
    for t in range(0, 100):
        short.record(Sample(t, it_w * t, (it_w + cooling_w) * t, 0.0))
    assert short.pue("1m") == pytest.approx(1.05)
    assert short.pue("1h") is None  # 100 s is not an hour's PUE
    assert short.tokens_per_joule("1m") == 0.0


def test_token_counter_resets_count_as_new_tokens():
    c = TokenCount()
    for shown in (1000.0, 1500.0, 1500.0, 200.0, 700.0):  # the server restarts after 1500
        c.update(shown)
    assert c.total == 500 + 0 + 200 + 500
    assert c.resets == 1


def test_tokens_shown_sums_models_and_refuses_what_is_not_there():
    text = exposition(100.0, "a").decode() + 'vllm:generation_tokens_total{model_name="b"} 50\n'
    assert tokens_shown(text, "vllm:generation_tokens_total") == 150.0
    with pytest.raises(ValueError, match="no sglang:generation_tokens_total"):
        tokens_shown(text, "sglang:generation_tokens_total")
    with pytest.raises(ValueError, match="is nan"):
        tokens_shown(exposition(math.nan, "a").decode(), "vllm:generation_tokens_total")


async def test_token_meter_over_http_through_restart_and_outage():
    shown = {"count": 1000.0}
    port = free_port()
    endpoint = MetricsEndpoint("127.0.0.1", port, lambda: shown["count"], "m")
    await endpoint.start()
    source = TokenSource("vllm-0", f"http://127.0.0.1:{port}/metrics",
                         "vllm:generation_tokens_total", 5.0, 1.0)  # fmt: skip
    meter = TokenMeter([source])
    meter.start()  # its own task polls at once, then every 5 s; the test polls by hand too
    try:
        await meter.poll(source)
        shown["count"] = 4000.0
        await meter.poll(source)
        assert source.up and meter.total() == 3000.0
        await endpoint.stop()  # the inference server goes away
        await meter.poll(source)
        assert not source.up and source.errors_total == 1 and "ConnectError" in source.last_error
        assert meter.total() == 3000.0  # nothing invented meanwhile
        shown["count"] = 250.0  # it comes back restarted
        endpoint = MetricsEndpoint("127.0.0.1", port, lambda: shown["count"], "m")
        await endpoint.start()
        await meter.poll(source)
        assert source.up and source.count.resets == 1 and meter.total() == 3250.0
    finally:
        await meter.stop()
        await endpoint.stop()
