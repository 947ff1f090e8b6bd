"""The gateway's default BLE links (transport.BleLink, real bleak) against the fake BlueZ, in-process.

The fake BlueZ counts connections itself, so the connection limit is measured on
the "radio" side, not inside the scheduler.
"""

from __future__ import annotations

from typing import Any

import pytest

from blupow_gateway.devices import create_device, driver
from blupow_gateway.settings import DeviceOption
from blupow_gateway.simulator import KINDS
from blupow_gateway.simulator.fake_bluez import FakeBlueZ
from blupow_gateway.store import DeviceRecord
from tests.plugins.gateway import GatewayFactory, wait_until

FAST = 0.01


@pytest.fixture(autouse=True)
def fast_inverter(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inverter's 1 s init pause and 0.3 s pacing only slow the tests down."""
    inverter = driver("renogy_inverter")
    monkeypatch.setattr(inverter, "init_delay", 0.02)
    monkeypatch.setattr(inverter, "request_pacing", 0.01)


def option(sim: Any, kind: str) -> DeviceOption:
    return DeviceOption(sim.mac, KINDS[kind].type_name, variant=KINDS[kind].variant)


async def test_connection_limit_holds_on_the_radio(fake_bluez: FakeBlueZ, gateway_factory: GatewayFactory) -> None:
    kinds = ["controller", "dcc", "battery", "inverter"]
    sims = [fake_bluez.add(kind, latency=FAST) for kind in kinds]
    gateway = await gateway_factory(
        tuple(option(s, k) for s, k in zip(sims, kinds, strict=True)),
        ble=True,
        max_connections=2,
        poll_interval=0.5,
        connect_timeout=2,
        request_timeout=0.5,
    )
    await wait_until(lambda: all(w.stats.successes >= 2 for w in gateway.scheduler.units.values()), 30, "polled")
    assert fake_bluez.stats.max_simultaneous_connections == 2
    for sim in sims:
        values = gateway.scheduler.unit(sim.mac).values
        assert values, sim.mac
        assert fake_bluez.peripheral(sim.mac).stats.connects >= 2  # four devices, two slots: reconnects


async def test_kept_link_lost_goes_offline_and_recovers(
    fake_bluez: FakeBlueZ, gateway_factory: GatewayFactory, mqtt_recorder: Any
) -> None:
    recorder = mqtt_recorder()
    sim = fake_bluez.add("controller", latency=FAST)
    mac_id = sim.mac.replace(":", "")
    gateway = await gateway_factory(
        (option(sim, "controller"),), ble=True, poll_interval=0.3, connect_timeout=1, request_timeout=0.5
    )
    worker = gateway.scheduler.unit(sim.mac)
    await wait_until(lambda: worker.stats.successes >= 3, 20)
    assert fake_bluez.peripheral(sim.mac).stats.connects == 1  # one device, two slots: the link is kept

    since = recorder.mark()
    fake_bluez.failures(sim.mac).advertising = False  # walked out of range
    fake_bluez.drop(sim.mac)
    offline = await recorder.await_topic(f"blupow/{mac_id}/availability", 30, since, lambda m: m.text == "offline")
    assert offline.text == "offline"
    assert "not found" in (worker.stats.last_error or "")

    since = recorder.mark()
    fake_bluez.failures(sim.mac).advertising = True
    await recorder.await_topic(f"blupow/{mac_id}/availability", 30, since, lambda m: m.text == "online")
    assert worker.status == "online"
    assert fake_bluez.peripheral(sim.mac).stats.connects == 2


async def test_held_by_another_central_is_reported(fake_bluez: FakeBlueZ, gateway_factory: GatewayFactory) -> None:
    sim = fake_bluez.add("dcc", latency=FAST, cached=True, failures={"held_by_other_central": True})
    gateway = await gateway_factory(
        (option(sim, "dcc"),), ble=True, poll_interval=0.3, connect_timeout=1, request_timeout=0.5
    )
    worker = gateway.scheduler.unit(sim.mac)
    await wait_until(lambda: worker.stats.failures >= 1, 20)
    entry = next(d for d in gateway.list_devices() if d["mac_address"] == sim.mac)
    assert "another central" in entry["last_error"]
    fake_bluez.failures(sim.mac).held_by_other_central = False
    await wait_until(lambda: worker.status == "online", 30)


async def test_pro_battery_added_by_type_alone_is_polled_as_pro(
    fake_bluez: FakeBlueZ, gateway_factory: GatewayFactory
) -> None:
    """Users add "renogy_battery" without a variant; an RNGRBP… name means id 0xFF and 0.1 A current."""
    sim = fake_bluez.add("battery_pro", latency=FAST)
    assert sim.name.startswith("RNGRBP")
    gateway = await gateway_factory(
        (DeviceOption(sim.mac, "renogy_battery"),), ble=True, poll_interval=0.3, connect_timeout=2, request_timeout=0.5
    )
    worker = gateway.scheduler.unit(sim.mac)
    await wait_until(lambda: worker.stats.successes >= 1, 20, "polled")
    assert worker.device is not None and worker.device.variant == "pro" and worker.device.modbus_id == 0xFF
    assert worker.values["current"] == pytest.approx(sim.truth["current"], abs=0.05)
    assert worker.stats.failures == 0


async def test_an_inverters_init_pause_does_not_hold_up_other_connects(
    fake_bluez: FakeBlueZ, gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the LE connection is serialised: the inverter's ffd4 read and pause run after it, outside
    the scheduler's connect lock, while the next device connects."""
    pause = 1.0
    monkeypatch.setattr(driver("renogy_inverter"), "init_delay", pause)
    inverter = fake_bluez.add("inverter", latency=FAST)
    controller = fake_bluez.add("controller", latency=FAST)
    gateway = await gateway_factory(
        (option(inverter, "inverter"),), ble=True, max_connections=2, poll_interval=30, connect_timeout=3
    )
    inverter_stats = fake_bluez.peripheral(inverter.mac).stats
    await wait_until(lambda: inverter_stats.connects == 1, 10, "inverter connected")
    worker = gateway.scheduler.unit(inverter.mac)
    assert worker.stats.successes == 0  # in its init pause now
    gateway.scheduler.add(
        DeviceRecord(controller.mac, "renogy_charge_controller", "MPPT"), create_device("renogy_charge_controller")
    )
    controller_worker = gateway.scheduler.unit(controller.mac)
    await wait_until(lambda: controller_worker.stats.successes >= 1, 10, "controller polled")
    controller_connected = fake_bluez.peripheral(controller.mac).stats.connected_at[0]
    assert controller_connected - inverter_stats.connected_at[0] < pause / 2
    await wait_until(lambda: worker.stats.successes >= 1, 10, "inverter polled")
    assert "0000ffd4-0000-1000-8000-00805f9b34fb" in inverter_stats.reads  # the init read still happens
