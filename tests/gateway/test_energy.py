"""Energy counters the gateway integrates (energy.py): trapezoid, gaps, restarts, crashes, files."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from blupow_gateway import energy
from blupow_gateway.devices import create_device
from blupow_gateway.devices.base import Field
from blupow_gateway.energy import EnergyMeters
from blupow_gateway.settings import DeviceOption
from tests.plugins.gateway import GatewayFactory, GatewayProcess, SimWorld, gateway_options, wait_until
from tests.plugins.mosquitto import Mosquitto, MqttRecorder, Received, aretained

BATTERY = create_device("renogy_battery")
COUNTERS = BATTERY.energy_fields()
KEY = "C464E3000102"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def meters(tmp_path: Path, clock: Clock, max_gap: float = 90.0) -> EnergyMeters:
    found = EnergyMeters(tmp_path, lambda: max_gap, clock)
    found.load()
    return found


def test_the_battery_table_declares_charge_and_discharge() -> None:
    assert [(f.key, f.integrates, f.direction) for f in COUNTERS] == [
        ("charge_energy", "power", 1),
        ("discharge_energy", "power", -1),
    ]
    assert all(f.state_class == "total_increasing" and f.unit == "kWh" and f.precision == 3 for f in COUNTERS)


def test_trapezoid_splits_a_zero_crossing() -> None:
    # 100 W for an hour: 100 Wh in, nothing out
    assert energy._trapezoid(100, 100, 3600, 1) == pytest.approx(100)
    assert energy._trapezoid(100, 100, 3600, -1) == 0
    # +100 W -> -100 W linearly over an hour: half an hour each side, 25 Wh each, never netted out
    assert energy._trapezoid(100, -100, 3600, 1) == pytest.approx(25)
    assert energy._trapezoid(100, -100, 3600, -1) == pytest.approx(25)


async def test_integrates_and_publishes_only_what_is_committed(tmp_path: Path) -> None:
    clock = Clock()
    m = meters(tmp_path, clock)
    m.record(KEY, COUNTERS, {"power": 360.0})
    assert m.published(KEY, COUNTERS) == {"charge_energy": 0.0, "discharge_energy": 0.0}
    clock.now += 30
    m.record(KEY, COUNTERS, {"power": 360.0})  # 360 W x 30 s = 3 Wh
    assert m.published(KEY, COUNTERS)["charge_energy"] == 0.0  # not on disk yet: not shown
    await m.commit()
    assert m.published(KEY, COUNTERS) == {"charge_energy": 0.003, "discharge_energy": 0.0}
    clock.now += 30
    m.record(KEY, COUNTERS, {"power": -720.0})  # linear 360 -> -720: 1/3 of 30 s up, 2/3 down
    await m.commit()
    published = m.published(KEY, COUNTERS)
    assert published["charge_energy"] == pytest.approx(0.003 + 360 * 10 / 2 / 3600 / 1000, abs=1e-3)
    assert published["discharge_energy"] == pytest.approx(720 * 20 / 2 / 3600 / 1000, abs=1e-3)


async def test_a_gap_adds_nothing(tmp_path: Path) -> None:
    """The energy of a gap is unknown: not invented from the power at either end."""
    clock = Clock()
    m = meters(tmp_path, clock, max_gap=90)
    m.record(KEY, COUNTERS, {"power": 1000.0})
    clock.now += 91
    m.record(KEY, COUNTERS, {"power": 1000.0})
    await m.commit()
    assert m.published(KEY, COUNTERS)["charge_energy"] == 0.0
    clock.now += 36
    m.record(KEY, COUNTERS, {"power": 1000.0})  # the next segment counts again: 10 Wh
    await m.commit()
    assert m.published(KEY, COUNTERS)["charge_energy"] == 0.01


async def test_clock_going_back_adds_nothing(tmp_path: Path) -> None:
    clock = Clock()
    m = meters(tmp_path, clock)
    m.record(KEY, COUNTERS, {"power": 1000.0})
    clock.now -= 3600  # NTP correction on a Pi without an RTC
    m.record(KEY, COUNTERS, {"power": 1000.0})
    clock.now += 36
    m.record(KEY, COUNTERS, {"power": 1000.0})
    await m.commit()
    assert m.published(KEY, COUNTERS)["charge_energy"] == 0.01


async def test_a_reading_without_power_keeps_the_counter(tmp_path: Path) -> None:
    clock = Clock()
    m = meters(tmp_path, clock)
    m.record(KEY, COUNTERS, {"power": 1000.0})
    clock.now += 36
    m.record(KEY, COUNTERS, {"voltage": 13.2})  # power missing from this reading
    clock.now += 36
    m.record(KEY, COUNTERS, {"power": 1000.0})
    await m.commit()
    # no segment spans the reading without power: nothing counted, nothing lost below zero
    assert m.published(KEY, COUNTERS)["charge_energy"] == 0.0


async def test_restart_continues_the_segment_once(tmp_path: Path) -> None:
    """Stopped and started again within the gap limit: the interval since the last commit is
    counted once, from the committed point (also after a crash that lost uncommitted readings)."""
    clock = Clock()
    first = meters(tmp_path, clock)
    first.record(KEY, COUNTERS, {"power": 360.0})
    clock.now += 30
    first.record(KEY, COUNTERS, {"power": 360.0})
    await first.commit()  # 3 Wh on disk
    clock.now += 30
    first.record(KEY, COUNTERS, {"power": 360.0})  # 3 Wh more, never committed: the crash
    clock.now += 30

    second = meters(tmp_path, clock)
    assert second.published(KEY, COUNTERS)["charge_energy"] == 0.003
    second.record(KEY, COUNTERS, {"power": 360.0})  # 60 s after the committed reading: 6 Wh
    await second.commit()
    assert second.published(KEY, COUNTERS)["charge_energy"] == 0.009  # = 90 s at 360 W, once


async def test_restart_after_a_long_stop_does_not_invent_energy(tmp_path: Path) -> None:
    clock = Clock()
    first = meters(tmp_path, clock)
    first.record(KEY, COUNTERS, {"power": 5000.0})
    await first.stop()
    clock.now += 3600
    second = meters(tmp_path, clock)
    second.record(KEY, COUNTERS, {"power": 5000.0})
    await second.commit()
    assert second.published(KEY, COUNTERS)["charge_energy"] == 0.0


async def test_stop_writes_what_is_left(tmp_path: Path) -> None:
    clock = Clock()
    m = meters(tmp_path, clock)
    m.start()
    m.record(KEY, COUNTERS, {"power": 360.0})
    clock.now += 30
    m.record(KEY, COUNTERS, {"power": 360.0})
    await m.stop()
    saved = json.loads((tmp_path / "energy.json").read_text())
    assert saved["units"][KEY]["wh"]["charge_energy"] == pytest.approx(3.0)


async def test_forget_drops_a_removed_unit(tmp_path: Path) -> None:
    clock = Clock()
    m = meters(tmp_path, clock)
    m.record(KEY, COUNTERS, {"power": 360.0})
    m.record("OTHER", COUNTERS, {"power": 1.0})
    m.forget(KEY)
    await m.commit()
    assert set(json.loads((tmp_path / "energy.json").read_text())["units"]) == {"OTHER"}


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"\xff\xfe", b"[]", b'{"units": {"K": {"wh": {"charge_energy": -5, "x": "NaN"}, "at": "soon"}}}'],
)
async def test_a_damaged_file_loses_no_other_data_and_invents_nothing(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "energy.json").write_bytes(content)
    clock = Clock()
    m = meters(tmp_path, clock)
    assert m.published("K", COUNTERS) == {"charge_energy": 0.0, "discharge_energy": 0.0}
    m.record("K", COUNTERS, {"power": 100.0})
    await m.commit()
    assert json.loads((tmp_path / "energy.json").read_text())["units"]["K"]["wh"]["charge_energy"] == 0.0
    if content.startswith(b"{not") or content.startswith(b"\xff"):  # the unreadable file is kept aside
        assert [p.name.startswith("energy.json.corrupt-") for p in tmp_path.iterdir()].count(True) == 1


def test_a_counter_needs_a_valid_direction() -> None:
    with pytest.raises(ValueError, match="direction must be 1 or -1"):
        Field("x", None, integrates="power", direction=0)


def test_max_gap_is_a_few_polls_but_at_least_a_minute() -> None:
    assert energy.max_gap_for(30) == 90
    assert energy.max_gap_for(5) == 60


# -- in the gateway, with the simulated battery and a real broker -----------------------------------


CONTROLLER = create_device("renogy_charge_controller")
LIFETIME = CONTROLLER.lifetime_counters()
GEN = "power_generation_total"


def carried(m: EnergyMeters, clock: Clock, readings: list[float], every: float = 30.0) -> list[float]:
    """What is published for a series of raw lifetime-counter readings, ``every`` s apart."""
    published = []
    for reading in readings:
        clock.now += every
        values: dict[str, Any] = {GEN: reading, "power_consumption_total": 1.0}
        m.carry(KEY, LIFETIME, values)
        published.append(values[GEN])
    return published


def test_the_controller_tables_declare_their_lifetime_counters() -> None:
    assert [f.key for f in LIFETIME] == ["power_generation_total", "power_consumption_total"]
    assert [f.key for f in create_device("renogy_dcc").lifetime_counters()] == ["power_generation_total"]
    assert not BATTERY.lifetime_counters()  # "today" counters reset every day by design: not guarded
    assert "power_generation_today" not in {f.key for f in LIFETIME}
    with pytest.raises(ValueError, match="kWh or Wh"):
        Field("x", 1, unit="Ah", lifetime=True)


async def test_a_device_counter_that_resets_continues_from_where_it_was(tmp_path: Path) -> None:
    """A replaced or factory-reset controller starts again from 0: the published total goes on."""
    clock = Clock()
    m = meters(tmp_path, clock)
    published = carried(m, clock, [120.0, 120.01, 0.0, 0.002, 0.005])
    # the first low reading is held (it could be a glitch), the second confirms the reset
    assert published == [120.0, 120.01, 120.01, 120.012, 120.015]
    assert published == sorted(published)


async def test_one_odd_reading_of_a_device_counter_is_never_published(tmp_path: Path) -> None:
    clock = Clock()
    m = meters(tmp_path, clock)
    # a zero while the controller boots, a spike no controller can make in 30 s, a dip
    published = carried(m, clock, [120.0, 0.0, 120.02, 4_000_000.0, 120.03, 119.5, 120.04])
    assert published == [120.0, 120.0, 120.02, 120.02, 120.03, 120.03, 120.04]


async def test_a_large_rise_after_a_long_absence_is_accepted(tmp_path: Path) -> None:
    """Away for a sunny day: the counter rose a lot, but no faster than a controller can."""
    clock = Clock()
    m = meters(tmp_path, clock)
    assert carried(m, clock, [120.0]) == [120.0]
    assert carried(m, clock, [150.0], every=8 * 3600) == [150.0]


async def test_a_reset_carried_over_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    m = meters(tmp_path, clock)
    assert carried(m, clock, [120.0, 0.0, 0.25]) == [120.0, 120.0, 120.25]
    await m.stop()
    # the device was reset again while the gateway was stopped
    again = meters(tmp_path, clock)
    assert carried(again, clock, [0.1, 0.2]) == [120.25, 120.45]


async def test_an_upgrade_publishes_the_device_counter_unchanged(tmp_path: Path) -> None:
    """No file from an older version: the first reading is published as it is (statistics go on)."""
    clock = Clock()
    assert carried(meters(tmp_path, clock), clock, [987.654]) == [987.654]


def _energy(gateway: Any, mac: str) -> tuple[float, float] | None:
    values = gateway.scheduler.unit(mac).values
    if "charge_energy" not in values:
        return None
    return values["charge_energy"], values["discharge_energy"]


async def test_the_gateway_counts_publishes_and_keeps_energy_across_a_restart(
    gateway_factory: GatewayFactory, sim_world: SimWorld, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    sim = sim_world.add("battery", cold=False)
    option = (DeviceOption(sim.mac, "renogy_battery"),)
    first = await gateway_factory(option)
    await wait_until(lambda: sum(_energy(first, sim.mac) or (0, 0)) > 0, 20, "energy counted and committed")
    await first.mqtt.flush()
    state = json.loads((await aretained(mosquitto))[f"blupow/{sim.mac.replace(':', '')}/state"])
    assert state["charge_energy"] >= 0 and state["discharge_energy"] >= 0
    await first.stop()
    saved = json.loads((tmp_path / "data" / "energy.json").read_text())
    on_disk = saved["units"][sim.mac.replace(":", "")]["wh"]
    last = _energy(first, sim.mac)
    assert last is not None
    # never more published than on disk (a restart must not have to go back down)
    assert last[0] * 1000 <= on_disk["charge_energy"] + 1e-6 and last[1] * 1000 <= on_disk["discharge_energy"] + 1e-6

    second = await gateway_factory(option)
    await wait_until(lambda: _energy(second, sim.mac) is not None, 10, "the first reading after the restart")
    again = _energy(second, sim.mac)
    assert again is not None and again[0] >= last[0] and again[1] >= last[1]
    await wait_until(lambda: sum(_energy(second, sim.mac) or (0, 0)) > sum(last), 20, "counting on")


def _load_states(recorder: MqttRecorder, topic: str, since: int = 0) -> list[tuple[float, float, float]]:
    """(arrival, AC output energy in Wh, load power in W) of every state published on ``topic``."""
    found = []
    for message in recorder.on(topic, since):
        state = message.json()
        if "load_energy" in state and "load_active_power" in state:
            found.append((message.at, state["load_energy"] * 1000, state["load_active_power"]))
    return found


def _rate(first: tuple[float, float, float], last: tuple[float, float, float]) -> float:
    """Wh counted per second between two published states."""
    return (last[1] - first[1]) / (last[0] - first[0])


def _wait_states(recorder: MqttRecorder, topic: str, since: int, count: int, timeout: float = 60) -> Received:
    """Wait until ``count`` states with energy arrived on ``topic`` after ``since``."""
    deadline = time.monotonic() + timeout
    while len(_load_states(recorder, topic, since)) < count:
        recorder.wait_topic(topic, max(0.1, deadline - time.monotonic()), recorder.mark())
    return recorder.on(topic, since)[-1]


@pytest.mark.slow
def test_energy_is_neither_lost_nor_doubled_by_a_broker_outage_or_a_sigkill(
    mosquitto: Mosquitto,
    mqtt_recorder: Callable[..., MqttRecorder],
    gateway_process: Callable[..., GatewayProcess],
    sim_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """The process as users run it. A steady load (simulated time stands still): the counter must rise at the same rate
    across a broker outage (polling goes on, nothing is published) and across a SIGKILL and restart
    (the segment continues from what was on disk) as it does in plain running."""
    config = tmp_path / "sim.yaml"
    config.write_text(json.dumps([{"kind": "inverter", "options": {"load_va": 3000.0, "frozen": True}}]))
    sim = sim_process(config=config)
    inverter = sim.device("renogy_inverter")
    topic = f"blupow/{inverter.mac.replace(':', '')}/state"
    options = gateway_options(mosquitto, devices=[{"mac_address": inverter.mac, "type": "renogy_inverter"}])
    recorder = mqtt_recorder()
    gateway = gateway_process(options, env=sim.env())
    _wait_states(recorder, topic, 0, 6)  # 25 s of plain running at a 5 s poll
    plain = _load_states(recorder, topic)
    steady = _rate(plain[1], plain[-1])
    assert steady == pytest.approx(plain[-1][2] / 3600, rel=0.15)  # W -> Wh/s: the integration itself

    # the broker goes away for 25 s; the gateway polls on and keeps counting
    before = plain[-1]
    recorder.close()
    mosquitto.stop()
    time.sleep(25)
    mosquitto.start()
    recorder = mqtt_recorder()
    _wait_states(recorder, topic, 0, 3)
    after_outage = _load_states(recorder, topic)
    assert _rate(before, after_outage[0]) == pytest.approx(steady, rel=0.25), "energy of the outage"

    # SIGKILL between two polls, restart at once: the downtime is counted once, from the file
    before = after_outage[-1]
    gateway.kill()
    since = recorder.mark()
    gateway = gateway_process(options, env=sim.env())
    _wait_states(recorder, topic, since, 3)
    after_kill = _load_states(recorder, topic, since)
    assert _rate(before, after_kill[-1]) == pytest.approx(steady, rel=0.25), "energy across the SIGKILL"

    published = [wh for _, wh, _ in plain + after_outage + after_kill]
    assert published == sorted(published), "the counter went down"
    gateway.signal(signal.SIGTERM)
    assert gateway.wait(10) == 0
